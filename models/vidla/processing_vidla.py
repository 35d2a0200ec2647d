# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""VidLA processor: the video processor (frame sampling + CLIP's frame transform) and CLIP's tokenizer.

The video processor is held under the attribute name `image_processor`: `ProcessorMixin` loads an attribute named
`video_processor` through `AutoVideoProcessor`, which needs torchvision, whereas `AutoImageProcessor` loads a remote
`ImageProcessingMixin` with Pillow alone. `processor.video_processor` names the same object.
"""

from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .processing_common import tokenize
from .video_processing_vidla import VidLAVideoProcessor


class VidLAProcessor(ProcessorMixin):
    r"""Pairs a `VidLAVideoProcessor` with a CLIP tokenizer.

    Args:
        image_processor (`VidLAVideoProcessor`): samples and preprocesses video frames (the attribute has this name
            so the processor loads without torchvision; it is also reachable as `video_processor`).
        tokenizer: a `CLIPTokenizer` (or `CLIPTokenizerFast`).
        max_text_length (`int`, defaults to 77): CLIP's context length; texts are truncated to it (keeping the
            end-of-text token) and, by default, padded to it as CLIP's `tokenize` does.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_text_length: int = 77, **kwargs):
        self.max_text_length = max_text_length
        super().__init__(image_processor, tokenizer, **kwargs)
        # Checked by behaviour, not class: remote code may load the class twice (AutoImageProcessor and this module).
        if not hasattr(self.image_processor, "frame_indices"):
            raise TypeError(f"image_processor must be a VidLAVideoProcessor, got {type(image_processor).__name__}.")

    @property
    def video_processor(self) -> VidLAVideoProcessor:
        return self.image_processor

    def __call__(
        self,
        videos=None,
        text=None,
        return_tensors: str = "pt",
        padding: bool | str = "max_length",
        truncation: bool = True,
        max_length: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Process videos and/or text.

        `videos` as `VidLAVideoProcessor` takes them (a file path, a list of frames, a uint8 array/tensor, or a list
        of those); the keyword arguments `num_frames`, `sampling`, `pad_short_clips`, `training`, `generator` and
        `return_frame_indices` go to it, every other one to the tokenizer. Returns `input_ids`, `attention_mask`
        (text), `pixel_values_videos` and, with `pad_short_clips`, `video_mask` (videos).
        """
        if videos is None and text is None:
            raise ValueError("Pass `videos`, `text`, or both.")
        video_options = ("num_frames", "sampling", "pad_short_clips", "training", "generator", "return_frame_indices")
        video_kwargs = {key: kwargs.pop(key) for key in video_options if key in kwargs}
        data = {}
        if text is not None:
            max_length = max_length or self.max_text_length
            encoded = tokenize(
                self.tokenizer, text, max_length, truncation, padding=padding, return_tensors=return_tensors, **kwargs
            )
            data.update(encoded)
        elif kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)} (tokenizer arguments need `text`).")
        if videos is not None:
            data.update(self.image_processor(videos, return_tensors=return_tensors, **video_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values_videos", "video_mask"]
