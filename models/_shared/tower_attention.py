# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""Multi-head attention shared by every towerzoo tower (one source, symlinked into each Hub folder).

Every attention call dispatches through ``ALL_ATTENTION_FUNCTIONS.get_interface(...)`` so eager, sdpa,
flash_attention_2/3/4, flex_attention and Hub kernels all work, and ``set_attn_implementation`` takes effect.

Masks follow transformers' per-backend conventions (build them with :func:`padding_mask_for`):
eager wants an additive float 4D mask, sdpa a bool 4D mask or None, flash a 2D ``(batch, kv_len)`` padding mask
or None, flex a ``BlockMask``.

Cross-attention with padded keys on flash backends is handled here rather than by transformers' flash wrapper,
which unpads the *queries* with the last ``q_len`` columns of the key mask (transformers issue #35032): we pack the
queries (never padded in a cross-attention call) and the kept keys ourselves and make one varlen call with separate
``cu_seqlens`` for queries and keys.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention: softmax(q k^T * scaling + mask) v. Inputs (batch, heads, len, head_dim)."""
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask[:, :, :, : key.shape[-2]]
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def padding_mask_for(
    config,
    queries: torch.Tensor,
    padding_mask: torch.Tensor | None,
    keys: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The key-padding mask in the format `config._attn_implementation` expects.

    `queries`/`keys` are (batch, len, dim) hidden states; `padding_mask` is (batch, kv_len) with 1 for real tokens.
    Returns None when nothing is padded, so backends take their fast unmasked path.
    """
    if padding_mask is None or bool(padding_mask.all()):
        return None
    return create_bidirectional_mask(
        config=config,
        inputs_embeds=queries,
        attention_mask=padding_mask,
        encoder_hidden_states=keys,
    )


# What to install for each backend that needs a package (and a CUDA GPU).
_BACKEND_PACKAGES = {
    "flash_attention_2": "flash-attn>=2.3.3 (`pip install flash-attn --no-build-isolation`, CUDA GPU)",
    "flash_attention_3": "flash-attn-3 (CUDA GPU of compute capability >= 8)",
    "flash_attention_4": "flash-attn-4 (CUDA GPU of compute capability >= 9)",
}


def attention_backend_hint(implementation) -> str:
    """The fix to append to transformers' error when an attention backend cannot be used."""
    names = implementation.values() if isinstance(implementation, dict) else [implementation]
    needs = [f"{name} needs {_BACKEND_PACKAGES[name]}" for name in names if name in _BACKEND_PACKAGES]
    fix = "; ".join(needs) + ". " if needs else ""
    return fix + "Or choose attn_implementation='sdpa' (the default), 'flex_attention' or 'eager', which need nothing."


class AttentionBackendHints:
    """Mixin for a `PreTrainedModel`: transformers' check of the requested attention backend, with the package to
    install (or the backend to pick instead) added to its error."""

    def _check_and_adjust_attn_implementation(self, attn_implementation, *args, **kwargs):
        try:
            return super()._check_and_adjust_attn_implementation(attn_implementation, *args, **kwargs)
        except (ImportError, ValueError) as error:
            raise type(error)(f"{error} {attention_backend_hint(attn_implementation)}") from error


def _is_flash(implementation: str | None) -> bool:
    return implementation is not None and "flash" in implementation


class TowerAttention(nn.Module):
    """Bidirectional multi-head attention with separate q/k/v/o projections.

    Used as self-attention (`key_value_states=None`) and as cross-attention to another modality.
    """

    def __init__(
        self, config, hidden_size: int, num_heads: int, dropout: float = 0.0, is_cross_attention: bool = False
    ):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"hidden size {hidden_size} is not a multiple of the number of attention heads {num_heads}; "
                "fix the config so that hidden_size % num_attention_heads == 0."
            )
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.is_cross_attention = is_cross_attention
        # Never causal: sdpa would otherwise assume causality and truncate keys when kv_len > q_len.
        self.is_causal = False
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, q_len, _ = hidden_states.shape
        kv_states = hidden_states if key_value_states is None else key_value_states
        split = (batch_size, -1, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(split).transpose(1, 2)
        key = self.k_proj(kv_states).view(split).transpose(1, 2)
        value = self.v_proj(kv_states).view(split).transpose(1, 2)

        implementation = self.config._attn_implementation
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        dropout = self.dropout if self.training else 0.0
        if _is_flash(implementation) and key_value_states is not None and attention_mask is not None:
            attn_output = _flash_cross_attention(self, attention_interface, query, key, value, attention_mask, dropout)
            attn_weights = None
        else:
            attn_output, attn_weights = attention_interface(
                self, query, key, value, attention_mask, scaling=self.scaling, dropout=dropout, **kwargs
            )
        attn_output = attn_output.reshape(batch_size, q_len, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


def _flash_cross_attention(
    module: nn.Module,
    attention_interface: Callable,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor,
    dropout: float,
) -> torch.Tensor:
    """Varlen flash call for unpadded queries attending to padded keys. Returns (batch, q_len, heads, head_dim)."""
    batch_size, num_heads, q_len, head_dim = query.shape
    keep = key_padding_mask.bool()
    seqlens_k = keep.sum(dim=-1, dtype=torch.int32)
    cu_seqlens_k = F.pad(seqlens_k.cumsum(0, dtype=torch.int32), (1, 0))
    cu_seqlens_q = torch.arange(0, (batch_size + 1) * q_len, q_len, dtype=torch.int32, device=query.device)
    # (batch, heads, len, dim) -> (1, heads, total_tokens, dim), keeping only the real keys.
    packed_query = query.transpose(1, 2).reshape(1, batch_size * q_len, num_heads, head_dim).transpose(1, 2)
    packed_key = key.transpose(1, 2)[keep].unsqueeze(0).transpose(1, 2)
    packed_value = value.transpose(1, 2)[keep].unsqueeze(0).transpose(1, 2)
    attn_output, _ = attention_interface(
        module,
        packed_query,
        packed_key,
        packed_value,
        None,
        scaling=module.scaling,
        dropout=dropout,
        cu_seq_lens_q=cu_seqlens_q,
        cu_seq_lens_k=cu_seqlens_k,
        max_length_q=q_len,
        max_length_k=int(seqlens_k.max()),
    )
    return attn_output.reshape(batch_size, q_len, num_heads, head_dim)
