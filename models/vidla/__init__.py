"""VidLA as a Hub-native custom-code model (this folder is what a converted Hub repo carries)."""

from .configuration_vidla import VidLAConfig, VidLATextConfig, VidLAVisionConfig
from .modeling_vidla import VidLAModel, VidLAPreTrainedModel, VidLATextModel, VidLAVideoModel
from .processing_vidla import VidLAProcessor
from .video_processing_vidla import VidLAVideoProcessor

__all__ = [
    "VidLAConfig",
    "VidLAModel",
    "VidLAPreTrainedModel",
    "VidLAProcessor",
    "VidLATextConfig",
    "VidLATextModel",
    "VidLAVideoModel",
    "VidLAVideoProcessor",
    "VidLAVisionConfig",
]

# Which transformers Auto class loads each class from a Hub folder (written into config.json's auto_map).
AUTO_CLASSES = {"VidLAModel": "AutoModel"}
