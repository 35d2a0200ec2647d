"""`towerzoo convert bridgetower-original`: an original microsoft/BridgeTower PyTorch Lightning `.ckpt` → a towerzoo
Hub folder.

Steps:
1. Read the checkpoint without running pickled code: an allow-list unpickler that rebuilds tensors, plain containers
   and sacred's read-only config containers (as dict/list, sacred need not be installed), and refuses every other
   global by name. Zip (torch >= 1.6) and legacy (pre-zip) `torch.save` files are both read.
2. Work out the architecture from tensor shapes, and check `hyper_parameters["config"]` against them when present.
3. Rename every key to towerzoo's layout (`bridgetower_keys`) or drop it with a reason; unknown keys are an error.
4. Build the matching towerzoo class, load strictly, and compare it on random padded inputs with a functional
   re-statement of the original forward pass (`bridgetower_original_reference`) computed from the ORIGINAL tensors.
5. Write the Hub folder atomically with `verification.json`.

Where the original's forward pass differs from transformers' port, the converted config follows the original:
`layer_norm_eps=1e-12` (cross-modal layers and MLM head, built from a default `RobertaConfig`),
`link_tower_layer_norm_eps=1e-5`, ITC image features taken before the cross-modal transform
(`contrastive_image_features="uni_modal"`) and no cross-modal ITC head, `logit_scale = log(1 / temperature)`.
"""

import builtins
import codecs
import importlib
import math
import pickle
import re
import types
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from towerzoo.conversions.bridgetower_folder import (
    build_model,
    check_tolerance,
    random_inputs,
    save_bridgetower,
    verification_record,
)
from towerzoo.conversions.bridgetower_keys import (
    BRIDGETOWER_KEYS,
    ORIGINAL_TO_TRANSFORMERS,
    KeyTable,
    rename_key,
    to_towerzoo,
)
from towerzoo.conversions.bridgetower_original_reference import reference_outputs
from towerzoo.conversions.common import ConversionError
from towerzoo.models.bridgetower import BridgeTowerConfig

SOURCE_FORMAT = "bridgetower-original"
REFERENCE = "the original BridgeTower forward pass (towerzoo.conversions.bridgetower_original_reference)"

# ====================================================================================================================
# 1. Safe reading
# ====================================================================================================================


class _ConfigDict(dict):
    """Stand-in for sacred's ReadOnlyDict / DogmaticDict and Lightning's AttributeDict while unpickling.

    sacred's `ReadOnlyContainer.__reduce__` pickles `(cls, (plain_dict,))`; older versions (and the default dict-subclass
    reduction) pickle NEWOBJ + SETITEMS + BUILD(instance state). Both rebuild here; the instance state is ignored.
    """

    def __setstate__(self, state):
        pass


class _ConfigList(list):
    """Stand-in for sacred's ReadOnlyList / DogmaticList (see `_ConfigDict`)."""

    def __setstate__(self, state):
        pass


_CONTAINER_ALIASES = {
    ("sacred.config.custom_containers", "ReadOnlyDict"): _ConfigDict,
    ("sacred.config.custom_containers", "ReadOnlyList"): _ConfigList,
    ("sacred.config.custom_containers", "DogmaticDict"): _ConfigDict,
    ("sacred.config.custom_containers", "DogmaticList"): _ConfigList,
    # Lightning keeps `hparams` in an AttributeDict (a dict subclass with attribute access)
    ("pytorch_lightning.utilities.parsing", "AttributeDict"): _ConfigDict,
    ("lightning_fabric.utilities.data", "AttributeDict"): _ConfigDict,
    ("lightning.fabric.utilities.data", "AttributeDict"): _ConfigDict,
}

_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    # plain builtins (protocol-2 pickles name them `__builtin__`, normalised below)
    **{
        ("builtins", name): getattr(builtins, name)
        for name in ("set", "frozenset", "complex", "slice", "bytearray", "list", "dict", "tuple", "int", "float")
        + ("str", "bool", "bytes", "range")
    },
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles store bytes as encode(str, "latin1")
}
# tensor rebuild functions (looked up defensively: the set differs between torch versions)
for _module, _name in (
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
):
    _function = getattr(importlib.import_module(_module), _name, None)
    if _function is not None:
        _ALLOWED_GLOBALS[(_module, _name)] = _function
# numpy scalars and arrays (data only; e.g. a metric logged as np.float64 into a callback state)
_NUMPY_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle references a global outside the allow-list."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualified_name = f"{module}.{name}"


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "__builtin__":
            module = "builtins"
        key = (module, name)
        if key in _CONTAINER_ALIASES:
            return _CONTAINER_ALIASES[key]
        if key in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[key]
        if key in _NUMPY_GLOBALS:
            import numpy  # noqa: F401  (numpy's pickles name numpy.core / numpy._core depending on the version)

            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                raise RefusedGlobal(module, name) from None
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch" and name.endswith("Storage") and hasattr(torch, name):
            # legacy typed storages (torch's own loader normally resolves these before asking us)
            return getattr(torch, name)
        raise RefusedGlobal(module, name)


def _safe_load(file, **kwargs):
    return _SafeUnpickler(file, **kwargs).load()


# torch.load(pickle_module=...) subclasses `Unpickler` (adding tensor-storage handling) and calls `load` for the
# legacy format's header records.
SAFE_PICKLE_MODULE = types.ModuleType("towerzoo_safe_pickle")
SAFE_PICKLE_MODULE.Unpickler = _SafeUnpickler
SAFE_PICKLE_MODULE.load = _safe_load
SAFE_PICKLE_MODULE.UnpicklingError = pickle.UnpicklingError


def _plain(obj):
    """The loaded object with the unpickling stand-ins turned into plain dicts/lists (recursively)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        plain = {k: _plain(v) for k, v in obj.items()}
        return OrderedDict(plain) if isinstance(obj, OrderedDict) else plain
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


def load_checkpoint_safely(path: Path) -> object:
    """`torch.load` with the allow-list unpickler; ConversionError for refused globals and unreadable files."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path} does not exist.")
    if not path.is_file():
        raise ConversionError(f"{path} is not a file; pass the Lightning .ckpt file itself.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False, pickle_module=SAFE_PICKLE_MODULE)
    except RefusedGlobal as error:
        raise ConversionError(
            f"refusing to read {path}: its pickle references `{error.qualified_name}`, which is neither a tensor, a "
            "plain container nor a sacred/Lightning config container. Loading it with a plain torch.load would run "
            "that code. If the file is trusted, re-save just its tensors and config "
            "(`torch.save({'state_dict': ckpt['state_dict'], 'hyper_parameters': ...}, path)`) and convert that."
        ) from None
    except RuntimeError as error:
        if "explicit pickle_module" in str(error):
            raise ConversionError(
                "TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, which stops torch from using towerzoo's allow-list unpickler "
                "(torch's own weights-only loader cannot read sacred's config containers). Unset it for this command; "
                "the allow-list unpickler runs no pickled code either."
            ) from None
        raise ConversionError(
            f"cannot read {path} as a PyTorch checkpoint (RuntimeError: {str(error)[:200]}); the file is corrupt, "
            "truncated or not a torch.save file. Re-download or re-copy it."
        ) from None
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, OSError, ValueError) as error:
        raise ConversionError(
            f"cannot read {path} as a PyTorch checkpoint ({type(error).__name__}: {str(error)[:200]}); the file is "
            "corrupt, truncated or not a torch.save file. Re-download or re-copy it."
        ) from None
    except Exception as error:  # unpickling can fail in many ways on damaged data
        raise ConversionError(
            f"cannot read {path} as a PyTorch checkpoint ({type(error).__name__}: {str(error)[:200]}); the file is "
            "corrupt or truncated. Re-download or re-copy it."
        ) from None
    return _plain(loaded)


@dataclass
class OriginalCheckpoint:
    """What the converter reads from a Lightning checkpoint."""

    state_dict: dict[str, torch.Tensor]
    hyper_parameters: dict | None  # hyper_parameters["config"] (the sacred run config), None when absent


def read_checkpoint(path: Path, check_keys: Callable[[Path, dict], None] | None = None) -> OriginalCheckpoint:
    """Read a Lightning .ckpt safely and check that it holds the expected original state dict: `check_keys(path,
    state_dict)` raises otherwise (default: an original BridgeTower)."""
    path = Path(path)
    loaded = load_checkpoint_safely(path)
    if not isinstance(loaded, dict) or "state_dict" not in loaded:
        if isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise ConversionError(
                f"{path} holds a bare state dict, not a PyTorch Lightning checkpoint (no 'state_dict' entry). Wrap "
                "it: torch.save({'state_dict': state_dict}, 'model.ckpt'), optionally with the run's config as "
                "{'hyper_parameters': {'config': {...}}}."
            )
        what = (
            f"a dict with keys {sorted(map(str, loaded))[:8]}" if isinstance(loaded, dict) else type(loaded).__name__
        )
        raise ConversionError(
            f"{path} is not a PyTorch Lightning checkpoint: expected a dict with a 'state_dict' entry, found {what}."
        )
    state_dict = loaded["state_dict"]
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise ConversionError(f"{path}: 'state_dict' is not a {{name: tensor}} mapping.")
    (check_keys or _check_is_bridgetower)(path, state_dict)
    hyper_parameters = loaded.get("hyper_parameters")
    config = hyper_parameters.get("config") if isinstance(hyper_parameters, dict) else None
    if config is not None and not isinstance(config, dict):
        raise ConversionError(f"{path}: hyper_parameters['config'] is a {type(config).__name__}, not a mapping.")
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    return OriginalCheckpoint(state_dict=state_dict, hyper_parameters=config)


def _check_is_bridgetower(path: Path, state_dict: dict) -> None:
    keys = list(state_dict)
    if any("manager" in k for k in keys):
        raise ConversionError(
            f"{path} looks like a ManagerTower checkpoint (it has manager keys such as "
            f"{next(k for k in keys if 'manager' in k)}); `bridgetower-original` converts BridgeTower checkpoints only. "
            "Convert it with `towerzoo convert managertower-original` instead."
        )
    check_original_towers(path, state_dict, "BridgeTower")


def check_original_towers(path: Path, state_dict: dict, model: str) -> None:
    """Refuse transformers' layout and checkpoints without the RoBERTa text tower and the CLIP ViT."""
    keys = list(state_dict)
    shown = ", ".join(sorted(keys)[:6]) or "none"
    if any(k.startswith(("bridgetower.", "text_model.", "vision_model.")) for k in keys):
        raise ConversionError(
            f"{path} uses transformers' BridgeTower key layout (keys: {shown} …); convert it with "
            "`towerzoo convert bridgetower-transformers` instead."
        )
    has_text = any(k.startswith("text_transformer.encoder.layer.") for k in keys)
    has_vision = any(k.startswith("vit_model.visual.transformer.resblocks.") for k in keys)
    if not has_text or not has_vision:
        if has_text and any(k.startswith("vit_model.") for k in keys):
            raise ConversionError(
                f"{path} has a text tower but no CLIP vision tower (`vit_model.visual.*`): {model} is converted "
                "only with its CLIP ViT (timm ViT / Swin variants are not supported)."
            )
        raise ConversionError(
            f"{path} is not an original {model} checkpoint: it lacks the RoBERTa text tower "
            f"(`text_transformer.encoder.layer.*`) and/or the CLIP vision tower (`vit_model.visual.*`). Keys: {shown} …"
        )


# ====================================================================================================================
# 2. Architecture from shapes, checked against hyper_parameters
# ====================================================================================================================

_HEAD_PREFIXES = {
    "mlm": "mlm_score.",
    "itm": "itm_score.",
    "itc": "itc_text_head.",
    "vqa": "vqa_classifier.",
    "snli": "snli_classifier.",
    "nlvr2": "nlvr2_classifier.",
    "rank": "rank_output.",
}
# label names of the original datasets (write_snli.py, nlvr2_dataset.py); VQAv2's answer list is not in the checkpoint
_LABELS = {
    "snli": {0: "contradiction", 1: "neutral", 2: "entailment"},
    "nlvr2": {0: "False", 1: "True"},
}


@dataclass
class OriginalLayout:
    """The original architecture, read from tensor shapes."""

    text_layers: int
    text_width: int
    text_intermediate: int
    vocab_size: int
    text_positions: int
    text_type_vocab_size: int
    vision_layers: int
    vision_width: int
    vision_intermediate: int
    patch_size: int
    image_size: int
    num_channels: int
    vit_layernorm_shared: bool
    hidden_size: int
    num_layers: int  # cross-modal layers
    intermediate_size: int
    num_token_types: int
    heads: list[str] = field(default_factory=list)
    task_head_layers: int | None = None
    head_hidden_scale: float | None = None
    num_labels: int | None = None
    contrastive_hidden_size: int | None = None


def _indices(state_dict: dict, prefix: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return sorted({int(m.group(1)) for k in state_dict if (m := pattern.match(k))})


def _count(state_dict: dict, prefix: str) -> int:
    indices = _indices(state_dict, prefix)
    if indices and indices != list(range(len(indices))):
        missing = sorted(set(range(indices[-1] + 1)) - set(indices))
        raise ConversionError(
            f"the checkpoint's `{prefix}.*` blocks are numbered {indices}: block(s) {missing} are missing. The state "
            "dict is incomplete."
        )
    return len(indices)


def _shape(state_dict: dict, key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ConversionError(
            f"the checkpoint lacks `{key}`, which every original BridgeTower and ManagerTower checkpoint holds; the "
            "state dict is incomplete."
        )
    return tuple(state_dict[key].shape)


def infer_layout(
    state_dict: dict[str, torch.Tensor],
    model: str = "BridgeTower",
    itc_prefix: str = "",
    model_problems: Callable[[dict, "OriginalLayout"], list[str]] | None = None,
) -> OriginalLayout:
    """Read the architecture from the original state dict's key indices and tensor shapes.

    What feeds the cross-modal layers is the model's own: `model_problems(state_dict, layout)` lists what towerzoo
    cannot express there (default: BridgeTower's bridges). `itc_prefix` names the ITC heads' module prefix."""
    sd = state_dict
    vocab_size, text_width = _shape(sd, "text_transformer.embeddings.word_embeddings.weight")
    text_layers = _count(sd, "text_transformer.encoder.layer")
    vision_width, num_channels, patch_size, _ = _shape(sd, "vit_model.visual.conv1.weight")
    positions = _shape(sd, "vit_model.visual.positional_embedding")[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ConversionError(
            f"vit_model.visual.positional_embedding has {positions} rows, not a square grid plus the class token; "
            "the checkpoint is damaged."
        )
    vision_layers = _count(sd, "vit_model.visual.transformer.resblocks")
    separate = _count(sd, "vit_model.visual.ln_separate")
    if separate and separate != vision_layers:
        raise ConversionError(
            f"the checkpoint has {separate} `vit_model.visual.ln_separate` norms for {vision_layers} ViT blocks; "
            "towerzoo needs one per block."
        )
    hidden_size, transform_in = _shape(sd, "cross_modal_text_transform.weight")
    image_transform_in = _shape(sd, "cross_modal_image_transform.weight")[1]
    num_layers = _count(sd, "cross_modal_text_layers")
    layout = OriginalLayout(
        text_layers=text_layers,
        text_width=text_width,
        text_intermediate=_shape(sd, "text_transformer.encoder.layer.0.intermediate.dense.weight")[0],
        vocab_size=vocab_size,
        text_positions=_shape(sd, "text_transformer.embeddings.position_embeddings.weight")[0],
        text_type_vocab_size=_shape(sd, "text_transformer.embeddings.token_type_embeddings.weight")[0],
        vision_layers=vision_layers,
        vision_width=vision_width,
        vision_intermediate=_shape(sd, "vit_model.visual.transformer.resblocks.0.mlp.c_fc.weight")[0],
        patch_size=patch_size,
        image_size=grid * patch_size,
        num_channels=num_channels,
        vit_layernorm_shared=separate == 0,
        hidden_size=hidden_size,
        num_layers=num_layers,
        intermediate_size=(
            _shape(sd, "cross_modal_text_layers.0.intermediate.dense.weight")[0] if num_layers else hidden_size * 4
        ),
        num_token_types=_shape(sd, "token_type_embeddings.weight")[0],
    )
    problems = []
    if num_layers == 0:
        problems.append("it has no cross-modal layers (`cross_modal_text_layers.*`); num_layers=0 is not supported")
    if _count(sd, "cross_modal_image_layers") != num_layers:
        problems.append(
            f"it has {num_layers} cross-modal text layers but {_count(sd, 'cross_modal_image_layers')} image layers"
        )
    if transform_in != text_width or image_transform_in != vision_width:
        problems.append(
            f"cross_modal_text/image_transform read widths {transform_in}/{image_transform_in}, but the towers are "
            f"{text_width}/{vision_width} wide"
        )
    if layout.num_token_types not in (2, 3):
        problems.append(f"token_type_embeddings has {layout.num_token_types} rows (expected 2, or 3 for NLVR2)")
    problems += (model_problems or _bridge_problems)(sd, layout)
    if problems:
        raise ConversionError(f"the checkpoint is not a {model} towerzoo can express: " + "; ".join(problems) + ".")

    head_prefixes = {**_HEAD_PREFIXES, "itc": f"{itc_prefix}itc_text_head."}
    layout.heads = [h for h, prefix in head_prefixes.items() if any(k.startswith(prefix) for k in sd)]
    if ("itc" in layout.heads) != any(k.startswith(f"{itc_prefix}itc_image_head.") for k in sd):
        raise ConversionError(
            f"the checkpoint has only one of {itc_prefix}itc_text_head / {itc_prefix}itc_image_head; it is incomplete."
        )
    if "itc" in layout.heads:
        layout.contrastive_hidden_size = _shape(sd, f"{itc_prefix}itc_text_head.fc.weight")[0]
    _read_classifier_heads(sd, layout)
    return layout


def _bridge_problems(sd: dict, layout: OriginalLayout) -> list[str]:
    """What BridgeTower's bridges need: one link tower per cross-modal layer after the first, equally deep towers."""
    problems = []
    num_layers, text_layers, vision_layers = layout.num_layers, layout.text_layers, layout.vision_layers
    for side in ("text", "image"):
        links = _count(sd, f"cross_modal_{side}_link_tower")
        if num_layers and links != num_layers - 1:
            problems.append(
                f"it has {links} `cross_modal_{side}_link_tower` bridges for {num_layers} cross-modal layers (a "
                f"BridgeTower has {num_layers - 1}; a METER checkpoint has none)"
            )
    if text_layers != vision_layers:
        # bt_module.infer runs ViT block i alongside text layer i (`resblocks[i]` for i < len(text layers)), while
        # get_uni_modal_features (ITC) runs every ViT block: only equally deep towers give one consistent model.
        problems.append(
            f"its text tower has {text_layers} layers and its ViT {vision_layers} blocks; the original `infer` indexes "
            "ViT blocks by text-layer index, which towerzoo reproduces only for equally deep towers"
        )
    if num_layers > min(text_layers, vision_layers):
        problems.append(f"its {num_layers} cross-modal layers exceed the {text_layers} uni-modal layers feeding them")
    return problems


def _read_classifier_heads(sd: dict, layout: OriginalLayout) -> None:
    """Depth, width and outputs of the task classifier (and the IRTR / NLVR2 consistency checks)."""
    hidden_size = layout.hidden_size
    if "rank" in layout.heads and "itm" not in layout.heads:
        raise ConversionError("the checkpoint has rank_output (IRTR) but no itm_score; it is incomplete.")
    classifiers = [h for h in ("vqa", "snli", "nlvr2") if h in layout.heads]
    if len(classifiers) > 1:
        raise ConversionError(f"the checkpoint holds several task classifiers {classifiers}; convert one task's.")
    if classifiers:
        name = f"{classifiers[0]}_classifier"
        depth = 2 if f"{name}.3.weight" in sd else 1
        last = _shape(sd, f"{name}.{3 if depth == 2 else 0}.weight")
        layout.task_head_layers, layout.num_labels = depth, last[0]
        factor = 4 if classifiers[0] == "nlvr2" else 2
        if _shape(sd, f"{name}.0.weight")[1] != factor * hidden_size:
            raise ConversionError(
                f"{name}.0.weight reads {_shape(sd, f'{name}.0.weight')[1]} features; the original reads "
                f"{factor}·hidden_size = {factor * hidden_size}."
            )
        if depth == 2:
            width = _shape(sd, f"{name}.0.weight")[0]
            scale = width / (2 * hidden_size)
            layout.head_hidden_scale = int(scale) if scale.is_integer() else scale
            if int(2 * hidden_size * layout.head_hidden_scale) != width:
                raise ConversionError(
                    f"{name} is {width} wide, which no head_hidden_scale gives as int(2·hidden_size·scale) with "
                    f"hidden_size {hidden_size}."
                )
    if "nlvr2" in layout.heads and layout.num_token_types != 3:
        raise ConversionError(
            f"an NLVR2 checkpoint needs 3 token types (text, image 1, image 2); token_type_embeddings has "
            f"{layout.num_token_types} rows."
        )


def _loss_heads(loss_names: dict) -> set[str]:
    """Which head modules BTTransformer.__init__ creates for these loss weights."""

    def on(name: str) -> bool:
        weight = loss_names.get(name, 0)
        return isinstance(weight, (int, float)) and weight > 0

    heads = {h for h in ("mlm", "vqa", "snli", "nlvr2") if on(h)}
    if on("itm") or on("itm_itc") or on("irtr_itm_itc"):
        heads.add("itm")
    if on("itc") or on("itm_itc") or on("irtr_itm_itc"):
        heads.add("itc")
    if on("irtr"):
        heads.add("rank")
    return heads


# model_type in the run config → (model, converter)
_MODEL_TYPES = {"BT": ("BridgeTower", "bridgetower-original"), "MT": ("ManagerTower", "managertower-original")}


def check_hyper_parameters(layout: OriginalLayout, config: dict) -> None:
    """Refuse, naming the field, when the run's config contradicts the tensors (or asks for what towerzoo lacks)."""
    contradictions, unsupported = hyper_parameter_problems(layout, config, "BT")
    loss_names = config.get("loss_names") if isinstance(config.get("loss_names"), dict) else {}
    fusion_trained = [name for name in ("itm_itc", "irtr_itm_itc") if loss_names.get(name, 0) > 0]
    if not layout.vit_layernorm_shared and fusion_trained:
        unsupported.append(
            f"vit_layernorm_shared=False with loss_names {fusion_trained}: the original trains and scores ITM for "
            "these through `infer_fusion`, which normalises each routed ViT layer with its own ln_separate norm, "
            "while `infer` (VQA, NLVR2, SNLI-VE, ITM/MLM pre-training), transformers' port and towerzoo use the "
            "shared ln_post"
        )
    raise_hyper_parameter_problems(contradictions, unsupported)


def hyper_parameter_problems(layout: OriginalLayout, config: dict, model_type: str) -> tuple[list[str], list[str]]:
    """What the run's config contradicts in the tensors, and what it asks for that towerzoo lacks (the fields
    BridgeTower and ManagerTower share); `model_type` is the run config's value this converter reads."""
    contradictions = []

    def expect(name: str, holds: bool, found: str) -> None:
        if name in config and not holds:
            contradictions.append(f"{name}={config[name]!r} but {found}")

    get = config.get
    expect("hidden_size", get("hidden_size") == layout.hidden_size, f"the cross-modal width is {layout.hidden_size}")
    expect("num_layers", get("num_layers") == layout.num_layers, f"there are {layout.num_layers} cross-modal layers")
    expect(
        "num_heads",
        isinstance(get("num_heads"), int) and get("num_heads") > 0 and layout.hidden_size % get("num_heads") == 0,
        f"hidden size {layout.hidden_size} is not divisible by it",
    )
    expect(
        "mlp_ratio",
        isinstance(get("mlp_ratio"), (int, float))
        and get("mlp_ratio") * layout.hidden_size == layout.intermediate_size,
        f"the cross-modal feed-forward is {layout.intermediate_size} wide",
    )
    expect(
        "input_text_embed_size",
        get("input_text_embed_size") == layout.text_width,
        f"the text tower is {layout.text_width} wide",
    )
    expect(
        "input_image_embed_size",
        get("input_image_embed_size") == layout.vision_width,
        f"the ViT is {layout.vision_width} wide",
    )
    expect(
        "patch_size",
        get("patch_size") == layout.patch_size,
        f"vit_model.visual.conv1 has {layout.patch_size}-pixel patches",
    )
    expect(
        "image_size",
        get("image_size") == layout.image_size,
        f"vit_model.visual.positional_embedding holds a {layout.image_size // layout.patch_size}² grid "
        f"(image size {layout.image_size} at patch {layout.patch_size})",
    )
    expect("vocab_size", get("vocab_size") == layout.vocab_size, f"the word embeddings have {layout.vocab_size} rows")
    expect(
        "vit_layernorm_shared",
        bool(get("vit_layernorm_shared")) == layout.vit_layernorm_shared,
        "the checkpoint "
        + ("has no" if layout.vit_layernorm_shared else "has")
        + " vit_model.visual.ln_separate norms",
    )
    if layout.task_head_layers is not None:
        expect(
            "task_head_layers",
            get("task_head_layers") == layout.task_head_layers,
            f"the classifier has {layout.task_head_layers} layer(s)",
        )
    if layout.head_hidden_scale is not None:
        expect(
            "head_hidden_scale",
            get("head_hidden_scale") == layout.head_hidden_scale,
            f"the classifier is {2 * layout.hidden_size * layout.head_hidden_scale} wide",
        )
    if "vqa" in layout.heads:
        expect(
            "vqav2_label_size",
            get("vqav2_label_size") == layout.num_labels,
            f"the VQA classifier has {layout.num_labels} outputs",
        )
    if "itc" in layout.heads:
        expect(
            "contrastive_hidden_size",
            get("contrastive_hidden_size") == layout.contrastive_hidden_size,
            f"the ITC heads have {layout.contrastive_hidden_size} outputs",
        )
    if isinstance(get("loss_names"), dict):
        expected = _loss_heads(get("loss_names"))
        if expected != set(layout.heads):
            contradictions.append(
                f"loss_names creates the heads {sorted(expected)} but the state dict holds {sorted(layout.heads)}"
            )
    unsupported = []
    if "tokenizer" in config and "roberta" not in str(config["tokenizer"]):
        unsupported.append(
            f"tokenizer={config['tokenizer']!r}: the text tower is then BERT (absolute positions, LayerNorm eps 1e-12), "
            "while towerzoo's BridgeTower has RoBERTa's text tower"
        )
    if "vit" in config and "CLIP" not in str(config["vit"]):
        unsupported.append(f"vit={config['vit']!r}: only CLIP vision towers are supported")
    found = config.get("model_type", model_type)
    if found != model_type:
        model, converter = _MODEL_TYPES[model_type]
        other = f"; convert it with `towerzoo convert {_MODEL_TYPES[found][1]}`" if found in _MODEL_TYPES else ""
        unsupported.append(
            f"model_type={found!r}: `{converter}` converts {model} ('{model_type}') checkpoints only{other}"
        )
    return contradictions, unsupported


def raise_hyper_parameter_problems(contradictions: list[str], unsupported: list[str]) -> None:
    """One ConversionError listing the contradictions (first) or the unsupported settings."""
    if contradictions:
        raise ConversionError(
            "hyper_parameters['config'] contradicts the checkpoint's tensors: " + "; ".join(contradictions) + ". The "
            "file mixes two runs or was edited; pass corrected values with config_overrides={...} to `run`, or use "
            "the checkpoint its training run wrote."
        )
    if unsupported:
        raise ConversionError("towerzoo cannot express this checkpoint: " + "; ".join(unsupported) + ".")


def towerzoo_config(
    layout: OriginalLayout,
    config: dict | None,
    state_dict: dict,
    config_class: type[BridgeTowerConfig] = BridgeTowerConfig,
    **fields,
) -> BridgeTowerConfig:
    """towerzoo's config for the original architecture (original eps values, original ITC layout). ManagerTower
    passes its config class and its own `fields`."""
    config = config or {}
    num_heads = config.get("num_heads", max(1, layout.hidden_size // 64))
    if layout.hidden_size % num_heads:
        raise ConversionError(f"hidden size {layout.hidden_size} is not divisible by num_heads={num_heads}.")
    drop = float(config.get("drop_rate", 0.1))
    classifier = next((h for h in ("vqa", "snli", "nlvr2") if h in layout.heads), None)
    extra = {}
    if classifier:
        extra["id2label"] = _LABELS.get(classifier, {i: f"LABEL_{i}" for i in range(layout.num_labels)})
        if len(extra["id2label"]) != layout.num_labels:
            extra["id2label"] = {i: f"LABEL_{i}" for i in range(layout.num_labels)}
    temperature = state_dict.get("temperature")
    logit_scale = 2.6592 if temperature is None else _logit_scale(temperature).item()
    return config_class(
        text_config={
            "vocab_size": layout.vocab_size,
            "hidden_size": layout.text_width,
            "num_hidden_layers": layout.text_layers,
            # RoBERTa-base/large (what `RobertaModel.from_pretrained(config["tokenizer"])` loads) use 64-wide heads
            "num_attention_heads": max(1, layout.text_width // 64),
            "intermediate_size": layout.text_intermediate,
            "hidden_act": "gelu",
            "max_position_embeddings": layout.text_positions,
            "type_vocab_size": layout.text_type_vocab_size,
            "layer_norm_eps": 1e-5,
        },
        vision_config={
            "hidden_size": layout.vision_width,
            "num_hidden_layers": layout.vision_layers,
            "num_attention_heads": max(1, layout.vision_width // 64),  # clip_model.CLIP: width // 64
            "intermediate_size": layout.vision_intermediate,
            "hidden_act": "quick_gelu",
            "image_size": layout.image_size,
            "patch_size": layout.patch_size,
            "num_channels": layout.num_channels,
            "layer_norm_eps": 1e-5,
            "share_layernorm": layout.vit_layernorm_shared,
        },
        hidden_size=layout.hidden_size,
        num_hidden_layers=layout.num_layers,
        num_attention_heads=num_heads,
        intermediate_size=layout.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=drop,
        attention_probs_dropout_prob=drop,
        # The original builds the cross-modal layers and the MLM head from `RobertaConfig(...)` without
        # layer_norm_eps, i.e. 1e-12; its link towers and first-layer norms are nn.LayerNorm defaults (1e-5).
        layer_norm_eps=1e-12,
        link_tower_layer_norm_eps=1e-5,
        link_tower_type="add",
        share_link_tower_layers=False,
        share_cross_modal_transformer_layers=True,
        num_token_types=layout.num_token_types,
        task_head_layers=layout.task_head_layers or 2,
        head_hidden_scale=layout.head_hidden_scale or int(config.get("head_hidden_scale", 2) or 2),
        contrastive_hidden_size=layout.contrastive_hidden_size or int(config.get("contrastive_hidden_size", 256)),
        contrastive_image_features="uni_modal",
        contrastive_cross_modal_head=False,
        logit_scale_init_value=logit_scale,
        tie_word_embeddings=False,
        **extra,
        **fields,
    )


def _logit_scale(temperature: torch.Tensor) -> torch.Tensor:
    """objectives.compute_itc: `temperature.clamp_(0.001, 0.5)` then `logit_scale = exp(log(1 / temperature))`;
    towerzoo multiplies by `logit_scale.exp()`, so it stores log(1 / clamped temperature)."""
    return torch.log(1 / temperature.float().clamp(0.001, 0.5))


# ====================================================================================================================
# 3. Keys
# ====================================================================================================================

RANK_HEAD_CHOICES = ("fold", "drop")


@dataclass
class ConvertedStateDict:
    state_dict: dict[str, torch.Tensor]  # towerzoo keys
    renamed: dict[str, list[str]]  # original key → towerzoo key(s)
    dropped: dict[str, str]  # original key → reason


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    layout: OriginalLayout,
    rank_head: str = "fold",
    table: KeyTable = BRIDGETOWER_KEYS,
) -> ConvertedStateDict:
    """Rename every original key into towerzoo's layout or drop it with a reason; ConversionError lists unknown keys.
    `table` holds the model's own keys on top of BridgeTower's (ManagerTower's managers).

    `temperature` becomes `logit_scale` when ITC heads exist. `rank_output` (IRTR, `loss_names["irtr"]`): the original
    initialises it from `itm_score.fc` row 1, freezes itm_score, trains only rank_output and scores retrieval with
    `rank_output(cls_feats)[:, 0]` (objectives.compute_irtr / compute_irtr_recall). With rank_head="fold" it replaces
    the frozen ITM head as row 1 of `itm_score` with a zero row 0, so `itm_logits[:, 1] - itm_logits[:, 0]` (and the
    match probability, a sigmoid of it) is the original's retrieval score; "drop" keeps the frozen ITM head instead.
    """
    if rank_head not in RANK_HEAD_CHOICES:
        raise ConversionError(f"rank_head must be one of {RANK_HEAD_CHOICES}, got {rank_head!r}.")
    source = dict(state_dict)
    dropped: dict[str, str] = {}
    renamed: dict[str, list[str]] = {}
    extra: dict[str, torch.Tensor] = {}

    temperature = source.pop("temperature", None)
    if temperature is not None:
        if "itc" in layout.heads:
            extra["logit_scale"] = _logit_scale(temperature).reshape(())
            renamed["temperature"] = ["logit_scale"]
        else:
            dropped["temperature"] = "the ITC temperature; this checkpoint has no ITC heads that would use it"
    if "rank" in layout.heads:
        weight, bias = source.pop("rank_output.weight"), source.pop("rank_output.bias")
        if rank_head == "fold":
            for key in ("itm_score.fc.weight", "itm_score.fc.bias"):
                source.pop(key)
                dropped[key] = (
                    "the ITM head: row 1 is rank_output (the original makes them one storage), row 0 is replaced by "
                    "zeros so that logit 1 - logit 0 is compute_irtr's score"
                )
            extra["itm_score.weight"] = torch.cat([torch.zeros_like(weight), weight], dim=0)
            extra["itm_score.bias"] = torch.cat([torch.zeros_like(bias), bias], dim=0)
            renamed["rank_output.weight"], renamed["rank_output.bias"] = ["itm_score.weight"], ["itm_score.bias"]
        else:
            reason = (
                "the IRTR rank head (rank_head='drop'): the original makes it a view of itm_score row 1 (same "
                "storage), so the kept itm_score already holds it"
            )
            dropped["rank_output.weight"] = dropped["rank_output.bias"] = reason

    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in source.items():
        intermediate = rename_key(key, ORIGINAL_TO_TRANSFORMERS) or key
        try:
            new, why = to_towerzoo({intermediate: tensor}, layout.task_head_layers or 2, table)
        except ValueError:
            unknown.append(key)
            continue
        if why:
            dropped[key] = why[intermediate]
        else:
            renamed[key] = list(new)
            converted.update(new)
    if unknown:
        raise ConversionError(
            f"{len(unknown)} key(s) of the checkpoint belong to no {table.model} module towerzoo knows: "
            f"{', '.join(sorted(unknown)[:10])}{' …' if len(unknown) > 10 else ''}. Is this an original {table.model} "
            "checkpoint (and not a variant with extra modules)? Remove those keys from the state dict if they are "
            "stray additions."
        )
    converted.update(extra)  # head keys (itm_score.*, logit_scale): no base-model prefix
    return ConvertedStateDict(state_dict=converted, renamed=renamed, dropped=dropped)


# ====================================================================================================================
# 4. Verification against the functional original
# ====================================================================================================================


def _max_diff(expected: torch.Tensor, got: torch.Tensor) -> float:
    if expected.shape != got.shape:
        raise ConversionError(f"output shapes differ: original {tuple(expected.shape)} vs towerzoo {tuple(got.shape)}")
    return float((expected - got).abs().max())


@torch.no_grad()
def verify_against_original(
    model: torch.nn.Module,
    source_state_dict: dict[str, torch.Tensor],
    layout: OriginalLayout,
    folded_rank: bool,
    reference: Callable[..., dict[str, torch.Tensor]] = reference_outputs,
) -> dict[str, float]:
    """Run towerzoo's model and the functional original (`reference`, with `reference_outputs`' signature and keys) on
    the same random padded batch; largest absolute difference per output (NLVR2: a second random image)."""
    config = model.config
    inputs = random_inputs(config)
    second = random_inputs(config, seed=1)["pixel_values"] if "nlvr2" in layout.heads else None
    expected = reference(
        source_state_dict,
        inputs["input_ids"],
        inputs["attention_mask"],
        inputs["pixel_values"],
        num_heads=config.num_attention_heads,
        second_pixel_values=second,
    )
    model.eval()
    base = model.base_model  # the model itself for the bare class
    got = base(**inputs, return_dict=True)
    diffs = {
        "text_features": _max_diff(expected["text_feats"], got.text_features),
        "image_features": _max_diff(expected["image_feats"], got.image_features),
        "pooler_output": _max_diff(expected["cls_feats"], got.pooler_output),
    }
    task = type(model).__name__.partition("For")[2]  # BridgeTowerForMaskedLM → MaskedLM; "" for the bare model
    if task == "PreTraining":
        out = model(**inputs)
        mlm, itm, itc = out.mlm_logits, out.itm_logits, out.contrastive
    else:
        mlm = itm = itc = None
        if task == "MaskedLM":
            mlm = model(**inputs).logits
        elif task == "ImageAndTextRetrieval":
            itm = model(**inputs).logits
        elif task == "ContrastiveLearning":
            itc = model(**inputs)
        elif task == "VisualQuestionAnswering":
            diffs["vqa_logits"] = _max_diff(expected["vqa_logits"], model(**inputs).logits)
        elif task == "VisualEntailment":
            diffs["snli_logits"] = _max_diff(expected["snli_logits"], model(**inputs).logits)
        elif task == "NLVR2":
            second_pass = base(**{**inputs, "pixel_values": second}, image_token_type_idx=2, return_dict=True)
            diffs["pooler_output_image2"] = _max_diff(expected["cls_feats_image2"], second_pass.pooler_output)
            pair = torch.stack([inputs["pixel_values"], second], dim=1)
            logits = model(inputs["input_ids"], inputs["attention_mask"], pixel_values=pair).logits
            diffs["nlvr2_logits"] = _max_diff(expected["nlvr2_logits"], logits)
    if mlm is not None:
        diffs["mlm_logits"] = _max_diff(expected["mlm_logits"], mlm)
    if itm is not None:
        if folded_rank:
            diffs["irtr_score"] = _max_diff(expected["irtr_score"], itm[:, 1] - itm[:, 0])
        else:
            diffs["itm_logits"] = _max_diff(expected["itm_logits"], itm)
    if itc is not None:
        diffs["itc_text_embeds"] = _max_diff(expected["itc_text_embeds"], itc.text_embeds)
        diffs["itc_image_embeds"] = _max_diff(expected["itc_image_embeds"], itc.image_embeds)
        diffs["itc_logits_per_text"] = _max_diff(expected["itc_logits_per_text"], itc.logits_per_text)
    return diffs


# ====================================================================================================================
# 5. Entry point
# ====================================================================================================================


@dataclass(frozen=True)
class OriginalFormat:
    """One original repository's checkpoints: the steps `convert` chains for them. ManagerTower's converter passes
    its own; every other step (safe reading, heads, IRTR folding, building, writing) is shared."""

    source_format: str  # the `towerzoo convert` SOURCE name
    reference: str  # what the verification compares against (messages, verification.json)
    check_keys: Callable[[Path, dict], None]  # refuse state dicts of other models
    infer_layout: Callable[[dict], OriginalLayout]
    check_hyper_parameters: Callable[[OriginalLayout, dict], None]
    towerzoo_config: Callable[[OriginalLayout, dict | None, dict], BridgeTowerConfig]
    keys: KeyTable
    reference_outputs: Callable[..., dict[str, torch.Tensor]]


BRIDGETOWER = OriginalFormat(
    source_format=SOURCE_FORMAT,
    reference=REFERENCE,
    check_keys=_check_is_bridgetower,
    infer_layout=infer_layout,
    check_hyper_parameters=check_hyper_parameters,
    towerzoo_config=towerzoo_config,
    keys=BRIDGETOWER_KEYS,
    reference_outputs=reference_outputs,
)


@dataclass
class Conversion:
    """Everything `run` computes before writing (exposed for tests and notebooks)."""

    checkpoint: OriginalCheckpoint
    hyper_parameters: dict | None  # the checkpoint's run config with `config_overrides` applied
    layout: OriginalLayout
    config: BridgeTowerConfig
    converted: ConvertedStateDict
    model: torch.nn.Module
    diffs: dict[str, float]


def convert(
    input_path: Path,
    config_overrides: dict | None = None,
    rank_head: str = "fold",
    source: str | None = None,
    original: OriginalFormat = BRIDGETOWER,
) -> Conversion:
    """Read, check, rename, build and verify (no writing)."""
    checkpoint = read_checkpoint(Path(input_path), original.check_keys)
    hyper_parameters = checkpoint.hyper_parameters
    if config_overrides:
        hyper_parameters = {**(hyper_parameters or {}), **config_overrides}
    layout = original.infer_layout(checkpoint.state_dict)
    if hyper_parameters is not None:
        original.check_hyper_parameters(layout, hyper_parameters)
    config = original.towerzoo_config(layout, hyper_parameters, checkpoint.state_dict)
    converted = convert_state_dict(checkpoint.state_dict, layout, rank_head, original.keys)
    model = build_model(config, converted.state_dict, source=source or str(input_path))
    folded = "rank" in layout.heads and rank_head == "fold"
    diffs = verify_against_original(
        model, checkpoint.state_dict, layout, folded_rank=folded, reference=original.reference_outputs
    )
    return Conversion(checkpoint, hyper_parameters, layout, config, converted, model, diffs)


def assumptions(conversion: "Conversion") -> list[str]:
    """What the checkpoint does not record and the converter had to assume (the check cannot catch these: the
    reference forward pass takes the same values)."""
    config, recorded = conversion.model.config, conversion.hyper_parameters or {}
    notes = [
        f"text-tower attention heads = width/64 = {config.text_config.num_attention_heads} (never recorded; "
        "RoBERTa base and large use 64-wide heads)"
    ]
    if "num_heads" not in recorded:
        notes.append(
            f"cross-modal attention heads = hidden/64 = {config.num_attention_heads} (no hyper_parameters['config']"
            "['num_heads']; BridgeTower and ManagerTower base and large use 64-wide heads); override with "
            "config_overrides={'num_heads': N}"
        )
    return notes


def run(
    input_path: Path,
    output_dir: Path,
    tokenizer: Path | None = None,
    overwrite: bool = False,
    tolerance: float = 1e-4,
    config_overrides: dict | None = None,
    rank_head: str = "fold",
    max_shard_size: str = "5GB",
    labels: Path | None = None,
    original: OriginalFormat = BRIDGETOWER,
) -> Path:
    """Convert an original BridgeTower Lightning checkpoint, verify it against the original forward pass, and write
    the Hub folder. `config_overrides` replaces entries of `hyper_parameters["config"]` (or supplies them when the
    file has none); `rank_head` decides what happens to an IRTR `rank_output` ("fold" or "drop"); `original` is the
    checkpoint family (ManagerTower's converter passes its own)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise ConversionError(f"{output_dir.resolve()} already exists; pass --overwrite to replace it.")
    conversion = convert(input_path, config_overrides=config_overrides, rank_head=rank_head, original=original)
    check_tolerance(conversion.diffs, tolerance, reference=original.reference)
    verification = verification_record(
        original.source_format, input_path, conversion.diffs, conversion.converted.dropped, original.reference
    )
    verification["irtr_rank_head"] = rank_head if "rank" in conversion.layout.heads else None
    verification["assumptions"] = assumptions(conversion)
    max_text_len = int((conversion.hyper_parameters or {}).get("max_text_len", 50))
    return save_bridgetower(
        conversion.model,
        output_dir,
        tokenizer=tokenizer,
        verification=verification,
        overwrite=overwrite,
        max_text_length=max_text_len,
        max_shard_size=max_shard_size,
        labels=labels,
    )
