# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
r"""LLaVA-OV-Manager (Xu et al., "Manager: Aggregating Insights from Unimodal Experts in Two-Tower VLMs and MLLMs",
arXiv 2506.11515) on transformers' LLaVA-OneVision: the vision tower, projector, language model, generation and
processor are transformers' own classes (`LlavaOnevisionModel`, `LlavaOnevisionForConditionalGeneration`,
`LlavaOnevisionProcessor`), subclassed, not copied; the manager is ManagerTower's `Manager` module (`manager.py`).

Sources. The stored paper pages hold the abstract only ("managers" aggregating the uni-modal experts' insights, in
MLLMs combined with the multi-grid algorithm, 20 datasets); the method is implemented from the authors' code
(LooperXX/LLaVA-OV-Manager: `llava/model/manager/{manager,builder}.py`, `llava_arch.py`, `language_model/
modeling_qwen2.py`, `multimodal_encoder/siglip_encoder.py`, the released config and scripts).

1. Experts: the vision tower's hidden states V_u at `manager_vision_layers` u (13 … 25 of SigLIP-so400m, 0 =
   embeddings) each go through the SHARED projector P and get a learned layer embedding e_u (a (U, D) table, drawn
   N(0, 1/D)): E_u = P(V_u) + e_u. Each E_u is then laid out exactly as the main image features are (transformers'
   `pack_image_features`: AnyRes tiles unpadded, the `image_newline` appended per row, the base view first), so
   token t of E_u sits at the t-th image token of the prompt. Newline tokens carry the plain newline (no e_u), as the
   original.
2. Managers (released type "static_zerouni"): before language-model layer l ∈ `manager_llm_layers` (0, 4, …, 20),
        h[image tokens] ← h[image tokens] + Σ_u w_{l,u} ⊙ E_u
   with w_l ∈ R^{U×D} learned, zero-initialised (the model starts as LLaVA-OneVision), no softmax, multiplied
   elementwise by U[0.99, 1.01] jitter in training. The manager before layer 0 (added to the input embeddings)
   drops the last expert, as the original code does (`manager_first_drops_last`). `manager_grid="main"` restricts
   the addition to the base view's tokens.
3. Generation: the managers run in the prefill pass only (the image tokens' states then live in the KV cache), as
   the original. transformers' `generate` computes the image features once through `get_image_features`, which here
   also returns the experts (`manager_features`); decode steps carry no image tokens.
Not implemented: the adaptive managers of the code (scores generated from the LLM's hidden states behind a
zero-initialised gate; the released models are static) and the original's multi-image indexing (729 tokens per image
without newline): multi-image prompts follow transformers' LLaVA-OneVision layout.

The managers are attached to the language model's decoder layers as forward pre-hooks registered at construction;
they act only when the call carries a `manager_context` keyword (transformers passes extra keywords down to the
layers), so the language model is transformers' own, run by its own forward on every attention backend.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel
from transformers import initialization as init
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionPreTrainedModel,
    image_size_to_num_patches,
)

from .configuration_llava_ov_manager import LlavaOnevisionManagerConfig
from .manager import Manager


@dataclass
class ManagerContext:
    """What the manager hooks need during one prefill: the experts per image token and where the image tokens are."""

    managers: nn.ModuleDict
    experts: torch.Tensor  # (image tokens, U, D), in the order the image tokens appear
    image_mask: torch.Tensor  # (batch, length) bool


def _manager_hook(module: nn.Module, args, kwargs):
    """Forward pre-hook on a decoder layer: adds its manager's output at the image tokens when the call carries a
    `manager_context`."""
    context: ManagerContext | None = kwargs.get("manager_context")
    key = str(module.manager_layer)
    if context is None or key not in context.managers:
        return None
    manager = context.managers[key]
    hidden_states = args[0] if args else kwargs["hidden_states"]
    if hidden_states.shape[1] != context.image_mask.shape[1]:
        return None  # not the prefill of this prompt (e.g. a continued cache): no image tokens here
    experts = context.experts[:, : manager.num_experts].to(hidden_states.dtype)
    added = manager(experts.transpose(0, 1).unsqueeze(0))[0]  # (image tokens, D)
    mask = context.image_mask.to(hidden_states.device)
    updated = hidden_states.masked_scatter(mask.unsqueeze(-1), hidden_states[mask] + added.to(hidden_states.dtype))
    if args:
        return (updated, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": updated}


class LlavaOnevisionManagerModel(LlavaOnevisionModel):
    """transformers' `LlavaOnevisionModel` with managers before some language-model layers."""

    config_class = LlavaOnevisionManagerConfig

    def __init__(self, config: LlavaOnevisionManagerConfig):
        super().__init__(config)
        width = config.text_config.hidden_size
        self.managers = nn.ModuleDict()
        if config.manager_type != "none":
            num_experts = len(config.manager_vision_layers)
            self.manager_layer_embedding = nn.Parameter(torch.randn(num_experts, width) * width**-0.5)
            for layer in config.manager_llm_layers:
                dropped = int(layer == 0 and config.manager_first_drops_last and num_experts > 1)
                self.managers[str(layer)] = Manager(
                    width,
                    num_experts - dropped,
                    has_previous=False,
                    softmax=False,
                    expert_layer_norms=False,
                    zero_init=True,
                    noise_std=0.0,
                    jitter=config.manager_jitter,
                )
            for index, decoder_layer in enumerate(self.language_model.layers):
                decoder_layer.manager_layer = index
                decoder_layer.register_forward_pre_hook(_manager_hook, with_kwargs=True)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' LLaVA-OneVision init; manager weights at zero, layer embeddings N(0, 1/D) (the original's)."""
        if isinstance(module, Manager):
            init.zeros_(module.scores)
        elif isinstance(module, LlavaOnevisionManagerModel) and hasattr(module, "manager_layer_embedding"):
            # (the parent's __init__ initialises before the managers exist)
            init.normal_(module.manager_layer_embedding, std=module.config.text_config.hidden_size**-0.5)
        super()._init_weights(module)

    def manager_experts(self, hidden_states, image_sizes, vision_aspect_ratio, batch_num_images) -> list[list]:
        """Every managed vision layer projected, plus its layer embedding, packed as the image features are: one list
        per layer of one `(image tokens, D)` tensor per image (transformers' `deepstack_features` layout)."""
        config = self.config
        if batch_num_images is None:
            need_patching = [True] * len(image_sizes)
        else:
            need_patching = [n == 1 for n in batch_num_images for _ in range(n)]
        num_patches = [
            image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
            if patch
            else 1
            for size, patch in zip(image_sizes, need_patching)
        ]
        experts = []
        for index, layer in enumerate(config.manager_vision_layers):
            selected = hidden_states[layer]
            if config.vision_feature_select_strategy == "default":
                selected = selected[:, 1:]
            projected = self.multi_modal_projector(selected) + self.manager_layer_embedding[index].to(selected.dtype)
            packed, _ = self.pack_image_features(
                torch.split(projected, num_patches, dim=0),
                image_sizes,
                image_newline=self.image_newline,
                vision_aspect_ratio=vision_aspect_ratio or config.vision_aspect_ratio,
            )
            if config.manager_grid == "main":  # only the base view's tokens (the first of each image's packing)
                base = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
                packed = [features[:base] for features in packed]
            experts.append(list(packed))
        return experts

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        vision_feature_layer=None,
        vision_feature_select_strategy=None,
        vision_aspect_ratio=None,
        batch_num_images=None,
        **kwargs,
    ):
        """transformers' image features; with managers the output also holds the experts as `deepstack_features`
        (transformers' field for per-layer visual features fed to the language model, as Qwen3-VL's deepstack; its
        `generate` repeats them with the images for beam search)."""
        if not self.managers:
            return super().get_image_features(
                pixel_values,
                image_sizes,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                vision_aspect_ratio=vision_aspect_ratio,
                batch_num_images=batch_num_images,
                **kwargs,
            )
        main = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        main = [main] if isinstance(main, int) else list(main)
        kwargs["output_hidden_states"] = sorted(set(self.config.manager_vision_layers) | set(main))
        kwargs["return_dict"] = True
        outputs = super().get_image_features(
            pixel_values,
            image_sizes,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images,
            **kwargs,
        )
        outputs["deepstack_features"] = self.manager_experts(
            outputs.hidden_states, image_sizes, vision_aspect_ratio, batch_num_images
        )
        return outputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mm_encoder_outputs: dict | None = None,
        vision_feature_layer=None,
        vision_feature_select_strategy=None,
        vision_aspect_ratio=None,
        batch_num_images=None,
        **kwargs,
    ):
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if self.managers and pixel_values is not None and mm_encoder_outputs.get("image") is None:
            mm_encoder_outputs["image"] = self.get_image_features(
                pixel_values,
                image_sizes,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                vision_aspect_ratio=vision_aspect_ratio,
                batch_num_images=batch_num_images,
            )
            pixel_values = None
        image_outputs = mm_encoder_outputs.get("image")
        per_layer = getattr(image_outputs, "deepstack_features", None)  # (generate updates the attribute)
        if self.managers and per_layer is not None:
            experts = torch.stack([torch.cat(images, dim=0) for images in per_layer], dim=1)  # (tokens, U, D)
            if input_ids is not None:
                image_mask = input_ids == self.config.image_token_id
            else:
                features = torch.cat(image_outputs.pooler_output, dim=0)
                image_mask = self.get_placeholder_mask(None, inputs_embeds=inputs_embeds, image_features=features)[0]
                image_mask = image_mask[..., 0]
            if self.config.manager_grid == "main":
                image_mask = _first_tokens_of_each_image(image_mask, image_outputs, self.config)
            if int(image_mask.sum()) != experts.shape[0]:
                raise ValueError(
                    f"the prompt holds {int(image_mask.sum())} image tokens but the images give {experts.shape[0]} "
                    "features; run the texts and images through the model's processor together."
                )
            kwargs["manager_context"] = ManagerContext(self.managers, experts, image_mask)
        return super().forward(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            inputs_embeds=inputs_embeds,
            mm_encoder_outputs=mm_encoder_outputs or None,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images,
            **kwargs,
        )


def _first_tokens_of_each_image(image_mask: torch.Tensor, image_outputs, config) -> torch.Tensor:
    """`manager_grid="main"`: keep, of each image's run of image tokens, the first (base view) ones."""
    base = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    keep = torch.zeros_like(image_mask)
    positions = image_mask.flatten().nonzero().flatten()
    start = 0
    for features in image_outputs.pooler_output:
        keep.view(-1)[positions[start : start + base]] = True
        start += features.shape[0]
    return keep


class LlavaOnevisionManagerForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    """transformers' `LlavaOnevisionForConditionalGeneration` on `LlavaOnevisionManagerModel`."""

    config_class = LlavaOnevisionManagerConfig
    _no_split_modules = ["Manager"]

    def __init__(self, config: LlavaOnevisionManagerConfig):
        LlavaOnevisionPreTrainedModel.__init__(self, config)
        self.model = LlavaOnevisionManagerModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        # the towers' lists name classes this model may not hold (SigLIP's text embeddings): keep the present ones
        present = {type(module).__name__ for module in self.modules()}
        self._no_split_modules = sorted(name for name in self._no_split_modules if name in present)


__all__ = ["LlavaOnevisionManagerForConditionalGeneration", "LlavaOnevisionManagerModel"]
