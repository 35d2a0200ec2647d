"""towerzoo: a Hugging Face Hub-native zoo of multi-tower multimodal models."""

__version__ = "0.1.0"
