"""A functional re-statement of the ORIGINAL BridgeTower forward pass (microsoft/BridgeTower `BTTransformer`), computed
straight from an original-layout Lightning state dict (original key names, fused CLIP `in_proj` tensors).

It is the reference `towerzoo convert bridgetower-original` checks its converted model against, so it deliberately
shares no code with towerzoo's modules: it follows `bt_module.BTTransformer.infer` (fusion), `get_uni_modal_features`
/ `infer_text` / `infer_image` (ITC), `heads.py`, `clip_model.py` and `bert_model.BertCrossLayer` step by step, with
plain `torch.nn.functional` calls. Comments marked "transformers:" name the places where transformers' built-in port
computes something different.

Everything shape-related is read from the state dict; the few numbers the weights cannot carry are arguments:
`num_heads` (cross-modal heads, `config["num_heads"]`), and the rules of the original's building blocks — CLIP uses
`width // 64` heads (`clip_model.CLIP`), RoBERTa-base/large use 64-wide heads as well.
"""

import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

# LayerNorm epsilons of the original, module by module:
TEXT_TOWER_EPS = 1e-5  # RobertaModel.from_pretrained("roberta-base"/"roberta-large"): config.layer_norm_eps = 1e-5
CLIP_EPS = 1e-5  # clip_model.LayerNorm: torch's default
# `bert_config = RobertaConfig(vocab_size=..., hidden_size=..., ...)` never sets layer_norm_eps, so the cross-modal
# BertCrossLayers and the MLM head's BertPredictionHeadTransform get RobertaConfig's default 1e-12.
# transformers: its port builds both from `text_config.layer_norm_eps` (1e-5).
CROSS_MODAL_EPS = 1e-12
# nn.LayerNorm(hidden) defaults: cross_modal_{text,image}_layernorm, LinkTower.LayerNorm, the classifiers' LayerNorm.
BRIDGE_EPS = 1e-5
# transformers <= 4.20 `get_extended_attention_mask`: (1 - mask) * -10000 (the original pins transformers 4.17).
# transformers: newer versions use torch.finfo(dtype).min; after softmax both give exactly 0 weight in fp32.
MASK_VALUE = -10000.0
ROBERTA_PAD_ID = 1


def _linear(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    return F.linear(x, sd[f"{prefix}weight"], sd.get(f"{prefix}bias"))


def _layer_norm(x: torch.Tensor, sd: dict, prefix: str, eps: float) -> torch.Tensor:
    weight = sd[f"{prefix}weight"]
    return F.layer_norm(x, weight.shape, weight, sd[f"{prefix}bias"], eps)


def layer_count(sd: dict, prefix: str) -> int:
    """Number of `prefix.{i}.` blocks in the state dict."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for key in sd if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


# --------------------------------------------------------------------------------------------------------------------
# RoBERTa text tower (transformers 4.17 RobertaModel, as loaded by `RobertaModel.from_pretrained`)
# --------------------------------------------------------------------------------------------------------------------


def extended_attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """`get_extended_attention_mask` for an encoder: (batch, len) 1/0 → additive (batch, 1, 1, len)."""
    return (1.0 - mask[:, None, None, :].to(torch.float32)) * MASK_VALUE


def roberta_embeddings(
    input_ids: torch.Tensor, sd: dict, prefix: str = "text_transformer.embeddings."
) -> torch.Tensor:
    # create_position_ids_from_input_ids: real tokens count from padding_idx + 1, padding keeps padding_idx
    not_pad = input_ids.ne(ROBERTA_PAD_ID).int()
    position_ids = (torch.cumsum(not_pad, dim=1) * not_pad).long() + ROBERTA_PAD_ID
    # `self.text_transformer.embeddings(input_ids=text_ids)`: no token_type_ids, so the all-zeros buffer is used
    token_type_ids = torch.zeros_like(input_ids)
    embeddings = (
        F.embedding(input_ids, sd[f"{prefix}word_embeddings.weight"])
        + F.embedding(token_type_ids, sd[f"{prefix}token_type_embeddings.weight"])
        + F.embedding(position_ids, sd[f"{prefix}position_embeddings.weight"])
    )
    return _layer_norm(embeddings, sd, f"{prefix}LayerNorm.", TEXT_TOWER_EPS)


def bert_self_attention(
    hidden: torch.Tensor,
    sd: dict,
    prefix: str,
    num_heads: int,
    additive_mask: torch.Tensor | None,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """BertSelfAttention: queries from `hidden`, keys/values from `context` (cross-attention) or `hidden`."""
    context = hidden if context is None else context
    batch, q_len, width = hidden.shape
    head_dim = width // num_heads

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, num_heads, head_dim).permute(0, 2, 1, 3)

    query = heads(_linear(hidden, sd, f"{prefix}query."))
    key = heads(_linear(context, sd, f"{prefix}key."))
    value = heads(_linear(context, sd, f"{prefix}value."))
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(head_dim)
    if additive_mask is not None:
        scores = scores + additive_mask
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, value).permute(0, 2, 1, 3).reshape(batch, q_len, width)


def bert_attention(hidden, sd, prefix, num_heads, additive_mask, eps, context=None) -> torch.Tensor:
    """BertAttention = BertSelfAttention + BertSelfOutput (dense, residual, post-LayerNorm)."""
    attended = bert_self_attention(hidden, sd, f"{prefix}self.", num_heads, additive_mask, context)
    return _layer_norm(_linear(attended, sd, f"{prefix}output.dense.") + hidden, sd, f"{prefix}output.LayerNorm.", eps)


def bert_feed_forward(hidden, sd, prefix, eps) -> torch.Tensor:
    """BertIntermediate (dense + exact GELU, `hidden_act="gelu"`) + BertOutput (dense, residual, post-LayerNorm)."""
    intermediate = F.gelu(_linear(hidden, sd, f"{prefix}intermediate.dense."))
    return _layer_norm(
        _linear(intermediate, sd, f"{prefix}output.dense.") + hidden, sd, f"{prefix}output.LayerNorm.", eps
    )


def roberta_layer(hidden, sd, prefix, num_heads, additive_mask) -> torch.Tensor:
    return bert_feed_forward(
        bert_attention(hidden, sd, f"{prefix}attention.", num_heads, additive_mask, TEXT_TOWER_EPS),
        sd,
        prefix,
        TEXT_TOWER_EPS,
    )


def bert_cross_layer(x, y, sd, prefix, num_heads, x_mask, y_mask) -> torch.Tensor:
    """bert_model.BertCrossLayer(hidden_states=x, encoder_hidden_states=y, attention_mask=x_mask,
    encoder_attention_mask=y_mask): self-attention over x with x's mask, cross-attention from x to y with y's mask
    (BertSelfAttention swaps in `encoder_attention_mask` for cross-attention), then the feed-forward block."""
    hidden = bert_attention(x, sd, f"{prefix}attention.", num_heads, x_mask, CROSS_MODAL_EPS)
    hidden = bert_attention(hidden, sd, f"{prefix}crossattention.", num_heads, y_mask, CROSS_MODAL_EPS, context=y)
    return bert_feed_forward(hidden, sd, prefix, CROSS_MODAL_EPS)


# --------------------------------------------------------------------------------------------------------------------
# CLIP ViT (clip_model.VisualTransformer, model_type="BT"); activations in CLIP's (len, batch, width) layout
# --------------------------------------------------------------------------------------------------------------------

VISUAL = "vit_model.visual."


def clip_forward_pre(pixel_values: torch.Tensor, sd: dict) -> torch.Tensor:
    """VisualTransformer.forward_pre: conv patches, class token, positions, ln_pre; returns (len, batch, width)."""
    weight = sd[f"{VISUAL}conv1.weight"]
    patch = weight.shape[-1]
    x = F.conv2d(pixel_values.to(weight.dtype), weight, stride=patch)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = sd[f"{VISUAL}class_embedding"].to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + sd[f"{VISUAL}positional_embedding"].to(x.dtype)
    x = _layer_norm(x, sd, f"{VISUAL}ln_pre.", CLIP_EPS)
    return x.permute(1, 0, 2)


def clip_block(x: torch.Tensor, sd: dict, index: int) -> torch.Tensor:
    """ResidualAttentionBlock: x + MHA(ln_1(x)), then x + c_proj(QuickGELU(c_fc(ln_2(x)))).

    The attention is nn.MultiheadAttention's own functional form with the fused in_proj tensors, as CLIP runs it.
    """
    prefix = f"{VISUAL}transformer.resblocks.{index}."
    width = x.shape[-1]
    normed = _layer_norm(x, sd, f"{prefix}ln_1.", CLIP_EPS)
    attended, _ = F.multi_head_attention_forward(
        normed,
        normed,
        normed,
        width,
        width // 64,  # clip_model.CLIP: vision_heads = vision_width // 64
        sd[f"{prefix}attn.in_proj_weight"],
        sd[f"{prefix}attn.in_proj_bias"],
        None,
        None,
        False,
        0.0,
        sd[f"{prefix}attn.out_proj.weight"],
        sd[f"{prefix}attn.out_proj.bias"],
        training=False,
        need_weights=False,
    )
    x = x + attended
    hidden = _linear(_layer_norm(x, sd, f"{prefix}ln_2.", CLIP_EPS), sd, f"{prefix}mlp.c_fc.")
    hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
    return x + _linear(hidden, sd, f"{prefix}mlp.c_proj.")


def clip_forward_post(x: torch.Tensor, sd: dict) -> torch.Tensor:
    """VisualTransformer.forward_post: back to (batch, len, width), then `ln_post` — ALWAYS ln_post, even when the
    checkpoint has `ln_separate` (vit_layernorm_shared=False): `infer` never uses the separate norms."""
    return _layer_norm(x.permute(1, 0, 2), sd, f"{VISUAL}ln_post.", CLIP_EPS)


def clip_all_layers(pixel_values: torch.Tensor, sd: dict) -> list[torch.Tensor]:
    """VisualTransformer.forward with model_type="BT" (what `infer_image` / `get_uni_modal_features` call): every
    block's output, each through ln_post (shared) or its own `ln_separate[i]`; (batch, len, width) each."""
    x = clip_forward_pre(pixel_values, sd)
    outputs = []
    shared = f"{VISUAL}ln_separate.0.weight" not in sd
    for index in range(layer_count(sd, f"{VISUAL}transformer.resblocks")):
        x = clip_block(x, sd, index)
        norm = f"{VISUAL}ln_post." if shared else f"{VISUAL}ln_separate.{index}."
        outputs.append(_layer_norm(x.permute(1, 0, 2), sd, norm, CLIP_EPS))
    return outputs


# --------------------------------------------------------------------------------------------------------------------
# BTTransformer.infer: the fusion pass every head but ITC reads
# --------------------------------------------------------------------------------------------------------------------


def _token_type(sd: dict, index: int) -> torch.Tensor:
    return sd["token_type_embeddings.weight"][index]


def infer(
    sd: dict,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    num_heads: int,
    image_token_type_idx: int = 1,
) -> dict[str, torch.Tensor]:
    """`BTTransformer.infer(batch, image_token_type_idx=...)`: returns text_feats, image_feats and cls_feats."""
    text_layers = layer_count(sd, "text_transformer.encoder.layer")
    num_layers = layer_count(sd, "cross_modal_text_layers")  # config["num_layers"]
    text_width = sd["text_transformer.embeddings.word_embeddings.weight"].shape[1]
    text_heads = text_width // 64

    text_mask = extended_attention_mask(attention_mask)
    text = roberta_embeddings(input_ids, sd)
    # the first split_index layers of both towers run before the first cross-modal layer
    split_index = text_layers - num_layers + 1
    for i in range(split_index):
        text = roberta_layer(text, sd, f"text_transformer.encoder.layer.{i}.", text_heads, text_mask)
    image = clip_forward_pre(pixel_values, sd)
    # The original indexes the ViT's blocks with the TEXT tower's layer indices (here and in the loop below), i.e. it
    # runs ViT blocks 0 .. text_layers-1; the towers must be equally deep for this to be the ViT's top layers.
    for i in range(split_index):
        image = clip_block(image, sd, i)
    image_post = clip_forward_post(image, sd)

    text_type = _token_type(sd, 0)
    image_type = _token_type(sd, image_token_type_idx)
    x = _layer_norm(
        _linear(text, sd, "cross_modal_text_transform.") + text_type, sd, "cross_modal_text_layernorm.", BRIDGE_EPS
    )
    image_ = _linear(image_post, sd, "cross_modal_image_transform.") + image_type
    y = _layer_norm(image_, sd, "cross_modal_image_layernorm.", BRIDGE_EPS)
    image_mask = extended_attention_mask(torch.ones(y.shape[:2], dtype=torch.long))  # all zeros: never padded

    x1 = bert_cross_layer(x, y, sd, "cross_modal_text_layers.0.", num_heads, text_mask, image_mask)
    y1 = bert_cross_layer(y, x, sd, "cross_modal_image_layers.0.", num_heads, image_mask, text_mask)

    link = 0
    for i in range(split_index, text_layers):
        text = roberta_layer(text, sd, f"text_transformer.encoder.layer.{i}.", text_heads, text_mask)
        image = clip_block(image, sd, i)
        image_ = _linear(clip_forward_post(image, sd), sd, "cross_modal_image_transform.") + image_type
        # heads.LinkTower: LayerNorm(hidden_states + cross_modal_hidden_states) (only "add" exists in the original)
        x1_ = _layer_norm(
            _linear(text, sd, "cross_modal_text_transform.") + text_type + x1,
            sd,
            f"cross_modal_text_link_tower.{link}.LayerNorm.",
            BRIDGE_EPS,
        )
        y1_ = _layer_norm(image_ + y1, sd, f"cross_modal_image_link_tower.{link}.LayerNorm.", BRIDGE_EPS)
        x1 = bert_cross_layer(x1_, y1_, sd, f"cross_modal_text_layers.{link + 1}.", num_heads, text_mask, image_mask)
        y1 = bert_cross_layer(y1_, x1_, sd, f"cross_modal_image_layers.{link + 1}.", num_heads, image_mask, text_mask)
        link += 1

    return fusion_outputs(sd, x1, y1)


def fusion_outputs(sd: dict, text_feats: torch.Tensor, image_feats: torch.Tensor) -> dict[str, torch.Tensor]:
    """The end of `infer`: the last cross-modal outputs and `get_cls_feats` (heads.Pooler, token 0 → dense → tanh, on
    each stream, concatenated)."""
    cls_text = torch.tanh(_linear(text_feats[:, 0], sd, "cross_modal_text_pooler.dense."))
    cls_image = torch.tanh(_linear(image_feats[:, 0], sd, "cross_modal_image_pooler.dense."))
    return {"text_feats": text_feats, "image_feats": image_feats, "cls_feats": torch.cat([cls_text, cls_image], -1)}


# --------------------------------------------------------------------------------------------------------------------
# ITC: get_uni_modal_features(itc=True) / infer_text(itc=True) / infer_image(itc=True)
# --------------------------------------------------------------------------------------------------------------------


def text_tower_outputs(sd: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """Every RoBERTa layer's output (`infer_text` / `get_uni_modal_features` run the whole tower)."""
    text_width = sd["text_transformer.embeddings.word_embeddings.weight"].shape[1]
    text_mask = extended_attention_mask(attention_mask)
    text = roberta_embeddings(input_ids, sd)
    outputs = []
    for i in range(layer_count(sd, "text_transformer.encoder.layer")):
        text = roberta_layer(text, sd, f"text_transformer.encoder.layer.{i}.", text_width // 64, text_mask)
        outputs.append(text)
    return outputs


def uni_modal_features(
    sd: dict,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    itc_prefix: str = "",
) -> dict[str, torch.Tensor]:
    """L2-normalised ITC embeddings. Text: itc_text_head on token 0 of the last text-tower layer. Image: itc_image_head
    on token 0 of the last ViT block after ln_post (or its ln_separate) — BEFORE cross_modal_image_transform.
    transformers: its port feeds the image head `cross_modal_image_transform(ln_post(x)) + token_type[1]` instead,
    always through ln_post, and adds a third head (itc_cross_modal_head) the original does not have.
    `itc_prefix` names the heads' module prefix (ManagerTower calls them `cross_modal_itc_*_head`)."""
    text = text_tower_outputs(sd, input_ids, attention_mask)[-1]
    image = clip_all_layers(pixel_values, sd)[-1]
    return {
        "text": F.normalize(_linear(text[:, 0], sd, f"{itc_prefix}itc_text_head.fc."), dim=-1, p=2),
        "image": F.normalize(_linear(image[:, 0], sd, f"{itc_prefix}itc_image_head.fc."), dim=-1, p=2),
    }


def itc_logit_scale(sd: dict) -> torch.Tensor:
    """compute_itc: `temperature.clamp_(0.001, 0.5)` before every use, then logit_scale = exp(log(1 / temperature))."""
    return torch.log(1 / sd["temperature"].clamp(0.001, 0.5)).exp()


# --------------------------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------------------------


def mlm_head(text_feats: torch.Tensor, sd: dict) -> torch.Tensor:
    """heads.MLMHead: BertPredictionHeadTransform (dense, GELU, LayerNorm eps 1e-12), decoder, separate bias."""
    hidden = F.gelu(_linear(text_feats, sd, "mlm_score.transform.dense."))
    hidden = _layer_norm(hidden, sd, "mlm_score.transform.LayerNorm.", CROSS_MODAL_EPS)
    return F.linear(hidden, sd["mlm_score.decoder.weight"]) + sd["mlm_score.bias"]


def classifier(features: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    """nn.Sequential(Linear) or nn.Sequential(Linear, LayerNorm, GELU, Linear) (task_head_layers 1 or 2)."""
    if f"{name}.3.weight" not in sd:
        return _linear(features, sd, f"{name}.0.")
    hidden = F.gelu(_layer_norm(_linear(features, sd, f"{name}.0."), sd, f"{name}.1.", BRIDGE_EPS))
    return _linear(hidden, sd, f"{name}.3.")


@torch.no_grad()
def reference_outputs(
    sd: dict,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    num_heads: int,
    second_pixel_values: torch.Tensor | None = None,
    fusion: Callable[..., dict[str, torch.Tensor]] = infer,
    itc_prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Every output the original computes with this state dict's heads, on one batch.

    `second_pixel_values` is NLVR2's second image (compute_nlvr2: two `infer` passes with image_token_type_idx 1 and
    2, classifier on the concatenated cls_feats). Keys: text_feats, image_feats, cls_feats (first image), and per head
    mlm_logits, itm_logits, irtr_score (rank_output), itc_text_embeds / itc_image_embeds / itc_logits_per_text,
    vqa_logits, snli_logits, nlvr2_logits (+ cls_feats_image2 for NLVR2).

    ManagerTower's heads are the same: it passes its own fusion pass (`fusion`, with `infer`'s signature) and the
    prefix of its ITC heads (`itc_prefix`).
    """
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    out = dict(fusion(sd, input_ids, attention_mask, pixel_values, num_heads, image_token_type_idx=1))
    if "mlm_score.decoder.weight" in sd:
        out["mlm_logits"] = mlm_head(out["text_feats"], sd)
    if "itm_score.fc.weight" in sd:
        out["itm_logits"] = _linear(out["cls_feats"], sd, "itm_score.fc.")
    if "rank_output.weight" in sd:
        # compute_irtr: score = rank_output(cls_feats)[:, 0]
        out["irtr_score"] = _linear(out["cls_feats"], sd, "rank_output.")[:, 0]
    if f"{itc_prefix}itc_text_head.fc.weight" in sd:
        feats = uni_modal_features(sd, input_ids, attention_mask, pixel_values, itc_prefix)
        out["itc_text_embeds"], out["itc_image_embeds"] = feats["text"], feats["image"]
        # compute_itc: itc_logits_t2i = logit_scale * text @ image.T
        out["itc_logits_per_text"] = itc_logit_scale(sd) * feats["text"] @ feats["image"].t()
    if "vqa_classifier.0.weight" in sd:
        out["vqa_logits"] = classifier(out["cls_feats"], sd, "vqa_classifier")
    if "snli_classifier.0.weight" in sd:
        out["snli_logits"] = classifier(out["cls_feats"], sd, "snli_classifier")
    if "nlvr2_classifier.0.weight" in sd:
        if second_pixel_values is None:
            raise ValueError("an NLVR2 checkpoint needs second_pixel_values")
        second = fusion(sd, input_ids, attention_mask, second_pixel_values, num_heads, image_token_type_idx=2)
        out["cls_feats_image2"] = second["cls_feats"]
        # nlvr2_classifier_dropout (nlvr2_drop_rate) is inactive at inference
        out["nlvr2_logits"] = classifier(
            torch.cat([out["cls_feats"], second["cls_feats"]], dim=-1), sd, "nlvr2_classifier"
        )
    return out
