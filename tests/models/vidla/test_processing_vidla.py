"""VidLA's video processor and processor: frame indices by hand, pixel values against a hand-written CLIP transform,
decoding real files, batching clips of different lengths, the Hub round trip in a fresh process, and bad input."""

import contextlib
import json
import textwrap

import av
import numpy as np
import pytest
import torch
from PIL import Image
from testing_utils import clip_transform_reference, run_without_towerzoo
from transformers.utils import logging
from video_fixtures import (
    build_tiny_clip_tokenizer,
    moving_shapes,
    tiny_vidla_processor,
    write_broken_videos,
    write_video,
)

import towerzoo.models.vidla.video_processing_vidla as vp
from towerzoo.conversions.hub_folder import check_self_contained
from towerzoo.models.vidla.processing_vidla import VidLAProcessor
from towerzoo.models.vidla.video_processing_vidla import VidLAVideoProcessor, decode_video_frames

# Both sides resample the same uint8 frame with PIL's bicubic filter and crop the same window; what remains is float32
# rounding of (x/255 - mean)/std (|values| < 2.2): 1e-5 is far below one uint8 level after normalisation (~0.014).
PIXEL_ATOL = 1e-5
SIZE = 24


def clip_transform(frame: np.ndarray, size: int) -> np.ndarray:
    """OpenAI CLIP's preprocessing of one RGB frame, by hand (`testing_utils.clip_transform_reference`)."""
    return clip_transform_reference(Image.fromarray(frame), size)


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory) -> str:
    return build_tiny_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict:
    """16 frames of 48x32 (lossless and mpeg4), 5 frames of 48x32 (lossless), and the broken files."""
    folder = tmp_path_factory.mktemp("videos")
    long, short = moving_shapes(16, 48, 32), moving_shapes(5, 48, 32)
    return {
        "frames": long,
        "short_frames": short,
        "lossless": write_video(folder / "clip_lossless.mp4", long, codec="libx264rgb"),
        "mpeg4": write_video(folder / "clip_mpeg4.mp4", long, codec="mpeg4"),
        "short": write_video(folder / "short_lossless.mp4", short, codec="libx264rgb"),
        **write_broken_videos(folder),
    }


# --------------------------------------------------------------------------------------------------------------------
# Frame indices
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "num_frames", "expected"),
    [
        (20, 4, [0, 6, 13, 19]),  # i * 19 / 3 = 0, 6.33, 12.67, 19
        (9, 4, [0, 3, 5, 8]),  # i * 8 / 3 = 0, 2.67, 5.33, 8
        (4, 3, [0, 2, 3]),  # 1.5 rounds half up
        (12, 12, list(range(12))),
        (16, 1, [7]),  # one frame: the middle one
        (5, 12, [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4]),  # short clip: i * 4 / 11, frames repeat
    ],
)
def test_uniform_indices_by_hand(available, num_frames, expected):
    processor = VidLAVideoProcessor(num_frames=num_frames, sampling="uniform")
    assert processor.frame_indices(available) == expected


@pytest.mark.parametrize(
    ("available", "num_frames", "expected"),
    [
        (24, 4, [3, 9, 15, 21]),  # segments of 6 frames, middles at 3 + 6i
        (10, 4, [1, 3, 6, 8]),  # segments [0, 2.5), [2.5, 5), …: floor of 1.25, 3.75, 6.25, 8.75
        (12, 12, list(range(12))),
        (3, 6, [0, 0, 1, 1, 2, 2]),  # short clip: segments of half a frame
    ],
)
def test_segment_indices_in_evaluation_are_segment_middles(available, num_frames, expected):
    processor = VidLAVideoProcessor(num_frames=num_frames, sampling="segment")
    assert processor.frame_indices(available) == expected
    assert processor.frame_indices(available, training=False) == expected


def test_segment_indices_in_training_are_random_within_each_segment():
    """10 frames in 4 segments [0, 2.5), [2.5, 5), [5, 7.5), [7.5, 10): a draw may pick any frame overlapping its
    segment — frames {0,1,2}, {2,3,4}, {5,6,7}, {7,8,9} — and over many draws picks each of them."""
    processor = VidLAVideoProcessor(num_frames=4, sampling="segment", seed=3)
    allowed = [{0, 1, 2}, {2, 3, 4}, {5, 6, 7}, {7, 8, 9}]
    draws = [processor.frame_indices(10, training=True) for _ in range(200)]
    for segment, frames in enumerate(allowed):
        assert {draw[segment] for draw in draws} == frames
    # seeded: a fresh processor with the same seed draws the same sequence; a generator passed in takes precedence
    again = VidLAVideoProcessor(num_frames=4, sampling="segment", seed=3)
    assert [again.frame_indices(10, training=True) for _ in range(200)] == draws
    first = processor.frame_indices(10, training=True, generator=np.random.default_rng(7))
    assert first == processor.frame_indices(10, training=True, generator=np.random.default_rng(7))
    # uniform sampling ignores training mode
    assert VidLAVideoProcessor(num_frames=4).frame_indices(10, training=True) == [0, 3, 6, 9]


def test_pad_short_clips_keeps_each_real_frame_once():
    processor = VidLAVideoProcessor(num_frames=5, pad_short_clips=True)
    assert processor.frame_indices(3) == [0, 1, 2]
    assert processor.frame_indices(9) == [0, 2, 4, 6, 8]  # long enough: sampled as usual


# --------------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------------


def test_decoding_the_lossless_fixture_gives_the_written_frames(videos):
    decoded = np.stack(decode_video_frames(videos["lossless"]))
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, videos["frames"])


def test_decoding_the_mpeg4_fixture_gives_the_written_frames_within_codec_loss(videos):
    """mpeg4 stores yuv420p: each frame's mean colour moves by a few levels, and each decoded frame is closest to the
    frame written at its position (consecutive frames differ by 12 levels of red and green)."""
    decoded = np.stack(decode_video_frames(videos["mpeg4"])).astype(np.float64)
    written = videos["frames"].astype(np.float64)
    assert decoded.shape == written.shape
    mean_decoded, mean_written = decoded.mean(axis=(1, 2)), written.mean(axis=(1, 2))
    assert np.abs(mean_decoded - mean_written).max() < 4.0
    distances = np.abs(mean_decoded[:, None] - mean_written[None]).sum(-1)
    assert distances.argmin(axis=1).tolist() == list(range(len(written)))


def test_a_file_is_decoded_only_at_the_sampled_frames(videos, monkeypatch):
    converted = []
    original = av.VideoFrame.to_ndarray

    def counting(frame, *args, **kwargs):
        converted.append(frame.pts)
        return original(frame, *args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "to_ndarray", counting)
    VidLAVideoProcessor(num_frames=4, size=SIZE)(str(videos["lossless"]))
    assert len(converted) == 4


# --------------------------------------------------------------------------------------------------------------------
# Pixel values
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["uniform", "segment"])
def test_pixel_values_match_a_hand_written_clip_transform(videos, sampling):
    processor = VidLAVideoProcessor(num_frames=4, sampling=sampling, size=SIZE)
    output = processor(str(videos["lossless"]), return_frame_indices=True)
    pixels, indices = output["pixel_values_videos"], output["frame_indices"][0].tolist()
    assert pixels.shape == (1, 4, 3, SIZE, SIZE) and pixels.dtype == torch.float32
    assert set(output) == {"pixel_values_videos", "frame_indices"}
    assert indices == processor.frame_indices(16)
    frames = decode_video_frames(videos["lossless"])  # equal to the written frames (test above)
    expected = np.stack([clip_transform(frames[index], SIZE) for index in indices])
    assert np.abs(pixels[0].double().numpy() - expected).max() <= PIXEL_ATOL


@pytest.mark.parametrize(("width", "height"), [(45, 32), (32, 45), (37, 30), (24, 24), (100, 60)])
def test_geometry_matches_torchvision_for_every_crop_margin(width, height):
    """Odd margins (45x32 → 33x24: margin 9, offset round(4.5) = 4) are where a floor and a round disagree."""
    frames = moving_shapes(3, width, height)
    pixels = VidLAVideoProcessor(num_frames=3, size=SIZE)(frames)["pixel_values_videos"][0].double().numpy()
    expected = np.stack([clip_transform(frame, SIZE) for frame in frames])
    assert np.abs(pixels - expected).max() <= PIXEL_ATOL


def test_every_input_form_gives_the_same_pixels(videos):
    """A path, a (T, H, W, C) array, a (T, C, H, W) tensor, a list of PIL images and a list of arrays."""
    processor = VidLAVideoProcessor(num_frames=6, size=SIZE)
    frames = videos["frames"]
    expected = processor(str(videos["lossless"]))["pixel_values_videos"]
    forms = [
        videos["lossless"],  # a pathlib.Path
        frames,
        torch.from_numpy(frames).permute(0, 3, 1, 2),
        torch.from_numpy(frames),
        [Image.fromarray(frame) for frame in frames],
        list(frames),
        [Image.fromarray(frame).convert("RGBA") for frame in frames],  # alpha is dropped
    ]
    for number, form in enumerate(forms):
        assert torch.equal(processor(form)["pixel_values_videos"], expected), number
    gray = [Image.fromarray(frame).convert("L") for frame in frames]
    from_gray = processor(gray)["pixel_values_videos"]
    assert torch.equal(from_gray, processor([np.asarray(image) for image in gray])["pixel_values_videos"])


# --------------------------------------------------------------------------------------------------------------------
# Batches and short clips
# --------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _capture_warnings(caplog):
    """transformers' loggers do not propagate to the root logger that `caplog` listens to; let them, for a while."""
    logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            yield
    finally:
        logging.disable_propagation()


def test_short_clips_repeat_frames_by_default_and_warn(videos, caplog):
    processor = VidLAVideoProcessor(num_frames=8, size=SIZE)
    with _capture_warnings(caplog):
        output = processor([str(videos["lossless"]), str(videos["short"])], return_frame_indices=True)
    assert "videos [1] have fewer than 8 frames: frames were repeated" in caplog.text
    assert set(output) == {"pixel_values_videos", "frame_indices"}  # no mask: every slot holds a real frame
    assert output["pixel_values_videos"].shape == (2, 8, 3, SIZE, SIZE)
    assert output["frame_indices"].tolist() == [[0, 2, 4, 6, 9, 11, 13, 15], [0, 1, 1, 2, 2, 3, 3, 4]]
    short = videos["short_frames"]
    expected = np.stack([clip_transform(short[index], SIZE) for index in [0, 1, 1, 2, 2, 3, 3, 4]])
    assert np.abs(output["pixel_values_videos"][1].double().numpy() - expected).max() <= PIXEL_ATOL


def test_pad_short_clips_pads_with_zeros_and_masks(videos, caplog):
    processor = VidLAVideoProcessor(num_frames=8, size=SIZE, pad_short_clips=True)
    batch = [str(videos["short"]), str(videos["lossless"]), videos["frames"][:2]]
    with _capture_warnings(caplog):
        output = processor(batch, return_frame_indices=True)
    assert "fewer than" not in caplog.text
    assert output["video_mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 8, [1] * 2 + [0] * 6]
    assert output["video_mask"].dtype == torch.int64
    assert output["frame_indices"].tolist() == [
        [0, 1, 2, 3, 4, -1, -1, -1],
        [0, 2, 4, 6, 9, 11, 13, 15],
        [0, 1, -1, -1, -1, -1, -1, -1],
    ]
    pixels = output["pixel_values_videos"]
    assert pixels.shape == (3, 8, 3, SIZE, SIZE)
    assert not pixels[0, 5:].any() and not pixels[2, 2:].any()
    # the real frames are those of each clip processed alone
    for number, video in enumerate(batch):
        alone = processor(video)
        length = int(alone["video_mask"].sum())
        assert torch.equal(pixels[number, :length], alone["pixel_values_videos"][0, :length])
    # the option also works per call, and a 5-D array is a batch
    per_call = VidLAVideoProcessor(num_frames=8, size=SIZE)(np.stack([videos["frames"][:3]] * 2), pad_short_clips=True)
    assert per_call["video_mask"].tolist() == [[1] * 3 + [0] * 5] * 2


def test_return_tensors_numpy():
    output = VidLAVideoProcessor(num_frames=2, size=SIZE)(moving_shapes(4, 32, 32), return_tensors="np")
    assert isinstance(output["pixel_values_videos"], np.ndarray) and output["pixel_values_videos"].dtype == np.float32


# --------------------------------------------------------------------------------------------------------------------
# The processor: videos and text
# --------------------------------------------------------------------------------------------------------------------


def test_processor_videos_and_text(clip_tokenizer_dir, videos):
    processor = tiny_vidla_processor(clip_tokenizer_dir, num_frames=4, size=SIZE)
    tokenizer = processor.tokenizer
    assert processor.video_processor is processor.image_processor
    output = processor(videos=[str(videos["lossless"]), videos["frames"]], text=["a cat sits", "two dogs play"])
    assert set(output) == {"input_ids", "attention_mask", "pixel_values_videos"}
    assert output["input_ids"].shape == (2, 77)  # padded to CLIP's context length, as CLIP's tokenize
    assert output["input_ids"][0, 0] == tokenizer.bos_token_id
    assert (output["input_ids"][0] == tokenizer.eos_token_id).any()
    assert torch.equal(output["pixel_values_videos"][0], output["pixel_values_videos"][1])
    assert processor(text="a cat", padding="longest")["input_ids"].shape[-1] < 77
    # video options pass through to the video processor
    masked = processor(videos=videos["frames"][:2], pad_short_clips=True, num_frames=3)
    assert masked["video_mask"].tolist() == [[1, 1, 0]]


def test_processor_truncates_long_text_keeping_the_end_token(clip_tokenizer_dir):
    processor = tiny_vidla_processor(clip_tokenizer_dir, size=SIZE)
    long_text = "a cat sits on the mat and two dogs play in the park " * 10
    encoded = processor(text=long_text)
    assert encoded["input_ids"].shape == (1, 77)
    assert encoded["input_ids"][0, -1] == processor.tokenizer.eos_token_id
    with pytest.raises(ValueError, match="longer than max_length=77.*truncation=True"):
        processor(text=long_text, truncation=False)


# --------------------------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------------------------


def test_video_processor_save_load_round_trip(tmp_path):
    processor = VidLAVideoProcessor(num_frames=5, sampling="segment", size=SIZE, pad_short_clips=True, seed=4)
    processor.frame_indices(10, training=True)  # the generator's state is not configuration
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoImageProcessor": "video_processing_vidla.VidLAVideoProcessor"}
    assert "_generator" not in saved
    loaded = VidLAVideoProcessor.from_pretrained(tmp_path)
    for key in ("num_frames", "sampling", "size", "pad_short_clips", "seed", "image_mean", "image_std"):
        assert getattr(loaded, key) == getattr(processor, key), key


def test_hub_round_trip_in_a_fresh_process(clip_tokenizer_dir, videos, tmp_path):
    """Save the processor as a Hub folder does (only the processor class registered), then load it with
    AutoProcessor and trust_remote_code, offline, where towerzoo cannot be imported: same outputs."""
    processor = tiny_vidla_processor(clip_tokenizer_dir, num_frames=6, sampling="segment", size=SIZE)
    processor.max_text_length = 20
    VidLAProcessor.register_for_auto_class("AutoProcessor")
    folder = tmp_path / "hub"
    processor.save_pretrained(folder)
    assert sorted(path.name for path in folder.glob("*.py")) == [
        "processing_common.py",
        "processing_vidla.py",
        "video_processing_vidla.py",
    ]
    check_self_contained(folder)  # PyAV is imported behind `if is_av_available():`
    inputs = {"videos": [str(videos["lossless"]), str(videos["short"])], "text": ["a cat", "two dogs play"]}
    expected = processor(**inputs)
    script = textwrap.dedent(
        f"""
        import json
        import torch, transformers
        processor = transformers.AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        video_processor = processor.video_processor
        outputs = processor(videos={inputs["videos"]!r}, text={inputs["text"]!r})
        torch.save(dict(outputs), {str(tmp_path / "outputs.pt")!r})
        print(json.dumps({{
            "processor": type(processor).__module__ + "." + type(processor).__name__,
            "video_processor": type(video_processor).__module__ + "." + type(video_processor).__name__,
            "options": [video_processor.num_frames, video_processor.sampling, video_processor.size],
            "max_text_length": processor.max_text_length,
        }}))
        """
    )
    result = run_without_towerzoo(script, tmp_path)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["processor"].startswith("transformers_modules.") and info["processor"].endswith(".VidLAProcessor")
    assert info["video_processor"].endswith("video_processing_vidla.VidLAVideoProcessor")
    assert info["options"] == [6, "segment", SIZE] and info["max_text_length"] == 20
    got = torch.load(tmp_path / "outputs.pt")
    assert set(got) == set(expected) == {"input_ids", "attention_mask", "pixel_values_videos"}
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert got["input_ids"].shape[-1] == 20


# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("not_a_video", ValueError, r"could not read .*not_a_video\.mp4 as a video"),
        ("empty", ValueError, r"could not read .*empty\.mp4 as a video"),
        ("corrupt", ValueError, r"could not read .*corrupt\.mp4 as a video"),
        ("corrupt_frames", ValueError, r"could not decode .*corrupt_frames\.mp4: .*Invalid data"),
        ("no_frames_avi", ValueError, r"no_frames\.avi has no video frames: none could be decoded"),
        ("no_frames_mp4", ValueError, r"no_frames\.mp4 has no video frames \(no video stream, or an empty one\)"),
    ],
)
def test_unreadable_files_raise(videos, name, error, message):
    processor = VidLAVideoProcessor(num_frames=4, size=SIZE)
    with pytest.raises(error, match=message):
        processor([str(videos["lossless"]), str(videos[name])])


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"video file not found: .*nowhere\.mp4"):
        VidLAVideoProcessor()(str(tmp_path / "nowhere.mp4"))


def test_files_without_pyav_raise_with_the_fix(videos, monkeypatch):
    monkeypatch.setattr(vp, "is_av_available", lambda: False)
    with pytest.raises(ImportError, match=r"needs PyAV: `pip install av`"):
        VidLAVideoProcessor()(str(videos["lossless"]))
    # frames in memory need no decoder
    assert VidLAVideoProcessor(num_frames=2, size=SIZE)(videos["frames"])["pixel_values_videos"].shape[1] == 2


@pytest.mark.parametrize(
    ("videos_input", "message"),
    [
        (np.zeros((32, 48, 3), np.uint8), r"cannot read videos from a ndarray of shape \(32, 48, 3\)"),
        (
            np.zeros((2, 3, 4, 32, 48, 3), np.uint8),
            r"cannot read videos from a ndarray of shape \(2, 3, 4, 32, 48, 3\)",
        ),
        ([], r"cannot read videos from a list"),
        (42, r"cannot read videos from a int"),
        ([[]], r"cannot read videos from a list"),
        (np.zeros((0, 32, 48, 3), np.uint8), r"video 0 has no frames"),
        (np.zeros((4, 32, 48, 5), np.uint8), r"video 0, frame 0 has shape \(32, 48, 5\); expected \(height, width\)"),
        (np.zeros((4, 5, 32, 48), np.uint8), r"video 0, frame 0 has shape \(5, 32, 48\); expected"),
        (np.zeros((4, 32, 48, 3), np.float32), r"video 0, frame 0 has dtype float32; pass uint8 frames"),
        (torch.zeros(4, 3, 32, 48), r"video 0, frame 0 has dtype float32; pass uint8 frames"),
    ],
)
def test_wrong_inputs_raise(videos_input, message):
    with pytest.raises(ValueError, match=message):
        VidLAVideoProcessor(num_frames=2, size=SIZE)(videos_input)


def test_bad_options_raise(clip_tokenizer_dir):
    with pytest.raises(ValueError, match=r"sampling='random'; choose one of \('uniform', 'segment'\)"):
        VidLAVideoProcessor(sampling="random")
    with pytest.raises(ValueError, match="num_frames must be a positive integer, got 0"):
        VidLAVideoProcessor()(moving_shapes(2, 32, 32), num_frames=0)
    with pytest.raises(TypeError, match=r"unexpected arguments \['frames'\]"):
        VidLAVideoProcessor()(moving_shapes(2, 32, 32), frames=3)
    processor = tiny_vidla_processor(clip_tokenizer_dir, size=SIZE)
    with pytest.raises(ValueError, match="Pass `videos`, `text`, or both"):
        processor()
    with pytest.raises(TypeError, match="must be a VidLAVideoProcessor"):
        from transformers import CLIPImageProcessor

        VidLAProcessor(CLIPImageProcessor(), processor.tokenizer)
