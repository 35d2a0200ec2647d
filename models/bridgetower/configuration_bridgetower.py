# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""BridgeTower configuration: a text tower, a vision tower and the cross-modal encoder joined by bridge layers.

Defaults are the paper's base model (Xu et al., AAAI 2023): RoBERTa-base text tower, CLIP ViT-B/16 vision tower,
6 cross-modal layers of hidden size 768.
"""

from transformers import PretrainedConfig

LINK_TOWER_TYPES = ("add", "scaled_add", "interpolate")
CONTRASTIVE_IMAGE_FEATURES = ("cross_modal_transform", "uni_modal")


class BridgeTowerTextConfig(PretrainedConfig):
    r"""Text tower (RoBERTa).

    Args:
        vocab_size (`int`, defaults to 50265): tokenizer vocabulary size.
        hidden_size (`int`, defaults to 768): width of the text tower.
        num_hidden_layers (`int`, defaults to 12): number of encoder layers.
        num_attention_heads (`int`, defaults to 12): attention heads per layer.
        intermediate_size (`int`, defaults to 3072): feed-forward width.
        hidden_act (`str`, defaults to `"gelu"`): feed-forward activation.
        hidden_dropout_prob (`float`, defaults to 0.1): dropout on embeddings and residual branches.
        attention_probs_dropout_prob (`float`, defaults to 0.1): dropout on attention probabilities.
        max_position_embeddings (`int`, defaults to 514): rows of the position table (RoBERTa offsets positions by
            `pad_token_id + 1`, so the longest text is `max_position_embeddings - pad_token_id - 1` tokens).
        type_vocab_size (`int`, defaults to 1): rows of the text token-type table.
        layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon.
        pad_token_id, bos_token_id, eos_token_id (`int`): RoBERTa's special tokens (1, 0, 2).
    """

    model_type = "towerzoo_bridgetower_text"
    base_config_key = "text_config"

    def __init__(
        self,
        vocab_size: int = 50265,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 514,
        type_vocab_size: int = 1,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        pad_token_id: int = 1,
        bos_token_id: int = 0,
        eos_token_id: int = 2,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)


class BridgeTowerVisionConfig(PretrainedConfig):
    r"""Vision tower (OpenAI CLIP ViT: pre-LN blocks with QuickGELU).

    Args:
        hidden_size (`int`, defaults to 768): ViT width.
        num_hidden_layers (`int`, defaults to 12): number of ViT blocks.
        num_attention_heads (`int`, defaults to 12): attention heads (CLIP uses width / 64).
        intermediate_size (`int`, defaults to 3072): MLP width (4 x width in CLIP).
        hidden_act (`str`, defaults to `"quick_gelu"`): MLP activation.
        image_size (`int`, defaults to 288): input resolution the position table is built for.
        patch_size (`int`, defaults to 16): ViT patch size.
        num_channels (`int`, defaults to 3): input channels.
        layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon.
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities.
        share_layernorm (`bool`, defaults to `True`): `False` adds one post-LayerNorm per ViT block (`ln_separate` in
            the original and transformers). Both references route the cross-modal encoder through the shared
            post-LayerNorm regardless; towerzoo does the same, and uses the last separate norm only where the original
            does: the uni-modal image features of the original ITC head.
    """

    model_type = "towerzoo_bridgetower_vision"
    base_config_key = "vision_config"

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "quick_gelu",
        image_size: int = 288,
        patch_size: int = 16,
        num_channels: int = 3,
        layer_norm_eps: float = 1e-5,
        attention_dropout: float = 0.0,
        share_layernorm: bool = True,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.layer_norm_eps = layer_norm_eps
        self.attention_dropout = attention_dropout
        self.share_layernorm = share_layernorm
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


class BridgeTowerConfig(PretrainedConfig):
    r"""BridgeTower: uni-modal towers, bridge layers and the cross-modal encoder, plus the task heads' sizes.

    Args:
        text_config (`dict` or `BridgeTowerTextConfig`): the text tower.
        vision_config (`dict` or `BridgeTowerVisionConfig`): the vision tower.
        hidden_size (`int`, defaults to 768): width of the cross-modal encoder.
        num_hidden_layers (`int`, defaults to 6): cross-modal layers; also how many top uni-modal layers feed them.
        num_attention_heads (`int`, defaults to 12): attention heads in the cross-modal layers.
        intermediate_size (`int`, defaults to 3072): feed-forward width of the cross-modal layers.
        hidden_act (`str`, defaults to `"gelu"`): activation of the cross-modal layers and the MLM head.
        hidden_dropout_prob, attention_probs_dropout_prob (`float`, defaults to 0.1): cross-modal dropouts.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of the cross-modal layers and the MLM head (the original
            code builds them from a `RobertaConfig`, whose default is 1e-12).
        link_tower_layer_norm_eps (`float`, defaults to 1e-5): epsilon of the bridge (link tower) LayerNorms and of
            the two LayerNorms in front of the first cross-modal layer.
        link_tower_type (`str`, defaults to `"add"`): bridge layer, one of `add` (LN(x + y)), `scaled_add`
            (LN(s·x + y), learned s) or `interpolate` (LN((1-β)·x + β·y), learned β).
        share_link_tower_layers (`bool`, defaults to `False`): one bridge layer per modality reused at every depth.
        share_cross_modal_transformer_layers (`bool`, defaults to `True`): one Linear per modality projecting every
            routed uni-modal layer into the cross-modal width (`False`: one Linear per depth).
        num_token_types (`int`, defaults to 2): rows of the modality-type table (0 text, 1 image); 3 for NLVR2, whose
            two images use types 1 and 2.
        task_head_layers (`int`, defaults to 2): depth of the VQA/SNLI-VE/NLVR2 classifiers (1 or 2).
        head_hidden_scale (`float`, defaults to 2): the 2-layer classifiers are `int(2·hidden_size·head_hidden_scale)` wide.
        contrastive_hidden_size (`int`, defaults to 512): width of the ITC embeddings (the original uses 256).
        contrastive_image_features (`str`, defaults to `"cross_modal_transform"`): what the ITC image head reads:
            `uni_modal` is the original (last ViT block after its post-LayerNorm), `cross_modal_transform` is
            transformers' port (the same, then the cross-modal image transform plus the image type embedding).
        contrastive_cross_modal_head (`bool`, defaults to `True`): add transformers' third ITC head on the pooled
            cross-modal features (the original has none).
        logit_scale_init_value (`float`, defaults to 2.6592): initial log of the ITC logit scale (1/temperature).
        pretraining_heads (`list[str]`, defaults to `["mlm", "itm"]`): the heads `BridgeTowerForPreTraining` holds,
            any of "mlm", "itm", "itc" (the paper pre-trains with MLM and ITM).
        tie_word_embeddings (`bool`, defaults to `False`): tie the MLM decoder to the word embeddings (the original
            does not).
        initializer_range (`float`, defaults to 0.02): std of the normal init of new Linear/Embedding weights.
        id2label / label2id: the classifier's labels (VQAv2: the 3129 answers; SNLI-VE: 3 classes; NLVR2: 2).
    """

    model_type = "towerzoo_bridgetower"
    sub_configs = {"text_config": BridgeTowerTextConfig, "vision_config": BridgeTowerVisionConfig}

    def __init__(
        self,
        text_config: dict | BridgeTowerTextConfig | None = None,
        vision_config: dict | BridgeTowerVisionConfig | None = None,
        hidden_size: int = 768,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        layer_norm_eps: float = 1e-5,
        link_tower_layer_norm_eps: float = 1e-5,
        link_tower_type: str = "add",
        share_link_tower_layers: bool = False,
        share_cross_modal_transformer_layers: bool = True,
        num_token_types: int = 2,
        task_head_layers: int = 2,
        head_hidden_scale: float = 2,
        contrastive_hidden_size: int = 512,
        contrastive_image_features: str = "cross_modal_transform",
        contrastive_cross_modal_head: bool = True,
        logit_scale_init_value: float = 2.6592,
        pretraining_heads: list[str] | None = None,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        if isinstance(text_config, BridgeTowerTextConfig):
            text_config = text_config.to_dict()
        if isinstance(vision_config, BridgeTowerVisionConfig):
            vision_config = vision_config.to_dict()
        self.text_config = BridgeTowerTextConfig(**(text_config or {}))
        self.vision_config = BridgeTowerVisionConfig(**(vision_config or {}))
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.link_tower_layer_norm_eps = link_tower_layer_norm_eps
        self.link_tower_type = link_tower_type
        self.share_link_tower_layers = share_link_tower_layers
        self.share_cross_modal_transformer_layers = share_cross_modal_transformer_layers
        self.num_token_types = num_token_types
        self.task_head_layers = task_head_layers
        self.head_hidden_scale = head_hidden_scale
        self.contrastive_hidden_size = contrastive_hidden_size
        self.contrastive_image_features = contrastive_image_features
        self.contrastive_cross_modal_head = contrastive_cross_modal_head
        self.logit_scale_init_value = logit_scale_init_value
        self.pretraining_heads = list(pretraining_heads) if pretraining_heads is not None else ["mlm", "itm"]
        self.tie_word_embeddings = tie_word_embeddings
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_bridgetower()

    def validate_bridgetower(self) -> None:
        """Raise a ValueError naming the field and the fix when the options cannot build a model."""
        if self.link_tower_type not in LINK_TOWER_TYPES:
            raise ValueError(f"link_tower_type must be one of {LINK_TOWER_TYPES}, got {self.link_tower_type!r}.")
        if self.contrastive_image_features not in CONTRASTIVE_IMAGE_FEATURES:
            raise ValueError(
                f"contrastive_image_features must be one of {CONTRASTIVE_IMAGE_FEATURES}, "
                f"got {self.contrastive_image_features!r}."
            )
        unknown_heads = set(self.pretraining_heads) - {"mlm", "itm", "itc"}
        if unknown_heads:
            raise ValueError(f"pretraining_heads may hold 'mlm', 'itm', 'itc'; got {sorted(unknown_heads)}.")
        if self.num_token_types not in (2, 3):
            raise ValueError(f"num_token_types must be 2 or 3 (3 for NLVR2), got {self.num_token_types}.")
        self.validate_routing()

    def validate_routing(self) -> None:
        """Each cross-modal layer is fed by one top uni-modal layer of each tower."""
        for name, tower in (("text_config", self.text_config), ("vision_config", self.vision_config)):
            if not 1 <= self.num_hidden_layers <= tower.num_hidden_layers:
                raise ValueError(
                    f"num_hidden_layers={self.num_hidden_layers} cross-modal layers need as many {name} layers to "
                    f"feed them, but {name}.num_hidden_layers={tower.num_hidden_layers}; lower num_hidden_layers "
                    "or deepen the tower."
                )
