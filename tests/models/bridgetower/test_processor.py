"""BridgeTowerProcessor: pixel values against a hand-written copy of the original preprocessing, image modes, inputs it
must refuse, text length limits, and the save/load round trip."""

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from testing_utils import CLIP_MEAN, CLIP_STD, clip_transform_reference, tiny_bridgetower_config

import towerzoo.models.bridgetower as bt
from towerzoo.conversions.bridgetower_folder import build_processor
from towerzoo.models.bridgetower.processing_bridgetower import BridgeTowerProcessor

# Tolerance of the pixel comparison. Both sides resample the same uint8 image with PIL's bicubic filter and crop the
# same window, so the cropped uint8 values are identical; what remains is float32 rounding of (x/255 - mean)/std with
# |values| < 2.2 (one ulp ≈ 2.4e-7). 1e-5 is 40x that, and ~1400x smaller than one uint8 level after normalisation
# (1/255/0.2758 ≈ 0.0142): a different filter, a one-level rounding change or a one-pixel crop shift all fail.
PIXEL_ATOL = 1e-5


def original_clip_transform(image: Image.Image, size: int) -> torch.Tensor:
    """The original preprocessing, by hand: the datasets open images with `.convert("RGB")`, then `clip_transform`
    (torchvision's Resize(size, BICUBIC) → CenterCrop(size) → ToTensor → Normalize(CLIP mean/std))."""
    return torch.from_numpy(clip_transform_reference(image.convert("RGB"), size)).float()


def crop_margin(width: int, height: int, size: int) -> int:
    """Pixels cut from the longer side by the centre crop after the resize."""
    short, long = min(width, height), max(width, height)
    return int(size * long / short) - size


def synthetic_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients, hard-edged shapes and sensor-like noise: structure at every scale, like a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * xx + 1) * 0.5 + 0.5, yy, np.cos(4 * (xx + yy)) * 0.5 + 0.5], axis=-1) * 255
    image = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(3, width // 2 + 4)), y0 + int(rng.integers(3, height // 2 + 4))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return image


@pytest.fixture(scope="module")
def config():
    return tiny_bridgetower_config()


@pytest.fixture(scope="module")
def processor(tiny_tokenizer_dir, config) -> BridgeTowerProcessor:
    return build_processor(tiny_tokenizer_dir, config)


def _pixels(processor, images) -> torch.Tensor:
    return processor(images=images)["pixel_values"]


def _require_pil_backend(processor) -> None:
    backend = getattr(processor.image_processor, "backend", "pil")
    if backend != "pil":
        pytest.skip(f"the {backend} image-processor backend resamples differently from PIL (torchvision installed)")


# --------------------------------------------------------------------------------------------------------------------
# Pixel values against the original preprocessing
# --------------------------------------------------------------------------------------------------------------------

# (width, height): square, landscape, portrait, a large one, and crops whose margin rounds the same way in
# torchvision (round half to even) and transformers (floor).
AGREEING_SIZES = [(32, 32), (64, 48), (48, 64), (90, 40), (40, 90), (37, 32), (41, 32), (300, 200), (255, 500)]
# Margins of 3, 7, 11, … pixels: torchvision's round((margin)/2) is one more than transformers' margin // 2.
OFF_BY_ONE_SIZES = [(35, 32), (32, 35), (43, 32)]


@pytest.mark.parametrize(("width", "height"), AGREEING_SIZES)
def test_rgb_matches_the_original_preprocessing(processor, config, width, height):
    size = config.vision_config.image_size
    assert crop_margin(width, height, size) % 4 != 3
    _require_pil_backend(processor)
    image = synthetic_photo(width, height)
    got = _pixels(processor, image)
    assert got.shape == (1, 3, size, size) and got.dtype == torch.float32
    assert (got[0] - original_clip_transform(image, size)).abs().max().item() <= PIXEL_ATOL


@pytest.mark.parametrize(("width", "height"), OFF_BY_ONE_SIZES)
def test_odd_crop_margins_match_the_original_preprocessing(processor, config, width, height):
    """transformers' centre crop floors the offset where torchvision rounds it (margins of 3, 7, 11, … pixels); the
    processor crops itself, as the original."""
    size = config.vision_config.image_size
    assert crop_margin(width, height, size) % 4 == 3
    _require_pil_backend(processor)
    image = synthetic_photo(width, height)
    assert (_pixels(processor, image)[0] - original_clip_transform(image, size)).abs().max().item() <= PIXEL_ATOL


def _skimage_photos():
    if importlib.util.find_spec("skimage") is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason="scikit-image is not installed"))]
    return ["astronaut", "chelsea", "coffee", "camera"]  # camera is grayscale


@pytest.mark.parametrize("name", _skimage_photos())
def test_real_photos_match_the_original_preprocessing(processor, config, name):
    from skimage import data

    _require_pil_backend(processor)
    image = Image.fromarray(getattr(data, name)())
    size = config.vision_config.image_size
    got = _pixels(processor, image)[0]
    assert (got - original_clip_transform(image, size)).abs().max().item() <= PIXEL_ATOL


# --------------------------------------------------------------------------------------------------------------------
# Image modes and layouts
# --------------------------------------------------------------------------------------------------------------------


def _in_mode(image: Image.Image, mode: str) -> Image.Image:
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return image.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "CMYK", "1"])
def test_image_modes_give_rgb_pixel_values(processor, config, mode):
    """Each mode is converted to RGB as the original does (`Image.open(...).convert("RGB")`) before resizing; opaque
    alpha changes nothing."""
    _require_pil_backend(processor)
    size = config.vision_config.image_size
    image = _in_mode(synthetic_photo(50, 40), mode)
    assert image.mode == mode
    got = _pixels(processor, image)
    assert got.shape == (1, 3, size, size)
    assert (got[0] - original_clip_transform(image, size)).abs().max().item() <= PIXEL_ATOL


def test_transparent_rgba_drops_alpha_as_the_original(processor, config):
    """The original's `convert("RGB")` drops alpha (transparent pixels keep the colour they store); transformers'
    own RGB conversion composites onto white in some versions. The processor converts first, as the original."""
    _require_pil_backend(processor)
    size = config.vision_config.image_size
    rgba = np.asarray(synthetic_photo(50, 40).convert("RGBA")).copy()
    rgba[..., 3] = np.linspace(0, 255, rgba.shape[1], dtype=np.uint8)[None, :]
    image = Image.fromarray(rgba, "RGBA")
    white = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
    got = _pixels(processor, image)[0]
    assert (got - original_clip_transform(image, size)).abs().max().item() <= PIXEL_ATOL
    assert (got - original_clip_transform(white, size)).abs().max().item() > 0.5


def test_grayscale_2d_arrays_are_read_as_gray_images(processor, config):
    gray = np.asarray(synthetic_photo(48, 48).convert("L"))
    pixels = _pixels(processor, gray)[0].double()
    size = config.vision_config.image_size
    assert pixels.shape == (3, size, size)
    unnormalised = pixels * torch.from_numpy(CLIP_STD)[:, None, None] + torch.from_numpy(CLIP_MEAN)[:, None, None]
    assert (unnormalised - unnormalised[:1]).abs().max() < 1e-5  # three equal channels


def test_arrays_tensors_and_mixed_batches(processor, config):
    _require_pil_backend(processor)
    size = config.vision_config.image_size
    photo = synthetic_photo(64, 48)
    hwc = np.asarray(photo)
    expected = _pixels(processor, photo)
    assert torch.equal(_pixels(processor, hwc), expected)
    assert torch.equal(_pixels(processor, hwc.transpose(2, 0, 1).copy()), expected)
    assert torch.equal(_pixels(processor, torch.from_numpy(hwc.transpose(2, 0, 1).copy())), expected)
    batch = [photo, _in_mode(photo, "L"), _in_mode(photo, "P"), hwc]
    pixels = _pixels(processor, batch)
    assert pixels.shape == (4, 3, size, size)
    assert torch.equal(pixels[0], expected[0]) and torch.equal(pixels[3], expected[0])


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_images_are_refused(processor, mode):
    image = Image.new(mode, (40, 48))
    with pytest.raises(ValueError, match=rf"mode '{mode}'.*scale it to 8 bits and call image.convert\('RGB'\)"):
        processor(images=image)


@pytest.mark.parametrize(
    "shape", [(40, 48, 2), (2, 40, 48), (40, 48, 5), (5, 40, 48)], ids=["hw2", "2hw", "hw5", "5hw"]
)
@pytest.mark.parametrize(
    "kind",
    ["numpy", "torch"],
)
def test_arrays_with_2_or_5_channels_are_refused(processor, shape, kind):
    array = np.zeros(shape, dtype=np.uint8)
    image = array if kind == "numpy" else torch.from_numpy(array)
    fix = r"expected \(height, width\), \(height, width, 1\|3\|4\) or \(1\|3, height, width\)\. Pass RGB images"
    with pytest.raises(ValueError, match=rf"image 1 has shape \({shape[0]}, {shape[1]}, {shape[2]}\); {fix}"):
        processor(images=[synthetic_photo(40, 48), image])


# --------------------------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------------------------

LONG_TEXT = "a cat sits on the mat and two dogs play in the park " * 6


def test_max_text_length_is_capped_by_the_position_table(tiny_tokenizer_dir, config):
    text = config.text_config
    limit = text.max_position_embeddings - text.pad_token_id - 1
    assert build_processor(tiny_tokenizer_dir, config).max_text_length == min(50, limit) == 38
    assert build_processor(tiny_tokenizer_dir, config, max_text_length=12).max_text_length == 12


def test_long_text_is_truncated_by_default(processor, config):
    tokenizer = processor.tokenizer
    assert len(tokenizer(LONG_TEXT)["input_ids"]) > processor.max_text_length
    encoded = processor(text=[LONG_TEXT, "how many dogs?"])
    assert encoded["input_ids"].shape == (2, processor.max_text_length)
    assert encoded["input_ids"][0, 0] == tokenizer.bos_token_id
    assert encoded["input_ids"][0, -1] == tokenizer.eos_token_id  # truncation keeps </s>
    assert encoded["attention_mask"][0].all() and not encoded["attention_mask"][1].all()
    # what the processor lets through fits the model's position table
    model = bt.BridgeTowerModel(config).eval()
    pixels = _pixels(processor, [synthetic_photo(40, 40)] * 2)
    with torch.no_grad():
        output = model(**encoded, pixel_values=pixels)
    assert output.text_features.shape[1] == processor.max_text_length


def test_long_text_raises_without_truncation(processor):
    with pytest.raises(ValueError, match=rf"longer than max_length={processor.max_text_length}.*truncation=True"):
        processor(text=["how many dogs?", LONG_TEXT], truncation=False)
    short = processor(text="how many dogs?", truncation=False)
    assert short["input_ids"].shape[-1] < processor.max_text_length


def test_nothing_to_process_raises(processor):
    with pytest.raises(ValueError, match="Pass `images`, `text`, or both"):
        processor()


# --------------------------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tiny_tokenizer_dir, config, tmp_path):
    processor = build_processor(tiny_tokenizer_dir, config, max_text_length=20)
    processor.save_pretrained(tmp_path)
    loaded = BridgeTowerProcessor.from_pretrained(tmp_path)
    assert loaded.max_text_length == 20
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    inputs = {
        "images": [synthetic_photo(64, 48), _in_mode(synthetic_photo(40, 90, seed=1), "L")],
        "text": [LONG_TEXT, "what color is the cat?"],
    }
    expected, got = processor(**inputs), loaded(**inputs)
    assert set(got) == set(expected) == {"input_ids", "attention_mask", "pixel_values"}
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert got["input_ids"].shape[-1] == 20
    with pytest.raises(ValueError, match="max_length=20"):
        loaded(text=LONG_TEXT, truncation=False)


def test_max_length_overrides_max_text_length_per_call(processor):
    assert processor(text=LONG_TEXT, max_length=10)["input_ids"].shape[-1] == 10
