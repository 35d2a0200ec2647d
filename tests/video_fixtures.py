"""Tiny real videos written with PyAV (moving coloured shapes), broken files, a tiny VidLA processor, and a tiny
MSR-VTT retrieval set with a tiny VidLA folder to evaluate on, all offline and deterministic."""

import csv
from pathlib import Path

import numpy as np

from towerzoo.tiny import build_tiny_clip_tokenizer

__all__ = [
    "build_tiny_clip_tokenizer",
    "moving_shapes",
    "msrvtt_caption",
    "tiny_vidla_folder",
    "tiny_vidla_processor",
    "write_broken_videos",
    "write_msrvtt",
    "write_msrvtt_videos",
    "write_video",
]

FPS = 8
CAPTIONS = ["a cat sits on the mat", "two dogs play in the park", "the cat sits in a park", "a dog play on a mat"]


def moving_shapes(num_frames: int, width: int, height: int) -> np.ndarray:
    """(num_frames, height, width, 3) uint8: a background whose colour steps by 16 levels of red and green per frame
    (so every frame is identifiable by its mean colour), a yellow square moving right and a cyan bar moving down."""
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    square, bar = max(4, height // 4), max(2, height // 8)
    for index in range(num_frames):
        frames[index] = (16 + 12 * index, 230 - 12 * index, 90)
        x = (index * 3) % (width - square)
        frames[index, height // 4 : height // 4 + square, x : x + square] = (250, 230, 20)
        y = (index * 2) % (height - bar)
        frames[index, y : y + bar, width // 2 :] = (20, 200, 230)
    return frames


def write_video(path: Path, frames: np.ndarray, codec: str = "mpeg4") -> Path:
    """Encode RGB frames with PyAV. `mpeg4` stores yuv420p (lossy: colours move by a few levels, sharp chroma
    edges more); `libx264rgb` with qp=0 stores the RGB frames losslessly."""
    import av

    lossless = codec == "libx264rgb"
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        if lossless:
            stream.options = {"qp": "0"}
        else:
            stream.bit_rate = 2_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def write_broken_videos(folder: Path) -> dict[str, Path]:
    """Files a video reader must refuse: `not_a_video` (text named .mp4), `empty` (0 bytes), `corrupt` (a real
    .mp4 whose middle bytes, index included, are noise), `corrupt_frames` (a readable .mp4 whose frame data is noise
    after the first frames), `no_frames_avi` (an AVI with a video stream and no frames), `no_frames_mp4` (an .mp4
    written with no frames: the muxer leaves no video stream at all)."""
    import av

    folder = Path(folder)
    paths = {
        "not_a_video": folder / "not_a_video.mp4",
        "empty": folder / "empty.mp4",
        "corrupt": folder / "corrupt.mp4",
        "corrupt_frames": folder / "corrupt_frames.mp4",
        "no_frames_avi": folder / "no_frames.avi",
        "no_frames_mp4": folder / "no_frames.mp4",
    }
    paths["not_a_video"].write_text("this is not a video\n" * 8)
    paths["empty"].write_bytes(b"")
    rng = np.random.default_rng(0)
    original = write_video(paths["corrupt"], moving_shapes(16, 48, 32)).read_bytes()
    data = bytearray(original)
    data[100 : len(data) - 200] = rng.integers(0, 256, len(data) - 300, dtype=np.uint8).tobytes()
    paths["corrupt"].write_bytes(bytes(data))
    data = bytearray(original)  # the index (moov, written last) intact, the frame data (mdat) noise
    start, end = data.find(b"mdat") + 204, data.find(b"moov") - 200
    data[start:end] = rng.integers(0, 256, end - start, dtype=np.uint8).tobytes()
    paths["corrupt_frames"].write_bytes(bytes(data))
    for name in ("no_frames_avi", "no_frames_mp4"):
        with av.open(str(paths[name]), "w") as container:
            stream = container.add_stream("mpeg4", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            container.start_encoding()
    return paths


def tiny_vidla_processor(tokenizer_dir: str, **video_options):
    """A `VidLAProcessor` with the tiny CLIP tokenizer and a `VidLAVideoProcessor` built from `video_options`."""
    from transformers import AutoTokenizer

    from towerzoo.models.vidla.processing_vidla import VidLAProcessor
    from towerzoo.models.vidla.video_processing_vidla import VidLAVideoProcessor

    return VidLAProcessor(VidLAVideoProcessor(**video_options), AutoTokenizer.from_pretrained(tokenizer_dir))


def tiny_vidla_folder(root: Path) -> Path:
    """`<root>/model`: a tiny VidLA Hub folder converted by `vidla_from_clip` from a random tiny CLIP (seed 0, 16-pixel
    frames, 24-dim projections) with the tiny CLIP tokenizer (`<root>/tokenizer`; the CLIP is `<root>/clip`)."""
    import torch
    import transformers

    from towerzoo.conversions import vidla_from_clip

    root = Path(root)
    tokenizer_dir = build_tiny_clip_tokenizer(root / "tokenizer")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 16,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=text, vision_config={**vision, "image_size": 16, "patch_size": 4}, projection_dim=24
    )
    transformers.CLIPModel(config).save_pretrained(root / "clip")
    return vidla_from_clip.run(root / "clip", root / "model", tokenizer=tokenizer_dir)


def write_msrvtt_videos(folder: Path, num_videos: int, short: int | None = None, seed: int = 0) -> list[str]:
    """`<folder>/video<7000 + k>.mp4`, k < num_videos: 8 frames of 32x32 moving shapes, each video tinted its own
    colour; video `short` has 3 frames. Returns the video ids."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    video_ids = [f"video{7000 + k}" for k in range(num_videos)]
    for k, video_id in enumerate(video_ids):
        frames = moving_shapes(3 if k == short else 8, 32, 32)
        frames = np.clip(frames.astype(int) + rng.integers(-60, 60, (1, 1, 1, 3)), 0, 255).astype(np.uint8)
        write_video(folder / f"{video_id}.mp4", frames)
    return video_ids


def msrvtt_caption(k: int) -> str:
    """The caption `write_msrvtt` gives the k-th video."""
    return CAPTIONS[k % len(CAPTIONS)] + f" {k}"


def write_msrvtt(path: Path, video_ids: list[str]) -> Path:
    """CLIP4Clip's `MSRVTT_JSFUSION_test.csv` layout: one caption (`msrvtt_caption(k)`) per video."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        for k, video_id in enumerate(video_ids):
            writer.writerow([f"ret{k}", f"msr{video_id[5:]}", video_id, msrvtt_caption(k)])
    return Path(path)
