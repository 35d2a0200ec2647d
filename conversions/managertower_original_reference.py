"""A functional re-statement of the ORIGINAL ManagerTower forward pass (LooperXX/ManagerTower `MTTransformer`),
computed straight from an original-layout Lightning state dict.

It is the reference `towerzoo convert managertower-original` checks its converted model against, so, like the
BridgeTower reference it builds on, it shares no code with towerzoo's modules. The towers, the cross-modal
`BertCrossLayer`s, the poolers and every head are BridgeTower's (`bridgetower_original_reference`); what is
ManagerTower's own is `infer` (mt_module.MTTransformer.infer) and the managers (heads.SAUE / heads.AAUE /
bert_model.LayerAttention), restated here in eval mode (no training noise).

Everything is read from the state dict: the number of managed layers per tower is the number of per-expert
LayerNorms of the first manager, the manager type of each layer is whether it has a `linear_controller`, and the
weight type is the last dimension of its score tensors.
"""

import math

import torch

from towerzoo.conversions import bridgetower_original_reference as bridgetower_reference
from towerzoo.conversions.bridgetower_original_reference import (
    BRIDGE_EPS,
    _layer_norm,
    _linear,
    _token_type,
    bert_cross_layer,
    clip_all_layers,
    extended_attention_mask,
    fusion_outputs,
    layer_count,
    text_tower_outputs,
)

# heads.SAUE / heads.AAUE build every LayerNorm as nn.LayerNorm(hidden_size): torch's default epsilon.
MANAGER_EPS = BRIDGE_EPS
MANAGER_PREFIX = "cross_modal_{side}_manager_tower.{index}.manager_layer."
ITC_PREFIX = "cross_modal_"  # MTTransformer names its ITC heads cross_modal_itc_{text,image}_head


def managed_layers(sd: dict, side: str) -> int:
    """How many top layers of a tower the managers aggregate: the first manager has one LayerNorm per expert."""
    return layer_count(sd, f"{MANAGER_PREFIX.format(side=side, index=0)}LayerNorm")


# --------------------------------------------------------------------------------------------------------------------
# heads.SAUE / heads.AAUE (eval mode)
# --------------------------------------------------------------------------------------------------------------------


def manager(
    sd: dict,
    prefix: str,
    experts: torch.Tensor,
    previous: torch.Tensor | None,
    other: torch.Tensor | None,
) -> torch.Tensor:
    """One manager: `experts` (batch, N, len, hidden) are the managed uni-modal layers, `previous` (batch, len, hidden)
    the previous cross-modal output of the same modality (None for layer 0), `other` the other modality's previous
    cross-modal output (AAUE's `extra_query`). Returns the cross-modal layer's input (batch, len, hidden).

    Both managers normalise expert j with `LayerNorm.j` and the previous output with `LayerNorm.N`, then compute
    `sum_j w_j * normed_j` where the N uni-modal weights are `softmax(score_j / softmax_temperature)` over the experts
    and the previous output's weight is its raw score (`aggregate_reps`). SAUE's scores are the learned
    `layer_scores` (1, N[+1], 1, 1|hidden); AAUE generates the uni-modal scores per token and takes the previous
    output's from `layer_scores_cross`.
    """
    num_experts = experts.shape[1]
    reps = [_layer_norm(experts[:, j], sd, f"{prefix}LayerNorm.{j}.", MANAGER_EPS) for j in range(num_experts)]
    if previous is not None:
        reps.append(_layer_norm(previous, sd, f"{prefix}LayerNorm.{num_experts}.", MANAGER_EPS))
    reps = torch.stack(reps, dim=1)  # B x (N [+1]) x L x D
    temperature = sd[f"{prefix}softmax_temperature"]
    if f"{prefix}linear_controller.weight" in sd:
        scores = adaptive_scores(sd, prefix, reps[:, -1], other)
    else:
        scores = sd[f"{prefix}layer_scores"]
    weights = torch.cat([torch.softmax(scores[:, :num_experts] / temperature, dim=1), scores[:, num_experts:]], dim=1)
    return torch.sum(weights * reps, dim=1)


def adaptive_scores(sd: dict, prefix: str, previous: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """AAUE.forward's generated scores (batch, N + 1, len, 1|hidden) for the normalised previous output `previous`.

    `fusion_attention` (bert_model.LayerAttention, one head, no padding mask) scores q_proj(previous) against
    k_proj(other) over the other modality's tokens, with `other = extra_query_LayerNorm(other)`; the softmax pools the
    normalised `other` itself (not a value projection). `linear_controller` maps cat(pooled, previous) to N scores per
    token; the `vector` weight type repeats each over the hidden channels. `layer_scores_cross` is appended as the
    previous output's score. (`softmax_temperature_cross` is never read.)
    """
    other = _layer_norm(other, sd, f"{prefix}extra_query_LayerNorm.", MANAGER_EPS)
    query = _linear(previous, sd, f"{prefix}fusion_attention.q_proj.")
    key = _linear(other, sd, f"{prefix}fusion_attention.k_proj.")
    attention = torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1]), dim=-1)
    fused = torch.cat([attention @ other, previous], dim=-1)
    generated = _linear(fused, sd, f"{prefix}linear_controller.").transpose(1, 2).unsqueeze(-1)  # B x N x L x 1
    cross = sd[f"{prefix}layer_scores_cross"]  # 1 x 1 x 1 x (1 | D)
    batch, _, length, _ = generated.shape
    generated = generated.expand(-1, -1, -1, cross.shape[-1])
    return torch.cat([generated, cross.expand(batch, -1, length, -1)], dim=1)


# --------------------------------------------------------------------------------------------------------------------
# MTTransformer.infer
# --------------------------------------------------------------------------------------------------------------------


def _managed_stack(sd: dict, side: str, layers: list[torch.Tensor], token_type: torch.Tensor) -> torch.Tensor:
    """The kept top layers of one tower (batch, N, len, hidden): cross_modal_{side}_transform, plus the token-type
    row, plus `layer_embeddings_{side}` at each layer's absolute index in its tower."""
    kept = managed_layers(sd, side)
    first = len(layers) - kept
    layer_embeddings = sd[f"layer_embeddings_{side}.weight"]
    return torch.stack(
        [
            _linear(layers[first + j], sd, f"cross_modal_{side}_transform.") + token_type + layer_embeddings[first + j]
            for j in range(kept)
        ],
        dim=1,
    )


def infer(
    sd: dict,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    num_heads: int,
    image_token_type_idx: int = 1,
) -> dict[str, torch.Tensor]:
    """`MTTransformer.infer(batch, image_token_type_idx=...)`: both towers run to the end; the top managed layers of
    each (ViT blocks through `forward_post`, i.e. ln_post) feed the managers of every cross-modal layer. Returns
    text_feats, image_feats and cls_feats."""
    text_mask = extended_attention_mask(attention_mask)
    text = _managed_stack(sd, "text", text_tower_outputs(sd, input_ids, attention_mask), _token_type(sd, 0))
    image = _managed_stack(sd, "image", clip_all_layers(pixel_values, sd), _token_type(sd, image_token_type_idx))
    image_mask = extended_attention_mask(torch.ones(image.shape[0], image.shape[2], dtype=torch.long))

    x1 = y1 = None
    for i in range(layer_count(sd, "cross_modal_text_layers")):
        x_ = manager(sd, MANAGER_PREFIX.format(side="text", index=i), text, x1, y1)
        y_ = manager(sd, MANAGER_PREFIX.format(side="image", index=i), image, y1, x1)
        x1 = bert_cross_layer(x_, y_, sd, f"cross_modal_text_layers.{i}.", num_heads, text_mask, image_mask)
        y1 = bert_cross_layer(y_, x_, sd, f"cross_modal_image_layers.{i}.", num_heads, image_mask, text_mask)
    return fusion_outputs(sd, x1, y1)


@torch.no_grad()
def reference_outputs(
    sd: dict,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    num_heads: int,
    second_pixel_values: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every output the original computes with this state dict's heads, on one batch (keys as BridgeTower's
    `reference_outputs`). The ViT's `ln_separate` norms (vit_layernorm_shared=False) are left out: MTTransformer
    always goes through `forward_post` (ln_post), for the managers and for ITC alike."""
    sd = {k: v for k, v in sd.items() if not k.startswith("vit_model.visual.ln_separate.")}
    return bridgetower_reference.reference_outputs(
        sd,
        input_ids,
        attention_mask,
        pixel_values,
        num_heads,
        second_pixel_values,
        fusion=infer,
        itc_prefix=ITC_PREFIX,
    )
