# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""RESTORE processor: CLIP's image preprocessing and CLIP's tokenizer, with checks on what goes in.

The prompt-learning code RESTORE builds on (CoOp/MaPLe) reads images with `.convert("RGB")` and tests with
torchvision's bicubic Resize of the shorter side, CenterCrop and CLIP's mean/std. PIL images get that geometry here
(`processing_common.prepare_clip_image`: crop offsets rounded as torchvision rounds them, alpha dropped, high-bit-depth
modes refused); transformers' `CLIPImageProcessor` then rescales and normalises.
"""

from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .processing_common import prepare_clip_image, tokenize


class RestoreProcessor(ProcessorMixin):
    r"""Pairs CLIP's image preprocessing (through a `CLIPImageProcessor`) with a CLIP tokenizer.

    Args:
        image_processor: a `CLIPImageProcessor` set to the model's image size (`crop_size`).
        tokenizer: a `CLIPTokenizer` (or `CLIPTokenizerFast`).
        max_text_length (`int`, defaults to 77): CLIP's context length; texts are padded to it by default, as CLIP's
            `tokenize` does and as the model stores its class prompts.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_text_length: int = 77, **kwargs):
        self.max_text_length = max_text_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        images=None,
        text=None,
        return_tensors: str = "pt",
        padding: bool | str = "max_length",
        truncation: bool = True,
        max_length: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Process images (`pixel_values`) and/or text (`input_ids`, `attention_mask`)."""
        if images is None and text is None:
            raise ValueError("Pass `images`, `text`, or both.")
        data = {}
        if text is not None:
            max_length = max_length or self.max_text_length
            data.update(
                tokenize(
                    self.tokenizer,
                    text,
                    max_length,
                    truncation,
                    padding=padding,
                    return_tensors=return_tensors,
                    **kwargs,
                )
            )
        elif kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)} (tokenizer arguments need `text`).")
        if images is not None:
            batch = images if isinstance(images, (list, tuple)) else [images]
            size = self.image_processor.crop_size["height"]
            prepared = [prepare_clip_image(image, index, size) for index, image in enumerate(batch)]
            data.update(self.image_processor(prepared, return_tensors=return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]
