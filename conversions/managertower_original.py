"""`towerzoo convert managertower-original`: an original LooperXX/ManagerTower PyTorch Lightning `.ckpt` → a towerzoo
Hub folder.

ManagerTower is BridgeTower with managers instead of bridges, and its checkpoints are BridgeTower's in every other
respect (Lightning + sacred files, RoBERTa and CLIP towers, the same cross-modal layers, poolers and heads), so this
converter is `bridgetower_original`'s pipeline with ManagerTower's steps plugged in (`MANAGERTOWER`):
- recognising the checkpoint (managers, no link towers);
- the managers' layout from the tensors — how many top layers of each tower they manage (the per-expert
  LayerNorms of the first manager), SAUE or AAUE (a `linear_controller` in the layers after the first), scalar or
  vector weights (the last dimension of the scores) — checked against `hyper_parameters["config"]` when present;
- the key table (`managertower_keys`) and the reference forward pass (`managertower_original_reference`).

The converted config follows the original: cross-modal `layer_norm_eps=1e-12`, managers' LayerNorms 1e-5, ITC on the
uni-modal towers, the adaptive managers' attention over the other modality without a padding mask
(`manager_mask_query_padding=False`), and one ViT `ln_post` for every managed block (the original never reads the
`ln_separate` norms of vit_layernorm_shared=False runs; they are dropped).
"""

import dataclasses
import re
from pathlib import Path

from towerzoo.conversions import bridgetower_original
from towerzoo.conversions.bridgetower_original import (
    Conversion,
    OriginalFormat,
    OriginalLayout,
    _indices,
    check_original_towers,
    hyper_parameter_problems,
    raise_hyper_parameter_problems,
)
from towerzoo.conversions.common import ConversionError
from towerzoo.conversions.managertower_keys import MANAGERTOWER_KEYS
from towerzoo.conversions.managertower_original_reference import ITC_PREFIX, reference_outputs
from towerzoo.models.managertower import ManagerTowerConfig

SOURCE_FORMAT = "managertower-original"
REFERENCE = "the original ManagerTower forward pass (towerzoo.conversions.managertower_original_reference)"

_MANAGER = "cross_modal_{side}_manager_tower"
_BRIDGE_KEYS = ("cross_modal_text_link_tower.", "cross_modal_image_link_tower.", "cross_modal_text_layernorm.")


def _check_is_managertower(path: Path, state_dict: dict) -> None:
    keys = list(state_dict)
    bridges = [k for k in keys if k.startswith(_BRIDGE_KEYS)]
    if bridges:
        raise ConversionError(
            f"{path} looks like an original BridgeTower checkpoint (it has bridge keys such as {bridges[0]}); "
            "`managertower-original` converts ManagerTower checkpoints only. Convert it with "
            "`towerzoo convert bridgetower-original` instead."
        )
    check_original_towers(path, state_dict, "ManagerTower")
    if not any(k.startswith(_MANAGER.format(side="text") + ".") for k in keys):
        raise ConversionError(
            f"{path} has the towers but no ManagerTower managers (`cross_modal_text_manager_tower.*`): it is neither "
            "a ManagerTower nor a BridgeTower checkpoint (a METER-style model without bridges is not supported)."
        )


# ====================================================================================================================
# Layout: BridgeTower's, plus the managers
# ====================================================================================================================


@dataclasses.dataclass
class ManagerTowerLayout(OriginalLayout):
    """The original architecture, read from tensor shapes, with the managers' layout."""

    managed_layers_text: int = 0
    managed_layers_image: int = 0
    manager_type: str | None = None  # None when there is one cross-modal layer (both types are the same there)
    manager_weight_type: str = "vector"


def _manager(side: str, index: int) -> str:
    return f"{_MANAGER.format(side=side)}.{index}.manager_layer."


def _score_widths(sd: dict) -> set[int]:
    """The last dimensions of every manager's scores: 1 for scalar weights, hidden_size for vector weights."""
    pattern = re.compile(r"_manager_tower\.\d+\.manager_layer\.layer_scores(_cross)?$")
    return {tensor.shape[-1] for key, tensor in sd.items() if pattern.search(key)}


def _manager_problems(sd: dict, layout: OriginalLayout) -> list[str]:
    """What towerzoo's ManagerTower cannot express: a manager per cross-modal layer and modality, each managing the same
    top layers (plus the previous output after the first), a static first manager, one type and one weight type."""
    problems = []
    adaptive = set()
    for side, tower_layers in (("text", layout.text_layers), ("image", layout.vision_layers)):
        managers = _indices(sd, _MANAGER.format(side=side))
        if managers != list(range(layout.num_layers)):
            problems.append(
                f"its {side} managers are numbered {managers} for {layout.num_layers} cross-modal layers (one each)"
            )
            continue
        experts = [len(_indices(sd, f"{_manager(side, i)}LayerNorm")) for i in managers]
        if not 1 <= experts[0] <= tower_layers or experts[1:] != [experts[0] + 1] * (len(experts) - 1):
            problems.append(
                f"its {side} managers normalise {experts} layers; towerzoo needs the same k top layers (1 ≤ k ≤ "
                f"{tower_layers}) in every manager, plus the previous cross-modal output after the first"
            )
        if f"{_manager(side, 0)}linear_controller.weight" in sd:
            problems.append(f"its first {side} manager is adaptive (AAUE); the original's first manager is SAUE")
        adaptive |= {f"{_manager(side, i)}linear_controller.weight" in sd for i in managers[1:]}
    if len(adaptive) > 1:
        problems.append("it mixes static (SAUE) and adaptive (AAUE) managers after the first cross-modal layer")
    widths = _score_widths(sd)
    if not widths <= {1, layout.hidden_size} or len(widths) != 1:
        problems.append(
            f"its manager scores end in widths {sorted(widths)}; one of 1 (scalar) or hidden_size "
            f"{layout.hidden_size} (vector) is expected"
        )
    return problems


def infer_layout(state_dict: dict) -> ManagerTowerLayout:
    """BridgeTower's layout (towers, cross-modal layers, heads) with ManagerTower's checks, plus the managers'."""
    layout = bridgetower_original.infer_layout(
        state_dict, model="ManagerTower", itc_prefix=ITC_PREFIX, model_problems=_manager_problems
    )
    later = f"{_manager('text', 1)}linear_controller.weight"
    return ManagerTowerLayout(
        **vars(layout),
        managed_layers_text=len(_indices(state_dict, f"{_manager('text', 0)}LayerNorm")),
        managed_layers_image=len(_indices(state_dict, f"{_manager('image', 0)}LayerNorm")),
        manager_type=("AAUE" if later in state_dict else "SAUE") if layout.num_layers > 1 else None,
        manager_weight_type="scalar" if _score_widths(state_dict) == {1} else "vector",
    )


def check_hyper_parameters(layout: ManagerTowerLayout, config: dict) -> None:
    """BridgeTower's checks of the run config against the tensors (model_type 'MT'), plus the managers'."""
    contradictions, unsupported = hyper_parameter_problems(layout, config, "MT")
    found = {
        "manager_type": (
            layout.manager_type,
            "the managers after the first "
            + ("have" if layout.manager_type == "AAUE" else "have no")
            + " linear_controller / fusion_attention",
        ),
        "managed_layers_text": (layout.managed_layers_text, "the text managers normalise that many top layers"),
        "managed_layers_image": (layout.managed_layers_image, "the image managers normalise that many top ViT blocks"),
        "manager_weight_type": (
            layout.manager_weight_type,
            f"the managers' scores end in width {1 if layout.manager_weight_type == 'scalar' else layout.hidden_size}",
        ),
    }
    for name, (value, why) in found.items():
        if name in config and value is not None and config[name] != value:
            contradictions.append(f"{name}={config[name]!r} but the checkpoint says {value!r} ({why})")
    raise_hyper_parameter_problems(contradictions, unsupported)


def towerzoo_config(layout: ManagerTowerLayout, config: dict | None, state_dict: dict) -> ManagerTowerConfig:
    """BridgeTower's config fields (original eps values, original ITC layout) with the managers'."""
    config = config or {}
    return bridgetower_original.towerzoo_config(
        # every managed ViT block goes through ln_post; the separate norms (if any) are dropped as never read
        dataclasses.replace(layout, vit_layernorm_shared=True),
        config,
        state_dict,
        config_class=ManagerTowerConfig,
        manager_type=layout.manager_type or config.get("manager_type", "AAUE"),
        managed_layers_text=layout.managed_layers_text,
        managed_layers_image=layout.managed_layers_image,
        manager_weight_type=layout.manager_weight_type,
        manager_temperature=float(config.get("manager_softmax_temperature", 1.0)),
        manager_layer_norm_eps=1e-5,  # heads.SAUE / AAUE: nn.LayerNorm defaults
        manager_mask_query_padding=False,  # AAUE's fusion_attention has no padding mask
    )


MANAGERTOWER = OriginalFormat(
    source_format=SOURCE_FORMAT,
    reference=REFERENCE,
    check_keys=_check_is_managertower,
    infer_layout=infer_layout,
    check_hyper_parameters=check_hyper_parameters,
    towerzoo_config=towerzoo_config,
    keys=MANAGERTOWER_KEYS,
    reference_outputs=reference_outputs,
)


def convert(input_path: Path, **options) -> Conversion:
    """Read, check, rename, build and verify (no writing); `options` as `bridgetower_original.convert`'s."""
    return bridgetower_original.convert(input_path, original=MANAGERTOWER, **options)


def run(input_path: Path, output_dir: Path, **options) -> Path:
    """Convert an original ManagerTower Lightning checkpoint, verify it against the original forward pass, and write
    the Hub folder. Options as `bridgetower_original.run`'s: tokenizer, overwrite, tolerance, config_overrides,
    rank_head ("fold" an IRTR rank_output into itm_score, or "drop" it), max_shard_size, labels."""
    return bridgetower_original.run(input_path, output_dir, original=MANAGERTOWER, **options)
