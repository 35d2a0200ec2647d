# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""BridgeTower processor: CLIP image preprocessing + the RoBERTa tokenizer, with checks on what goes in.

The original preprocessing (`clip_transform`: bicubic resize of the shorter side, centre crop, CLIP mean/std) is
exactly transformers' `CLIPImageProcessor`, so that is the image processor; this class adds clear errors for
images it cannot take and for text longer than the model's position table.
"""

import numpy as np
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

# PIL modes whose conversion to 8-bit RGB would silently clip or rescale values.
_HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _check_image(image, index: int) -> None:
    if hasattr(image, "mode"):  # PIL image
        if image.mode in _HIGH_BIT_DEPTH_MODES:
            raise ValueError(
                f"image {index} has PIL mode {image.mode!r} (high bit depth), which would be clipped when converted "
                "to 8-bit RGB; scale it to 8 bits and call image.convert('RGB') first."
            )
        return
    array = np.asarray(image) if not hasattr(image, "shape") else image
    shape = tuple(array.shape)
    channels_ok = len(shape) == 3 and (shape[0] in (1, 3) or shape[-1] in (1, 3, 4))
    if not channels_ok:
        raise ValueError(
            f"image {index} has shape {shape}; expected (height, width, 1|3|4) or (1|3, height, width). Pass RGB "
            "images (e.g. PIL images, or arrays with a channel axis)."
        )


class BridgeTowerProcessor(ProcessorMixin):
    r"""Pairs a `CLIPImageProcessor` (images → `pixel_values`) with a RoBERTa tokenizer (text → `input_ids`,
    `attention_mask`).

    Args:
        image_processor: a `CLIPImageProcessor` set to the model's image size.
        tokenizer: a RoBERTa tokenizer.
        max_text_length (`int`, defaults to 50): texts are truncated to this many tokens (the original's
            `max_text_len`); it must not exceed the model's position table.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_text_length: int = 50, **kwargs):
        self.max_text_length = max_text_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, return_tensors: str = "pt", truncation: bool = True, **kwargs):
        """Process images and/or text. With `truncation=False`, a text longer than `max_text_length` tokens raises."""
        if images is None and text is None:
            raise ValueError("Pass `images`, `text`, or both.")
        data = {}
        if text is not None:
            encoded = self.tokenizer(
                text,
                padding=kwargs.pop("padding", "longest"),
                truncation=truncation,
                max_length=self.max_text_length,
                return_tensors=return_tensors,
                **kwargs,
            )
            if not truncation and encoded["input_ids"].shape[-1] > self.max_text_length:
                raise ValueError(
                    f"text of {encoded['input_ids'].shape[-1]} tokens is longer than max_text_length="
                    f"{self.max_text_length}; pass truncation=True (the default) or shorten the text."
                )
            data.update(encoded)
        if images is not None:
            batch = images if isinstance(images, (list, tuple)) else [images]
            for index, image in enumerate(batch):
                _check_image(image, index)
            data.update(self.image_processor(list(batch), return_tensors=return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)
