"""`towerzoo convert llava-ov-manager-original CKPT_DIR OUT [--tokenizer DIR]`: a released LLaVA-OV-Manager folder
(the authors' LLaVA-NeXT fork, LooperXX/LLaVA-OV-Manager: `model_type` "llava_qwen_manager", one `model.safetensors`
and a LLaVA-NeXT `config.json`) → a towerzoo LLaVA-OV-Manager Hub folder.

What the released folders hold (`LlavaQwenManagerForCausalLM`): Qwen2 at the top level (`model.embed_tokens`,
`model.layers.*`, `model.norm`, `lm_head`, absent when tied), the SigLIP tower as `model.vision_tower.vision_tower.
vision_model.*` (so400m with its last layer deleted: 26 layers; `post_layernorm` kept but never run; the pooling
`head` replaced by Identity), the projector `model.mm_projector.{0,2}` (Linear, GELU, Linear), `model.image_newline`
(only with an "unpad" `mm_patch_merge_type`), `model.manager_layer_embedding` (U, D) and the static managers
`model.manager.{i}.layer_scores` (1, U, 1, D), i the position in the injection list (U - 1 for LLM layer 0).
The config records the Qwen2 fields, `mm_*` fields and the managers' ranges (`mm_manager_vision_select_layers_{start,
interval,end}`, `mm_manager_injection_{start,interval,end}`, and the lists built from them,
`mm_manager_select_layer_index_list` / `mm_manager_index_list`). The SigLIP hyper-parameters are not recorded: the
fork loads them from `mm_vision_tower`, so they are read from that folder when it exists locally, otherwise taken
from the known so400m tower; everything else comes from the tensor shapes.

Every key goes through `KEY_TABLE` (fork name → towerzoo name) or `DROPPED` (with the reason); anything else is an
error, and the model is loaded strictly. Adaptive manager types, the "grid" manager grid and layouts other than
"square" / "anyres_max_N" are refused (not implemented; the released models are static).

Verification (`verification.json`): the converted model against `reference_forward`, a functional restatement of the
fork's forward pass on the original tensors (SigLIP → projector → + layer embedding → Σ scores ⊙ experts added to the
image tokens before each manager layer of Qwen2), on random inputs: every manager's contribution, the final-norm
states at every position and the logits of the last positions, for square-layout prompts (two prompts, one image
each, the fork's 729-token layout) and, for AnyRes checkpoints, for a wide image packed by the fork's rules.

Where the fork and transformers' LLaVA-OneVision (which the converted model runs) differ — stated, not papered over:
1. Unpadding of AnyRes features rounds with `int(x)` in the fork and `int(round(x, 7))` in transformers: the two
   differ by one row/column of tokens when x lands a hair below an integer.
2. Multi-image prompts: the fork gives each image one view of 729 tokens and no newline (its manager code asserts
   729 per image); transformers appends one `image_newline` per image (730 tokens).
3. Square ("nogrid") checkpoints: the fork encodes a plain 384×384 resize as 729 tokens, no newline (and has no
   `image_newline` tensor: the converter adds a zero one). transformers cannot express that layout: the converter
   writes `image_grid_pinpoints=[[S, S]]` (S the tower's image size) so a single image becomes the base view (the same
   plain resize, the fork's 729 tokens) followed by one letterboxed tile, unpadded, with a newline per row; those
   extra tokens are not in the fork's sequence and change the context of every later token. The exact fork layout
   is reached by passing precomputed image features (`mm_encoder_outputs={"image": square_image_outputs(...)}`) with
   729 `<image>` tokens per image, as the verification does. (Several images in one prompt get one view each from
   transformers' processor, but padded to a square before the resize, and with the newline of 2.)
4. The fork ignores `mm_vision_select_layer` (-2): its tower returns the last hidden state of the 26-layer tower (=
   hidden state -2 of the full SigLIP). The converted tower has those 26 layers, `vision_feature_layer=-1`, "full".
5. The fork splices image features at one placeholder id (-200) per image; transformers expands `<image>` to one token
   per feature. The converted `image_token_index` is the tokenizer's `<image>` (added after the vocabulary if it has
   none) or, without `--tokenizer`, 151646 (the first id after Qwen2's 151646 tokens: transformers' LLaVA-OneVision
   id).
6. The fork lists `image_grid_pinpoints` as (width, height), transformers as (height, width): they are transposed.
7. The fork forces `rope_scaling=None`; any `rope_scaling` in config.json is ignored.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from towerzoo.conversions.bridgetower_folder import check_tolerance, verification_record
from towerzoo.conversions.common import ConversionError, load_state_dict_file, load_strict, read_json
from towerzoo.conversions.hub_folder import write_hub_folder
from towerzoo.models.llava_ov_manager import (
    AUTO_CLASSES,
    LlavaOnevisionManagerConfig,
    LlavaOnevisionManagerForConditionalGeneration,
)

SOURCE_FORMAT = "llava-ov-manager-original"
ORIGINAL_MODEL_TYPE = "llava_qwen_manager"
REFERENCE = "the fork's forward pass (towerzoo.conversions.llava_ov_manager_original.reference_forward)"
VISION = "model.vision_tower.vision_tower.vision_model."
IMAGE_TOKEN_INDEX = 151646  # transformers' LLaVA-OneVision <image>: right after Qwen2's 151646 tokens
VIDEO_TOKEN_INDEX = 151647
LOGITS_KEPT = 4  # positions whose logits the verification compares (all positions' final states are compared)
# SigLIP towers the fork names in `mm_vision_tower` (a Hub id or a local copy of it), by folder name: the attention
# heads, which the weights cannot carry (hidden_act and layer_norm_eps are SigLIP's: gelu_pytorch_tanh, 1e-6)
KNOWN_TOWERS = {"siglip-so400m-patch14-384": {"hidden_size": 1152, "num_attention_heads": 16}}
SIGLIP_DEFAULTS = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}

# --------------------------------------------------------------------------------------------------------------------
# The key table
# --------------------------------------------------------------------------------------------------------------------

Rename = str | Callable[[re.Match, "ReleasedLayout"], str]


def _manager_key(match: re.Match, layout: "ReleasedLayout") -> str:
    """`model.manager.{i}` is the i-th entry of the injection list (`infer_layout` checked that there are as many);
    towerzoo names managers by their LLM layer."""
    return f"model.managers.{layout.llm_layers[int(match[1])]}.scores"


# fork (LLaVA-NeXT) name → towerzoo (transformers 5.x LLaVA-OneVision) name; sub-keys of the SigLIP and Qwen2 layers
# are the same on both sides
KEY_TABLE: list[tuple[str, Rename]] = [
    (rf"^{re.escape(VISION)}embeddings\.(patch_embedding|position_embedding)\.", r"model.vision_tower.embeddings.\1."),
    (rf"^{re.escape(VISION)}encoder\.layers\.(\d+)\.", r"model.vision_tower.encoder.layers.\1."),
    # never run by the fork nor by the converted model (both read the encoder's hidden states), kept for strictness
    (rf"^{re.escape(VISION)}post_layernorm\.", "model.vision_tower.post_layernorm."),
    (r"^model\.mm_projector\.0\.", "model.multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "model.multi_modal_projector.linear_2."),
    (r"^model\.image_newline$", "model.image_newline"),
    (r"^model\.manager_layer_embedding$", "model.manager_layer_embedding"),
    (r"^model\.manager\.(\d+)\.layer_scores$", _manager_key),
    (r"^model\.embed_tokens\.", "model.language_model.embed_tokens."),
    (r"^model\.layers\.(\d+)\.", r"model.language_model.layers.\1."),
    (r"^model\.norm\.", "model.language_model.norm."),
    (r"^lm_head\.weight$", "lm_head.weight"),
]

# fork keys with no towerzoo counterpart, and why they are safe to drop
DROPPED: list[tuple[str, str]] = [
    (
        rf"^{re.escape(VISION)}head\.",
        "SigLIP's attention-pooling head: the fork replaces it by nn.Identity and never runs it (the converted tower "
        "has vision_use_head=False)",
    ),
    (r"\.position_ids$", "a constant buffer (0 … N-1), rebuilt at load"),
    (r"\.rotary_emb\.inv_freq$", "RoPE's constant inverse frequencies, recomputed from rope_theta"),
]
TIED_LM_HEAD = "equal to model.embed_tokens.weight with tie_word_embeddings=True: the converted model ties them"


# --------------------------------------------------------------------------------------------------------------------
# Reading the released folder
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ReleasedLayout:
    """What a released folder says about its model (from config.json and the tensor shapes)."""

    text: dict  # Qwen2Config fields
    vision: dict  # SiglipVisionConfig fields
    vision_layers: list[int]  # SigLIP hidden-state indices the managers aggregate
    llm_layers: list[int]  # LLM layers a manager runs before, in the order of `model.manager.{i}`
    grid: str  # "all" or "main"
    aspect_ratio: str  # "square" or "anyres_max_N"
    pinpoints: list[list[int]] | None  # the fork's (width, height) list
    tied: bool
    notes: list[str] = field(default_factory=list)  # what had to be assumed

    @property
    def anyres(self) -> bool:
        return self.aspect_ratio != "square"

    @property
    def max_patches(self) -> int:
        return int(self.aspect_ratio.removeprefix("anyres_max_")) if self.anyres else 1


def read_released_config(folder: Path) -> dict:
    """config.json of a released folder, refused early (before the weights are read) when it is not one towerzoo
    converts."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConversionError(
            f"{folder} has no config.json; pass a released LLaVA-OV-Manager folder (config.json + model.safetensors)."
        )
    config = read_json(path)
    model_type = config.get("model_type")
    if model_type != ORIGINAL_MODEL_TYPE:
        raise ConversionError(
            f"config.json has model_type={model_type!r}, not {ORIGINAL_MODEL_TYPE!r}: `{SOURCE_FORMAT}` converts the "
            "released LLaVA-OV-Manager folders (transformers LLaVA-OneVision folders: `llava-ov-manager-from-llava-ov`)."
        )
    manager_type = config.get("mm_manager_type")
    if not manager_type or "static" not in manager_type:
        raise ConversionError(
            f"mm_manager_type={manager_type!r} is not implemented in towerzoo: only the static managers of the "
            "released models ('static_zerouni') are; the adaptive ones generate their scores from the LLM's states."
        )
    if config.get("mm_manager_residual") is not True:
        raise ConversionError("mm_manager_residual must be true (the fork's zero-init managers require it).")
    if config.get("mm_manager_grid_type", "all") not in ("all", "main"):
        raise ConversionError(
            f"mm_manager_grid_type={config.get('mm_manager_grid_type')!r} is not implemented (only 'all' and 'main')."
        )
    if config.get("mm_projector_type") != "mlp2x_gelu":
        raise ConversionError(
            f"mm_projector_type={config.get('mm_projector_type')!r}: only 'mlp2x_gelu' is supported."
        )
    aspect, merge = config.get("image_aspect_ratio", "square"), config.get("mm_patch_merge_type", "flat")
    if not (aspect == "square" or (re.fullmatch(r"anyres_max_\d+", str(aspect)) and merge == "spatial_unpad")):
        raise ConversionError(
            f"image_aspect_ratio={aspect!r} with mm_patch_merge_type={merge!r} is not supported: only the released "
            "layouts, 'square' and 'anyres_max_N' with 'spatial_unpad'."
        )
    return config


def read_released_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's safetensors (single or sharded); nothing else is read."""
    folder = Path(folder)
    if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        raise ConversionError(
            f"{folder} holds no model.safetensors (or model.safetensors.index.json): only safetensors are read."
        )
    return load_state_dict_file(folder)


def _layer_count(state_dict: dict, prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    indices = {int(m[1]) for key in state_dict if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _require(state_dict: dict, key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ConversionError(f"the checkpoint has no {key}: it is incomplete or not a LLaVA-OV-Manager checkpoint.")
    return state_dict[key]


def _ranges(config: dict, name: str, default_end: int | None = None) -> list[int]:
    values = [config.get(f"mm_manager_{name}_{part}") for part in ("start", "interval", "end")]
    start, interval, end = (v if isinstance(v, int) else -1 for v in values)
    if start < 0 or interval < 1 or end < 1:
        raise ConversionError(f"config.json has no usable mm_manager_{name}_{{start,interval,end}}.")
    return list(range(start, end if default_end is None else min(end, default_end), interval))


def vision_settings(config: dict, state_dict: dict) -> tuple[dict, list[str]]:
    """SiglipVisionConfig fields: the sizes from the tensors, the heads (and act/eps) from `mm_vision_tower`."""
    patch = _require(state_dict, f"{VISION}embeddings.patch_embedding.weight")
    positions = _require(state_dict, f"{VISION}embeddings.position_embedding.weight").shape[0]
    side = math.isqrt(positions)
    if side * side != positions:
        raise ConversionError(f"the SigLIP tower has {positions} position embeddings, not a square grid.")
    layers = _layer_count(state_dict, f"{VISION}encoder.layers.")
    vision = {
        "hidden_size": patch.shape[0],
        "num_channels": patch.shape[1],
        "patch_size": patch.shape[-1],
        "image_size": side * patch.shape[-1],
        "num_hidden_layers": layers,
        "intermediate_size": _require(state_dict, f"{VISION}encoder.layers.0.mlp.fc1.weight").shape[0],
    }
    if config.get("mm_hidden_size", vision["hidden_size"]) != vision["hidden_size"]:
        raise ConversionError(
            f"mm_hidden_size={config['mm_hidden_size']} but the tower is {vision['hidden_size']} wide."
        )
    tower = str(config.get("mm_vision_tower", ""))
    local = Path(tower).expanduser() / "config.json"
    if tower and local.is_file():
        recorded = read_json(local)
        recorded = recorded.get("vision_config", recorded)
        heads = recorded.get("num_attention_heads")
        if not heads:
            raise ConversionError(f"{local} records no num_attention_heads for the SigLIP tower.")
        source = f"from {local}"
        vision.update({k: recorded.get(k, v) for k, v in SIGLIP_DEFAULTS.items()})
    else:
        known = KNOWN_TOWERS.get(Path(tower.rstrip("/")).name)
        if known is None or known["hidden_size"] != vision["hidden_size"]:
            raise ConversionError(
                f"cannot tell the SigLIP tower's attention heads: mm_vision_tower={tower!r} is neither a local folder "
                f"with a config.json nor one of {sorted(KNOWN_TOWERS)} (of its width); point mm_vision_tower at a "
                "local copy of the tower."
            )
        heads, source = known["num_attention_heads"], f"as {Path(tower).name} has (no local copy of it)"
        vision.update(SIGLIP_DEFAULTS)
    notes = [f"SigLIP attention heads = {heads}, {source}"]
    if vision["hidden_size"] % heads:
        raise ConversionError(f"{heads} attention heads do not divide the tower's width {vision['hidden_size']}.")
    return {**vision, "num_attention_heads": heads}, notes


QWEN2_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "tie_word_embeddings",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
)


def text_settings(config: dict, state_dict: dict) -> dict:
    """Qwen2Config fields from config.json (the fork forces rope_scaling=None), checked against the tensors."""
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if k not in config]
    if missing:
        raise ConversionError(f"config.json lacks the Qwen2 fields {missing}.")
    text = {k: config[k] for k in QWEN2_FIELDS if k in config}
    embeddings = _require(state_dict, "model.embed_tokens.weight")
    if tuple(embeddings.shape) != (text["vocab_size"], text["hidden_size"]):
        raise ConversionError(
            f"model.embed_tokens.weight is {tuple(embeddings.shape)}, config.json says vocab_size="
            f"{text['vocab_size']}, hidden_size={text['hidden_size']}."
        )
    layers = _layer_count(state_dict, "model.layers.")
    if layers != text["num_hidden_layers"]:
        raise ConversionError(
            f"the checkpoint has {layers} LLM layers, config.json num_hidden_layers={text['num_hidden_layers']}."
        )
    return text


def manager_settings(config: dict, state_dict: dict, hidden: int, vision_depth: int, llm_depth: int) -> dict:
    """The managed vision layers and the managers' LLM layers, checked against the tensors."""
    vision_layers = config.get("mm_manager_select_layer_index_list") or _ranges(config, "vision_select_layers")
    llm_layers = config.get("mm_manager_index_list") or _ranges(config, "injection", default_end=llm_depth)
    vision_layers, llm_layers = [int(i) for i in vision_layers], [int(i) for i in llm_layers]
    if not all(0 <= i <= vision_depth for i in vision_layers) or not all(0 <= i < llm_depth for i in llm_layers):
        raise ConversionError(
            f"manager layers {vision_layers} (vision, of {vision_depth}) / {llm_layers} (LLM, of {llm_depth}) are out "
            "of range."
        )
    embedding = _require(state_dict, "model.manager_layer_embedding")
    if tuple(embedding.shape) != (len(vision_layers), hidden):
        raise ConversionError(
            f"model.manager_layer_embedding is {tuple(embedding.shape)}, not ({len(vision_layers)}, {hidden}) for the "
            f"managed vision layers {vision_layers}."
        )
    count = _layer_count(state_dict, "model.manager.")
    if count != len(llm_layers):
        raise ConversionError(f"the checkpoint has {count} managers, mm_manager_index_list {llm_layers}.")
    for position, layer in enumerate(llm_layers):
        scores = _require(state_dict, f"model.manager.{position}.layer_scores")
        experts = len(vision_layers) - (layer == 0)  # the fork's manager before layer 0 drops the last expert
        if tuple(scores.shape) != (1, experts, 1, hidden):
            raise ConversionError(
                f"model.manager.{position}.layer_scores is {tuple(scores.shape)}, not (1, {experts}, 1, {hidden}) "
                f"for a static manager before LLM layer {layer}."
            )
    return {"vision_layers": vision_layers, "llm_layers": llm_layers}


def infer_layout(config: dict, state_dict: dict) -> ReleasedLayout:
    """The released model's layout from its config.json and tensors."""
    vision, notes = vision_settings(config, state_dict)
    text = text_settings(config, state_dict)
    managers = manager_settings(
        config, state_dict, text["hidden_size"], vision["num_hidden_layers"], text["num_hidden_layers"]
    )
    aspect = config.get("image_aspect_ratio", "square")
    pinpoints = config.get("image_grid_pinpoints") if aspect != "square" else None
    if aspect != "square" and not (
        isinstance(pinpoints, list) and all(isinstance(p, list) and len(p) == 2 for p in pinpoints)
    ):
        raise ConversionError(f"image_grid_pinpoints={pinpoints!r} is not a list of [width, height] pairs.")
    tied = bool(config.get("tie_word_embeddings", False))
    if not tied and "lm_head.weight" not in state_dict:
        raise ConversionError("the checkpoint has no lm_head.weight and config.json does not tie the embeddings.")
    notes.append(
        f"mm_vision_select_layer={config.get('mm_vision_select_layer')} is not read by the fork's SigLIP tower: "
        "the main features are its last hidden state (vision_feature_layer=-1 on the 26-layer tower)"
    )
    return ReleasedLayout(
        text=text,
        vision=vision,
        grid=config.get("mm_manager_grid_type", "all"),
        aspect_ratio=aspect,
        pinpoints=pinpoints,
        tied=tied,
        notes=notes,
        **managers,
    )


# --------------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------------


def rename_keys(state_dict: dict, layout: ReleasedLayout) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Fork keys → towerzoo keys through `KEY_TABLE`; returns (renamed, {dropped key: reason})."""
    renamed, dropped, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        reason = next((why for pattern, why in DROPPED if re.search(pattern, key)), None)
        if key == "lm_head.weight" and layout.tied:
            if not torch.equal(tensor, state_dict["model.embed_tokens.weight"]):
                raise ConversionError(
                    "config.json ties the word embeddings but lm_head.weight differs from model.embed_tokens.weight."
                )
            reason = TIED_LM_HEAD
        if reason is not None:
            dropped[key] = reason
            continue
        for pattern, replacement in KEY_TABLE:
            match = re.match(pattern, key)
            if match:
                new = replacement(match, layout) if callable(replacement) else match.expand(replacement)
                renamed[new + key[match.end() :]] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:8])
        raise ConversionError(
            f"{len(unknown)} key(s) are not part of the released LLaVA-OV-Manager layout: {shown}"
            f"{' …' if len(unknown) > 8 else ''}."
        )
    return renamed, dropped


def towerzoo_config(
    layout: ReleasedLayout, image_token_index: int, video_token_index: int
) -> LlavaOnevisionManagerConfig:
    """`LlavaOnevisionManagerConfig` for the released layout."""
    size = layout.vision["image_size"]
    # transformers lists (height, width); a square checkpoint gets the 1×1 grid (see the module docstring, 3.)
    pinpoints = [[h, w] for w, h in layout.pinpoints] if layout.anyres else [[size, size]]
    try:
        return LlavaOnevisionManagerConfig(
            text_config={"model_type": "qwen2", **layout.text},
            vision_config={"model_type": "siglip_vision_model", **layout.vision, "vision_use_head": False},
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            image_grid_pinpoints=pinpoints,
            vision_aspect_ratio=layout.aspect_ratio if layout.anyres else "anyres_max_9",
            image_token_index=image_token_index,
            video_token_index=video_token_index,
            projector_hidden_act="gelu",
            multimodal_projector_bias=True,
            tie_word_embeddings=layout.tied,
            manager_type="static",
            manager_vision_layers=layout.vision_layers,
            manager_llm_layers=layout.llm_layers,
            manager_first_drops_last=True,
            manager_grid=layout.grid,
        )
    except ValueError as error:
        raise ConversionError(str(error)) from None


def build_model(
    config: LlavaOnevisionManagerConfig, renamed: dict, source: str
) -> tuple[LlavaOnevisionManagerForConditionalGeneration, dict[str, str]]:
    """The towerzoo model loaded strictly (float32); returns it and `{new parameter: value}`."""
    renamed, new = dict(renamed), {}
    if "model.image_newline" not in renamed:
        renamed["model.image_newline"] = torch.zeros(config.text_config.hidden_size)
        new["model.image_newline"] = (
            "zeros: a square ('flat') checkpoint has none, the fork never inserts a newline; transformers' packing "
            "appends it (see the module docstring, 3.)"
        )
    if config.tie_word_embeddings and "model.language_model.embed_tokens.weight" in renamed:
        renamed["lm_head.weight"] = renamed["model.language_model.embed_tokens.weight"]
    model = LlavaOnevisionManagerForConditionalGeneration(config)
    load_strict(model, renamed, source)
    return model.eval(), new


# --------------------------------------------------------------------------------------------------------------------
# The fork's forward pass, restated on the original tensors (no towerzoo or transformers modules)
# --------------------------------------------------------------------------------------------------------------------


def _linear(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    bias = sd.get(f"{prefix}bias")
    return F.linear(x, sd[f"{prefix}weight"].float(), None if bias is None else bias.float())


def _layer_norm(x: torch.Tensor, sd: dict, prefix: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}weight"].float(), sd[f"{prefix}bias"].float(), eps)


def _attention(q, k, v, heads: int, kv_heads: int, causal: bool, rope: tuple | None = None) -> torch.Tensor:
    """Multi-head (grouped-query) attention of (batch, tokens, width) projections; softmax in float32."""
    batch, tokens, _ = q.shape
    q, k, v = (t.view(batch, tokens, n, -1).transpose(1, 2) for t, n in ((q, heads), (k, kv_heads), (v, kv_heads)))
    if rope is not None:
        cos, sin = rope
        half = q.shape[-1] // 2
        rotate = lambda t: torch.cat((-t[..., half:], t[..., :half]), dim=-1)  # noqa: E731
        q, k = q * cos + rotate(q) * sin, k * cos + rotate(k) * sin
    k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(torch.ones(tokens, tokens, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, -1)


def reference_siglip(sd: dict, pixel_values: torch.Tensor, vision: dict) -> list[torch.Tensor]:
    """`SigLipVisionModel(..., output_hidden_states=True).hidden_states` of the fork's (26-layer) tower."""
    weight = sd[f"{VISION}embeddings.patch_embedding.weight"].float()
    bias = sd[f"{VISION}embeddings.patch_embedding.bias"].float()
    x = F.conv2d(pixel_values.float(), weight, bias, stride=weight.shape[-1]).flatten(2).transpose(1, 2)
    x = x + sd[f"{VISION}embeddings.position_embedding.weight"].float()
    eps, heads, states = vision["layer_norm_eps"], vision["num_attention_heads"], [x]
    for i in range(vision["num_hidden_layers"]):
        p = f"{VISION}encoder.layers.{i}."
        h = _layer_norm(x, sd, f"{p}layer_norm1.", eps)
        qkv = [_linear(h, sd, f"{p}self_attn.{name}_proj.") for name in "qkv"]
        x = x + _linear(_attention(*qkv, heads, heads, causal=False), sd, f"{p}self_attn.out_proj.")
        h = F.gelu(_linear(_layer_norm(x, sd, f"{p}layer_norm2.", eps), sd, f"{p}mlp.fc1."), approximate="tanh")
        x = x + _linear(h, sd, f"{p}mlp.fc2.")
        states.append(x)
    return states


def reference_projector(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """`mlp2x_gelu`: Linear, nn.GELU() (exact), Linear."""
    return _linear(F.gelu(_linear(x, sd, "model.mm_projector.0.")), sd, "model.mm_projector.2.")


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def reference_qwen2(
    sd: dict, text: dict, embeds: torch.Tensor, injections: dict[int, tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """The fork's Qwen2Model forward on one unpadded sequence (tokens, D) → final-norm states; before layer l,
    `injections[l] = (positions, added)` is added at those positions (the managers, `mm_manager_residual`)."""
    heads, eps = text["num_attention_heads"], text.get("rms_norm_eps", 1e-6)
    kv_heads = text.get("num_key_value_heads", heads)
    head_dim = text["hidden_size"] // heads
    inv_freq = 1.0 / (text.get("rope_theta", 10000.0) ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.arange(embeds.shape[0]).float()[:, None] * inv_freq[None]
    rope = (torch.cat((angles, angles), dim=-1).cos(), torch.cat((angles, angles), dim=-1).sin())
    x = embeds[None].float()
    for i in range(text["num_hidden_layers"]):
        if i in injections:
            positions, added = injections[i]
            x = x.clone()
            x[0, positions] += added
        p = f"model.layers.{i}."
        h = _rms_norm(x, sd[f"{p}input_layernorm.weight"], eps)
        qkv = [_linear(h, sd, f"{p}self_attn.{name}_proj.") for name in "qkv"]
        x = x + _linear(_attention(*qkv, heads, kv_heads, causal=True, rope=rope), sd, f"{p}self_attn.o_proj.")
        h = _rms_norm(x, sd[f"{p}post_attention_layernorm.weight"], eps)
        gate, up = _linear(h, sd, f"{p}mlp.gate_proj."), _linear(h, sd, f"{p}mlp.up_proj.")
        x = x + _linear(F.silu(gate) * up, sd, f"{p}mlp.down_proj.")
    return _rms_norm(x, sd["model.norm.weight"], eps)[0]


def fork_grid_shape(image_size_hw: tuple[int, int], pinpoints: list[list[int]], tile: int) -> tuple[int, int]:
    """The fork's `get_anyres_image_grid_shape` (its `select_best_resolution`, on (width, height)) → (rows, cols)."""
    height, width = image_size_hw
    best, best_effective, best_wasted = None, 0, float("inf")
    for w, h in pinpoints:
        scale = min(w / width, h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = w * h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (w, h), effective, wasted
    return best[1] // tile, best[0] // tile


def fork_unpad_grid(
    tiles: torch.Tensor, rows: int, cols: int, image_size_hw: tuple[int, int], max_patches: int, newline: torch.Tensor
) -> torch.Tensor:
    """The fork's "spatial_unpad" + "anyres_max_N" packing of one layer's tile features (rows·cols, side², D):
    unpad (rounding with `int`), shrink when over `max_patches` tiles, a newline per row → (tokens, D)."""
    side = math.isqrt(tiles.shape[1])
    x = tiles.view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
    height, width = image_size_hw
    current_height, current_width = x.shape[1:]
    if width / height > current_width / current_height:
        padding = (current_height - int(height * (current_width / width))) // 2
        x = x[:, padding : current_height - padding, :]
    else:
        padding = (current_width - int(width * (current_height / height))) // 2
        x = x[:, :, padding : current_width - padding]
    channels, h, w = x.shape
    times = math.sqrt(h * w / (max_patches * side**2))
    if times > 1.1:
        x = F.interpolate(x[None], [int(h // times), int(w // times)], mode="bilinear")[0]
    x = torch.cat((x, newline.float()[:, None, None].expand(channels, x.shape[1], 1)), dim=-1)
    return x.flatten(1, 2).transpose(0, 1)


@torch.no_grad()
def reference_forward(
    sd: dict,
    layout: ReleasedLayout,
    input_ids: torch.Tensor,
    image_token_index: int,
    images: list[torch.Tensor],
    image_sizes: list[tuple[int, int]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor]]:
    """The fork's forward pass on unpadded prompts with one image each (`images[b]`: (views, 3, S, S); the square
    layout when `image_sizes` is None, else AnyRes with those (height, width)): ({"hidden": the final-norm states,
    "logits": the last `LOGITS_KEPT` positions' logits}, {LLM layer: its manager's Σ_u s_u ⊙ E_u over the image
    tokens of all prompts, in order})."""
    hidden, contributions = [], {layer: [] for layer in layout.llm_layers}
    newline = sd.get("model.image_newline")
    for b, pixels in enumerate(images):
        states = reference_siglip(sd, pixels, layout.vision)
        main = reference_projector(sd, states[-1])  # (views, tokens, D)
        embedding = sd["model.manager_layer_embedding"].float()
        experts = [reference_projector(sd, states[u]) + embedding[i] for i, u in enumerate(layout.vision_layers)]
        if image_sizes is None:  # square: 729 tokens of the one view, no newline
            features, experts = main[0], [e[0] for e in experts]
        else:
            grid = fork_grid_shape(image_sizes[b], layout.pinpoints, layout.vision["image_size"])
            if grid[0] * grid[1] != pixels.shape[0] - 1:
                raise ConversionError(
                    f"the fork tiles a {image_sizes[b]} image {grid[0]}×{grid[1]}, the converted model's grid gives "
                    f"{pixels.shape[0] - 1} tiles: the image_grid_pinpoints disagree."
                )
            packed = [
                torch.cat((x[0], fork_unpad_grid(x[1:], *grid, image_sizes[b], layout.max_patches, newline)))
                for x in [main, *(experts if layout.grid == "all" else [])]
            ]
            features = packed[0]
            experts = packed[1:] if layout.grid == "all" else [e[0] for e in experts]
        positions = (input_ids[b] == image_token_index).nonzero().flatten()
        if len(positions) != features.shape[0]:
            raise ConversionError(
                f"the fork packs this image into {features.shape[0]} tokens, transformers into {len(positions)} (the "
                "unpadding rounds differently; see the module docstring)."
            )
        embeds = sd["model.embed_tokens.weight"][input_ids[b]].float()
        embeds[positions] = features
        injections = {}
        for position, layer in enumerate(layout.llm_layers):
            scores = sd[f"model.manager.{position}.layer_scores"].float()[0, :, 0]  # (U or U - 1, D)
            added = sum(scores[u] * experts[u] for u in range(scores.shape[0]))
            injections[layer] = (positions[: added.shape[0]], added)
            contributions[layer].append(added)
        hidden.append(reference_qwen2(sd, layout.text, embeds, injections))
    hidden = torch.stack(hidden)
    head = sd["model.embed_tokens.weight"] if layout.tied else sd["lm_head.weight"]
    outputs = {"hidden": hidden, "logits": hidden[:, -LOGITS_KEPT:] @ head.float().T}
    return outputs, {layer: torch.cat(parts) for layer, parts in contributions.items()}


# --------------------------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def square_image_outputs(
    model: LlavaOnevisionManagerForConditionalGeneration, pixel_values: torch.Tensor
) -> BaseModelOutputWithPooling:
    """The converted model's image outputs for `pixel_values` (images, 3, S, S) in the fork's square layout: each
    image's base-view tokens only, without transformers' trailing newline; pass them as
    `model(input_ids=..., mm_encoder_outputs={"image": outputs})` with (S / patch)² `<image>` tokens per image."""
    count = pixel_values.shape[0]
    # transformers reads images as one view each only when a prompt holds several; a lone image is duplicated
    batch = pixel_values if count > 1 else pixel_values.repeat(2, 1, 1, 1)
    vision = model.config.vision_config
    sizes = torch.tensor([[vision.image_size, vision.image_size]] * len(batch))
    outputs = model.model.get_image_features(batch, sizes, batch_num_images=torch.tensor([len(batch)]))
    base = (vision.image_size // vision.patch_size) ** 2
    outputs["pooler_output"] = [features[:base] for features in outputs.pooler_output[:count]]
    outputs["deepstack_features"] = [[f[:base] for f in layer[:count]] for layer in outputs["deepstack_features"]]
    return outputs


def _prompts(config, counts: list[int], generator: torch.Generator) -> torch.Tensor:
    """One unpadded prompt per image: two words, the image's tokens, four words."""
    top = min(config.text_config.vocab_size, config.image_token_index, config.video_token_index)
    rows = []
    for count in counts:
        words = torch.randint(0, top, (6,), generator=generator).tolist()
        rows.append(words[:2] + [config.image_token_index] * count + words[2:])
    return torch.tensor(rows)


def _run_with_contributions(model, **inputs) -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor]]:
    """The converted model's outputs as `reference_forward` returns them, and each manager's output."""
    seen, hooks = {}, []
    for layer, manager in model.model.managers.items():
        hooks.append(manager.register_forward_hook(lambda m, a, out, layer=int(layer): seen.update({layer: out[0]})))
    norm = model.model.language_model.norm
    hooks.append(norm.register_forward_hook(lambda m, a, out: seen.update(hidden=out)))
    try:
        logits = model(**inputs, logits_to_keep=LOGITS_KEPT).logits
    finally:
        for hook in hooks:
            hook.remove()
    return {"hidden": seen.pop("hidden"), "logits": logits}, seen


def _max_diffs(prefix: str, ours: tuple[dict, dict], theirs: tuple[dict, dict]) -> dict[str, float]:
    """{prefix_hidden, prefix_logits, prefix_managers: largest |difference|} of two `reference_forward` results."""
    outputs = {f"{prefix}_{k}": float((ours[0][k] - v).abs().max()) for k, v in theirs[0].items()}
    managers = max(float((ours[1][layer] - v).abs().max()) for layer, v in theirs[1].items())
    return {**outputs, f"{prefix}_managers": managers}


@torch.no_grad()
def verify_against_fork(model, sd: dict, layout: ReleasedLayout, seed: int = 0) -> dict[str, float]:
    """Largest differences between the converted model and `reference_forward` on random inputs: the square layout
    (two prompts, one image each) always, a wide AnyRes image for AnyRes checkpoints."""
    config, image_token = model.config, model.config.image_token_index
    generator = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    base = (size // config.vision_config.patch_size) ** 2
    pixel_values = torch.randn(2, 3, size, size, generator=generator)
    input_ids = _prompts(config, [base, base], generator)
    ours = _run_with_contributions(
        model, input_ids=input_ids, mm_encoder_outputs={"image": square_image_outputs(model, pixel_values)}
    )
    diffs = _max_diffs(
        "square", ours, reference_forward(sd, layout, input_ids, image_token, list(pixel_values[:, None]))
    )
    if layout.anyres:
        image_size = (size * 5 // 4 + 1, size * 3 // 2 + 3)  # a wide image: several tiles, unpadded rows
        views = image_size_to_num_patches(image_size, config.image_grid_pinpoints, size)
        pixel_values = torch.randn(1, views, 3, size, size, generator=generator)
        image_sizes = torch.tensor([image_size])
        count = model.model.get_image_features(pixel_values, image_sizes).pooler_output[0].shape[0]
        input_ids = _prompts(config, [count], generator)
        ours = _run_with_contributions(model, input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes)
        theirs = reference_forward(sd, layout, input_ids, image_token, [pixel_values[0]], [image_size])
        diffs.update(_max_diffs("anyres", ours, theirs))
    return diffs


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer, processor and the command
# --------------------------------------------------------------------------------------------------------------------


def text_side(
    tokenizer_dir: Path | None, layout: ReleasedLayout
) -> tuple[transformers.ProcessorMixin | None, int, int, list[str]]:
    """(processor or None, image token id, video token id, notes) from `--tokenizer`: a processor folder
    (AutoProcessor, kept with the model's grid), a tokenizer folder (ids only; `<image>`/`<video>` are added after
    its vocabulary when missing, as transformers' LLaVA-OneVision does) or nothing (transformers' ids)."""
    vocab = layout.text["vocab_size"]
    if tokenizer_dir is None:
        image_id, video_id, processor = IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX, None
        notes = [f"<image> = {image_id}, <video> = {video_id} (transformers' LLaVA-OneVision ids; no --tokenizer)"]
    else:
        folder = Path(tokenizer_dir)
        processor = None
        try:
            if (folder / "processor_config.json").is_file() or (folder / "preprocessor_config.json").is_file():
                processor = transformers.AutoProcessor.from_pretrained(str(folder))
                tokenizer = processor.tokenizer
            else:
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, ImportError) as error:
            message = " ".join(str(error).split())[:300]
            raise ConversionError(
                f"cannot load the tokenizer/processor in {folder} ({type(error).__name__}: {message})."
            ) from None
        notes = []
        for token in ("<image>", "<video>"):
            if token not in tokenizer.get_vocab():
                tokenizer.add_tokens([transformers.AddedToken(token, special=True, normalized=False)], True)
                notes.append(f"{token} added to the tokenizer as id {tokenizer.convert_tokens_to_ids(token)}")
        image_id, video_id = (tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<video>"))
        if processor is not None:
            processor.image_token_id, processor.video_token_id = image_id, video_id
            notes += align_processor(processor, layout)
    if max(image_id, video_id) >= vocab:
        raise ConversionError(
            f"the image/video token ids {image_id}/{video_id} do not fit the {vocab}-row embeddings; pass --tokenizer "
            "with a tokenizer whose <image> token lies within them."
        )
    return processor, image_id, video_id, notes


def align_processor(processor, layout: ReleasedLayout) -> list[str]:
    """Give the processor the model's grid, aspect ratio and token count; notes on what changed."""
    size = layout.vision["image_size"]
    wanted = {
        "image_grid_pinpoints": [[h, w] for w, h in layout.pinpoints] if layout.anyres else [[size, size]],
        "vision_aspect_ratio": layout.aspect_ratio if layout.anyres else "anyres_max_9",
        "num_image_tokens": (size // layout.vision["patch_size"]) ** 2,
        "vision_feature_select_strategy": "full",
    }
    owners = {"image_grid_pinpoints": processor.image_processor}
    notes = []
    for name, value in wanted.items():
        owner = owners.get(name, processor)
        if getattr(owner, name, None) != value:
            notes.append(f"processor {name} set to {value} (was {getattr(owner, name, None)})")
            setattr(owner, name, value)
    return notes


def run(
    input_path: Path,
    output_dir: Path,
    tokenizer: Path | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    labels: Path | None = None,
    tolerance: float = 1e-3,
) -> Path:
    """Convert a released LLaVA-OV-Manager folder, verify it against the fork's forward pass, write the Hub folder
    (in the checkpoint's dtype). The default tolerance allows float32 summation-order noise over 50 layers."""
    if labels is not None:
        raise ConversionError(f"{SOURCE_FORMAT} has no classifier; drop --labels.")
    input_path, output_dir = Path(input_path), Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise ConversionError(f"{output_dir.resolve()} already exists; pass --overwrite to replace it.")
    config_dict = read_released_config(input_path)
    state_dict = read_released_weights(input_path)
    layout = infer_layout(config_dict, state_dict)
    processor, image_id, video_id, notes = text_side(tokenizer, layout)
    config = towerzoo_config(layout, image_id, video_id)
    renamed, dropped = rename_keys(state_dict, layout)
    model, new_parameters = build_model(config, renamed, str(input_path))
    diffs = verify_against_fork(model, state_dict, layout)
    check_tolerance(diffs, tolerance, reference=REFERENCE)
    dtypes = {t.dtype for t in state_dict.values() if t.is_floating_point()}
    saved_dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    verification = verification_record(SOURCE_FORMAT, input_path, diffs, dropped, REFERENCE)
    verification.update(
        processor=type(processor).__name__ if processor else "none (pass --tokenizer with a LlavaOnevisionProcessor)",
        saved_dtype=str(saved_dtype).removeprefix("torch."),
        new_parameters=new_parameters,
        assumptions=layout.notes + notes,
        layout="AnyRes" if layout.anyres else "square (see the converter's docstring on what transformers adds)",
    )
    return write_hub_folder(
        model.to(saved_dtype),
        output_dir,
        exposed=AUTO_CLASSES,
        processor=processor,
        verification=verification,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
    )
