# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""Building blocks shared by the towerzoo two-tower models (one source, symlinked into each Hub folder).

Read in the order data flows: CLIP vision tower pieces, RoBERTa text tower pieces, the post-LayerNorm BERT blocks
that also make the cross-modal layers, then the small heads. Blocks read their sizes from the config object they
are given, by the names transformers uses (`hidden_size`, `num_attention_heads`, `intermediate_size`, …).
"""

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .tower_attention import TowerAttention

# --------------------------------------------------------------------------------------------------------------------
# Vision tower (OpenAI CLIP ViT: pre-LN residual blocks, QuickGELU)
# --------------------------------------------------------------------------------------------------------------------


class ClipVisionEmbeddings(nn.Module):
    """Patch embedding (conv, no bias) + class token + learned absolute positions."""

    def __init__(self, config):
        super().__init__()
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=False,
        )
        self.num_positions = (config.image_size // config.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)

    def _interpolated_positions(self, height: int, width: int) -> torch.Tensor:
        weight = self.position_embedding.weight
        grid = int(math.sqrt(self.num_positions - 1))
        patch_pos = weight[1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        size = (height // self.patch_size, width // self.patch_size)
        patch_pos = F.interpolate(patch_pos, size=size, mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(-1, weight.shape[-1])
        return torch.cat([weight[:1], patch_pos], dim=0)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.patch_embedding.in_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.patch_embedding.in_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}; convert images to RGB and run them through the model's image processor."
            )
        batch_size, _, height, width = pixel_values.shape
        if not interpolate_pos_encoding and (height != self.image_size or width != self.image_size):
            raise ValueError(
                f"image size {height}x{width} does not match the model's {self.image_size}x{self.image_size}; resize "
                "with the model's image processor, or pass interpolate_pos_encoding=True to interpolate positions."
            )
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        class_token = self.class_embedding.to(patches.dtype).expand(batch_size, 1, -1)
        embeddings = torch.cat([class_token, patches], dim=1)
        if interpolate_pos_encoding:
            return embeddings + self._interpolated_positions(height, width)
        return embeddings + self.position_embedding.weight


class ClipMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class ClipVisionLayer(GradientCheckpointingLayer):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = TowerAttention(
            config, config.hidden_size, config.num_attention_heads, dropout=config.attention_dropout
        )
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ClipMLP(config)
        # OpenAI CLIP's init stds, read by the models' `_init_weights`
        width, depth = config.hidden_size, config.num_hidden_layers
        for projection in (self.self_attn.q_proj, self.self_attn.k_proj, self.self_attn.v_proj):
            projection.init_std = width**-0.5
        self.self_attn.o_proj.init_std = self.mlp.fc2.init_std = width**-0.5 * (2 * depth) ** -0.5
        self.mlp.fc1.init_std = (2 * width) ** -0.5

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states), attention_mask)[0]
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


def init_clip_module(module: nn.Module, std: float) -> bool:
    """OpenAI CLIP's initialisation of one module of the CLIP towers (and of linears marked `zero_init`,
    `torch_default_init` or `init_std`); True when `module` was one it knows. For the models' `_init_weights`."""
    if isinstance(module, ClipVisionEmbeddings):
        width = module.class_embedding.shape[0]
        init.normal_(module.class_embedding, std=width**-0.5)
        init.normal_(module.position_embedding.weight, std=width**-0.5)
        init.normal_(module.patch_embedding.weight, std=std)
    elif isinstance(module, ClipTextEmbeddings):
        init.normal_(module.token_embedding.weight, std=0.02)
        init.normal_(module.position_embedding.weight, std=0.01)
    elif isinstance(module, nn.Linear) and getattr(module, "zero_init", False):
        init.zeros_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.Linear) and getattr(module, "torch_default_init", False):
        bound = module.in_features**-0.5  # nn.Linear's own default: U(±1/sqrt(fan_in)), bias too
        init.uniform_(module.weight, -bound, bound)
        if module.bias is not None:
            init.uniform_(module.bias, -bound, bound)
    elif isinstance(module, nn.Linear):
        init.normal_(module.weight, std=getattr(module, "init_std", std))
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    else:
        return False
    return True


# --------------------------------------------------------------------------------------------------------------------
# Text tower (OpenAI CLIP's text transformer: causal pre-LN blocks)
# --------------------------------------------------------------------------------------------------------------------


class ClipTextEmbeddings(nn.Module):
    """Token embedding + absolute position embedding."""

    def __init__(self, config):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.LongTensor, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Token (or the given `inputs_embeds`) + position embeddings."""
        length, limit = input_ids.shape[1], self.position_embedding.num_embeddings
        if length > limit:
            raise ValueError(
                f"text of {length} tokens is longer than the position table ({limit}); tokenize with "
                f"truncation=True, max_length={limit}."
            )
        if inputs_embeds is None:
            inputs_embeds = self.token_embedding(input_ids)
        return inputs_embeds + self.position_embedding.weight[:length]


class ClipTextLayer(ClipVisionLayer):
    """CLIP's pre-LN block with causal self-attention."""

    def __init__(self, config):
        super().__init__(config)
        self.self_attn.is_causal = True  # sdpa/flash apply causality themselves when no explicit mask is passed


def causal_text_mask(config, embeddings: torch.Tensor, padding_mask: torch.Tensor | None):
    """Causal + padding mask in the backend's format (transformers >= 5.24 names the cache argument `cache`, older
    versions `past_key_values`)."""
    parameters = inspect.signature(create_causal_mask).parameters
    extra = {("cache" if "cache" in parameters else "past_key_values"): None}
    if "cache_position" in parameters:
        extra["cache_position"] = torch.arange(embeddings.shape[1], device=embeddings.device)
    return create_causal_mask(config=config, inputs_embeds=embeddings, attention_mask=padding_mask, **extra)


class ClipTextTower:
    """CLIP's text transformer as a mixin for a `PreTrainedModel` subclass (VidLA's and RESTORE's text towers): call
    `build_text_tower(config)` in `__init__`. `forward` also takes MaPLe-style prompts (RESTORE); without them it is
    CLIP's text model. `pooler_output` is the final-LayerNorm'd state at the end-of-text token."""

    def build_text_tower(self, config) -> None:
        self.embeddings = ClipTextEmbeddings(config)
        self.layers = nn.ModuleList([ClipTextLayer(config) for _ in range(config.num_hidden_layers)])
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.token_embedding = value

    def end_of_text_positions(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """Where each row is pooled: its first `eos_token_id` (its largest id for legacy configs with eos id 2)."""
        if self.config.eos_token_id == 2:
            return input_ids.argmax(dim=-1)
        return (input_ids == self.config.eos_token_id).int().argmax(dim=-1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        deep_prompts: list[torch.Tensor] = (),
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        context (`(n, hidden_size)`, optional): replaces the token embeddings at positions 1 … n (a layer-0 prompt).
        deep_prompts (list of `(n, hidden_size)`): prompt i replaces positions 1 … n before layer i + 1.
        """
        embeddings = self.embeddings.token_embedding(input_ids)
        n = 0 if context is None else context.shape[0]
        if n:
            if n + 2 > input_ids.shape[1]:
                raise ValueError(f"texts of {input_ids.shape[1]} tokens have no room for {n} context tokens.")
            context = context.to(embeddings.dtype).expand(input_ids.shape[0], -1, -1)
            embeddings = torch.cat([embeddings[:, :1], context, embeddings[:, 1 + n :]], dim=1)
        hidden_states = self.embeddings(input_ids, inputs_embeds=embeddings)
        mask = causal_text_mask(self.config, hidden_states, attention_mask)
        all_states = [hidden_states]
        for index, layer in enumerate(self.layers):
            if 0 < index <= len(deep_prompts):
                prompt = deep_prompts[index - 1].to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)
                hidden_states = torch.cat([hidden_states[:, :1], prompt, hidden_states[:, 1 + n :]], dim=1)
            hidden_states = layer(hidden_states, mask)
            all_states.append(hidden_states)
        hidden_states = self.final_layer_norm(hidden_states)
        rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        pooled = hidden_states[rows, self.end_of_text_positions(input_ids).to(hidden_states.device)]
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=pooled,
            hidden_states=tuple(all_states) if output_hidden_states else None,
        )


# --------------------------------------------------------------------------------------------------------------------
# Text tower (RoBERTa embeddings + post-LN BERT layers)
# --------------------------------------------------------------------------------------------------------------------


class RobertaEmbeddings(nn.Module):
    """Word + position + token-type embeddings; positions count real tokens from `pad_token_id + 1` as RoBERTa."""

    def __init__(self, config):
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    @property
    def max_text_length(self) -> int:
        """The longest token sequence the position table holds."""
        return self.position_embeddings.num_embeddings - self.padding_idx - 1

    def forward(self, input_ids: torch.LongTensor, token_type_ids: torch.LongTensor | None = None) -> torch.Tensor:
        if input_ids.shape[1] > self.max_text_length:
            raise ValueError(
                f"text of {input_ids.shape[1]} tokens is longer than the position table allows "
                f"({self.max_text_length}); tokenize with truncation=True, max_length={self.max_text_length}."
            )
        not_pad = input_ids.ne(self.padding_idx).int()
        position_ids = torch.cumsum(not_pad, dim=1) * not_pad + self.padding_idx
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(position_ids.long())
        )
        return self.dropout(self.layer_norm(embeddings))


class BertAttentionBlock(nn.Module):
    """Post-LN attention block: LayerNorm(x + dropout(attn(x, context)))."""

    def __init__(self, config, is_cross_attention: bool = False):
        super().__init__()
        self.attn = TowerAttention(
            config,
            config.hidden_size,
            config.num_attention_heads,
            dropout=config.attention_probs_dropout_prob,
            is_cross_attention=is_cross_attention,
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attn_output = self.attn(hidden_states, attention_mask, key_value_states)[0]
        return self.layer_norm(hidden_states + self.dropout(attn_output))


class BertFeedForward(nn.Module):
    """Post-LN feed-forward block: LayerNorm(x + dropout(fc2(act(fc1(x)))))."""

    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(hidden_states + self.dropout(self.fc2(self.act(self.fc1(hidden_states)))))


class BertLayer(GradientCheckpointingLayer):
    """A RoBERTa/BERT encoder layer: self-attention then feed-forward, both post-LN."""

    def __init__(self, config):
        super().__init__()
        self.self_attention = BertAttentionBlock(config)
        self.mlp = BertFeedForward(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(self.self_attention(hidden_states, attention_mask))


class CrossModalLayer(GradientCheckpointingLayer):
    """A cross-modal layer: self-attention, cross-attention to the other modality, feed-forward (all post-LN)."""

    def __init__(self, config):
        super().__init__()
        self.self_attention = BertAttentionBlock(config)
        self.cross_attention = BertAttentionBlock(config, is_cross_attention=True)
        self.mlp = BertFeedForward(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        other_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cross_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = self.self_attention(hidden_states, attention_mask)
        hidden_states = self.cross_attention(hidden_states, cross_attention_mask, other_states)
        return self.mlp(hidden_states)


# --------------------------------------------------------------------------------------------------------------------
# Small modules: pooler, link tower, heads
# --------------------------------------------------------------------------------------------------------------------


class Pooler(nn.Module):
    """tanh(dense(first token))."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


class LinkTower(nn.Module):
    """Bridge layer joining a uni-modal layer output `x` with the previous cross-modal output `y`.

    `add`: LN(x + y); `scaled_add`: LN(s * x + y); `interpolate`: LN((1 - b) * x + b * y).
    """

    def __init__(self, hidden_size: int, link_tower_type: str, eps: float):
        super().__init__()
        self.link_tower_type = link_tower_type
        if link_tower_type == "scaled_add":
            self.scaled_factor = nn.Parameter(torch.tensor(1.0))
        elif link_tower_type == "interpolate":
            self.beta = nn.Parameter(torch.tensor(0.5))
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, hidden_states: torch.Tensor, cross_modal_hidden_states: torch.Tensor) -> torch.Tensor:
        if self.link_tower_type == "scaled_add":
            hidden_states = hidden_states * self.scaled_factor + cross_modal_hidden_states
        elif self.link_tower_type == "interpolate":
            hidden_states = hidden_states * (1 - self.beta) + cross_modal_hidden_states * self.beta
        else:
            hidden_states = hidden_states + cross_modal_hidden_states
        return self.layer_norm(hidden_states)


class ClassifierHead(nn.Module):
    """Task classifier: Linear (1 layer), or Linear → LayerNorm → GELU → Linear (2 layers)."""

    def __init__(self, in_features: int, hidden_features: int, num_labels: int, num_layers: int):
        super().__init__()
        if num_layers not in (1, 2):
            raise ValueError(f"task_head_layers must be 1 or 2, got {num_layers}.")
        self.num_layers = num_layers
        if num_layers == 2:
            self.dense = nn.Linear(in_features, hidden_features)
            self.layer_norm = nn.LayerNorm(hidden_features)
            in_features = hidden_features
        self.out_proj = nn.Linear(in_features, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.num_layers == 2:
            features = F.gelu(self.layer_norm(self.dense(features)))
        return self.out_proj(features)


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense → act → LayerNorm → decoder (+ separate bias)."""

    def __init__(self, hidden_size: int, vocab_size: int, hidden_act: str, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = ACT2FN[hidden_act]
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(self.act(self.dense(hidden_states)))) + self.bias
