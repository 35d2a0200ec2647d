"""The BridgeTower key map: transformers' layout (and, through one prefix table, the original's) → towerzoo's.

transformers' port kept the original module names for everything but a few prefixes, so one table serves both
sources: `ORIGINAL_TO_TRANSFORMERS` first renames an original Lightning key into transformers' naming (without the
`bridgetower.` prefix), then `KEY_RULES` renames it into towerzoo's. Fused CLIP `in_proj` tensors are split into
q/k/v. Every source key is either renamed or dropped by a `DROPPED` rule that states why.

A model built on BridgeTower's towers and cross-modal layers (ManagerTower) reuses the table through a `KeyTable`:
its own base-model prefix and the rules and drops for its own modules, tried before BridgeTower's.
"""

import re
from dataclasses import dataclass

import torch

from towerzoo.conversions.common import ConversionError

# Original microsoft/BridgeTower names → transformers' (un-prefixed) names.
ORIGINAL_TO_TRANSFORMERS: list[tuple[str, str]] = [
    (r"^text_transformer\.", "text_model."),
    (r"^vit_model\.visual\.conv1\.", "vision_model.visual.embeddings.patch_embedding."),
    (r"^vit_model\.visual\.class_embedding$", "vision_model.visual.embeddings.class_embedding"),
    (r"^vit_model\.visual\.positional_embedding$", "vision_model.visual.embeddings.position_embedding.weight"),
    (r"^vit_model\.visual\.", "vision_model.visual."),
    (r"^vit_model\.", "clip_text_side."),  # CLIP's unused text-side tensors; dropped below
]

# Sub-keys of a post-LN BERT layer (text tower and cross-modal layers).
_BERT_LAYER = [
    ("attention.self.query.", "self_attention.attn.q_proj."),
    ("attention.self.key.", "self_attention.attn.k_proj."),
    ("attention.self.value.", "self_attention.attn.v_proj."),
    ("attention.output.dense.", "self_attention.attn.o_proj."),
    ("attention.output.LayerNorm.", "self_attention.layer_norm."),
    ("crossattention.self.query.", "cross_attention.attn.q_proj."),
    ("crossattention.self.key.", "cross_attention.attn.k_proj."),
    ("crossattention.self.value.", "cross_attention.attn.v_proj."),
    ("crossattention.output.dense.", "cross_attention.attn.o_proj."),
    ("crossattention.output.LayerNorm.", "cross_attention.layer_norm."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("output.LayerNorm.", "mlp.layer_norm."),
]
_BERT_STACKS = [
    ("text_model.encoder.layer", "text_model.layers"),
    ("cross_modal_text_layers", "cross_modal_text_layers"),
    ("cross_modal_image_layers", "cross_modal_image_layers"),
]
_VIT_BLOCK = [
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
    ("attn.out_proj.", "self_attn.o_proj."),
    ("attn.in_proj_", "self_attn.in_proj_"),  # split into q/k/v by split_fused_qkv
]
# Classifier heads: nn.Sequential(Linear, LayerNorm, GELU, Linear) or nn.Sequential(Linear).
_CLASSIFIER_2 = [("0.", "dense."), ("1.", "layer_norm."), ("3.", "out_proj.")]

KEY_RULES: list[tuple[str, str]] = [
    (r"^text_model\.embeddings\.LayerNorm\.", "text_model.embeddings.layer_norm."),
    (
        r"^text_model\.embeddings\.(word|position|token_type)_embeddings\.weight$",
        r"text_model.embeddings.\1_embeddings.weight",
    ),
    *[
        (rf"^{re.escape(src)}\.(\d+)\.{re.escape(sub)}", rf"{dst}.\1.{new}")
        for src, dst in _BERT_STACKS
        for sub, new in _BERT_LAYER
    ],
    (r"^vision_model\.visual\.embeddings\.", "vision_model.embeddings."),
    (r"^vision_model\.visual\.ln_pre\.", "vision_model.pre_layernorm."),
    (r"^vision_model\.visual\.ln_post\.", "vision_model.post_layernorm."),
    (r"^vision_model\.visual\.ln_separate\.(\d+)\.", r"vision_model.separate_layernorms.\1."),
    *[
        (rf"^vision_model\.visual\.transformer\.resblocks\.(\d+)\.{re.escape(sub)}", rf"vision_model.layers.\1.{new}")
        for sub, new in _VIT_BLOCK
    ],
    (r"^cross_modal_(text|image)_link_tower\.(\d+\.)?LayerNorm\.", r"cross_modal_\1_link_tower.\2layer_norm."),
    (r"^cross_modal_(text|image)_link_tower\.(\d+\.)?(scaled_factor|beta)$", r"cross_modal_\1_link_tower.\2\3"),
    (r"^cross_modal_(text|image)_(transform|layernorm|pooler)(\.|$)", r"cross_modal_\1_\2\3"),
    (r"^token_type_embeddings\.weight$", "token_type_embeddings.weight"),
    (r"^mlm_score\.transform\.dense\.", "mlm_score.dense."),
    (r"^mlm_score\.transform\.LayerNorm\.", "mlm_score.layer_norm."),
    (r"^mlm_score\.(decoder\.weight|bias)$", r"mlm_score.\1"),
    (r"^itm_score\.fc\.(weight|bias)$", r"itm_score.\1"),
    (r"^itc_(text|image|cross_modal)_head\.fc\.(weight|bias)$", r"itc_\1_head.\2"),
    (r"^logit_scale$", "logit_scale"),
]

# Source keys with no towerzoo counterpart, and why they are safe to drop.
DROPPED: list[tuple[str, str]] = [
    (r"^text_model\.pooler\.", "the text tower's own pooler; BridgeTower pools the cross-modal streams instead"),
    (r"^text_model\.embeddings\.position_ids$", "a constant buffer (0..max_positions-1), rebuilt at load"),
    (r"^vision_model\.visual\.embeddings\.position_ids$", "a constant buffer, rebuilt at load"),
    (r"^clip_text_side\.", "CLIP's text-side tensors, which BridgeTower never runs"),
]

HEAD_PREFIXES = (
    "mlm_score.",
    "itm_score.",
    "itc_",
    "logit_scale",
    "vqa_classifier.",
    "snli_classifier.",
    "nlvr2_classifier.",
)


def _classifier_rules(task_head_layers: int) -> list[tuple[str, str]]:
    subs = _CLASSIFIER_2 if task_head_layers == 2 else [("0.", "out_proj.")]
    return [
        (rf"^({head}_classifier)\.{re.escape(sub)}", rf"\1.{new}")
        for head in ("vqa", "snli", "nlvr2")
        for sub, new in subs
    ]


def rename_key(key: str, rules: list[tuple[str, str]]) -> str | None:
    """Apply the first matching rule; None when no rule matches."""
    for pattern, replacement in rules:
        new_key, count = re.subn(pattern, replacement, key, count=1)
        if count:
            return new_key
    return None


@dataclass(frozen=True)
class KeyTable:
    """What a model adds to BridgeTower's key map: its name (for messages), its base-model prefix, and renames and
    drops of its own (on transformers-style names, tried before `KEY_RULES` / `DROPPED`)."""

    model: str = "BridgeTower"
    base_prefix: str = "bridgetower."
    rules: tuple[tuple[str, str], ...] = ()
    dropped: tuple[tuple[str, str], ...] = ()


BRIDGETOWER_KEYS = KeyTable()


def drop_reason(key: str, table: KeyTable = BRIDGETOWER_KEYS) -> str | None:
    for pattern, reason in (*table.dropped, *DROPPED):
        if re.search(pattern, key):
            return reason
    return None


def split_fused_qkv(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split `...self_attn.in_proj_{weight,bias}` (q, k, v stacked on dim 0) into q/k/v projections."""
    out = {}
    for key, tensor in state_dict.items():
        match = re.match(r"^(.*\.self_attn\.)in_proj_(weight|bias)$", key)
        if not match:
            out[key] = tensor
            continue
        if tensor.shape[0] % 3:
            raise ConversionError(f"{key} has {tensor.shape[0]} rows, not a multiple of 3: not a fused q/k/v tensor.")
        for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
            out[f"{match.group(1)}{name}.{match.group(2)}"] = part.clone()
    return out


def to_towerzoo(
    state_dict: dict[str, torch.Tensor], task_head_layers: int, table: KeyTable = BRIDGETOWER_KEYS
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename a transformers-layout (un-prefixed) state dict to towerzoo keys.

    Returns the new state dict (base-model keys prefixed with `table.base_prefix`, `bridgetower.` by default) and
    `{dropped key: reason}`. Raises ConversionError listing every key that no rule accounts for.
    """
    rules = [*table.rules, *KEY_RULES, *_classifier_rules(task_head_layers)]
    renamed, dropped, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        reason = drop_reason(key, table)
        if reason is not None:
            dropped[key] = reason
            continue
        new_key = rename_key(key, rules)
        if new_key is None:
            unknown.append(key)
            continue
        if not new_key.startswith(HEAD_PREFIXES):
            new_key = f"{table.base_prefix}{new_key}"
        renamed[new_key] = tensor
    if unknown:
        shown = ", ".join(sorted(unknown)[:10])
        raise ConversionError(
            f"{len(unknown)} key(s) are not part of any {table.model} layout towerzoo knows: {shown}"
            f"{' …' if len(unknown) > 10 else ''}. Is this a {table.model} checkpoint?"
        )
    return split_fused_qkv(renamed), dropped
