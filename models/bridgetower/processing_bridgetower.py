# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""BridgeTower processor: the original preprocessing + the RoBERTa tokenizer, with checks on what goes in.

The original opens images with `.convert("RGB")` and applies `clip_transform(size)`: torchvision's bicubic Resize of
the shorter side to `size`, CenterCrop(size), ToTensor, Normalize(CLIP mean/std). The processor does the RGB
conversion, resize and crop itself on PIL images (so the crop offsets round as torchvision's do, and alpha is dropped
rather than composited), then hands the `size`×`size` image to transformers' `CLIPImageProcessor` for rescaling and
normalisation (its own resize and crop are no-ops at that size). Arrays and tensors go to `CLIPImageProcessor` as they
are.
"""

import numpy as np
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import is_vision_available

from .processing_common import resize_and_center_crop, tokenize

if is_vision_available():  # Pillow: needed for PIL inputs only
    from PIL import Image

# PIL modes whose conversion to 8-bit RGB would silently clip or rescale values.
_HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def original_geometry(image: "Image.Image", size: int) -> "Image.Image":
    """The original's `.convert("RGB")`, then CLIP's resize and centre crop."""
    return resize_and_center_crop(image.convert("RGB"), size)


def _check_array(image, index: int):
    """Arrays/tensors need a channel axis of 1 or 3 (channels first) or 1, 3 or 4 (channels last); a 2-D array is
    read as a grayscale image."""
    array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    if array.ndim == 3 and (array.shape[0] in (1, 3) or array.shape[-1] in (1, 3, 4)):
        return image
    raise ValueError(
        f"image {index} has shape {tuple(array.shape)}; expected (height, width), (height, width, 1|3|4) or "
        "(1|3, height, width). Pass RGB images (e.g. PIL images, or arrays with a channel axis)."
    )


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

    def _prepare_image(self, image, index: int):
        if is_vision_available() and isinstance(image, Image.Image):
            if image.mode in _HIGH_BIT_DEPTH_MODES:
                raise ValueError(
                    f"image {index} has PIL mode {image.mode!r} (high bit depth), which would be clipped when "
                    "converted to 8-bit RGB; scale it to 8 bits and call image.convert('RGB') first."
                )
            return original_geometry(image, self.image_processor.crop_size["height"])
        return _check_array(image, index)

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
            prepared = [self._prepare_image(image, index) for index, image in enumerate(batch)]
            data.update(self.image_processor(prepared, return_tensors=return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)
