# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""Configurations of OpenAI CLIP's two towers, shared by the architectures built on CLIP (one source, symlinked into
each Hub folder that needs it). Each architecture subclasses them with its own `model_type` and additions; field
names are transformers' `CLIPTextConfig`/`CLIPVisionConfig` names, so a transformers CLIP config maps one to one.
"""

from transformers import PretrainedConfig


class ClipTextTowerConfig(PretrainedConfig):
    r"""Text tower (OpenAI CLIP's text transformer: causal pre-LN blocks, QuickGELU, pooled at the end-of-text token).

    Args:
        vocab_size (`int`, defaults to 49408): CLIP BPE vocabulary size.
        hidden_size (`int`, defaults to 512): width of the text tower.
        intermediate_size (`int`, defaults to 2048): MLP width.
        num_hidden_layers (`int`, defaults to 12): number of blocks.
        num_attention_heads (`int`, defaults to 8): attention heads per block.
        max_position_embeddings (`int`, defaults to 77): the longest text (rows of the position table).
        hidden_act (`str`, defaults to `"quick_gelu"`): MLP activation.
        layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon.
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities.
        initializer_range (`float`, defaults to 0.02): std of the token and position embeddings at initialisation.
        pad_token_id, bos_token_id, eos_token_id (`int`): CLIP's special tokens (1, 49406, 49407). The pooled text
            state is read at the first `eos_token_id` of each row (at the largest token id when `eos_token_id` is 2,
            as transformers does for configs written before its fix of that id).
    """

    base_config_key = "text_config"

    def __init__(
        self,
        vocab_size: int = 49408,
        hidden_size: int = 512,
        intermediate_size: int = 2048,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 8,
        max_position_embeddings: int = 77,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        pad_token_id: int = 1,
        bos_token_id: int = 49406,
        eos_token_id: int = 49407,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)


class ClipVisionTowerConfig(PretrainedConfig):
    r"""Vision tower (OpenAI CLIP's ViT: patch embedding, class token, pre-LN blocks, QuickGELU).

    Args:
        hidden_size (`int`, defaults to 768): ViT width.
        intermediate_size (`int`, defaults to 3072): MLP width.
        num_hidden_layers (`int`, defaults to 12): number of blocks.
        num_attention_heads (`int`, defaults to 12): attention heads per block.
        num_channels (`int`, defaults to 3): input channels.
        image_size (`int`, defaults to 224): input resolution the position table is built for.
        patch_size (`int`, defaults to 16): ViT patch size.
        hidden_act (`str`, defaults to `"quick_gelu"`): MLP activation.
        layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon.
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities.
        initializer_range (`float`, defaults to 0.02): std of the patch embedding and of new embeddings.
    """

    base_config_key = "vision_config"

    def __init__(
        self,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        num_channels: int = 3,
        image_size: int = 224,
        patch_size: int = 16,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_channels = num_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
