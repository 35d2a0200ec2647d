"""BridgeTower as a Hub-native custom-code model (this folder is what a converted Hub repo carries)."""

from .configuration_bridgetower import BridgeTowerConfig, BridgeTowerTextConfig, BridgeTowerVisionConfig
from .modeling_bridgetower import (
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerForNLVR2,
    BridgeTowerForPreTraining,
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
    "BridgeTowerForPreTraining",
    "BridgeTowerForVisualEntailment",
    "BridgeTowerForVisualQuestionAnswering",
    "BridgeTowerModel",
    "BridgeTowerPreTrainedModel",
    "BridgeTowerTextConfig",
    "BridgeTowerVisionConfig",
]

# Which transformers Auto class loads each class from a Hub folder (written into config.json's auto_map).
AUTO_CLASSES = {
    "BridgeTowerModel": "AutoModel",
    "BridgeTowerForPreTraining": "AutoModelForPreTraining",
    "BridgeTowerForMaskedLM": "AutoModelForMaskedLM",
    "BridgeTowerForVisualQuestionAnswering": "AutoModelForVisualQuestionAnswering",
    "BridgeTowerForImageAndTextRetrieval": "AutoModelForSequenceClassification",
    "BridgeTowerForVisualEntailment": "AutoModelForSequenceClassification",
    "BridgeTowerForNLVR2": "AutoModelForSequenceClassification",
    "BridgeTowerForContrastiveLearning": "AutoModelForZeroShotImageClassification",
}
