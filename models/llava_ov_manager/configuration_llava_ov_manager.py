# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""LLaVA-OV-Manager configuration: transformers' `LlavaOnevisionConfig` plus the managers (Xu et al., "Manager:
Aggregating Insights from Unimodal Experts in Two-Tower VLMs and MLLMs", arXiv 2506.11515; code LooperXX/LLaVA-OV-Manager).

Defaults are the released models' (`mm_manager_type="static_zerouni"`, `mm_manager_grid_type="all"`): managers before
language-model layers 0, 4, 8, 12, 16, 20 aggregating SigLIP layers 13 … 25.
"""

from transformers import LlavaOnevisionConfig

MANAGER_TYPES = ("static", "none")
MANAGER_GRIDS = ("all", "main")


class LlavaOnevisionManagerConfig(LlavaOnevisionConfig):
    r"""LLaVA-OneVision (every field of transformers' `LlavaOnevisionConfig`) with managers.

    Args:
        manager_type (`str`, defaults to `"static"`): `"static"`, the released models' static manager (learned
            per-layer, per-channel weights, zero-initialised, no softmax); `"none"` switches the managers off (the
            model is LLaVA-OneVision).
        manager_vision_layers (`list[int]`, defaults to 13 … 25): the vision tower's `hidden_states` indices
            (0 = embeddings, i = after layer i) the managers aggregate, each projected by the shared projector plus a
            learned layer embedding.
        manager_llm_layers (`list[int]`, defaults to [0, 4, 8, 12, 16, 20]): the language-model layers a manager
            runs before (it adds to the hidden states at the image tokens).
        manager_first_drops_last (`bool`, defaults to True): the manager before layer 0 aggregates all but the last of
            `manager_vision_layers`, as the original code does.
        manager_grid (`str`, defaults to `"all"`): which image tokens get the manager's output: `"all"` every image
            token (base view, AnyRes grid tiles and newline tokens), `"main"` only the base view's.
        manager_jitter (`float`, defaults to 0.01): training-time multiplicative jitter U[1 ± jitter] on the weights.
    """

    model_type = "towerzoo_llava_ov_manager"

    def __init__(
        self,
        manager_type: str = "static",
        manager_vision_layers: list[int] | None = None,
        manager_llm_layers: list[int] | None = None,
        manager_first_drops_last: bool = True,
        manager_grid: str = "all",
        manager_jitter: float = 0.01,
        **kwargs,
    ):
        if manager_type not in MANAGER_TYPES:
            raise ValueError(f"manager_type must be one of {MANAGER_TYPES}, got {manager_type!r}.")
        if manager_grid not in MANAGER_GRIDS:
            raise ValueError(f"manager_grid must be one of {MANAGER_GRIDS}, got {manager_grid!r}.")
        self.manager_type = manager_type
        self.manager_vision_layers = list(range(13, 26) if manager_vision_layers is None else manager_vision_layers)
        self.manager_llm_layers = list([0, 4, 8, 12, 16, 20] if manager_llm_layers is None else manager_llm_layers)
        self.manager_first_drops_last = manager_first_drops_last
        self.manager_grid = manager_grid
        self.manager_jitter = manager_jitter
        super().__init__(**kwargs)
        vision_layers, llm_layers = self.vision_config.num_hidden_layers, self.text_config.num_hidden_layers
        if manager_type != "none":
            if not self.manager_vision_layers or not all(0 <= i <= vision_layers for i in self.manager_vision_layers):
                raise ValueError(
                    f"manager_vision_layers must be hidden-state indices within 0 … {vision_layers}, got "
                    f"{self.manager_vision_layers}."
                )
            if not all(0 <= i < llm_layers for i in self.manager_llm_layers):
                raise ValueError(
                    f"manager_llm_layers must be within 0 … {llm_layers - 1}, got {self.manager_llm_layers}."
                )
