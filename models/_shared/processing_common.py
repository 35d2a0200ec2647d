# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""Preprocessing shared by the towerzoo processors (one source, symlinked into each Hub folder that needs it): the
CLIP-style resize and centre crop on PIL images, and tokenisation that refuses over-long text when truncation is off.
"""

import numpy as np
from transformers.utils import is_vision_available

if is_vision_available():  # Pillow: needed for PIL inputs only
    from PIL import Image


def resize_and_center_crop(image: "Image.Image", size: int) -> "Image.Image":
    """Shorter side to `size` (bicubic, the longer side truncated to an integer), then a `size`×`size` centre crop
    whose offsets round as torchvision's `CenterCrop` rounds them (what the original CLIP transforms do)."""
    width, height = image.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    image = image.resize(new_size, Image.Resampling.BICUBIC)
    left, top = int(round((new_size[0] - size) / 2.0)), int(round((new_size[1] - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


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


def prepare_clip_image(image, index: int, size: int):
    """One image of a batch before `CLIPImageProcessor`: PIL images get `.convert("RGB")` (alpha dropped), CLIP's
    resize and centre crop; high-bit-depth PIL modes are refused rather than clipped; arrays are checked."""
    if is_vision_available() and isinstance(image, Image.Image):
        if image.mode in _HIGH_BIT_DEPTH_MODES:
            raise ValueError(
                f"image {index} has PIL mode {image.mode!r} (high bit depth), which would be clipped when "
                "converted to 8-bit RGB; scale it to 8 bits and call image.convert('RGB') first."
            )
        return original_geometry(image, size)
    return _check_array(image, index)


def tokenize(tokenizer, text, max_length: int, truncation: bool, **kwargs):
    """`tokenizer(text, …)` truncated to `max_length`; with `truncation=False`, text longer than that raises instead of
    silently running past the model's position table."""
    encoded = tokenizer(text, truncation=truncation, max_length=max_length, **kwargs)
    length = encoded["input_ids"].shape[-1]
    if not truncation and length > max_length:
        raise ValueError(
            f"text of {length} tokens is longer than max_length={max_length}; pass truncation=True (the default) or "
            "shorten the text."
        )
    return encoded
