# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""ManagerTower configuration: BridgeTower's towers, cross-modal layers and heads, with managers instead of bridges.

Defaults are the paper's base model (Xu et al., ACL 2023): RoBERTa-base, CLIP ViT-B/16, 6 cross-modal layers of width
768, adaptive managers (AAUE) over the top 6 layers of each tower with vector weights.
"""

from .configuration_bridgetower import BridgeTowerConfig
from .manager import MANAGER_TYPES, WEIGHT_TYPES

# Where ManagerTower's base model differs from BridgeTowerConfig's defaults (which follow transformers' port): the
# original builds its cross-modal layers from a RobertaConfig (LayerNorm eps 1e-12), pre-trains with MLM, ITM and ITC,
# and its ITC heads read the uni-modal towers only, in 256 dimensions.
_ORIGINAL_DEFAULTS = {
    "layer_norm_eps": 1e-12,
    "pretraining_heads": ["mlm", "itm", "itc"],
    "contrastive_hidden_size": 256,
    "contrastive_image_features": "uni_modal",
    "contrastive_cross_modal_head": False,
}


class ManagerTowerConfig(BridgeTowerConfig):
    r"""ManagerTower. Takes every `BridgeTowerConfig` field (towers, cross-modal layers, heads; the bridge-only fields
    `link_tower_*` and `share_link_tower_layers` are not used) and these. Defaults that differ from BridgeTowerConfig's
    (the original ManagerTower's): `layer_norm_eps=1e-12`, `pretraining_heads=["mlm", "itm", "itc"]`,
    `contrastive_hidden_size=256`, `contrastive_image_features="uni_modal"`, `contrastive_cross_modal_head=False`.


    Args:
        manager_type (`str`, defaults to `"AAUE"`): `SAUE` (static aggregation: learned scores) or `AAUE` (adaptive
            aggregation: per-token scores generated from the previous cross-modal outputs; the first cross-modal
            layer, which has none, still uses SAUE).
        managed_layers_text (`int`, defaults to 6): top text-tower layers every text manager aggregates.
        managed_layers_image (`int`, defaults to 6): top ViT blocks every image manager aggregates.
        manager_weight_type (`str`, defaults to `"vector"`): `scalar` (one weight per layer) or `vector` (one weight
            per layer and channel).
        manager_temperature (`float`, defaults to 1.0): initial (learnable) softmax temperature of the layer scores.
        manager_noise_std (`float`, *optional*): std of the Gaussian noise added to the layer scores in training mode;
            None is the original's `1 / managed layers`, 0 turns it off.
        manager_layer_norm_eps (`float`, defaults to 1e-5): epsilon of the managers' per-layer LayerNorms.
        manager_mask_query_padding (`bool`, defaults to `False`): mask padded text tokens when an adaptive image
            manager attention-pools the text. The original attends to them too (so its outputs depend on how much
            padding a batch has); the released checkpoints were trained that way.
        share_cross_modal_transformer_layers: must stay `True` (one projection for all managed layers, as in the
            original).
    """

    model_type = "towerzoo_managertower"

    def __init__(
        self,
        manager_type: str = "AAUE",
        managed_layers_text: int = 6,
        managed_layers_image: int = 6,
        manager_weight_type: str = "vector",
        manager_temperature: float = 1.0,
        manager_noise_std: float | None = None,
        manager_layer_norm_eps: float = 1e-5,
        manager_mask_query_padding: bool = False,
        **kwargs,
    ):
        self.manager_type = manager_type
        self.managed_layers_text = managed_layers_text
        self.managed_layers_image = managed_layers_image
        self.manager_weight_type = manager_weight_type
        self.manager_temperature = manager_temperature
        self.manager_noise_std = manager_noise_std
        self.manager_layer_norm_eps = manager_layer_norm_eps
        self.manager_mask_query_padding = manager_mask_query_padding
        for name, original in _ORIGINAL_DEFAULTS.items():
            kwargs.setdefault(name, original)
        super().__init__(**kwargs)

    def validate_routing(self) -> None:
        """Managers read any number of top uni-modal layers; the cross-modal depth is independent of it."""
        if self.manager_type not in MANAGER_TYPES:
            raise ValueError(f"manager_type must be one of {MANAGER_TYPES}, got {self.manager_type!r}.")
        if self.manager_weight_type not in WEIGHT_TYPES:
            raise ValueError(f"manager_weight_type must be one of {WEIGHT_TYPES}, got {self.manager_weight_type!r}.")
        if self.num_hidden_layers < 1:
            raise ValueError(
                f"num_hidden_layers (cross-modal layers) must be at least 1, got {self.num_hidden_layers}."
            )
        if not self.share_cross_modal_transformer_layers:
            raise ValueError(
                "ManagerTower projects every managed layer with one Linear per modality; set "
                "share_cross_modal_transformer_layers=True."
            )
        for name, managed, tower in (
            ("managed_layers_text", self.managed_layers_text, self.text_config),
            ("managed_layers_image", self.managed_layers_image, self.vision_config),
        ):
            if not 1 <= managed <= tower.num_hidden_layers:
                raise ValueError(
                    f"{name}={managed} must be between 1 and the tower's {tower.num_hidden_layers} layers; lower it or "
                    "deepen the tower."
                )
