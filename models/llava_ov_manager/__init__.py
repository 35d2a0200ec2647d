"""LLaVA-OV-Manager as a Hub-native custom-code model (this folder is what a converted Hub repo carries)."""

from .configuration_llava_ov_manager import LlavaOnevisionManagerConfig
from .modeling_llava_ov_manager import LlavaOnevisionManagerForConditionalGeneration, LlavaOnevisionManagerModel

__all__ = [
    "LlavaOnevisionManagerConfig",
    "LlavaOnevisionManagerForConditionalGeneration",
    "LlavaOnevisionManagerModel",
]

# Which transformers Auto class loads each class from a Hub folder (written into config.json's auto_map).
AUTO_CLASSES = {
    "LlavaOnevisionManagerForConditionalGeneration": "AutoModelForImageTextToText",
    "LlavaOnevisionManagerModel": "AutoModel",
}
