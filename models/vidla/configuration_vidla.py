# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""VidLA configuration: a CLIP text tower and a CLIP ViT video tower with hierarchical temporal attention.

Defaults are the paper's B/16 model (Rizve et al., "VidLA: Video-Language Alignment at Scale", CVPR 2024): OpenAI
CLIP ViT-B/16 towers, U = 3 levels of V = 4 multi-scale temporal ([MST]) tokens with temporal scale r = 2.
"""

from transformers import PretrainedConfig

from .clip_configuration import ClipTextTowerConfig, ClipVisionTowerConfig

MST_LEVEL_ATTENTION = ("finer", "coarser", "all", "none")
ATTENTION_LAYOUTS = ("blocked", "dense")


class VidLATextConfig(ClipTextTowerConfig):
    r"""Text tower: OpenAI CLIP's text transformer, unchanged (fields: `ClipTextTowerConfig`)."""

    model_type = "towerzoo_vidla_text_model"

    def __init__(self, **kwargs):  # transformers makes configs dataclasses: an inherited __init__ needs restating
        super().__init__(**kwargs)


class VidLAVisionConfig(ClipVisionTowerConfig):
    r"""Video tower: OpenAI CLIP's ViT applied to every frame, with VidLA's temporal modelling (paper Sec. 4).

    The token sequence is `[CLS]`, then `mst_num_levels * mst_tokens_per_level` [MST] tokens, then the patches of
    every frame (frame-major). See `modeling_vidla.py` for the equations and the attention masks.

    Args (besides CLIP's ViT fields, `ClipVisionTowerConfig`; `num_attention_heads` also sets the temporal
    attention's heads and `image_size` is the frame resolution):
        num_frames (`int`, defaults to 32): rows of the temporal position table, i.e. the most frames a clip may have
            (the paper samples 12 frames in pre-training, Sec. 5, and 32 in retrieval fine-tuning, App. A.2).
        temporal_attention (`bool`, defaults to `True`): run the spatially-local temporal attention (each patch
            attends to the patches at the same spatial position in the other frames) before CLIP's attention in
            every block. Its output projection starts at zero, so it is neutral until trained.
        mst_num_levels (`int`, defaults to 3): U, the number of [MST] token levels.
        mst_tokens_per_level (`int`, defaults to 4): V, [MST] tokens per level. 0 (or `mst_num_levels=0`) switches
            the [MST] tokens off.
        mst_temporal_scale (`int`, defaults to 2): r; the tokens of level u (u = 0 … U-1) see the patches of frames
            0, r^u, 2 r^u, … (level 0 sees every frame).
        mst_level_attention (`str`, defaults to `"finer"`): which other levels' [MST] tokens an [MST] token sees
            (always its own level's): `"finer"` the levels below it (smaller index, denser frames: the paper's mask
            equation in Sec. 4), `"coarser"` the levels above it (the reading of the paper's Fig. 3 caption), `"all"`
            every level, `"none"` none. See `modeling_vidla.py`.
        patches_attend_to_mst (`bool`, defaults to `True`): patches also see every [MST] token in CLIP's attention
            (besides the patches of their own frame), as the paper does.
        patches_attend_to_cls (`bool`, defaults to `True`): patches also see `[CLS]` in CLIP's attention, as the
            paper's mask equation (Sec. 4) and CLIP do; `False` follows the paper's prose, which keeps [CLS] from
            patches. See `modeling_vidla.py`.
        attention_layout (`str`, defaults to `"blocked"`): how CLIP's attention under the VidLA mask is computed;
            both layouts give the same outputs. `"blocked"`: the patches of each frame attend to their frame and to
            the [CLS]/[MST] tokens they may see, all frames as one batch and without a mask (so every backend runs
            it, flash included), and the few [CLS]/[MST] rows attend to their allowed keys; cost linear in the number
            of frames. `"dense"`: one attention over all `1 + U·V + T·N` tokens under the full mask, quadratic in the
            number of frames and not available on flash backends; the reference the blocked layout is tested against.
    """

    model_type = "towerzoo_vidla_vision_model"

    def __init__(
        self,
        num_frames: int = 32,
        temporal_attention: bool = True,
        mst_num_levels: int = 3,
        mst_tokens_per_level: int = 4,
        mst_temporal_scale: int = 2,
        mst_level_attention: str = "finer",
        patches_attend_to_mst: bool = True,
        patches_attend_to_cls: bool = True,
        attention_layout: str = "blocked",
        **kwargs,
    ):
        if mst_level_attention not in MST_LEVEL_ATTENTION:
            raise ValueError(f"mst_level_attention must be one of {MST_LEVEL_ATTENTION}, got {mst_level_attention!r}.")
        if attention_layout not in ATTENTION_LAYOUTS:
            raise ValueError(f"attention_layout must be one of {ATTENTION_LAYOUTS}, got {attention_layout!r}.")
        if mst_temporal_scale < 1 or num_frames < 1 or mst_num_levels < 0 or mst_tokens_per_level < 0:
            raise ValueError(
                "num_frames and mst_temporal_scale must be >= 1, mst_num_levels and mst_tokens_per_level >= 0; got "
                f"{num_frames}, {mst_temporal_scale}, {mst_num_levels}, {mst_tokens_per_level}."
            )
        self.num_frames = num_frames
        self.temporal_attention = temporal_attention
        self.mst_num_levels = mst_num_levels
        self.mst_tokens_per_level = mst_tokens_per_level
        self.mst_temporal_scale = mst_temporal_scale
        self.mst_level_attention = mst_level_attention
        self.patches_attend_to_mst = patches_attend_to_mst
        self.patches_attend_to_cls = patches_attend_to_cls
        self.attention_layout = attention_layout
        super().__init__(**kwargs)

    @property
    def num_mst_tokens(self) -> int:
        """U·V, the number of [MST] tokens (0 when they are switched off)."""
        return self.mst_num_levels * self.mst_tokens_per_level


class VidLAConfig(PretrainedConfig):
    r"""VidLA: two towers aligned by a symmetric InfoNCE loss in a shared embedding space.

    Args:
        text_config (`dict` or `VidLATextConfig`): the text tower.
        vision_config (`dict` or `VidLAVisionConfig`): the video tower; it carries the temporal settings
            (`num_frames`, `temporal_attention`, the [MST] token options) because the tower reads them.
        projection_dim (`int`, defaults to 512): width of the shared embedding space.
        logit_scale_init_value (`float`, defaults to 2.6592): initial log of the inverse temperature (CLIP's
            log(1 / 0.07)); the temperature is learned.
    """

    model_type = "towerzoo_vidla"
    sub_configs = {"text_config": VidLATextConfig, "vision_config": VidLAVisionConfig}

    def __init__(
        self,
        text_config: dict | VidLATextConfig | None = None,
        vision_config: dict | VidLAVisionConfig | None = None,
        projection_dim: int = 512,
        logit_scale_init_value: float = 2.6592,
        **kwargs,
    ):
        if not isinstance(text_config, VidLATextConfig):
            text_config = VidLATextConfig(**(text_config or {}))
        if not isinstance(vision_config, VidLAVisionConfig):
            vision_config = VidLAVisionConfig(**(vision_config or {}))
        self.text_config = text_config
        self.vision_config = vision_config
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        super().__init__(**kwargs)
