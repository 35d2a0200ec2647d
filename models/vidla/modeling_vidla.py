# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
r"""VidLA (Rizve et al., "VidLA: Video-Language Alignment at Scale", CVPR 2024, arXiv 2403.14870) as a Hub-native
model: two CLIP towers, the video tower extended with the paper's hierarchical temporal attention (Sec. 4, Fig. 3).

Written against the text of arXiv 2403.14870v1: Sec. 4 ("Method": Preliminaries, Eqs. (1)-(3)), Sec. 5
("Implementation Details") and Appendix A. Notation: B batch, T frames, N patches per frame, D width, U levels of V
[MST] tokens, temporal scale r. Defaults U = 3, V = 4, r = 2 (Sec. 5); the paper samples 12 frames per clip in
pre-training (Sec. 5) and 32 in retrieval fine-tuning (App. A.2).

Input tokens (Sec. 4, Preliminaries). Patch n of frame t becomes
    x_{t,n} = E p_{t,n} + P^s_n + P^t_t
with CLIP's patch embedding E and spatial table P^s, and a new temporal table P^t. The 1 + UV + TN tokens are
    Z^0 = [ z_cls ; m_0 … m_{UV-1} ; x_{0,0} … x_{0,N-1} ; … ; x_{T-1,0} … x_{T-1,N-1} ]
where m_i, the i-th [MST] token, belongs to level ⌊i/V⌋ (levels 0 … U-1) and is a learned vector without position,
and z_cls is CLIP's class embedding plus its spatial position 0. CLIP's pre-LayerNorm follows.

Block l, Eqs. (1) and (2):
 (1) spatially local temporal attention over the patches only ([CLS] and [MST] set aside):
        Z_SlT = MMSA(LN_t(Z^{l-1}_patches), M_T) + Z^{l-1}_patches,   (M_T)_{ij} = 0 if |i - j| ≡ 0 (mod N), else -inf
     so each patch attends to the patches at its spatial position in every frame, itself included. New q/k/v/o
     projections and LayerNorm (not CLIP's). MMSA(Z, M) = softmax(Q K^T / sqrt(d_head) + M) V.
 (2) global spatio-temporal attention with CLIP's weights, [CLS] and [MST] put back in front (Z'), then CLIP's MLP:
        Z_GST = MMSA(LN_1(Z'), M) + Z',    Z^l = MLP(LN_2(Z_GST)) + Z_GST.
Video embedding: e_v = W_v LN_post(Z^L_cls), CLIP's post-LayerNorm and visual projection of the last [CLS].
Text embedding: CLIP's text transformer, unchanged (causal, pooled at the end-of-text token, projected): e_t.

The mask M of Eq. (2), row = query, column = key, stacked as [M_cls; M_mst; M_patch]:
  * [CLS]: M_cls = 0, it sees every token (itself included).
  * [MST] token i, of level u = ⌊i/V⌋: the patches of the frames t with t mod r^u = 0 (level 0 every frame, level u
    every r^u-th frame counted from frame 0), the [MST] tokens j with ⌊j/V⌋ <= u (its own level and the ones below),
    and not [CLS] (a -inf column in the paper's M_mst).
  * a patch of frame t: the patches of frame t, every [MST] token, and [CLS] (see the first choice below).
  * padded frames (`video_mask` = 0) are never keys, in either attention; the outputs at their positions are unused.
Loss (Eq. (3), Sec. 4 "Pretraining Objective"): with L2-normalised embeddings and learned temperature τ,
    L_vt = (1/B) Σ_i [ -log softmax_j(e_v,i · e_t,j / τ)_i  -  log softmax_j(e_t,i · e_v,j / τ)_i ]
the sum of the two directions' cross-entropies (no factor 1/2). The paper adds L_vs + L_vc over two texts per clip
(the subtitle summary and the caption summary): call the model once per text and add the losses.

Where the paper leaves room, a careful reader's choice (an option wherever the other reading is plausible):
  * Patches and [CLS]. Eq. (2) writes M_patch = [0, M_G] with a zero block over the [CLS] and [MST] columns, so
    patches see [CLS]; the prose right after the equations, Fig. 3's caption and Sec. 1 say that patches attend to
    their frame and the [MST] tokens only, keeping [CLS] an aggregator. Default: the equation
    (`patches_attend_to_cls=True`), which is also what CLIP's patches do, so that one frame without [MST] tokens is
    exactly CLIP; `patches_attend_to_cls=False` follows the prose.
  * Direction of the level mask. The equation for M_mst (0 where ⌊i/V⌋ >= ⌊j/V⌋) and the prose ("lower
    hierarchies") let level u see the levels up to u: `mst_level_attention="finer"`, the default. Fig. 3's caption
    has [MST]-0 attend to the tokens "of lower temporal resolution", i.e. the other way (`"coarser"`); `"all"` and
    `"none"` are ablations.
  * Initialisation (Sec. 5). Both towers from OpenAI CLIP. The paper zeroes "the projection matrices" of the
    temporal attention; zeroing q, k, v and o together would leave only o's bias a gradient, so only the output
    projection starts at zero (q/k/v drawn as CLIP draws them): the block starts as CLIP's either way. Temporal
    positions start at zero (the paper does not say). The paper initialises the [MST] tokens randomly;
    `_init_weights` draws them as CLIP draws its class embedding, N(0, D^-1). (The converter `vidla-from-clip`
    starts them at CLIP's class token plus small noise instead: its choice, not the paper's.)
  * LayerNorms. Eq. (1) does not say whose LN it applies: the temporal attention has its own. Eq. (2) writes the MLP
    without a LayerNorm and the video embedding as a projection of [CLS]: CLIP's LN_2 and post-LayerNorm are kept,
    as starting from CLIP requires.
  * Clips of different lengths (the paper samples a fixed number of frames): shorter clips are padded at the end and
    marked in `video_mask`; strides count from frame 0, so a padded clip gives the same outputs as the clip alone.

Computing M (`VidLAVisionConfig.attention_layout`). `"blocked"`, the default, never forms the (1 + UV + TN)^2 score
matrix: the patches of every real frame attend to their N patches plus the [CLS]/[MST] tokens they see, all frames
batched as (frames, heads, N + extra keys, head_dim) with no mask at all, and the 1 + UV [CLS]/[MST] rows attend to
their allowed keys, one small call per distinct key set, which is a key-padding mask (flash: a packed varlen call).
Its cost grows linearly with T. `"dense"` runs one attention over all tokens under M, built by
`transformers.masking_utils.create_bidirectional_mask` with M as `and_mask_function` (an additive float mask for
eager, a bool mask for sdpa, a `BlockMask` for flex_attention): quadratic in T, and refused on flash backends (which
take no arbitrary mask) unless M is full. It is the reference the blocked layout is tested against. Every attention
call dispatches through `ALL_ATTENTION_FUNCTIONS.get_interface(...)`, so eager, sdpa, flex_attention and flash
kernels all run the blocked layout.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_vidla import VidLAConfig, VidLATextConfig, VidLAVisionConfig
from .tower_attention import (
    AttentionBackendHints,
    TowerAttention,
    _flash_cross_attention,
    _is_flash,
    eager_attention_forward,
    padding_mask_for,
)
from .tower_blocks import ClipTextTower, ClipVisionEmbeddings, ClipVisionLayer, init_clip_module


@dataclass
class VidLAOutput(ModelOutput):
    """
    Args:
        loss: the paper's InfoNCE loss for this text, both directions summed (with `return_loss=True`).
        logits_per_video (`(video_batch, text_batch)`): scaled cosine similarities.
        logits_per_text (`(text_batch, video_batch)`): their transpose.
        text_embeds (`(text_batch, projection_dim)`): L2-normalised text embeddings.
        video_embeds (`(video_batch, projection_dim)`): L2-normalised video embeddings.
        text_model_output, video_model_output: the towers' outputs.
    """

    loss: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    video_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in (self[k] for k in self.keys()))


# --------------------------------------------------------------------------------------------------------------------
# Video tower (CLIP ViT per frame + temporal attention + [MST] tokens)
# --------------------------------------------------------------------------------------------------------------------


class VidLAVideoEmbeddings(ClipVisionEmbeddings):
    """CLIP's patch/class/spatial-position embeddings per frame, plus temporal positions and the [MST] tokens.

    Returns `(batch, 1 + U·V + T·N, D)`: [CLS], the [MST] tokens, then the patches frame by frame.
    """

    def __init__(self, config: VidLAVisionConfig):
        super().__init__(config)
        self.temporal_position_embedding = nn.Parameter(torch.zeros(config.num_frames, config.hidden_size))
        self.mst_embeddings = nn.Parameter(torch.zeros(config.num_mst_tokens, config.hidden_size))

    def forward(self, pixel_values_videos: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        batch_size, num_frames = pixel_values_videos.shape[:2]
        frames = super().forward(pixel_values_videos.flatten(0, 1), interpolate_pos_encoding)  # (B·T, 1 + N, D)
        patches = frames[:, 1:].unflatten(0, (batch_size, num_frames))  # (B, T, N, D)
        patches = patches + self.temporal_position_embedding[:num_frames, None].to(patches.dtype)
        class_token = frames[:1, :1].expand(batch_size, 1, -1)  # class embedding + spatial position 0
        mst = self.mst_embeddings.to(patches.dtype).expand(batch_size, -1, -1)
        return torch.cat([class_token, mst, patches.flatten(1, 2)], dim=1)


def video_token_structure(
    config: VidLAVisionConfig, num_frames: int, num_patches: int, device=None, num_query_rows: int | None = None
) -> torch.Tensor:
    """The mask M as a `(rows, L)` bool tensor (row = query, column = key), L = 1 + U·V + T·N; padding not included.

    All L rows by default; `num_query_rows` keeps the first ones ([CLS] and the [MST] tokens for 1 + U·V).
    """
    num_mst, per_level = config.num_mst_tokens, max(config.mst_tokens_per_level, 1)
    length = 1 + num_mst + num_frames * num_patches
    index = torch.arange(length, device=device)
    is_cls = index == 0
    is_mst = (index >= 1) & (index < 1 + num_mst)
    is_patch = index >= 1 + num_mst
    frame = torch.where(is_patch, (index - 1 - num_mst) // num_patches, -1)
    level = torch.where(is_mst, (index - 1) // per_level, -1)

    q, k = (slice(num_query_rows), None), (None, slice(None))
    patch_row = is_patch[k] & (frame[q] == frame[k])
    if config.patches_attend_to_cls:
        patch_row = patch_row | is_cls[k]
    if config.patches_attend_to_mst:
        patch_row = patch_row | is_mst[k]
    stride = config.mst_temporal_scale ** level.clamp(min=0)
    mst_sees_patch = is_patch[k] & (frame[k] % stride[q] == 0)
    same = level[q] == level[k]
    other = {
        "finer": level[k] < level[q],
        "coarser": level[k] > level[q],
        "all": torch.ones_like(same),
        "none": torch.zeros_like(same),
    }[config.mst_level_attention]
    mst_row = mst_sees_patch | (is_mst[k] & (same | other))
    return is_cls[q] | (is_patch[q] & patch_row) | (is_mst[q] & mst_row)


def _key_mask(video_mask: torch.Tensor, num_head_tokens: int, num_patches: int) -> torch.Tensor:
    """`(B, L)`: 1 for every token that may be a key ([CLS], [MST], patches of real frames), 0 for padded frames."""
    head = video_mask.new_ones(video_mask.shape[0], num_head_tokens)
    return torch.cat([head, video_mask.repeat_interleave(num_patches, 1)], dim=1)


def video_attention_mask(
    config: VidLAVisionConfig, hidden_states: torch.Tensor, video_mask: torch.Tensor, num_patches: int
):
    """The dense layout: M plus frame padding as one mask in the format `config._attn_implementation` expects (None
    when nothing is masked)."""
    num_frames = video_mask.shape[1]
    structure = video_token_structure(config, num_frames, num_patches, hidden_states.device)
    key_mask = _key_mask(video_mask, 1 + config.num_mst_tokens, num_patches)
    if bool(structure.all()) and bool(key_mask.all()):
        return None
    if _is_flash(config._attn_implementation):
        raise ValueError(
            f"VidLA's dense video attention needs its token mask (per-frame patches, [MST] levels, padded frames), "
            f"which {config._attn_implementation} cannot take. Keep the default attention_layout='blocked' (it runs "
            "on flash), or load the model with attn_implementation='sdpa', 'flex_attention' or 'eager'."
        )

    def in_structure(batch_idx, head_idx, q_idx, kv_idx):
        return structure[q_idx, kv_idx]

    return create_bidirectional_mask(
        config=config, inputs_embeds=hidden_states, attention_mask=key_mask, and_mask_function=in_structure
    )


@dataclass
class BlockedVideoAttention:
    """The blocked layout of M for one batch, built once per forward and shared by every block.

    Args:
        num_frames: T.
        num_head_tokens: 1 + U·V, the [CLS] and [MST] tokens at the front of the sequence.
        extra_keys: the head tokens every patch sees besides its own frame's patches (a slice of the head).
        real_frames: indices of the real frames among the B·T (`None` when no frame is padded).
        frame_batch: the clip of each real frame.
        head_groups: `(rows, mask)` per distinct key set of the head rows: the rows sharing it, and the key set
            (structure and padding) as a key-padding mask in the backend's format (`None` when every key is kept).
        head_order: puts the head rows back in order after the groups.
    """

    num_frames: int
    num_head_tokens: int
    extra_keys: slice
    real_frames: torch.Tensor | None
    frame_batch: torch.Tensor
    head_groups: list[tuple[torch.Tensor, torch.Tensor | None]]
    head_order: torch.Tensor


def blocked_video_attention(
    config: VidLAVisionConfig, hidden_states: torch.Tensor, video_mask: torch.Tensor, num_patches: int
) -> BlockedVideoAttention:
    """The blocked layout of M plus frame padding for `hidden_states` `(B, L, D)` (see the module docstring)."""
    batch_size, num_frames = video_mask.shape
    num_head = 1 + config.num_mst_tokens
    device = hidden_states.device
    first_extra = 0 if config.patches_attend_to_cls else 1
    extra_keys = slice(first_extra, num_head if config.patches_attend_to_mst else 1)

    real = video_mask.bool().flatten()
    frame_batch = torch.arange(batch_size, device=device).repeat_interleave(num_frames)
    real_frames = None if bool(real.all()) else real.nonzero().squeeze(1)
    if real_frames is not None:
        frame_batch = frame_batch[real_frames]

    structure = video_token_structure(config, num_frames, num_patches, device, num_query_rows=num_head)
    key_mask = _key_mask(video_mask, num_head, num_patches).bool()
    key_sets, group_of_row = torch.unique(structure, dim=0, return_inverse=True)
    head_groups, rows_in_order = [], []
    for group, key_set in enumerate(key_sets):
        rows = (group_of_row == group).nonzero().squeeze(1)
        queries = hidden_states.new_zeros(1).expand(batch_size, len(rows), hidden_states.shape[-1])  # shape only
        head_groups.append((rows, padding_mask_for(config, queries, key_set & key_mask, keys=hidden_states)))
        rows_in_order.append(rows)
    return BlockedVideoAttention(
        num_frames=num_frames,
        num_head_tokens=num_head,
        extra_keys=extra_keys,
        real_frames=real_frames,
        frame_batch=frame_batch,
        head_groups=head_groups,
        head_order=torch.cat(rows_in_order).argsort(),
    )


def blocked_self_attention(
    attention: TowerAttention, hidden_states: torch.Tensor, layout: BlockedVideoAttention
) -> torch.Tensor:
    """CLIP's attention under M without the `(L, L)` score matrix: the patches of all real frames in one batched,
    unmasked call over (their frame's patches + the extra head keys), then the head rows over their key sets."""
    batch_size, length, width = hidden_states.shape
    num_head, num_frames = layout.num_head_tokens, layout.num_frames
    num_patches = (length - num_head) // num_frames
    heads, head_dim = attention.num_heads, attention.head_dim
    query, key, value = (
        projection(hidden_states).view(batch_size, length, heads, head_dim)
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj)
    )

    implementation = attention.config._attn_implementation
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    dropout = attention.dropout if attention.training else 0.0

    def attend(q, k, v, mask):  # (batch, heads, len, head_dim) in, (batch, q_len, heads, head_dim) out
        if _is_flash(implementation) and mask is not None:
            return _flash_cross_attention(attention, attention_interface, q, k, v, mask, dropout)
        return attention_interface(attention, q, k, v, mask, scaling=attention.scaling, dropout=dropout)[0]

    def per_frame(states):  # (B, L, heads, d) → (real frames, heads, N, d): each frame's patches
        states = states[:, num_head:].reshape(batch_size * num_frames, num_patches, heads, head_dim)
        return (states if layout.real_frames is None else states[layout.real_frames]).transpose(1, 2)

    frame_keys, frame_values = per_frame(key), per_frame(value)
    if layout.extra_keys.stop > layout.extra_keys.start:

        def with_extra(states, frame_states):
            extra = states[:, layout.extra_keys].transpose(1, 2)[layout.frame_batch]
            return torch.cat([extra, frame_states], dim=2)

        frame_keys, frame_values = with_extra(key, frame_keys), with_extra(value, frame_values)
    patch_output = attend(per_frame(query), frame_keys, frame_values, None)  # (real frames, N, heads, d)
    if layout.real_frames is not None:
        padded = patch_output.new_zeros(batch_size * num_frames, *patch_output.shape[1:])
        patch_output = padded.index_copy(0, layout.real_frames, patch_output)

    head_query, key, value = query[:, :num_head].transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    head_output = torch.cat(
        [attend(head_query[:, :, rows], key, value, mask) for rows, mask in layout.head_groups], dim=1
    )[:, layout.head_order]
    output = torch.cat([head_output.flatten(2), patch_output.reshape(batch_size, -1, width)], dim=1)
    return attention.o_proj(output)


class VidLAVideoLayer(ClipVisionLayer):
    """Spatially-local temporal attention over the patches (new weights), then CLIP's block under the mask M (given
    as a `BlockedVideoAttention`, or as one dense mask)."""

    def __init__(self, config: VidLAVisionConfig):
        super().__init__(config)
        self.num_mst_tokens = config.num_mst_tokens
        if config.temporal_attention:
            width = config.hidden_size
            self.temporal_layer_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
            self.temporal_attn = TowerAttention(
                config, width, config.num_attention_heads, dropout=config.attention_dropout
            )
            for projection in (self.temporal_attn.q_proj, self.temporal_attn.k_proj, self.temporal_attn.v_proj):
                projection.init_std = width**-0.5
            self.temporal_attn.o_proj.zero_init = True  # read by `_init_weights`: the block starts as CLIP's

    def temporal_mix(self, patches: torch.Tensor, temporal_mask: torch.Tensor | None) -> torch.Tensor:
        """`(B, T, N, D)` → same: each spatial position attends over the frames, residually."""
        batch_size, num_frames, num_patches, width = patches.shape
        tubes = patches.transpose(1, 2).reshape(batch_size * num_patches, num_frames, width)
        tubes = tubes + self.temporal_attn(self.temporal_layer_norm(tubes), temporal_mask)[0]
        return tubes.reshape(batch_size, num_patches, num_frames, width).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: BlockedVideoAttention | torch.Tensor | None = None,
        temporal_mask: torch.Tensor | None = None,
        num_frames: int = 1,
    ) -> torch.Tensor:
        if hasattr(self, "temporal_attn"):
            head, patches = hidden_states.split(
                [1 + self.num_mst_tokens, hidden_states.shape[1] - 1 - self.num_mst_tokens], 1
            )
            patches = self.temporal_mix(patches.unflatten(1, (num_frames, -1)), temporal_mask).flatten(1, 2)
            hidden_states = torch.cat([head, patches], dim=1)
        if not isinstance(attention_mask, BlockedVideoAttention):
            return super().forward(hidden_states, attention_mask)
        hidden_states = hidden_states + blocked_self_attention(
            self.self_attn, self.layer_norm1(hidden_states), attention_mask
        )
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


# --------------------------------------------------------------------------------------------------------------------
# Pre-trained base class, towers, model
# --------------------------------------------------------------------------------------------------------------------


class VidLAPreTrainedModel(AttentionBackendHints, PreTrainedModel):
    config_class = VidLAConfig
    base_model_prefix = "vidla"
    main_input_name = "input_ids"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # the losses are batch means that ignore `num_items_in_batch`: Trainer must divide them for gradient accumulation
    accepts_loss_kwargs = False
    _no_split_modules = ["ClipTextEmbeddings", "ClipTextLayer", "VidLAVideoEmbeddings", "VidLAVideoLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """OpenAI CLIP's initialisation (scaled normals, see `ClipVisionLayer`); VidLA's new temporal positions and
        temporal output projections at zero, [MST] tokens drawn like CLIP's class token."""
        if init_clip_module(module, getattr(self.config, "initializer_range", 0.02)):
            if isinstance(module, VidLAVideoEmbeddings):
                init.zeros_(module.temporal_position_embedding)
                init.normal_(module.mst_embeddings, std=module.class_embedding.shape[0] ** -0.5)
        elif isinstance(module, VidLAModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class VidLATextModel(ClipTextTower, VidLAPreTrainedModel):
    """CLIP's text transformer (`ClipTextTower`); `pooler_output` is the final-LayerNorm'd state at the end-of-text
    token."""

    config_class = VidLATextConfig
    base_model_prefix = "text_model"
    input_modalities = ("text",)

    def __init__(self, config: VidLATextConfig):
        super().__init__(config)
        self.build_text_tower(config)
        self.post_init()


class VidLAVideoModel(VidLAPreTrainedModel):
    """The video tower; `pooler_output` is the post-LayerNorm'd [CLS] state."""

    config_class = VidLAVisionConfig
    base_model_prefix = "video_model"
    main_input_name = "pixel_values_videos"
    input_modalities = ("video",)

    def __init__(self, config: VidLAVisionConfig):
        super().__init__(config)
        self.embeddings = VidLAVideoEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([VidLAVideoLayer(config) for _ in range(config.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def _check_inputs(self, pixel_values_videos: torch.Tensor, video_mask: torch.Tensor | None) -> torch.Tensor:
        channels = self.config.num_channels
        if pixel_values_videos.ndim != 5 or pixel_values_videos.shape[2] != channels:
            raise ValueError(
                f"pixel_values_videos must have shape (batch, frames, {channels}, height, width), got "
                f"{tuple(pixel_values_videos.shape)}; run the clips through the model's video processor."
            )
        batch_size, num_frames = pixel_values_videos.shape[:2]
        if num_frames > self.config.num_frames:
            raise ValueError(
                f"clips of {num_frames} frames are longer than the temporal position table ({self.config.num_frames}); "
                f"sample at most {self.config.num_frames} frames per clip."
            )
        if video_mask is None:
            return torch.ones(batch_size, num_frames, dtype=torch.long, device=pixel_values_videos.device)
        if tuple(video_mask.shape) != (batch_size, num_frames):
            raise ValueError(f"video_mask must have shape {(batch_size, num_frames)}, got {tuple(video_mask.shape)}.")
        if not bool(video_mask.bool().any(dim=1).all()):
            raise ValueError("every clip needs at least one real frame (a row of video_mask is all zeros).")
        return video_mask.long()

    def forward(
        self,
        pixel_values_videos: torch.FloatTensor,
        video_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values_videos (`(batch, frames, channels, height, width)`): the clips' frames.
        video_mask (`(batch, frames)`, optional): 1 for real frames, 0 for padding (put padding at the end).
        """
        video_mask = self._check_inputs(pixel_values_videos, video_mask)
        batch_size, num_frames = video_mask.shape
        hidden_states = self.pre_layernorm(self.embeddings(pixel_values_videos, interpolate_pos_encoding))
        num_patches = (hidden_states.shape[1] - 1 - self.config.num_mst_tokens) // num_frames
        if self.config.attention_layout == "blocked":
            attention_mask = blocked_video_attention(self.config, hidden_states, video_mask, num_patches)
        else:
            attention_mask = video_attention_mask(self.config, hidden_states, video_mask, num_patches)
        temporal_mask = None
        if self.config.temporal_attention:
            tubes = hidden_states.new_zeros(1).expand(batch_size * num_patches, num_frames, hidden_states.shape[-1])
            temporal_mask = padding_mask_for(self.config, tubes, video_mask.repeat_interleave(num_patches, 0))
        all_states = [hidden_states]
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, temporal_mask, num_frames)
            all_states.append(hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=self.post_layernorm(hidden_states[:, 0]),
            hidden_states=tuple(all_states) if output_hidden_states else None,
        )


def _normalize(embeds: torch.Tensor) -> torch.Tensor:
    return embeds / embeds.norm(p=2, dim=-1, keepdim=True)


def symmetric_info_nce(logits_per_text: torch.Tensor) -> torch.Tensor:
    """CE(video → text) + CE(text → video), each averaged over the batch, the matching pairs on the diagonal: one
    term of the paper's Eq. (3), which sums the two directions (no factor ½, unlike CLIP's loss)."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)


class VidLAModel(VidLAPreTrainedModel):
    """Text tower, video tower, projections into the shared space and the learned temperature."""

    def __init__(self, config: VidLAConfig):
        super().__init__(config)
        text_width, video_width = config.text_config.hidden_size, config.vision_config.hidden_size
        self.text_model = VidLATextModel._from_config(config.text_config)
        self.video_model = VidLAVideoModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(video_width, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(text_width, config.projection_dim, bias=False)
        self.visual_projection.init_std = video_width**-0.5
        self.text_projection.init_std = text_width**-0.5
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    def get_text_features(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.FloatTensor:
        """Projected (not normalised) text embeddings, `(batch, projection_dim)`."""
        return self.text_projection(self.text_model(input_ids, attention_mask).pooler_output)

    def get_video_features(
        self,
        pixel_values_videos: torch.FloatTensor,
        video_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> torch.FloatTensor:
        """Projected (not normalised) video embeddings, `(batch, projection_dim)`."""
        outputs = self.video_model(pixel_values_videos, video_mask, interpolate_pos_encoding)
        return self.visual_projection(outputs.pooler_output)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VidLAOutput | tuple:
        r"""
        pixel_values_videos (`(batch, frames, channels, height, width)`): the clips' frames.
        video_mask (`(batch, frames)`, optional): 1 for real frames, 0 for padded ones (at the end of a clip).
        return_loss (`bool`, optional): also return the InfoNCE loss of Eq. (3) for this text (pairs matched by batch
            index; both directions summed).
        """
        if input_ids is None or pixel_values_videos is None:
            raise ValueError("VidLAModel needs both `input_ids` and `pixel_values_videos`.")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        video_outputs = self.video_model(
            pixel_values_videos, video_mask, interpolate_pos_encoding, output_hidden_states=output_hidden_states
        )
        text_outputs = self.text_model(input_ids, attention_mask, output_hidden_states=output_hidden_states)
        video_embeds = _normalize(self.visual_projection(video_outputs.pooler_output))
        text_embeds = _normalize(self.text_projection(text_outputs.pooler_output))
        logits_per_text = text_embeds @ video_embeds.t() * self.logit_scale.exp()
        output = VidLAOutput(
            loss=symmetric_info_nce(logits_per_text) if return_loss else None,
            logits_per_video=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            video_embeds=video_embeds,
            text_model_output=text_outputs,
            video_model_output=video_outputs,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["VidLAModel", "VidLAPreTrainedModel", "VidLATextModel", "VidLAVideoModel"]
