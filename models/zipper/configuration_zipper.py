# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""Zipper configuration: two decoder towers (text and speech) zipped with gated cross-attention (Zayats et al.,
"Zipper: A Multi-Tower Decoder Architecture for Fusing Modalities", arXiv 2405.18669)."""

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

INPUT_PROJECTIONS = ("gated", "replace", "none")


def _sub_config(value, name: str) -> PretrainedConfig:
    if isinstance(value, PretrainedConfig):
        return value
    if value is None:
        return CONFIG_MAPPING["llama"]()
    if "model_type" not in value:
        raise ValueError(f"{name} needs a `model_type` (the decoder's transformers architecture, e.g. 'llama').")
    return CONFIG_MAPPING[value["model_type"]](**{k: v for k, v in value.items() if k != "model_type"})


class ZipperConfig(PretrainedConfig):
    r"""Zipper. See `modeling_zipper.py` for the equations.

    Args:
        text_config (`dict` or `PretrainedConfig`): the text tower, a transformers causal LM config (e.g. Llama's);
            any width and depth. Its `bos_token_id`/`eos_token_id` delimit text.
        speech_config (`dict` or `PretrainedConfig`): the speech tower over discrete speech units; any width and
            depth. Its `bos_token_id`/`eos_token_id`/`pad_token_id` are the speech specials (the processor's).
        text_cross_attention_interval (`int`, defaults to 1): i_A; every i_A-th block of the text tower (blocks
            i_A, 2·i_A, … counted from 1) is followed by a gated cross-attention to the speech tower.
        speech_cross_attention_interval (`int`, defaults to 1): i_B, the same for the speech tower.
        cross_attention_heads (`int`, optional): heads of each cross-attention (default: the attending tower's
            `num_attention_heads`).
        input_projection (`str`, defaults to `"gated"`): the paper's input MLP after each tower's embeddings.
            `"replace"`: h⁰ = ReLU(W e + b), as the paper writes it; `"gated"`: h⁰ = e + tanh(β)·ReLU(W e + b) with β
            starting at 0, so a zipped tower starts as its source decoder; `"none"`: h⁰ = e.
        gate_init (`float`, defaults to 0.0): starting value of the cross-attention gates α (and of β); the block
            adds tanh(α)·CrossAttention(…), so 0 leaves each tower exactly its source decoder.
        freeze_text_tower, freeze_speech_tower (`bool`, defaults to False): keep a tower's own weights
            (embeddings, blocks, LM head) fixed; the cross-attention blocks and input projections still train.
        initializer_range (`float`, defaults to 0.02): std of the new (cross-attention, projection) weights.
    """

    model_type = "towerzoo_zipper"
    sub_configs = {"text_config": AutoConfig, "speech_config": AutoConfig}

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        speech_config: dict | PretrainedConfig | None = None,
        text_cross_attention_interval: int = 1,
        speech_cross_attention_interval: int = 1,
        cross_attention_heads: int | None = None,
        input_projection: str = "gated",
        gate_init: float = 0.0,
        freeze_text_tower: bool = False,
        freeze_speech_tower: bool = False,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.text_config = _sub_config(text_config, "text_config")
        self.speech_config = _sub_config(speech_config, "speech_config")
        if input_projection not in INPUT_PROJECTIONS:
            raise ValueError(f"input_projection must be one of {INPUT_PROJECTIONS}, got {input_projection!r}.")
        for name, interval, tower in (
            ("text_cross_attention_interval", text_cross_attention_interval, self.text_config),
            ("speech_cross_attention_interval", speech_cross_attention_interval, self.speech_config),
        ):
            if not 1 <= interval <= tower.num_hidden_layers:
                raise ValueError(
                    f"{name} must be within 1 … {tower.num_hidden_layers} (the tower's depth), got {interval}."
                )
        self.text_cross_attention_interval = text_cross_attention_interval
        self.speech_cross_attention_interval = speech_cross_attention_interval
        self.cross_attention_heads = cross_attention_heads
        self.input_projection = input_projection
        self.gate_init = gate_init
        self.freeze_text_tower = freeze_text_tower
        self.freeze_speech_tower = freeze_speech_tower
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
