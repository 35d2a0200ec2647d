# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
r"""Zipper (Zayats, Chen, Ferrari, Padfield, "Zipper: A Multi-Tower Decoder Architecture for Fusing Modalities",
arXiv 2405.18669) as a Hub-native model: two pre-trained decoder towers, text (A) and speech (B), zipped with gated
cross-attention, for speech→text (ASR) and text→speech (TTS).

Sources. The stored copies of arXiv 2405.18669 read here hold the abstract and introduction; the architecture
section (Sec. 3) is known from the abstract, from reviews quoting its equations and from shared/reference/PAPERS.md:
each tower's input embeddings go through an MLP and a ReLU, gated cross-attention layers every i_A layers of A to B
and every i_B layers of B to A with projections between the towers' widths, autoregressive masking over the
interleaved sequence, and inference that decodes in the requested output modality until its end-of-sentence token.
What the paper does not fix is an option here, and the default is the reading that keeps each tower exactly its
source decoder until trained (Flamingo's tanh gate at 0).

Notation: towers T (the output modality's, "target") and S (the other, "source"), widths d_T, d_S, depths L_T, L_S,
embeddings e = E(x).

1. Input projection (Sec. 3, "input projection"): h⁰ = ReLU(W e + b) in the paper (`input_projection="replace"`);
   the default `"gated"` is h⁰ = e + tanh(β)·ReLU(W e + b), β = 0 at the start; `"none"`: h⁰ = e.
2. Gated cross-attention (Sec. 3): after block l of T (l = i_T, 2·i_T, … counted from 1),
        h ← h + tanh(α_l) · O · Attn(Q·LN(h), K·P(s_m), V·P(s_m))
   with P: d_S → d_T the projection between the towers' widths, α_l a learned scalar starting at `gate_init` (0),
   and s_m the hidden states of S after its block m = round(l·L_S / L_T) (m = 0: S's embedding output; m = L_S: S's
   final-normalised output, as transformers' `hidden_states` give them). The depth map is this implementation's
   choice: the paper pairs layers "at these interleaved layers" without a rule for towers of different depths.
3. Masking (Sec. 3, "auto-regressive masking"): the sequence is [input modality; output modality]; every token of
   the output modality may see every (non-padded) token of the input, and no input token sees the output, so only
   T's cross-attention runs; each tower's self-attention stays causal (its own decoder's mask). Interleavings with
   more than two segments are not supported.
4. Inference (Sec. 3, "inference"): the output modality is given (`output_modality`); S is run once on the input, the
   cross-attention keys and values are cached, and T decodes with its own KV cache until its end-of-sentence token
   (`generate`: greedy, sampling, beam search). One `EncoderDecoderCache` per call: `self_attention_cache` for T,
   `cross_attention_cache` for the K/V of T's cross-attention blocks.
5. Loss: next-token cross-entropy of T on the output modality (labels = -100 where ignored).

With every gate at 0 (and the input projection `"gated"` or `"none"`), each tower's logits are those of its source
decoder, bit for bit: tanh(0)·x adds exact zeros.

The towers are transformers causal LMs built from their configs (`AutoModelForCausalLM`), run by their own forward
(masks, rotary positions, caches and attention backends are theirs). The cross-attention blocks are attached to
their decoder blocks as forward hooks registered at construction; a hook does nothing unless the call carries a
`zipper_context` (the source states, masks and cache), so a tower called on its own is its source decoder.
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_zipper import ZipperConfig
from .tower_attention import (
    AttentionBackendHints,
    _flash_cross_attention,
    _is_flash,
    eager_attention_forward,
    padding_mask_for,
)

MODALITIES = ("text", "speech")


def _other(modality: str) -> str:
    return "speech" if modality == "text" else "text"


def _cache_argument() -> str:
    """transformers >= 5.24 names the cache argument `cache`, older versions `past_key_values`."""
    parameters = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@dataclass
class ZipperOutput(ModelOutput):
    """
    Args:
        loss: next-token cross-entropy of the output modality's tower (with `labels`).
        logits (`(batch, length, output vocab)`): the output tower's next-token logits.
        cache: the `EncoderDecoderCache` (output tower's KV + cross-attention K/V), updated in place.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None


@dataclass
class ZipperContext:
    """What the cross-attention hooks of the output tower need during one forward."""

    blocks: nn.ModuleDict
    source_states: tuple[torch.Tensor, ...] | None
    source_mask: torch.Tensor | None
    cross_cache: Cache | None


# --------------------------------------------------------------------------------------------------------------------
# Input projection and gated cross-attention
# --------------------------------------------------------------------------------------------------------------------


class ZipperInputProjection(nn.Module):
    """ReLU(W e + b) after a tower's embeddings, replacing them (`replace`) or added behind a tanh gate (`gated`)."""

    def __init__(self, width: int, mode: str, gate_init: float):
        super().__init__()
        self.mode = mode
        self.linear = nn.Linear(width, width)
        self.gate = nn.Parameter(torch.tensor(float(gate_init))) if mode == "gated" else None

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        projected = torch.relu(self.linear(embeddings))
        if self.gate is None:
            return projected
        return embeddings + torch.tanh(self.gate).to(embeddings.dtype) * projected


class ZipperCrossAttention(nn.Module):
    """Multi-head attention from the output tower's states to the (projected) source states; K/V can be cached."""

    def __init__(self, config: ZipperConfig, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"cross-attention width {width} is not a multiple of its {num_heads} heads.")
        self.config = config
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # sdpa would otherwise truncate keys to the query length
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.o_proj = nn.Linear(width, width)

    def key_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        split = (source.shape[0], -1, self.num_heads, self.head_dim)
        return self.k_proj(source).view(split).transpose(1, 2), self.v_proj(source).view(split).transpose(1, 2)

    def forward(
        self, hidden_states: torch.Tensor, key: torch.Tensor, value: torch.Tensor, source_mask
    ) -> torch.Tensor:
        batch_size, q_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch_size, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        implementation = self.config._attn_implementation
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        padded = source_mask is not None and not bool(source_mask.all())
        if _is_flash(implementation) and padded:
            output = _flash_cross_attention(self, attention_interface, query, key, value, source_mask, 0.0)
        else:
            keys_like = key.new_zeros(1).expand(batch_size, key.shape[2], 1)
            mask = padding_mask_for(self.config, hidden_states, source_mask, keys_like) if padded else None
            output, _ = attention_interface(self, query, key, value, mask, scaling=self.scaling, dropout=0.0)
        return self.o_proj(output.reshape(batch_size, q_len, -1).contiguous())


class ZipperCrossAttentionBlock(nn.Module):
    """h + tanh(α)·CrossAttention(LN(h), P(s)): one gated cross-attention after a block of the output tower."""

    def __init__(self, config: ZipperConfig, target, source):
        super().__init__()
        width = target.hidden_size
        self.source_projection = nn.Linear(source.hidden_size, width)
        self.layer_norm = nn.LayerNorm(width, eps=getattr(target, "rms_norm_eps", 1e-5))
        self.attention = ZipperCrossAttention(
            config, width, config.cross_attention_heads or target.num_attention_heads
        )
        self.gate = nn.Parameter(torch.tensor(float(config.gate_init)))

    def forward(self, hidden_states, source_states, source_mask, cross_cache, index: int) -> torch.Tensor:
        if cross_cache is not None and cross_cache.get_seq_length(index) > 0:
            key, value = cross_cache.layers[index].keys, cross_cache.layers[index].values
        else:
            key, value = self.attention.key_values(self.source_projection(source_states.to(hidden_states.dtype)))
            if cross_cache is not None:
                key, value = cross_cache.update(key, value, index)
        attended = self.attention(self.layer_norm(hidden_states), key, value, source_mask)
        return hidden_states + torch.tanh(self.gate).to(hidden_states.dtype) * attended


def _cross_attention_hook(module: nn.Module, args, kwargs, output):
    """Forward hook on a tower's decoder block: applies the block's gated cross-attention when the call carries a
    `zipper_context`; otherwise (the tower on its own, or the input modality's tower) returns the output unchanged."""
    context: ZipperContext | None = kwargs.get("zipper_context")
    key = str(module.zipper_layer)
    if context is None or key not in context.blocks:
        return output
    block = context.blocks[key]
    hidden_states = output[0] if isinstance(output, tuple) else output
    source_states = None if context.source_states is None else context.source_states[block.source_layer]
    hidden_states = block(hidden_states, source_states, context.source_mask, context.cross_cache, block.cache_index)
    return (hidden_states, *output[1:]) if isinstance(output, tuple) else hidden_states


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


def decoder_blocks(tower: PreTrainedModel, role: str = "a") -> nn.ModuleList:
    """The decoder blocks of a transformers causal LM (`base_model.layers`: Llama, Mistral, Qwen2, Gemma, …)."""
    blocks = getattr(tower.base_model, "layers", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(
            f"the {role} tower, {type(tower).__name__}, keeps no `layers` list in its base model; Zipper zips "
            "decoders laid out as transformers' Llama family (Llama, Mistral, Qwen2, Gemma, …)."
        )
    return blocks


class ZipperPreTrainedModel(AttentionBackendHints, PreTrainedModel):
    config_class = ZipperConfig
    base_model_prefix = "zipper"
    main_input_name = "input_ids"
    input_modalities = ("text", "audio")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # the losses are batch means that ignore `num_items_in_batch`: Trainer must divide them for gradient accumulation
    accepts_loss_kwargs = False
    _no_split_modules = ["ZipperCrossAttentionBlock", "ZipperInputProjection"]

    def _init_weights(self, module: nn.Module) -> None:
        """New weights only (the towers initialise their own): normal(initializer_range) linears, zero biases,
        unit LayerNorms, gates at `gate_init`."""
        std = self.config.initializer_range
        if isinstance(module, (ZipperCrossAttentionBlock, ZipperInputProjection)) and module.gate is not None:
            init.constant_(module.gate, self.config.gate_init)
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class ZipperForConditionalGeneration(ZipperPreTrainedModel, GenerationMixin):
    """Two decoder towers zipped with gated cross-attention; generates text from speech (ASR) or speech from text
    (TTS)."""

    def __init__(self, config: ZipperConfig):
        super().__init__(config)
        self.text_model = AutoModelForCausalLM.from_config(config.text_config)
        self.speech_model = AutoModelForCausalLM.from_config(config.speech_config)
        towers = {"text": config.text_config, "speech": config.speech_config}
        intervals = {"text": config.text_cross_attention_interval, "speech": config.speech_cross_attention_interval}
        self.text_cross_attention = nn.ModuleDict()
        self.speech_cross_attention = nn.ModuleDict()
        for modality in MODALITIES:
            target, source = towers[modality], towers[_other(modality)]
            blocks = self.cross_attention_blocks(modality)
            for position, layer in enumerate(decoder_blocks(self.tower(modality), modality)):
                number = position + 1
                layer.zipper_layer = position  # read by the hook
                layer.register_forward_hook(_cross_attention_hook, with_kwargs=True)
                if number % intervals[modality]:
                    continue
                block = ZipperCrossAttentionBlock(config, target, source)
                block.source_layer = round(number * source.num_hidden_layers / target.num_hidden_layers)
                block.cache_index = len(blocks)
                blocks[str(position)] = block
        if config.input_projection != "none":
            self.text_input_projection = ZipperInputProjection(
                config.text_config.hidden_size, config.input_projection, config.gate_init
            )
            self.speech_input_projection = ZipperInputProjection(
                config.speech_config.hidden_size, config.input_projection, config.gate_init
            )
        self._no_split_modules = list(
            dict.fromkeys(
                self._no_split_modules
                + list(self.text_model._no_split_modules or [])
                + list(self.speech_model._no_split_modules or [])
            )
        )
        self.post_init()
        if config.freeze_text_tower:
            self.text_model.requires_grad_(False)
        if config.freeze_speech_tower:
            self.speech_model.requires_grad_(False)

    def tower(self, modality: str) -> PreTrainedModel:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}.")
        return self.text_model if modality == "text" else self.speech_model

    def cross_attention_blocks(self, modality: str) -> nn.ModuleDict:
        """The gated cross-attention blocks of the `modality` tower (keyed by decoder block index)."""
        return self.text_cross_attention if modality == "text" else self.speech_cross_attention

    def input_embeddings(self, modality: str, input_ids: torch.LongTensor) -> torch.Tensor:
        """h⁰ of a tower: its token embeddings through the input projection."""
        embeddings = self.tower(modality).get_input_embeddings()(input_ids)
        projection = getattr(self, f"{modality}_input_projection", None)
        return embeddings if projection is None else projection(embeddings)

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return None  # two vocabularies: resize each tower on its own

    def source_hidden_states(
        self, modality: str, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        """Hidden states of the `modality` tower on its own (embedding output, every block, final-normalised)."""
        outputs = self.tower(modality).base_model(
            inputs_embeds=self.input_embeddings(modality, input_ids),
            attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=True,
        )
        return outputs.hidden_states

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        source_input_ids: torch.LongTensor | None = None,
        source_attention_mask: torch.Tensor | None = None,
        output_modality: str = "text",
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ZipperOutput | tuple:
        r"""
        input_ids, attention_mask (`(batch, length)`): tokens of the output modality's tower (its prompt in
            generation, e.g. just its bos token; the whole target in training).
        source_input_ids, source_attention_mask (`(batch, source length)`): tokens of the input modality (speech
            units for ASR, text for TTS). Not needed once the cache holds the cross-attention keys and values.
        output_modality (`"text"` or `"speech"`): which tower produces the output (ASR: text; TTS: speech).
        labels (`(batch, length)`, optional): next-token targets for the output tower (-100 = ignored).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        cache = cache if cache is not None else past_key_values
        target = self.tower(output_modality)
        self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        cross_cache = cache.cross_attention_cache if isinstance(cache, EncoderDecoderCache) else None
        blocks = self.cross_attention_blocks(output_modality)
        cached = cross_cache is not None and len(blocks) > 0 and cross_cache.get_seq_length(0) > 0
        source_states = None
        if not cached and len(blocks) > 0:
            if source_input_ids is None:
                raise ValueError(
                    f"{output_modality} output needs the {_other(output_modality)} input as `source_input_ids` (run "
                    "the inputs through the model's processor with the task)."
                )
            source_states = self.source_hidden_states(_other(output_modality), source_input_ids, source_attention_mask)
        context = ZipperContext(blocks, source_states, source_attention_mask, cross_cache)
        outputs = target(
            inputs_embeds=self.input_embeddings(output_modality, input_ids),
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            zipper_context=context,
            **{_cache_argument(): self_cache},
        )
        output = ZipperOutput(loss=outputs.loss, logits=outputs.logits, cache=cache)
        return output if return_dict else output.to_tuple()

    # ---- generation ----------------------------------------------------------------------------------------------
    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """One cache per call: the output tower's KV cache and the cross-attention K/V (computed at the first step)."""
        name = _cache_argument()
        if model_kwargs.get(name) is not None or generation_config.use_cache is False:
            return
        model_kwargs[name] = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def generate(self, *args, output_modality: str = "text", **kwargs):
        """`GenerationMixin.generate` decoding in `output_modality` until that tower's end-of-sentence token (its
        `eos_token_id`, `bos_token_id` and `pad_token_id` are the defaults)."""
        tower = self.tower(output_modality).config
        for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
            if kwargs.get(name) is None and getattr(tower, name, None) is not None:
                kwargs[name] = getattr(tower, name)
        if kwargs.get("pad_token_id") is None and kwargs.get("eos_token_id") is not None:
            eos = kwargs["eos_token_id"]
            kwargs["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
        return super().generate(*args, output_modality=output_modality, **kwargs)


__all__ = ["ZipperForConditionalGeneration", "ZipperPreTrainedModel", "decoder_blocks"]
