# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""Preprocessing shared by the towerzoo processors (one source, symlinked into each Hub folder that needs it): the
CLIP-style resize and centre crop on PIL images, and tokenisation that refuses over-long text when truncation is off.
"""

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
