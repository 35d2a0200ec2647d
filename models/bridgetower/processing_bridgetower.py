# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""BridgeTower processor: the original preprocessing + the RoBERTa tokenizer, with checks on what goes in.

The original opens images with `.convert("RGB")` and applies `clip_transform(size)`: torchvision's bicubic Resize of
the shorter side to `size`, CenterCrop(size), ToTensor, Normalize(CLIP mean/std). The processor does the RGB
conversion, resize and crop itself on PIL images (so the crop offsets round as torchvision's do, and alpha is dropped
rather than composited), then hands the `size`×`size` image to transformers' `CLIPImageProcessor` for rescaling and
normalisation (its own resize and crop are no-ops at that size). Arrays and tensors go to `CLIPImageProcessor` as they
are.
"""

from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .processing_common import prepare_clip_image, tokenize


class BridgeTowerProcessor(ProcessorMixin):
    r"""Pairs the original image preprocessing (through a `CLIPImageProcessor`) with a RoBERTa tokenizer.

    Args:
        image_processor: a `CLIPImageProcessor` set to the model's image size (`crop_size`).
        tokenizer: a RoBERTa tokenizer.
        max_text_length (`int`, defaults to 50): texts are truncated to this many tokens (the original's
            `max_text_len`); it must not exceed the model's position table.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_text_length: int = 50, **kwargs):
        self.max_text_length = max_text_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, return_tensors: str = "pt", truncation: bool = True, **kwargs):
        """Process images and/or text. `max_length` defaults to `max_text_length`; with `truncation=False`, a text
        longer than that raises."""
        if images is None and text is None:
            raise ValueError("Pass `images`, `text`, or both.")
        data = {}
        if text is not None:
            max_length = kwargs.pop("max_length", None) or self.max_text_length
            encoded = tokenize(
                self.tokenizer,
                text,
                max_length,
                truncation,
                padding=kwargs.pop("padding", "longest"),
                return_tensors=return_tensors,
                **kwargs,
            )
            data.update(encoded)
        if images is not None:
            batch = images if isinstance(images, (list, tuple)) else [images]
            size = self.image_processor.crop_size["height"]
            prepared = [prepare_clip_image(image, index, size) for index, image in enumerate(batch)]
            data.update(self.image_processor(prepared, return_tensors=return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)
