"""Zipper as a Hub-native custom-code model (this folder is what a converted Hub repo carries)."""

from .configuration_zipper import ZipperConfig
from .modeling_zipper import ZipperForConditionalGeneration, ZipperPreTrainedModel
from .speech_tokenization_zipper import DMelSpeechTokenizer, SpeechTokenizer

__all__ = [
    "DMelSpeechTokenizer",
    "SpeechTokenizer",
    "ZipperConfig",
    "ZipperForConditionalGeneration",
    "ZipperPreTrainedModel",
]

# Which transformers Auto class loads each class from a Hub folder (written into config.json's auto_map).
AUTO_CLASSES = {"ZipperForConditionalGeneration": "AutoModelForSpeechSeq2Seq"}
