# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
r"""VidLA (Rizve et al., "VidLA: Video-Language Alignment at Scale", CVPR 2024, arXiv 2403.14870) as a Hub-native
model: two CLIP towers, the video tower extended with hierarchical temporal attention (paper Sec. 3.2).

What this file computes (B batch, T frames, N patches per frame, D width, U levels of V [MST] tokens, scale r):

Input tokens (Sec. 3.2, "video encoder"). Frame t is cut into patches as CLIP does; patch n of frame t becomes
    x_{t,n} = E p_{t,n} + P^spatial_n + P^temporal_t
with CLIP's spatial table P^spatial and a new temporal table P^temporal (zero at initialisation, so a single frame
looks exactly like a CLIP image). The sequence is
    z = [ [CLS] + P^spatial_0 ;  m_1 … m_{UV} ;  x_{0,1} … x_{0,N} ; … ; x_{T-1,1} … x_{T-1,N} ]
where m_{u·V+v} is [MST] token v of level u (u = 0 … U-1), a learned vector without position. CLIP's pre-LayerNorm
follows.

Each block l (pre-LN, as CLIP's):
 1. spatially-local temporal attention (Sec. 3.2, "factorised space-time attention"), patches only, for every
    spatial position n over the frames:
        x_{·,n} <- x_{·,n} + TAttn_l(LN^t_l(x_{·,n}))
    TAttn_l has its own q/k/v/o weights (new, not CLIP's); its output projection starts at zero, so the block starts as
    CLIP's.
 2. global attention with CLIP's weights, restricted by the mask M:
        z <- z + Attn_l(LN1_l(z), M)
 3. z <- z + MLP_l(LN2_l(z)).
Video embedding: e_v = W_v LN_post(z_[CLS]) (CLIP's visual projection). Text embedding: CLIP's text transformer
(causal mask, plus the padding mask), final LayerNorm, state at the end-of-text token, text projection: e_t.

The mask M (query row sees key column), Sec. 3.2 "[MST] tokens" and "temporal hierarchy":
  * [CLS] sees every token.
  * a patch of frame t sees [CLS], the patches of frame t, and (with `patches_attend_to_mst`) every [MST] token.
  * an [MST] token of level u sees the patches of frames t with t mod r^u = 0, the [MST] tokens of its own level,
    and the [MST] tokens of other levels as `mst_level_attention` says.
  * padded frames (`video_mask` = 0) are never keys, in either attention; padded positions' outputs are unused.
Loss (Sec. 3.3): symmetric InfoNCE with learned temperature τ = exp(-logit_scale),
    L = ½ [ CE(e_t e_v^T / τ, I) + CE(e_v e_t^T / τ, I) ]  on L2-normalised embeddings.
The paper sums this over two texts per clip (the subtitle summary and the caption summary): call the model once per
text and add the losses.

Choices where the paper leaves room (a careful reader's; each is an option where it is one):
  * Patches see [CLS]. The paper names what patches attend to without [CLS]; CLIP's patches see it, and without it
    one frame with no [MST] tokens would not reproduce CLIP, which is the point of initialising from CLIP.
  * [MST] tokens do not see [CLS] (the paper lists only patches and [MST] tokens for them).
  * Levels are counted from 0: level 0 sees every frame, level u every r^u-th frame starting at frame 0.
  * Direction of the level mask: the text lets an [MST] token aggregate the tokens of the finer levels (its summary
    is built from shorter-range summaries), the figure caption reads the other way. Default `"finer"` (level u
    sees levels < u); `"coarser"`, `"all"` and `"none"` are there to follow the other reading or ablate it.
  * [MST] tokens start from CLIP's class token plus small noise (converter `vidla-from-clip`; see there), so a level's
    V tokens differ and do not receive identical gradients; a randomly initialised model draws them like CLIP's class
    token.
  * Clips shorter than the batch are padded at the end and marked in `video_mask`; the stride counts from frame 0,
    so a padded clip gives the same outputs as the same clip alone.

Attention backends: every attention call dispatches through `ALL_ATTENTION_FUNCTIONS` (in `tower_attention.py`).
M is built by `transformers.masking_utils.create_bidirectional_mask` with `M` as an `and_mask_function`: an additive
float mask for eager, a bool mask for sdpa, a `BlockMask` for flex_attention. Flash kernels take no arbitrary mask:
on a flash backend the video tower runs only when M is full (one frame, no [MST] tokens) and otherwise raises,
naming the alternatives (sdpa, flex_attention, eager, or a per-tower choice that keeps flash for the text tower).
"""

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .configuration_vidla import VidLAConfig, VidLATextConfig, VidLAVisionConfig
from .tower_attention import AttentionBackendHints, TowerAttention, padding_mask_for
from .tower_blocks import ClipVisionEmbeddings, ClipVisionLayer


@dataclass
class VidLAOutput(ModelOutput):
    """
    Args:
        loss: symmetric InfoNCE loss (with `return_loss=True`).
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


def _is_flash(implementation: str | None) -> bool:
    return implementation is not None and "flash" in implementation


# --------------------------------------------------------------------------------------------------------------------
# Text tower (OpenAI CLIP's text transformer)
# --------------------------------------------------------------------------------------------------------------------


class ClipTextEmbeddings(nn.Module):
    """Token embedding + absolute position embedding."""

    def __init__(self, config: VidLATextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.LongTensor) -> torch.Tensor:
        length, limit = input_ids.shape[1], self.position_embedding.num_embeddings
        if length > limit:
            raise ValueError(
                f"text of {length} tokens is longer than the position table ({limit}); tokenize with "
                f"truncation=True, max_length={limit}."
            )
        return self.token_embedding(input_ids) + self.position_embedding.weight[:length]


class ClipTextLayer(ClipVisionLayer):
    """CLIP's pre-LN block with causal self-attention."""

    def __init__(self, config: VidLATextConfig):
        super().__init__(config)
        self.self_attn.is_causal = True  # sdpa/flash apply causality themselves when no explicit mask is passed


def _causal_mask(config, embeddings: torch.Tensor, padding_mask: torch.Tensor | None):
    """Causal + padding mask in the backend's format (transformers >= 5.24 names the cache argument `cache`, older
    versions `past_key_values`)."""
    parameters = inspect.signature(create_causal_mask).parameters
    extra = {("cache" if "cache" in parameters else "past_key_values"): None}
    if "cache_position" in parameters:
        extra["cache_position"] = torch.arange(embeddings.shape[1], device=embeddings.device)
    return create_causal_mask(config=config, inputs_embeds=embeddings, attention_mask=padding_mask, **extra)


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


class VidLAVideoLayer(ClipVisionLayer):
    """Spatially-local temporal attention over the patches (new weights), then CLIP's block under the mask M."""

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
        attention_mask: torch.Tensor | None = None,
        temporal_mask: torch.Tensor | None = None,
        num_frames: int = 1,
    ) -> torch.Tensor:
        if hasattr(self, "temporal_attn"):
            head, patches = hidden_states.split(
                [1 + self.num_mst_tokens, hidden_states.shape[1] - 1 - self.num_mst_tokens], 1
            )
            patches = self.temporal_mix(patches.unflatten(1, (num_frames, -1)), temporal_mask).flatten(1, 2)
            hidden_states = torch.cat([head, patches], dim=1)
        return super().forward(hidden_states, attention_mask)


def video_token_structure(config: VidLAVisionConfig, num_frames: int, num_patches: int, device=None) -> torch.Tensor:
    """The mask M as a `(L, L)` bool tensor (row = query, column = key), L = 1 + U·V + T·N; padding not included."""
    num_mst, per_level = config.num_mst_tokens, max(config.mst_tokens_per_level, 1)
    length = 1 + num_mst + num_frames * num_patches
    index = torch.arange(length, device=device)
    is_cls = index == 0
    is_mst = (index >= 1) & (index < 1 + num_mst)
    is_patch = index >= 1 + num_mst
    frame = torch.where(is_patch, (index - 1 - num_mst) // num_patches, -1)
    level = torch.where(is_mst, (index - 1) // per_level, -1)

    q, k = (slice(None), None), (None, slice(None))
    patch_row = is_cls[k] | (is_patch[k] & (frame[q] == frame[k]))
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


def video_attention_mask(
    config: VidLAVisionConfig, hidden_states: torch.Tensor, video_mask: torch.Tensor, num_patches: int
):
    """M plus frame padding, in the format `config._attn_implementation` expects (None when nothing is masked)."""
    num_frames = video_mask.shape[1]
    structure = video_token_structure(config, num_frames, num_patches, hidden_states.device)
    key_mask = torch.cat(
        [
            video_mask.new_ones(video_mask.shape[0], 1 + config.num_mst_tokens),
            video_mask.repeat_interleave(num_patches, 1),
        ],
        dim=1,
    )
    if bool(structure.all()) and bool(key_mask.all()):
        return None
    if _is_flash(config._attn_implementation):
        raise ValueError(
            f"VidLA's video attention needs its token mask (per-frame patches, [MST] levels, padded frames), which "
            f"{config._attn_implementation} cannot take. Load the model with attn_implementation='sdpa', "
            "'flex_attention' or 'eager', or keep flash for the text tower only: attn_implementation="
            "{'text_config': 'flash_attention_2', 'vision_config': 'sdpa', '': 'sdpa'}."
        )

    def in_structure(batch_idx, head_idx, q_idx, kv_idx):
        return structure[q_idx, kv_idx]

    return create_bidirectional_mask(
        config=config, inputs_embeds=hidden_states, attention_mask=key_mask, and_mask_function=in_structure
    )


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
    _no_split_modules = ["ClipTextEmbeddings", "ClipTextLayer", "VidLAVideoEmbeddings", "VidLAVideoLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """OpenAI CLIP's initialisation (scaled normals, see `ClipVisionLayer`); VidLA's new temporal positions and
        temporal output projections at zero, [MST] tokens drawn like CLIP's class token."""
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, VidLAVideoEmbeddings):
            width = module.class_embedding.shape[0]
            init.normal_(module.class_embedding, std=width**-0.5)
            init.normal_(module.position_embedding.weight, std=width**-0.5)
            init.normal_(module.patch_embedding.weight, std=std)
            init.zeros_(module.temporal_position_embedding)
            init.normal_(module.mst_embeddings, std=width**-0.5)
        elif isinstance(module, ClipTextEmbeddings):
            init.normal_(module.token_embedding.weight, std=0.02)
            init.normal_(module.position_embedding.weight, std=0.01)
        elif isinstance(module, nn.Linear):
            if getattr(module, "zero_init", False):
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, std=getattr(module, "init_std", std))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VidLAModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class VidLATextModel(VidLAPreTrainedModel):
    """CLIP's text transformer; `pooler_output` is the final-LayerNorm'd state at the end-of-text token."""

    config_class = VidLATextConfig
    base_model_prefix = "text_model"
    input_modalities = ("text",)

    def __init__(self, config: VidLATextConfig):
        super().__init__(config)
        self.embeddings = ClipTextEmbeddings(config)
        self.layers = nn.ModuleList([ClipTextLayer(config) for _ in range(config.num_hidden_layers)])
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

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
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        hidden_states = self.embeddings(input_ids)
        mask = _causal_mask(self.config, hidden_states, attention_mask)
        all_states = [hidden_states]
        for layer in self.layers:
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
    """½ [CE(text → video) + CE(video → text)], the matching pairs on the diagonal."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2


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
        return_loss (`bool`, optional): also return the symmetric InfoNCE loss (pairs matched by batch index).
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
