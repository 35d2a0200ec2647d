"""Zipper as a Hub-native custom-code model (this folder is what a converted Hub repo carries)."""

from .configuration_zipper import ZipperConfig
from .modeling_zipper import ZipperForConditionalGeneration, ZipperPreTrainedModel
from .processing_zipper import ZipperProcessor
from .speech_tokenization_zipper import (
    DMelSpeechTokenizer,
    KMeansSpeechTokenizer,
    SpeechTokenizer,
    fit_kmeans_codebook,
)

__all__ = [
    "DMelSpeechTokenizer",
    "KMeansSpeechTokenizer",
    "SpeechTokenizer",
    "ZipperConfig",
    "ZipperForConditionalGeneration",
    "ZipperPreTrainedModel",
    "ZipperProcessor",
    "fit_kmeans_codebook",
]

# Which transformers Auto class loads each class from a Hub folder (written into config.json's auto_map).
AUTO_CLASSES = {"ZipperForConditionalGeneration": "AutoModelForSpeechSeq2Seq"}
