# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""RESTORE configuration: CLIP's two towers with coupled multimodal prompts, surgery adapters and the feature-shift
consistency loss (Yang et al., "RESTORE: Towards Feature Shift for Vision-Language Prompt Learning", ECCV 2024).

Defaults are the paper's setting: OpenAI CLIP ViT-B/16, 2 context tokens initialised from "a photo of a", prompts in
the first 9 layers of both towers, surgery ratios 0.1, consistency weight 1.
"""

from transformers import PretrainedConfig

from .clip_configuration import ClipTextTowerConfig, ClipVisionTowerConfig

FEATURE_SHIFT_LOSSES = ("prompt_gram", "embedding", "none")
PROMPT_INITS = ("template", "random")


class RestoreTextConfig(ClipTextTowerConfig):
    r"""Text tower: OpenAI CLIP's text transformer (fields: `ClipTextTowerConfig`)."""

    model_type = "towerzoo_restore_text_model"

    def __init__(self, **kwargs):  # transformers makes configs dataclasses: an inherited __init__ needs restating
        super().__init__(**kwargs)


class RestoreVisionConfig(ClipVisionTowerConfig):
    r"""Vision tower: OpenAI CLIP's ViT (fields: `ClipVisionTowerConfig`)."""

    model_type = "towerzoo_restore_vision_model"

    def __init__(self, **kwargs):  # transformers makes configs dataclasses: an inherited __init__ needs restating
        super().__init__(**kwargs)


class RestoreConfig(PretrainedConfig):
    r"""RESTORE around a CLIP model. See `modeling_restore.py` for the equations.

    Args:
        text_config (`dict` or `RestoreTextConfig`): the CLIP text tower.
        vision_config (`dict` or `RestoreVisionConfig`): the CLIP vision tower.
        projection_dim (`int`, defaults to 512): width of the joint embedding space.
        logit_scale_init_value (`float`, defaults to 2.6592): initial log of the logit scale (CLIP's log(1/0.07)).
        classnames (`list[str]`): the classes the classifier scores, in label order (`id2label` mirrors them). The
            model holds their tokenised prompts; `RestoreForImageClassification.set_classnames` changes them.
        prompt_template (`str`, defaults to `"a photo of a {}."`): the class-name prompt; `{}` is the class name.
            Its first `num_prompt_tokens` tokens are the positions the learned text context takes.
        num_prompt_tokens (`int`, defaults to 2): n, learned context tokens per prompted layer in each tower. 0
            switches prompting off (the model is CLIP with the template prompts and, possibly, surgery).
        prompt_depth (`int`, defaults to 9): J, the number of layers of each tower that get prompts (layer 0's come
            in with the input, layers 1 … J-1 get their own). 0 switches prompting off.
        prompt_init (`str`, defaults to `"template"`): how the text context starts: `"template"` = the token
            embeddings of the template's first n tokens (so the prompted text starts as the template; needs n no
            larger than the number of template tokens before `{}`), `"random"` = N(0, 0.02²).
        surgery (`bool`, defaults to `True`): the surgery blocks on both towers' output embeddings.
        surgery_hidden_size (`int`, defaults to 2048): hidden width of the surgery feed-forward (4 × 512 in the paper).
        surgery_ratio_text, surgery_ratio_vision (`float`, defaults to 0.1): r_t, r_v, the surgery's initial mixing
            ratios (the official scripts use 0.01-0.15 per dataset). The current ratios live in the model (they are
            raised once during training, see `surgery_bump_*`).
        surgery_bump_text, surgery_bump_vision (`float`, defaults to 0.02 and 0.005): the one-off raise of the ratios
            (official code, at epoch max_epoch // 3): r += bump × mean over prompted layers of ‖PᵀP‖_F.
        surgery_zero_init (`bool`, defaults to `True`): start the surgery's output projection at zero, so the block
            is the identity until trained (the official code uses PyTorch's default init, a small random
            perturbation scaled by r; `False` reproduces that).
        feature_shift_loss (`str`, defaults to `"prompt_gram"`): the consistency term. `"prompt_gram"`: the official
            code's per-layer proxy on the prompts; `"embedding"`: the paper's definition on the towers' output
            embeddings against the frozen CLIP features of the same inputs; `"none"`.
        feature_shift_loss_weight (`float`, defaults to 1.0): λ (0.5 for DTD in the official scripts).
        freeze_clip (`bool`, defaults to `True`): only prompts and surgery blocks train; CLIP's weights (towers,
            projections, logit scale) get `requires_grad=False`.
        base_model_name_or_path (`str`, optional): the CLIP checkpoint (folder or Hub id of a transformers
            `CLIPModel`) the model was built from; an adapters-only folder loads CLIP's weights from it.
    """

    model_type = "towerzoo_restore"
    sub_configs = {"text_config": RestoreTextConfig, "vision_config": RestoreVisionConfig}

    def __init__(
        self,
        text_config: dict | RestoreTextConfig | None = None,
        vision_config: dict | RestoreVisionConfig | None = None,
        projection_dim: int = 512,
        logit_scale_init_value: float = 2.6592,
        classnames: list[str] | None = None,
        prompt_template: str = "a photo of a {}.",
        num_prompt_tokens: int = 2,
        prompt_depth: int = 9,
        prompt_init: str = "template",
        surgery: bool = True,
        surgery_hidden_size: int = 2048,
        surgery_ratio_text: float = 0.1,
        surgery_ratio_vision: float = 0.1,
        surgery_bump_text: float = 0.02,
        surgery_bump_vision: float = 0.005,
        surgery_zero_init: bool = True,
        feature_shift_loss: str = "prompt_gram",
        feature_shift_loss_weight: float = 1.0,
        freeze_clip: bool = True,
        base_model_name_or_path: str | None = None,
        **kwargs,
    ):
        if isinstance(text_config, dict) or text_config is None:
            text_config = RestoreTextConfig(**(text_config or {}))
        if isinstance(vision_config, dict) or vision_config is None:
            vision_config = RestoreVisionConfig(**(vision_config or {}))
        if feature_shift_loss not in FEATURE_SHIFT_LOSSES:
            raise ValueError(f"feature_shift_loss must be one of {FEATURE_SHIFT_LOSSES}, got {feature_shift_loss!r}.")
        if prompt_init not in PROMPT_INITS:
            raise ValueError(f"prompt_init must be one of {PROMPT_INITS}, got {prompt_init!r}.")
        if prompt_template.count("{}") != 1:
            raise ValueError(
                f"prompt_template must hold exactly one '{{}}' for the class name, got {prompt_template!r}."
            )
        layers = min(text_config.num_hidden_layers, vision_config.num_hidden_layers)
        if num_prompt_tokens < 0 or prompt_depth < 0 or (num_prompt_tokens and prompt_depth > layers):
            raise ValueError(
                f"num_prompt_tokens must be >= 0 and prompt_depth within 0 … {layers} (the towers' depth); got "
                f"{num_prompt_tokens} and {prompt_depth}."
            )
        classnames = list(classnames or [])
        self.text_config = text_config
        self.vision_config = vision_config
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.classnames = classnames
        self.prompt_template = prompt_template
        self.num_prompt_tokens = num_prompt_tokens
        self.prompt_depth = prompt_depth
        self.prompt_init = prompt_init
        self.surgery = surgery
        self.surgery_hidden_size = surgery_hidden_size
        self.surgery_ratio_text = surgery_ratio_text
        self.surgery_ratio_vision = surgery_ratio_vision
        self.surgery_bump_text = surgery_bump_text
        self.surgery_bump_vision = surgery_bump_vision
        self.surgery_zero_init = surgery_zero_init
        self.feature_shift_loss = feature_shift_loss
        self.feature_shift_loss_weight = feature_shift_loss_weight
        self.freeze_clip = freeze_clip
        self.base_model_name_or_path = base_model_name_or_path
        if classnames:
            kwargs["id2label"] = dict(enumerate(classnames))
        super().__init__(**kwargs)

    @property
    def prompted(self) -> bool:
        """Whether the towers get learned prompts at all."""
        return self.num_prompt_tokens > 0 and self.prompt_depth > 0
