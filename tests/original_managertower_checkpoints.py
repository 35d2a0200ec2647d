"""Tiny original-layout ManagerTower Lightning checkpoints, built from the key manifest of the real base checkpoint.

`managertower_original_base_keys.tsv` lists every key and shape of LooperXX/ManagerTower's base checkpoint (AAUE
managers with vector weights, union of heads). The builders keep its key names, scale its shapes with the BridgeTower
builder's rule (`original_bridgetower_checkpoints.DIM`), cut the towers and managers to a tiny depth, and derive the
other manager variants from it: SAUE managers (learned `layer_scores` in every layer, no controller) and scalar
weights (score tensors of last dimension 1). Saving goes through the BridgeTower builder (sacred `ReadOnlyDict`
hyper-parameters, Lightning checkpoint dict).
"""

import re
from collections import OrderedDict
from pathlib import Path

import torch
from original_bridgetower_checkpoints import (
    HIDDEN,
    lightning_checkpoint,
    random_state_dict,
    read_manifest,
    sacred_config,
    save_lightning,
    scaled_shape,
    task_shapes,
)

MANIFEST_NAME = "managertower_original_base_keys.tsv"
TEXT_LAYERS, VISION_LAYERS = 3, 4  # towers of different depth: the managers index each tower by its own layers
MANAGED = {"text": 2, "image": 3}  # managed_layers_text / managed_layers_image
CROSS_LAYERS = 2  # layer 0 (always SAUE) and one layer with a previous output (AAUE or SAUE)
MANAGER = re.compile(r"^cross_modal_(text|image)_manager_tower\.(\d+)\.manager_layer\.(.*)$")
ADAPTIVE_ONLY = re.compile(r"^(layer_scores_cross|linear_controller\.|fusion_attention\.|extra_query_LayerNorm\.)")


def _keep(key: str) -> bool:
    """Cut the towers, the cross-modal layers and the managers (and their per-expert norms) to the tiny depth."""
    depths = {
        "text_transformer.encoder.layer": TEXT_LAYERS,
        "vit_model.visual.transformer.resblocks": VISION_LAYERS,
        "cross_modal_text_layers": CROSS_LAYERS,
        "cross_modal_image_layers": CROSS_LAYERS,
    }
    for prefix, count in depths.items():
        if key.startswith(prefix + "."):
            return int(key[len(prefix) + 1 :].split(".")[0]) < count
    match = MANAGER.match(key)
    if match:
        side, index, rest = match.group(1), int(match.group(2)), match.group(3)
        norm = re.match(r"^LayerNorm\.(\d+)\.", rest)
        return index < CROSS_LAYERS and (not norm or int(norm.group(1)) < MANAGED[side] + (index > 0))
    return True


def _tiny_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    match = MANAGER.match(key)
    if match and match.group(3) in ("layer_scores", "linear_controller.weight", "linear_controller.bias"):
        managed = MANAGED[match.group(1)]  # the manifest's 6 managed layers
        return tuple(managed if d == 6 else scaled_shape(key, (d,))[0] for d in shape)
    if key.startswith("layer_embeddings_"):
        return (TEXT_LAYERS if "text" in key else VISION_LAYERS, HIDDEN)
    return scaled_shape(key, shape)


def tiny_shapes(manager_type: str = "AAUE", weight_type: str = "vector") -> dict[str, tuple[int, ...]]:
    """Every manifest key that survives the depth cut, scaled, as the given manager variant (union of heads)."""
    shapes = {}
    for key, shape in read_manifest(MANIFEST_NAME).items():
        if not _keep(key):
            continue
        match = MANAGER.match(key)
        if match and manager_type == "SAUE" and int(match.group(2)) > 0 and ADAPTIVE_ONLY.match(match.group(3)):
            continue  # heads.SAUE has no controller, attention or cross score …
        shapes[key] = _tiny_shape(key, shape)
    for side, managed in MANAGED.items():
        for index in range(1, CROSS_LAYERS):
            if manager_type == "SAUE":  # … but learned scores for the managed layers and the previous output
                shapes[f"cross_modal_{side}_manager_tower.{index}.manager_layer.layer_scores"] = (1, managed + 1, 1, 1)
    if weight_type == "scalar" or manager_type == "SAUE":
        width = 1 if weight_type == "scalar" else HIDDEN
        for key, shape in shapes.items():
            if re.search(r"\.layer_scores(_cross)?$", key):
                shapes[key] = (*shape[:-1], width)
    return shapes


# ---- tasks -------------------------------------------------------------------------------------------------------
ITC = "cross_modal_itc_"
TASKS = {
    # name: (manifest heads kept, loss_names, options)
    "pretrain": (
        ("mlm_score.", "itm_score.", ITC),
        {"mlm": 1, "itm_itc": 1},
        {"manager_type": "AAUE", "weight_type": "vector", "temperature": 0.6},
    ),
    "vqa": (("vqa_classifier.",), {"vqa": 1}, {"manager_type": "AAUE", "weight_type": "vector"}),
    "snli": (
        ("snli_classifier.",),
        {"snli": 1},
        {"manager_type": "SAUE", "weight_type": "scalar", "separate_ln": True},
    ),
    "nlvr2": ((), {"nlvr2": 1}, {"manager_type": "AAUE", "weight_type": "scalar", "nlvr2_layers": 2}),
    "irtr": (
        ("itm_score.",),
        {"itm": 0.5, "irtr": 1},
        {"manager_type": "SAUE", "weight_type": "vector", "rank_output": True},
    ),
    "no_hparams": (
        ("mlm_score.", "itm_score.", ITC),
        None,
        {"manager_type": "AAUE", "weight_type": "vector", "legacy_format": True},
    ),
}


def original_state_dict(task: str, seed: int = 0) -> OrderedDict:
    """The original-layout state dict of a tiny ManagerTower checkpoint for `task` (see TASKS)."""
    heads, _, options = TASKS[task]
    shapes = task_shapes(tiny_shapes(options["manager_type"], options["weight_type"]), heads, options, VISION_LAYERS)
    state_dict = random_state_dict(shapes, options, seed)
    # manager values far enough from their init that a wrong weighting shows: scores of either sign, temperatures
    # away from 1 (both are 1-ish tensors the generic filler would make tiny)
    generator = torch.Generator().manual_seed(seed + 1)
    for key, tensor in state_dict.items():
        if key.endswith(("softmax_temperature", "softmax_temperature_cross")):
            tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
        elif key.endswith(".layer_scores"):
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
        elif key.endswith(".layer_scores_cross"):
            tensor.copy_(1 + 0.3 * torch.randn(tensor.shape, generator=generator))
    return state_dict


def run_config(task: str) -> dict | None:
    """The sacred run config of the tiny checkpoint (plain containers), None for a file without hyper-parameters."""
    _, loss_names, options = TASKS[task]
    if loss_names is None:
        return None
    return sacred_config(
        task,
        loss_names,
        options,
        model_type="MT",
        num_layers=CROSS_LAYERS,
        manager_type=options["manager_type"],
        managed_layers_text=MANAGED["text"],
        managed_layers_image=MANAGED["image"],
        manager_learnable=True,
        manager_weight_type=options["weight_type"],
        manager_softmax_temperature=1,
        manager_softmax_temperature_learnable=True,
    )


def write_task_checkpoint(folder: Path, task: str) -> Path:
    """Save the tiny checkpoint of `task` as `folder/<task>.ckpt` (no-hparams tasks in torch's legacy format)."""
    legacy = TASKS[task][2].get("legacy_format", False)
    checkpoint = lightning_checkpoint(original_state_dict(task), run_config(task))
    return save_lightning(Path(folder) / f"{task}.ckpt", checkpoint, legacy_format=legacy)
