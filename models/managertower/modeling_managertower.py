# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""ManagerTower (Xu et al., "ManagerTower: Aggregating the Insights of Uni-Modal Experts for Vision-Language
Representation Learning", ACL 2023) as a Hub-native model.

Everything but the input of each cross-modal layer is BridgeTower's (`modeling_bridgetower.py`: towers, cross-modal
layers, poolers, heads). Data flow of `ManagerTowerModel.fuse` (the original `MTTransformer.infer`):
1. The top `managed_layers_text` text layers and `managed_layers_image` ViT blocks (through the ViT post-LayerNorm)
   are projected to the cross-modal width; each gets the modality-type embedding and its own layer embedding
   (indexed by the layer's depth in its tower).
2. Cross-modal layer i reads, per modality, a `Manager` (`manager.py`) over all those layers — for i > 0 also over
   the previous cross-modal output, and (adaptive managers) guided by the other modality's previous output.
3. Poolers and heads as in BridgeTower.
"""

import torch
from torch import nn
from transformers.utils import logging

from .configuration_managertower import ManagerTowerConfig
from .manager import Manager
from .modeling_bridgetower import (
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerForNLVR2,
    BridgeTowerForPreTraining,
    BridgeTowerForVisualEntailment,
    BridgeTowerForVisualQuestionAnswering,
    BridgeTowerModel,
    BridgeTowerModelOutput,
    BridgeTowerPreTrainedModel,
)

logger = logging.get_logger(__name__)


class ManagerTowerPreTrainedModel(BridgeTowerPreTrainedModel):
    """BridgeTower's weight init plus the managers' (static scores 1/N, previous-output score 1, temperature)."""

    config_class = ManagerTowerConfig
    base_model_prefix = "managertower"
    _no_split_modules = [*BridgeTowerPreTrainedModel._no_split_modules, "Manager"]

    def _build_encoder(self, config: ManagerTowerConfig) -> None:
        setattr(self, self.base_model_prefix, ManagerTowerModel(config))

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, Manager):
            with torch.no_grad():
                for name, value in (
                    ("temperature", torch.full_like(module.temperature, module.initial_temperature)),
                    ("previous_score", 1.0),
                    ("scores", module.initial_scores()),
                ):
                    parameter = getattr(module, name, None)
                    # loaded parameters carry `_is_hf_initialized`; only fresh ones are initialised
                    if parameter is not None and not getattr(parameter, "_is_hf_initialized", False):
                        parameter.copy_(torch.as_tensor(value).expand_as(parameter))


class ManagerTowerModel(ManagerTowerPreTrainedModel, BridgeTowerModel):
    """The bare ManagerTower: BridgeTower's towers and cross-modal encoder, fed by managers; outputs
    `BridgeTowerModelOutput`."""

    def _init_bridges(self, config: ManagerTowerConfig) -> None:
        """Layer embeddings for every tower layer, and one text and one image manager per cross-modal layer."""
        hidden = config.hidden_size
        self.layer_embeddings_text = nn.Embedding(config.text_config.num_hidden_layers, hidden)
        self.layer_embeddings_image = nn.Embedding(config.vision_config.num_hidden_layers, hidden)

        def managers(num_experts: int) -> nn.ModuleList:
            return nn.ModuleList(
                Manager(
                    hidden,
                    num_experts,
                    adaptive=config.manager_type == "AAUE" and i > 0,
                    has_previous=i > 0,
                    weight_type=config.manager_weight_type,
                    temperature=config.manager_temperature,
                    noise_std=config.manager_noise_std,
                    layer_norm_eps=config.manager_layer_norm_eps,
                )
                for i in range(config.num_hidden_layers)
            )

        self.cross_modal_text_managers = managers(config.managed_layers_text)
        self.cross_modal_image_managers = managers(config.managed_layers_image)

    def managed_layers(
        self, text_states: tuple[torch.Tensor, ...], vision_states: tuple[torch.Tensor, ...], image_token_type_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The managers' experts, `(batch, managed layers, len, hidden)` per modality: projected top layers plus the
        type and layer embeddings."""
        n_text, n_image = self.config.managed_layers_text, self.config.managed_layers_image
        text = self.text_modality_embedding(torch.stack(text_states[-n_text:], dim=1), 0)
        image = self.image_modality_embedding(torch.stack(vision_states[-n_image:], dim=1), 0, image_token_type_idx)
        text = text + self.layer_embeddings_text.weight[-n_text:, None]
        image = image + self.layer_embeddings_image.weight[-n_image:, None]
        return text, image

    def fuse(
        self,
        text_states: tuple[torch.Tensor, ...],
        vision_states: tuple[torch.Tensor, ...],
        attention_mask: torch.Tensor,
        image_token_type_idx: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        text_experts, image_experts = self.managed_layers(text_states, vision_states, image_token_type_idx)
        text_self_mask, image_to_text_mask = self.cross_modal_masks(
            text_experts[:, 0], image_experts[:, 0], attention_mask
        )
        text_query_mask = attention_mask if self.config.manager_mask_query_padding else None
        if text_query_mask is None and "flash" in str(self.config._attn_implementation) and not attention_mask.all():
            logger.warning_once(
                "ManagerTower's adaptive image managers attend to padded text positions (as the original does), and "
                "flash attention leaves those rows at zero where eager/sdpa compute them, so padded batches give "
                "slightly different results per backend. Set config.manager_mask_query_padding=True to ignore padding."
            )
        text_out = image_out = None
        cross_states = []
        for i in range(self.config.num_hidden_layers):
            # both managers read the previous outputs of both modalities, then both layers run
            text = self.cross_modal_text_managers[i](text_experts, text_out, image_out)
            image = self.cross_modal_image_managers[i](image_experts, image_out, text_out, text_query_mask)
            text_out = self.cross_modal_text_layers[i](text, image, text_self_mask, None)
            image_out = self.cross_modal_image_layers[i](image, text, None, image_to_text_mask)
            cross_states.append((text_out, image_out))
        return text_out, image_out, cross_states


class ManagerTowerForMaskedLM(ManagerTowerPreTrainedModel, BridgeTowerForMaskedLM):
    """BridgeTower's masked language modelling head on ManagerTower."""

    _tied_weights_keys = {"mlm_score.decoder.weight": "managertower.text_model.embeddings.word_embeddings.weight"}


class ManagerTowerForImageAndTextRetrieval(ManagerTowerPreTrainedModel, BridgeTowerForImageAndTextRetrieval):
    """BridgeTower's image-text matching head (2-way logits, index 1 = match) on ManagerTower."""


class ManagerTowerForContrastiveLearning(ManagerTowerPreTrainedModel, BridgeTowerForContrastiveLearning):
    """BridgeTower's image-text contrastive heads on ManagerTower's uni-modal towers."""


class ManagerTowerForPreTraining(ManagerTowerPreTrainedModel, BridgeTowerForPreTraining):
    """BridgeTower's pre-training heads (`config.pretraining_heads`) on ManagerTower."""

    _tied_weights_keys = ManagerTowerForMaskedLM._tied_weights_keys


class ManagerTowerForVisualQuestionAnswering(ManagerTowerPreTrainedModel, BridgeTowerForVisualQuestionAnswering):
    """BridgeTower's VQAv2 classifier on ManagerTower."""


class ManagerTowerForVisualEntailment(ManagerTowerPreTrainedModel, BridgeTowerForVisualEntailment):
    """BridgeTower's SNLI-VE classifier on ManagerTower."""


class ManagerTowerForNLVR2(ManagerTowerPreTrainedModel, BridgeTowerForNLVR2):
    """BridgeTower's NLVR2 classifier (two fused image passes, types 1 and 2) on ManagerTower."""


__all__ = [
    "BridgeTowerModelOutput",
    "ManagerTowerForContrastiveLearning",
    "ManagerTowerForImageAndTextRetrieval",
    "ManagerTowerForMaskedLM",
    "ManagerTowerForNLVR2",
    "ManagerTowerForPreTraining",
    "ManagerTowerForVisualEntailment",
    "ManagerTowerForVisualQuestionAnswering",
    "ManagerTowerModel",
    "ManagerTowerPreTrainedModel",
]
