"""Tiny original-layout BridgeTower Lightning checkpoints, built from the key manifest of the real base checkpoint.

`bridgetower_original_base_keys.tsv` lists every key and shape of microsoft/BridgeTower's base checkpoint (union of
heads). The builders below keep the same key names and scale every shape down by one rule (`DIM`, `LAYERS`), fill
random values, and save a PyTorch Lightning-style dict whose `hyper_parameters["config"]` is pickled as sacred's
`ReadOnlyDict` (a stand-in class registered under sacred's module name while saving only, so that loading happens
without it, as on a machine without sacred).
"""

import contextlib
import math
import re
import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch

MANIFEST_NAME = "bridgetower_original_base_keys.tsv"


def manifest_path(name: str = MANIFEST_NAME) -> Path:
    """Every key and shape of an original base checkpoint (all heads), kept in tests/data/."""
    return Path(__file__).parent / "data" / name


def read_manifest(name: str = MANIFEST_NAME) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in manifest_path(name).read_text().splitlines()[1:]:
        if not line.strip():
            continue
        key, shape = line.split("\t")
        keys[key] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return keys


def family(key: str) -> str:
    """A key with its block indices replaced by N (`cross_modal_text_layers.N.attention...`)."""
    return re.sub(r"\.\d+\.", ".N.", key)


# ---- the scaling rule --------------------------------------------------------------------------------------------
HIDDEN = 64
IMAGE_SIZE, PATCH_SIZE = 32, 8
DIM = {
    768: HIDDEN,  # hidden size / tower widths
    3072: 4 * HIDDEN,  # feed-forward widths (mlp_ratio 4) and the classifiers' 2·h·head_hidden_scale
    2304: 3 * HIDDEN,  # CLIP's fused q/k/v
    1536: 2 * HIDDEN,  # cat(text_pooled, image_pooled)
    50265: 297,  # vocabulary
    514: 40,  # RoBERTa position table
    1297: (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1,  # ViT positions at image size 576 / patch 16 → 32 / 8
    3129: 7,  # VQAv2 answers
    256: 16,  # contrastive_hidden_size
    77: 5,  # CLIP text-side context length (dropped by the converter)
}
LAYERS = {"text_transformer.encoder.layer": 3, "vit_model.visual.transformer.resblocks": 3}
CROSS_LAYERS = 2
NUM_HEADS = 4  # cross-modal heads in hyper_parameters (head dim 16)
HEAD_PREFIXES = (
    "mlm_score.",
    "itm_score.",
    "itc_",
    "cross_modal_itc_",  # ManagerTower's name for the ITC heads
    "vqa_classifier.",
    "snli_classifier.",
    "nlvr2_",
    "rank_output.",
)


def scaled_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if key == "vit_model.visual.conv1.weight":
        return (DIM[shape[0]], shape[1], PATCH_SIZE, PATCH_SIZE)
    return tuple(DIM.get(d, d) for d in shape)


def _keep(key: str) -> bool:
    """Drop the blocks beyond the tiny depth (3 uni-modal layers, 2 cross-modal layers, 1 link tower)."""
    for prefix, count in LAYERS.items():
        if key.startswith(prefix + "."):
            return int(key[len(prefix) + 1 :].split(".")[0]) < count
    match = re.match(r"^cross_modal_(text|image)_(layers|link_tower)\.(\d+)\.", key)
    if match:
        return int(match.group(3)) < (CROSS_LAYERS if match.group(2) == "layers" else CROSS_LAYERS - 1)
    return True


def tiny_shapes() -> dict[str, tuple[int, ...]]:
    """Every manifest key that survives the depth cut, with its scaled shape (the union of heads)."""
    return {key: scaled_shape(key, shape) for key, shape in read_manifest().items() if _keep(key)}


def random_tensor(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if key.endswith("position_ids"):
        return torch.arange(shape[-1]).expand(shape).clone()
    is_norm = re.search(r"(LayerNorm(\.\d+)?|layernorm|ln_\w+|ln_separate\.\d+|classifier\.1)\.weight$", key)
    if is_norm:
        return 1 + 0.1 * torch.randn(shape, generator=generator)
    if len(shape) >= 2:
        return torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
    return 0.1 * torch.randn(shape, generator=generator)


# ---- tasks -------------------------------------------------------------------------------------------------------
LOSS_NAMES = ("itm", "mlm", "itc", "itm_itc", "irtr_itm_itc", "vqa", "nlvr2", "irtr", "snli")

TASKS = {
    # name: (manifest heads kept, loss_names, extra options)
    "pretrain": (("mlm_score.", "itm_score."), {"mlm": 1, "itm": 1}, {}),
    "vqa": (("vqa_classifier.",), {"vqa": 1}, {}),
    "snli": (("snli_classifier.",), {"snli": 1}, {}),
    "nlvr2": ((), {"nlvr2": 1}, {"nlvr2_layers": 1}),
    "irtr_itm_itc": (("itm_score.", "itc_"), {"irtr_itm_itc": 1}, {"temperature": 0.6}),
    "irtr_rank": (("itm_score.",), {"itm": 0.5, "irtr": 1}, {"rank_output": True}),
    "no_hparams": (("mlm_score.", "itm_score.", "itc_"), None, {"legacy_format": True}),
    "separate_ln": (("mlm_score.", "itm_score.", "itc_"), {"mlm": 1, "itm": 1, "itc": 1}, {"separate_ln": True}),
}


def task_shapes(shapes: dict, heads: tuple[str, ...], options: dict, vision_layers: int) -> dict:
    """The union's shapes cut to one task's heads, plus what the base manifest lacks: per-block ViT norms
    (`separate_ln`), the NLVR2 head and its 3-row type table (`nlvr2_layers`), the IRTR `rank_output`."""
    shapes = {k: s for k, s in shapes.items() if not k.startswith(HEAD_PREFIXES) or k.startswith(heads)}
    if options.get("separate_ln"):
        for i in range(vision_layers):
            for name in ("weight", "bias"):
                shapes[f"vit_model.visual.ln_separate.{i}.{name}"] = (HIDDEN,)
    if "nlvr2_layers" in options:
        # NLVR2 is not in the manifest: __init__ widens token types to 3 and reads cat of two passes
        shapes["token_type_embeddings.weight"] = (3, HIDDEN)
        if options["nlvr2_layers"] == 1:
            shapes.update({"nlvr2_classifier.0.weight": (2, 4 * HIDDEN), "nlvr2_classifier.0.bias": (2,)})
        else:
            width = 2 * HIDDEN * 2
            shapes.update(
                {
                    "nlvr2_classifier.0.weight": (width, 4 * HIDDEN),
                    "nlvr2_classifier.0.bias": (width,),
                    "nlvr2_classifier.1.weight": (width,),
                    "nlvr2_classifier.1.bias": (width,),
                    "nlvr2_classifier.3.weight": (2, width),
                    "nlvr2_classifier.3.bias": (2,),
                }
            )
    if options.get("rank_output"):
        shapes.update({"rank_output.weight": (1, 2 * HIDDEN), "rank_output.bias": (1,)})
    return shapes


def random_state_dict(shapes: dict, options: dict, seed: int = 0) -> OrderedDict:
    """Random values for `shapes` (norm weights near 1), the ITC temperature, and IRTR's shared storage."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = OrderedDict((k, random_tensor(k, s, generator)) for k, s in shapes.items())
    state_dict["temperature"] = torch.tensor(options.get("temperature", 0.05))
    if options.get("rank_output"):
        # __init__ makes rank_output a view of itm_score.fc row 1 (`.data = ...[1:]`): one storage, so a saved IRTR
        # checkpoint holds the fine-tuned rank_output in both places
        state_dict["itm_score.fc.weight"][1:] = state_dict["rank_output.weight"]
        state_dict["itm_score.fc.bias"][1:] = state_dict["rank_output.bias"]
    return state_dict


def original_state_dict(task: str, seed: int = 0) -> OrderedDict:
    """The original-layout state dict of a tiny checkpoint for `task` (see TASKS)."""
    heads, _, options = TASKS[task]
    shapes = task_shapes(tiny_shapes(), heads, options, LAYERS["vit_model.visual.transformer.resblocks"])
    return random_state_dict(shapes, options, seed)


def sacred_config(name: str, loss_names: dict, options: dict, **fields) -> dict:
    """A tiny run's sacred config (`hyper_parameters["config"]`) as plain containers; `fields` add or replace."""
    return {
        "exp_name": f"tiny_{name}",
        "seed": 0,
        "datasets": ["coco", "vg"],
        "loss_names": {loss: loss_names.get(loss, 0) for loss in LOSS_NAMES},
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "vqav2_label_size": DIM[3129],
        "max_text_len": 32,
        "tokenizer": "roberta-base",
        "vocab_size": DIM[50265],
        "input_image_embed_size": HIDDEN,
        "input_text_embed_size": HIDDEN,
        "vit": "CLIP-ViT-B/16",
        "hidden_size": HIDDEN,
        "num_heads": NUM_HEADS,
        "num_layers": CROSS_LAYERS,
        "mlp_ratio": 4,
        "drop_rate": 0.1,
        "model_type": "BT",
        "vit_layernorm_shared": not options.get("separate_ln", False),
        "vit_layernorm_init_from_vit": False,
        "vit_remove_last": False,
        "task_head_layers": options.get("nlvr2_layers", 2),
        "head_hidden_scale": 2,
        "temperature": 0.07,
        "contrastive_hidden_size": DIM[256],
        "nlvr2_drop_rate": 0.1,
        "learning_rate": 1e-5,
        "draw_false_text": 15 if options.get("rank_output") else 0,
        **fields,
    }


def run_config(task: str) -> dict | None:
    """The sacred run config (`hyper_parameters["config"]`) of the tiny checkpoint, as plain containers."""
    _, loss_names, options = TASKS[task]
    return None if loss_names is None else sacred_config(task, loss_names, options)


# ---- sacred stand-ins and saving ---------------------------------------------------------------------------------
SACRED_MODULE = "sacred.config.custom_containers"


def _sacred_classes(old_style: bool):
    """ReadOnlyDict/ReadOnlyList as sacred defines them (current: `__reduce__` → (cls, (plain,)); old style: the
    default dict-subclass reduction plus instance state, which unpickles through NEWOBJ + SETITEMS + BUILD)."""

    class ReadOnlyDict(dict):
        if not old_style:

            def __reduce__(self):
                return self.__class__, ({**self},)

    class ReadOnlyList(list):
        if not old_style:

            def __reduce__(self):
                return self.__class__, ([*self],)

    for cls in (ReadOnlyDict, ReadOnlyList):
        cls.__module__ = SACRED_MODULE
        cls.__qualname__ = cls.__name__
    return ReadOnlyDict, ReadOnlyList


@contextlib.contextmanager
def fake_sacred(old_style: bool = False):
    """Register `sacred.config.custom_containers` while saving; removed again on exit."""
    read_only_dict, read_only_list = _sacred_classes(old_style)
    names = ["sacred", "sacred.config", SACRED_MODULE]
    assert not any(name in sys.modules for name in names), "a real sacred is imported; the test needs it absent"
    modules = {name: types.ModuleType(name) for name in names}
    modules[SACRED_MODULE].ReadOnlyDict = read_only_dict
    modules[SACRED_MODULE].ReadOnlyList = read_only_list
    sys.modules.update(modules)
    try:
        yield read_only_dict, read_only_list
    finally:
        for name in names:
            sys.modules.pop(name, None)


def make_read_only(obj, read_only_dict, read_only_list, old_style: bool):
    if isinstance(obj, dict):
        converted = read_only_dict(
            {k: make_read_only(v, read_only_dict, read_only_list, old_style) for k, v in obj.items()}
        )
        if old_style:
            converted.message = "The configuration is read-only in a captured function!"
        return converted
    if isinstance(obj, list):
        converted = read_only_list([make_read_only(v, read_only_dict, read_only_list, old_style) for v in obj])
        if old_style:
            converted.message = "read-only"
        return converted
    return obj


def lightning_checkpoint(state_dict: dict, config: dict | None, extra: dict | None = None) -> dict:
    """A PyTorch Lightning 1.5-style checkpoint dict around `state_dict` (config still plain)."""
    first = next(iter(state_dict.values()))
    checkpoint = {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "1.5.10",
        "state_dict": state_dict,
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/the_metric', 'mode': 'max'}": {
                "monitor": "val/the_metric",
                "best_model_score": torch.tensor(0.71),
                "best_model_path": "/tmp/best.ckpt",
            }
        },
        "optimizer_states": [
            {
                "state": {0: {"step": 3, "exp_avg": torch.zeros_like(first)}},
                "param_groups": [{"lr": 1e-5, "params": [0]}],
            }
        ],
        "lr_schedulers": [{"last_epoch": 1200, "_last_lr": [1e-5], "base_lrs": [1e-5]}],
    }
    if config is not None:
        checkpoint["hyper_parameters"] = {"config": config}
    checkpoint.update(extra or {})
    return checkpoint


def save_lightning(path: Path, checkpoint: dict, legacy_format: bool = False, old_style_sacred: bool = False) -> Path:
    """torch.save the checkpoint with its config pickled as sacred containers."""
    with fake_sacred(old_style_sacred) as (read_only_dict, read_only_list):
        checkpoint = dict(checkpoint)
        if "hyper_parameters" in checkpoint:
            config = checkpoint["hyper_parameters"]["config"]
            checkpoint["hyper_parameters"] = {
                "config": make_read_only(config, read_only_dict, read_only_list, old_style_sacred)
            }
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy_format)
    return path


def write_task_checkpoint(folder: Path, task: str) -> Path:
    _, _, options = TASKS[task]
    checkpoint = lightning_checkpoint(original_state_dict(task), run_config(task))
    return save_lightning(Path(folder) / f"{task}.ckpt", checkpoint, legacy_format=options.get("legacy_format", False))


def write_edited(path: Path, state_dict: dict, config: dict | None, edit_state=None, config_updates=None) -> Path:
    """Save a tiny checkpoint after `edit_state(state_dict)` and `config.update(config_updates)` (bad-file tests)."""
    if edit_state is not None:
        edit_state(state_dict)
    if config_updates:
        config.update(config_updates)
    return save_lightning(Path(path), lightning_checkpoint(state_dict, config))
