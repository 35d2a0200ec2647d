"""Zipper as a Hub-native custom-code model (this folder is what a converted Hub repo carries)."""

from .speech_tokenization_zipper import DMelSpeechTokenizer, SpeechTokenizer

__all__ = ["DMelSpeechTokenizer", "SpeechTokenizer"]
