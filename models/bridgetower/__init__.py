"""BridgeTower as a Hub-native custom-code model (this folder is what a converted Hub repo carries)."""

from .configuration_bridgetower import BridgeTowerConfig, BridgeTowerTextConfig, BridgeTowerVisionConfig
from .modeling_bridgetower import (
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerForNLVR2,
    BridgeTowerForVisualEntailment,
    BridgeTowerForVisualQuestionAnswering,
    BridgeTowerModel,
    BridgeTowerPreTrainedModel,
)

__all__ = [
    "BridgeTowerConfig",
    "BridgeTowerForContrastiveLearning",
    "BridgeTowerForImageAndTextRetrieval",
    "BridgeTowerForMaskedLM",
    "BridgeTowerForNLVR2",
    "BridgeTowerForVisualEntailment",
    "BridgeTowerForVisualQuestionAnswering",
    "BridgeTowerModel",
    "BridgeTowerPreTrainedModel",
    "BridgeTowerTextConfig",
    "BridgeTowerVisionConfig",
]
