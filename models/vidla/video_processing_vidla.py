# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""VidLA video processor: decode a clip (PyAV), sample a fixed number of frames, CLIP-preprocess each frame.

Each frame goes through OpenAI CLIP's image transform: RGB, bicubic resize of the shorter side to `size` (longer side
truncated, as torchvision's `Resize(int)`), centre crop with rounded offsets (as torchvision's `CenterCrop`), scale to
[0, 1], normalise with CLIP's mean and std. It is written with PIL and numpy: transformers' `BaseVideoProcessor` (and
`AutoVideoProcessor`) need torchvision, which a Hub user may not have. For the same reason the class is an
`ImageProcessingMixin`: it saves as `preprocessor_config.json` and loads through `AutoImageProcessor`, and
`VidLAProcessor` holds it as its `image_processor`.
"""

import os
from pathlib import Path

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_base import ImageProcessingMixin
from transformers.utils import is_av_available, is_vision_available, logging

from .processing_common import resize_and_center_crop

if is_vision_available():  # Pillow: the resize and crop
    from PIL import Image

if is_av_available():  # PyAV: decoding video files (frames given as images or arrays need no decoder)
    import av

logger = logging.get_logger(__name__)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SAMPLING_MODES = ("uniform", "segment")


# --------------------------------------------------------------------------------------------------------------------
# Frame sampling
# --------------------------------------------------------------------------------------------------------------------


def uniform_indices(num_available: int, num_frames: int) -> list[int]:
    """`num_frames` indices evenly spaced from the first to the last frame, rounded half up: `round(i * (n - 1) /
    (num_frames - 1))`. A clip shorter than `num_frames` gets repeated indices. One frame: the middle one."""
    if num_frames == 1:
        return [(num_available - 1) // 2]
    span, steps = num_available - 1, num_frames - 1
    return [(2 * i * span + steps) // (2 * steps) for i in range(num_frames)]


def segment_indices(num_available: int, num_frames: int, generator: np.random.Generator | None = None) -> list[int]:
    """Split the clip into `num_frames` equal segments `[i * n / num_frames, (i + 1) * n / num_frames)` and take the
    middle frame of each (`generator=None`, evaluation) or a random frame of each (training)."""
    n = num_available
    if generator is None:
        return [((2 * i + 1) * n) // (2 * num_frames) for i in range(num_frames)]
    indices = []
    for i in range(num_frames):
        start = (i * n) // num_frames
        end = max(start + 1, -((-(i + 1) * n) // num_frames))  # ceil((i + 1) n / T), at least one frame
        indices.append(int(generator.integers(start, end)))
    return indices


# --------------------------------------------------------------------------------------------------------------------
# Decoding and frame inputs
# --------------------------------------------------------------------------------------------------------------------


def _require_av() -> None:
    if not is_av_available():
        raise ImportError("Decoding video files needs PyAV: `pip install av` (or pass the frames as images/arrays).")


def _open_video(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        container = av.open(path)
    except av.FFmpegError as error:
        raise ValueError(f"could not read {path} as a video: {error}") from error
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video frames (no video stream, or an empty one).")
    return container


def _decode(path: str, wanted: set[int] | None) -> tuple[dict[int, np.ndarray], int]:
    """Decode the first video stream: RGB (height, width, 3) uint8 arrays of the frames in `wanted` (all if None),
    and the number of frames decoded."""
    frames, total = {}, 0
    with _open_video(path) as container:
        try:
            for total, frame in enumerate(container.decode(video=0), start=1):
                if wanted is None or total - 1 in wanted:
                    frames[total - 1] = frame.to_ndarray(format="rgb24")
        except av.FFmpegError as error:
            raise ValueError(f"could not decode {path}: {error}") from error
    if total == 0:
        raise ValueError(f"{path} has no video frames: none could be decoded (zero-length or corrupt video).")
    return frames, total


def _count_packets(path: str) -> int:
    """Frames in the first video stream as the container stores them (one packet per frame), without decoding."""
    with _open_video(path) as container:
        try:
            return sum(1 for packet in container.demux(video=0) if packet.size)
        except av.FFmpegError as error:
            raise ValueError(f"could not read {path} as a video: {error}") from error


def decode_video_frames(path: str | os.PathLike) -> list[np.ndarray]:
    """Every frame of the first video stream, in order, as RGB (height, width, 3) uint8 arrays."""
    _require_av()
    frames, total = _decode(str(path), None)
    return [frames[index] for index in range(total)]


def read_sampled_frames(path: str | os.PathLike, choose) -> tuple[list[np.ndarray], list[int]]:
    """Decode only the frames `choose(number_of_frames)` picks. The count comes from the container's packets; if
    decoding finds a different number of frames, the choice is made again on the decoded count."""
    _require_av()
    path = str(path)
    count = _count_packets(path)
    indices = choose(count) if count else []
    frames, total = _decode(path, set(indices))
    if total != count:
        indices = choose(total)
        frames, _ = _decode(path, set(indices))
    return [frames[index] for index in indices], indices


def _frame_to_image(frame, video: int, index: int) -> "Image.Image":
    """One frame as an RGB PIL image: a PIL image of any 8-bit mode, or a uint8 array/tensor (H, W), (H, W, 1|3|4)
    or (1|3, H, W)."""
    if is_vision_available() and isinstance(frame, Image.Image):
        return frame.convert("RGB")
    array = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    where = f"video {video}, frame {index}"
    if array.dtype != np.uint8:
        raise ValueError(f"{where} has dtype {array.dtype}; pass uint8 frames (values 0-255).")
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(
            f"{where} has shape {tuple(frame.shape)}; expected (height, width), (height, width, 1|3|4) or "
            "(1|3, height, width)."
        )
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _is_single_video(item) -> bool:
    """A path, a 4-D array/tensor (frames, ...), or a list of frames (PIL images or 2/3-D arrays)."""
    if isinstance(item, (str, Path)):
        return True
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return item.ndim == 4
    if isinstance(item, (list, tuple)) and item:
        first = item[0]
        if is_vision_available() and isinstance(first, Image.Image):
            return True
        return isinstance(first, (np.ndarray, torch.Tensor)) and first.ndim in (2, 3)
    return False


def _as_video_list(videos) -> list:
    if _is_single_video(videos):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 5:
        return list(videos)
    if isinstance(videos, (list, tuple)) and videos and all(_is_single_video(video) for video in videos):
        return list(videos)
    shape = f" of shape {tuple(videos.shape)}" if hasattr(videos, "shape") else ""
    raise ValueError(
        f"cannot read videos from a {type(videos).__name__}{shape}: pass a video file path, a list of frames (PIL "
        "images or uint8 arrays), a uint8 array/tensor (frames, height, width, channels) or (frames, channels, "
        "height, width), or a list of those for a batch."
    )


# --------------------------------------------------------------------------------------------------------------------
# The processor
# --------------------------------------------------------------------------------------------------------------------


class VidLAVideoProcessor(ImageProcessingMixin):
    r"""Turns videos into `pixel_values_videos` (batch, num_frames, 3, size, size) for VidLA's video tower.

    Args:
        num_frames (`int`, defaults to 12): frames per clip (VidLA: 12 in pre-training, 32 in fine-tuning).
        sampling (`str`, defaults to `"uniform"`): `"uniform"` takes frames evenly spaced from the first to the last;
            `"segment"` splits the clip into `num_frames` equal segments and takes the middle frame of each, or a
            random frame of each when called with `training=True`.
        size (`int`, defaults to 224): the shorter side is resized to `size` (bicubic), then a centre crop of `size`.
        image_mean, image_std (`list[float]`, default to CLIP's): per-channel normalisation after scaling to [0, 1].
        pad_short_clips (`bool`, defaults to `False`): a clip with fewer frames than `num_frames` is, by default,
            sampled with repeated frames (a warning names it). With `True`, its real frames are kept once each, the
            rest of the clip is zeros, and the output has `video_mask` (1 = real frame, 0 = padding).
        seed (`int`, defaults to 0): seed of the generator that picks frames for `training=True` segment sampling
            when no `generator` is passed.
    """

    model_input_names = ["pixel_values_videos", "video_mask"]
    # The class only exists as remote code: its saved config always names it for AutoImageProcessor.
    _auto_class = "AutoImageProcessor"

    def __init__(
        self,
        num_frames: int = 12,
        sampling: str = "uniform",
        size: int = 224,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        pad_short_clips: bool = False,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_frames = num_frames
        self.sampling = sampling
        self.size = size
        self.image_mean = list(image_mean if image_mean is not None else CLIP_MEAN)
        self.image_std = list(image_std if image_std is not None else CLIP_STD)
        self.pad_short_clips = pad_short_clips
        self.seed = seed
        self._check_options(num_frames, sampling)
        self._generator = None

    @staticmethod
    def _check_options(num_frames: int, sampling: str) -> None:
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling={sampling!r}; choose one of {SAMPLING_MODES}.")
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}.")

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop("_generator", None)  # the training generator's state is not configuration
        return output

    def frame_indices(
        self,
        num_available: int,
        num_frames: int | None = None,
        sampling: str | None = None,
        pad_short_clips: bool | None = None,
        training: bool = False,
        generator: np.random.Generator | None = None,
    ) -> list[int]:
        """Indices of the frames to keep from a clip of `num_available` frames (fewer than `num_frames` only with
        `pad_short_clips` and a short clip)."""
        num_frames = self.num_frames if num_frames is None else num_frames
        sampling = self.sampling if sampling is None else sampling
        pad_short_clips = self.pad_short_clips if pad_short_clips is None else pad_short_clips
        self._check_options(num_frames, sampling)
        if num_available < 1:
            raise ValueError("a video needs at least one frame.")
        if pad_short_clips and num_available < num_frames:
            return list(range(num_available))
        if sampling == "uniform":
            return uniform_indices(num_available, num_frames)
        if training and generator is None:
            if self._generator is None:
                self._generator = np.random.default_rng(self.seed)
            generator = self._generator
        return segment_indices(num_available, num_frames, generator if training else None)

    def preprocess_frame(self, image: "Image.Image") -> np.ndarray:
        """One RGB PIL image → (3, size, size) float32: CLIP's resize, centre crop, rescale and normalisation."""
        array = np.asarray(resize_and_center_crop(image, self.size), dtype=np.float32) / np.float32(255.0)
        mean, std = np.asarray(self.image_mean, np.float32), np.asarray(self.image_std, np.float32)
        return ((array - mean) / std).transpose(2, 0, 1)

    def _sample_video(self, video, number: int, options: dict) -> tuple[list["Image.Image"], list[int], int]:
        """The sampled frames of one video as RGB PIL images, their indices, and the clip's frame count."""
        available = []

        def choose(num_available: int) -> list[int]:
            available.append(num_available)
            return self.frame_indices(num_available, **options)

        if isinstance(video, (str, Path)):
            frames, indices = read_sampled_frames(video, choose)
        else:
            if len(video) == 0:
                raise ValueError(f"video {number} has no frames.")
            indices = choose(len(video))
            frames = [video[index] for index in indices]
        images = [_frame_to_image(frame, number, index) for frame, index in zip(frames, indices)]
        return images, indices, available[-1]

    def __call__(
        self,
        videos,
        num_frames: int | None = None,
        sampling: str | None = None,
        pad_short_clips: bool | None = None,
        training: bool = False,
        generator: np.random.Generator | None = None,
        return_frame_indices: bool = False,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Process one video or a batch. A video is a file path, a list of frames (PIL images or uint8 arrays), or a
        uint8 array/tensor (frames, H, W, C) or (frames, C, H, W); a batch is a list of those or a 5-D array.

        Returns `pixel_values_videos` (batch, frames, 3, size, size); `video_mask` (batch, frames) when
        `pad_short_clips` is on; `frame_indices` (batch, frames; -1 at padding) with `return_frame_indices=True`.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}.")
        if not is_vision_available():
            raise ImportError("VidLAVideoProcessor needs Pillow: `pip install pillow`.")
        num_frames = self.num_frames if num_frames is None else num_frames
        pad_short_clips = self.pad_short_clips if pad_short_clips is None else pad_short_clips
        options = {
            "num_frames": num_frames,
            "sampling": sampling,
            "pad_short_clips": pad_short_clips,
            "training": training,
            "generator": generator,
        }
        batch = _as_video_list(videos)
        pixels = np.zeros((len(batch), num_frames, 3, self.size, self.size), np.float32)
        mask = np.zeros((len(batch), num_frames), np.int64)
        all_indices = np.full((len(batch), num_frames), -1, np.int64)
        repeated = []
        for number, video in enumerate(batch):
            frames, indices, num_available = self._sample_video(video, number, options)
            for slot, frame in enumerate(frames):
                pixels[number, slot] = self.preprocess_frame(frame)
            mask[number, : len(frames)] = 1
            all_indices[number, : len(indices)] = indices
            if num_available < num_frames and not pad_short_clips:
                repeated.append(number)
        if repeated:
            logger.warning(
                f"videos {repeated} have fewer than {num_frames} frames: frames were repeated to fill the clip "
                "(pass pad_short_clips=True to pad and mask instead)."
            )
        data = {"pixel_values_videos": pixels}
        if pad_short_clips:
            data["video_mask"] = mask
        if return_frame_indices:
            data["frame_indices"] = all_indices
        return BatchFeature(data=data, tensor_type=return_tensors)
