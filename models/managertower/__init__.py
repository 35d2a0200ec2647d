"""ManagerTower as a Hub-native custom-code model (this folder is what a converted Hub repo carries)."""

from .configuration_managertower import ManagerTowerConfig
from .manager import Manager
from .modeling_managertower import (
    ManagerTowerForContrastiveLearning,
    ManagerTowerForImageAndTextRetrieval,
    ManagerTowerForMaskedLM,
    ManagerTowerForNLVR2,
    ManagerTowerForPreTraining,
    ManagerTowerForVisualEntailment,
    ManagerTowerForVisualQuestionAnswering,
    ManagerTowerModel,
    ManagerTowerPreTrainedModel,
)
from .processing_managertower import ManagerTowerProcessor

__all__ = [
    "Manager",
    "ManagerTowerConfig",
    "ManagerTowerForContrastiveLearning",
    "ManagerTowerForImageAndTextRetrieval",
    "ManagerTowerForMaskedLM",
    "ManagerTowerForNLVR2",
    "ManagerTowerForPreTraining",
    "ManagerTowerForVisualEntailment",
    "ManagerTowerForVisualQuestionAnswering",
    "ManagerTowerModel",
    "ManagerTowerPreTrainedModel",
    "ManagerTowerProcessor",
]

# Which transformers Auto class loads each class from a Hub folder (written into config.json's auto_map).
AUTO_CLASSES = {
    "ManagerTowerModel": "AutoModel",
    "ManagerTowerForPreTraining": "AutoModelForPreTraining",
    "ManagerTowerForMaskedLM": "AutoModelForMaskedLM",
    "ManagerTowerForVisualQuestionAnswering": "AutoModelForVisualQuestionAnswering",
    "ManagerTowerForImageAndTextRetrieval": "AutoModelForSequenceClassification",
    "ManagerTowerForVisualEntailment": "AutoModelForSequenceClassification",
    "ManagerTowerForNLVR2": "AutoModelForSequenceClassification",
    "ManagerTowerForContrastiveLearning": "AutoModelForZeroShotImageClassification",
}
