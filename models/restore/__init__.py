"""RESTORE as a Hub-native custom-code model (this folder is what a converted Hub repo carries)."""

from .configuration_restore import RestoreConfig, RestoreTextConfig, RestoreVisionConfig
from .modeling_restore import (
    FeatureShift,
    RestoreForImageClassification,
    RestorePreTrainedModel,
    RestoreTextModel,
    RestoreVisionModel,
    feature_shift,
)
from .processing_restore import RestoreProcessor

__all__ = [
    "FeatureShift",
    "RestoreConfig",
    "RestoreForImageClassification",
    "RestorePreTrainedModel",
    "RestoreProcessor",
    "RestoreTextConfig",
    "RestoreTextModel",
    "RestoreVisionConfig",
    "RestoreVisionModel",
    "feature_shift",
]

# Which transformers Auto class loads each class from a Hub folder (written into config.json's auto_map).
AUTO_CLASSES = {"RestoreForImageClassification": "AutoModelForImageClassification"}
