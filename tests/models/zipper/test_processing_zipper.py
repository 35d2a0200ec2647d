"""Zipper's single-stream speech units and processor: k-means (toy recovery, determinism), the k-means speech tokenizer
(nearest centroids, run-length deduplication, JSON round trip of the codebook, espeak-ng speech round trip), the
processor's token layout for ASR/TTS x training/inference on hand-checked inputs, padding and labels, decoding, audio
files, the Hub round trip through AutoProcessor in a fresh process without towerzoo, and bad input."""

import json
import math

import numpy as np
import pytest
import soundfile
import torch
from speech_fixtures import ESPEAK_MISSING, espeak_available, speak
from testing_utils import run_without_towerzoo
from transformers import AutoTokenizer
from zipper_fixtures import build_char_tokenizer

import towerzoo.models.zipper.processing_zipper as pz
from towerzoo.conversions.hub_folder import check_self_contained
from towerzoo.models.zipper.processing_zipper import ZipperProcessor
from towerzoo.models.zipper.speech_tokenization_zipper import (
    ClippedAudioError,
    DMelSpeechTokenizer,
    KMeansSpeechTokenizer,
    SilentAudioError,
    SpeechInputError,
    SpeechTokenizer,
    fit_kmeans_codebook,
    resample,
)

TRAINING_SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "how much wood would a woodchuck chuck",
    "please call stella and ask her to bring these things",
]


class SignSpeechTokenizer(SpeechTokenizer):
    """Hand-checkable units: one per 100 samples, 0 when their mean is negative, else 1 (K = 2)."""

    tokenizer_type = "test_zipper_sign"
    _auto_class = None  # defined in a test module: no code to copy into a saved folder
    frame_rate = 160.0
    vocab_size = 2
    num_codebooks = None

    def _encode(self, waveform):
        return (waveform[: len(waveform) // 100 * 100].reshape(-1, 100).mean(1) >= 0).long()

    def _decode(self, ids):
        return (ids.float() * 2 - 1).repeat_interleave(100) * 0.5


def steps(*signs: int) -> np.ndarray:
    """100 samples of ±0.1 per sign: `SignSpeechTokenizer` gives back the signs as units (-1 → 0, +1 → 1)."""
    return np.repeat(np.array(signs, np.float32) * 0.1, 100)


def tones(seconds: float = 0.5, rate: int = 16000) -> np.ndarray:
    """A two-tone sweep with a level change: enough different log-mel frames for small codebooks."""
    t = np.arange(int(seconds * rate)) / rate
    sweep = np.sin(2 * np.pi * (200 + 1500 * t / seconds) * t)
    return (0.3 * sweep * (0.2 + t / seconds) + 0.1 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(build_char_tokenizer(tmp_path_factory.mktemp("char_tokenizer")))


@pytest.fixture(scope="module")
def sign_processor(char_tokenizer) -> ZipperProcessor:
    return ZipperProcessor(SignSpeechTokenizer(16000), char_tokenizer)


@pytest.fixture(scope="module")
def tone_tokenizer() -> KMeansSpeechTokenizer:
    return KMeansSpeechTokenizer.fit([tones()], 16000, 8, seed=0, griffin_lim_iterations=4)


@pytest.fixture(scope="module")
def espeak_speech(tmp_path_factory) -> tuple[list[np.ndarray], np.ndarray, int]:
    """The training sentences and 'one two three' (held out), spoken by espeak-ng at 22,050 Hz."""
    if not espeak_available():
        pytest.skip(ESPEAK_MISSING)
    folder = tmp_path_factory.mktemp("espeak")
    read = [
        soundfile.read(speak(text, folder / f"{i}.wav"), dtype="float32") for i, text in enumerate(TRAINING_SENTENCES)
    ]
    held_out, rate = soundfile.read(speak("one two three", folder / "held_out.wav"), dtype="float32")
    return [samples for samples, _ in read], held_out, rate


# --------------------------------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------------------------------


def test_kmeans_recovers_three_separated_clusters():
    """Three clusters of 20 points (spread 0.1, centres 10 apart): every seed finds the three cluster means."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, -5.0], [0.0, 10.0, 5.0]], dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(20)
    points = centres[labels] + 0.1 * torch.randn(60, 3, generator=generator, dtype=torch.float64)
    means = torch.stack([points[labels == k].mean(0) for k in range(3)]).float()
    for seed in range(5):
        codebook = fit_kmeans_codebook(points, 3, seed)
        assert codebook.dtype == torch.float32 and codebook.shape == (3, 3)
        order = torch.cdist(means, codebook).argmin(1)
        assert sorted(order.tolist()) == [0, 1, 2]
        assert torch.allclose(codebook[order], means, atol=1e-6)


def test_kmeans_is_deterministic_for_a_seed():
    points = torch.randn(200, 5, generator=torch.Generator().manual_seed(1))
    first = fit_kmeans_codebook(points, 8, seed=3)
    assert torch.equal(first, fit_kmeans_codebook(points.clone(), 8, seed=3))
    assert any(not torch.equal(first, fit_kmeans_codebook(points, 8, seed=seed)) for seed in (0, 1, 2))
    # no Lloyd step: the k-means++ seeds, which are rows of the data
    seeds = fit_kmeans_codebook(points, 8, seed=3, iterations=0)
    assert all((points == row).all(1).any() for row in seeds)


@pytest.mark.parametrize(
    ("features", "num_units", "message"),
    [
        (torch.zeros(10), 2, r"\(N, dim\)"),
        (torch.zeros(10, 2, dtype=torch.long), 2, "floating-point"),
        (torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), 1, "NaN"),
        (torch.tensor([[0.0], [0.0], [0.0], [1.0]]), 3, "at least num_units=3 distinct feature rows, got 2"),
        (torch.zeros(4, 2), 0, "positive integer"),
        (torch.zeros(4, 2), True, "positive integer"),
    ],
)
def test_kmeans_bad_input(features, num_units, message):
    with pytest.raises(ValueError, match=message):
        fit_kmeans_codebook(features, num_units, seed=0)


# --------------------------------------------------------------------------------------------------------------------
# k-means speech tokenizer
# --------------------------------------------------------------------------------------------------------------------


def test_units_are_the_nearest_centroids(tone_tokenizer):
    waveform = torch.from_numpy(tones(0.3))
    frames = tone_tokenizer.log_mel(waveform).double()
    ids = tone_tokenizer.encode(waveform, 16000)
    assert ids.dtype == torch.int64 and ids.shape == (1 + len(waveform) // 400,)
    brute_force = ((frames[:, None, :] - tone_tokenizer.codebook.double()[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(ids, brute_force)
    assert len(ids.unique()) >= 4
    # a codebook made of three of the frames gives each of those frames its own unit
    exact = KMeansSpeechTokenizer(frames[[2, 6, 10]].float())
    assert exact.encode(waveform, 16000)[[2, 6, 10]].tolist() == [0, 1, 2]


def test_deduplication_collapses_runs(tone_tokenizer):
    waveform = tones(0.3)
    plain = tone_tokenizer.encode(waveform, 16000)
    settings = {key: value for key, value in tone_tokenizer.to_dict().items() if key != "deduplicate"}
    deduplicated = KMeansSpeechTokenizer(**{**settings, "deduplicate": True})
    ids = deduplicated.encode(waveform, 16000)
    assert torch.equal(ids, torch.unique_consecutive(plain)) and len(ids) < len(plain)
    assert deduplicated.decode(ids).shape == ((len(ids) - 1) * 400,)  # one frame per unit
    assert deduplicated.decode(ids[:1]).shape == (0,)


def test_codebook_survives_the_json_round_trip(tmp_path):
    """float64 centroids are stored as float32; the nested list in the JSON gives back the same float32 values."""
    codebook = np.random.default_rng(0).normal(-3.0, 1.5, (5, 80))
    tokenizer = KMeansSpeechTokenizer(codebook, deduplicate=True, griffin_lim_iterations=2, on_silence="ignore")
    assert tokenizer.codebook.dtype == torch.float32
    assert torch.equal(tokenizer.codebook, torch.from_numpy(codebook).float())
    [path] = tokenizer.save_pretrained(tmp_path)
    saved = json.loads(open(path).read())
    assert saved["tokenizer_type"] == "kmeans" and saved["feature_extractor_type"] == "KMeansSpeechTokenizer"
    assert saved["codebook"] == tokenizer.codebook.tolist()
    assert saved["auto_map"] == {"AutoFeatureExtractor": "speech_tokenization_zipper.KMeansSpeechTokenizer"}
    loaded = SpeechTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is KMeansSpeechTokenizer
    assert loaded.codebook.dtype == torch.float32 and torch.equal(loaded.codebook, tokenizer.codebook)
    assert loaded.to_dict() == tokenizer.to_dict() and loaded.deduplicate
    assert "codebook=<5 rows>" in repr(loaded)


def test_round_trip_on_espeak_speech(espeak_speech):
    """A 64-unit codebook fitted on four sentences encodes a held-out one; decoding keeps its log-mel close.

    Measured (log10 mel, cells clamped at -7, speech cells are those above -4): the centroids are 0.22 from the
    frames on average (0.28 on speech cells), against 1.79 (0.97) for a single centroid; the decoded audio's log-mel
    is 0.34 from the original (0.30 on speech); re-encoding the decoded audio gives back 88 % of the units."""
    training, held_out, rate = espeak_speech
    tokenizer = KMeansSpeechTokenizer.fit(training, rate, 64, seed=0)
    again = KMeansSpeechTokenizer.fit(training, rate, 64, seed=0)
    assert torch.equal(tokenizer.codebook, again.codebook)
    ids = tokenizer.encode(held_out, rate)
    frames = len(ids)
    assert ids.shape == (1 + math.ceil(len(held_out) * 16000 / rate) // 400,)
    assert len(ids.unique()) >= 12
    decoded = tokenizer.decode(ids)
    assert decoded.shape == ((frames - 1) * 400,) and decoded.dtype == torch.float32
    original = tokenizer.log_mel(resample(torch.from_numpy(held_out), rate, 16000))[:frames].clamp(min=-7)
    centroids = tokenizer.dequantize(ids).clamp(min=-7)
    rebuilt = tokenizer.log_mel(decoded)[:frames].clamp(min=-7)
    speech = original > -4
    single = KMeansSpeechTokenizer.fit(training, rate, 1, seed=0).codebook.clamp(min=-7)
    assert (original - single).abs().mean() > 1.5
    assert (original - centroids).abs().mean() < 0.27
    assert (original - centroids)[speech].abs().mean() < 0.33
    assert (original - rebuilt).abs().mean() < 0.4
    assert (original - rebuilt)[speech].abs().mean() < 0.35
    assert (tokenizer.encode(decoded, 16000) == ids).float().mean() > 0.8


@pytest.mark.parametrize(
    ("codebook", "message"),
    [
        (np.zeros((4, 40)), r"shape \(units >= 1, n_mels=80\), got \(4, 40\)"),
        (np.zeros((0, 80)), r"got \(0, 80\)"),
        (np.zeros(80), r"got \(80,\)"),
        (np.full((2, 80), np.inf), "infinite"),
    ],
)
def test_bad_codebook(codebook, message):
    with pytest.raises(ValueError, match=message):
        KMeansSpeechTokenizer(codebook)


def test_unknown_settings_are_refused():
    with pytest.raises(TypeError, match=r"unexpected arguments \['n_mel'\]"):
        KMeansSpeechTokenizer(np.zeros((2, 80)), n_mel=80)


# --------------------------------------------------------------------------------------------------------------------
# Processor: token layout
# --------------------------------------------------------------------------------------------------------------------

AUDIO = [steps(-1, 1, 1), steps(1)]  # units [0, 1, 1] and [1]; speech bos/eos/pad are 2, 3, 4
SPEECH = [[2, 0, 1, 1, 3], [2, 1, 3, 4, 4]]
SPEECH_MASK = [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
TEXT = ["ab", "c"]


def as_lists(batch) -> dict:
    return {key: value.tolist() for key, value in batch.items()}


def test_special_speech_ids_default_to_after_the_units(sign_processor):
    processor = sign_processor
    ids = (processor.speech_bos_token_id, processor.speech_eos_token_id, processor.speech_pad_token_id)
    assert ids == (2, 3, 4) and processor.speech_vocab_size == 5
    assert processor.sampling_rate == 16000 and processor.speech_tokenizer is processor.feature_extractor
    assert processor.model_input_names == ["source_input_ids", "source_attention_mask", "input_ids", "attention_mask"]


def test_asr_training(sign_processor):
    batch = sign_processor(audio=AUDIO, text=TEXT, task="asr", sampling_rate=16000)
    assert all(value.dtype == torch.int64 for value in batch.values())
    assert as_lists(batch) == {
        "source_input_ids": SPEECH,
        "source_attention_mask": SPEECH_MASK,
        "input_ids": [[0, 5, 6, 1], [0, 7, 1, 2]],  # [bos] a b [eos], [bos] c [eos] [pad]
        "attention_mask": [[1, 1, 1, 1], [1, 1, 1, 0]],
        "labels": [[0, 5, 6, 1], [0, 7, 1, -100]],
    }


def test_asr_inference(sign_processor):
    batch = sign_processor(audio=AUDIO, sampling_rate=16000)
    assert as_lists(batch) == {
        "source_input_ids": SPEECH,
        "source_attention_mask": SPEECH_MASK,
        "input_ids": [[0], [0]],
        "attention_mask": [[1], [1]],
    }


def test_tts_training(sign_processor):
    batch = sign_processor(audio=AUDIO, text=TEXT, task="tts", sampling_rate=16000)
    assert as_lists(batch) == {
        # the tokenizer adds <s> only (as Llama's does); the processor ends the text with </s>
        "source_input_ids": [[0, 5, 6, 1], [0, 7, 1, 2]],
        "source_attention_mask": [[1, 1, 1, 1], [1, 1, 1, 0]],
        "input_ids": SPEECH,
        "attention_mask": SPEECH_MASK,
        "labels": [[2, 0, 1, 1, 3], [2, 1, 3, -100, -100]],
    }


def test_tts_inference(sign_processor):
    batch = sign_processor(text="ab c", task="tts")
    assert as_lists(batch) == {
        "source_input_ids": [[0, 5, 6, 4, 7, 1]],
        "source_attention_mask": [[1, 1, 1, 1, 1, 1]],
        "input_ids": [[2]],
        "attention_mask": [[1]],
    }


def test_tts_source_keeps_an_eos_the_tokenizer_adds(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(build_char_tokenizer(tmp_path, add_eos=True))
    processor = ZipperProcessor(SignSpeechTokenizer(16000), tokenizer)
    assert processor(text=["ab", "c"], task="tts")["source_input_ids"].tolist() == [[0, 5, 6, 1], [0, 7, 1, 2]]


def test_without_padding(sign_processor):
    ragged = sign_processor(audio=AUDIO, text=TEXT, sampling_rate=16000, padding=False, return_tensors=None)
    assert ragged["source_input_ids"] == [[2, 0, 1, 1, 3], [2, 1, 3]]
    assert ragged["labels"] == [[0, 5, 6, 1], [0, 7, 1]]
    equal = sign_processor(audio=[AUDIO[1]] * 2, text=["c", "d"], sampling_rate=16000, padding=False)
    assert equal["source_input_ids"].tolist() == [[2, 1, 3]] * 2 and equal["input_ids"].shape == (2, 3)
    with pytest.raises(ValueError, match=r"different lengths \(\[3, 5\]\); use padding=True"):
        sign_processor(audio=AUDIO, sampling_rate=16000, padding=False)


def test_speech_is_resampled_to_the_tokenizers_rate(tone_tokenizer, char_tokenizer):
    processor = ZipperProcessor(tone_tokenizer, char_tokenizer)
    at_22k = tones(rate=22050)
    batch = processor(audio=at_22k, sampling_rate=22050)
    units = tone_tokenizer.encode(resample(torch.from_numpy(at_22k), 22050, 16000), 16000).tolist()
    assert batch["source_input_ids"].tolist() == [[8, *units, 9]]


def test_audio_files(sign_processor, tone_tokenizer, char_tokenizer, tmp_path):
    """Files carry their rate; multi-channel files are averaged; the result equals passing the samples."""
    processor = ZipperProcessor(tone_tokenizer, char_tokenizer)
    samples = tones(rate=22050)
    soundfile.write(tmp_path / "mono.wav", samples, 22050, subtype="FLOAT")
    soundfile.write(tmp_path / "stereo.flac", np.stack([samples, samples], 1), 22050, subtype="PCM_24")
    expected = processor(audio=samples, sampling_rate=22050)["source_input_ids"]
    assert torch.equal(processor(audio=str(tmp_path / "mono.wav"))["source_input_ids"], expected)
    stereo, _ = soundfile.read(tmp_path / "stereo.flac", dtype="float32")
    from_file = processor(audio=[tmp_path / "stereo.flac", tmp_path / "mono.wav"])["source_input_ids"]
    assert torch.equal(from_file[0], processor(audio=stereo.mean(1), sampling_rate=22050)["source_input_ids"][0])
    assert torch.equal(from_file[1], expected[0])


# --------------------------------------------------------------------------------------------------------------------
# Processor: decoding
# --------------------------------------------------------------------------------------------------------------------


def test_batch_decode_text(sign_processor):
    ids = torch.tensor([[0, 5, 6, 4, 7, 1, 2], [0, 7, 1, 5, 5, 2, 2]])  # generated text goes on after </s>
    assert sign_processor.batch_decode(ids) == ["ab c", "c"]
    assert sign_processor.decode(ids[1]) == "c"
    assert sign_processor.batch_decode(ids, skip_special_tokens=False)[1] == "<s>c</s>aa<pad><pad>"


def test_batch_decode_speech(sign_processor):
    speech_tokenizer = sign_processor.speech_tokenizer
    rows = [[2, 0, 1, 1, 3, 4], [2, 1, 3, 0, 0], [2, 3, 4, 4, 4], [4, 4, 1, 0, 3]]
    waveforms = sign_processor.batch_decode(rows, modality="speech")
    expected = [[0, 1, 1], [1], [], [1, 0]]  # bos, pads and everything from eos on are dropped
    for waveform, units in zip(waveforms, expected):
        assert waveform.dtype == np.float32 and waveform.ndim == 1
        want = speech_tokenizer.decode(torch.tensor(units)).numpy() if units else np.zeros(0, np.float32)
        np.testing.assert_array_equal(waveform, want)
    assert len(sign_processor.decode(torch.tensor(rows[0]), modality="speech")) == 300
    with pytest.raises(ValueError, match=r"speech row 1: token ids must lie in \[0, 1\]"):
        sign_processor.batch_decode([[2, 1, 3], [2, 7, 3]], modality="speech")
    with pytest.raises(ValueError, match="modality must be one of"):
        sign_processor.batch_decode(rows, modality="audio")


# --------------------------------------------------------------------------------------------------------------------
# Processor: Hub round trip
# --------------------------------------------------------------------------------------------------------------------


def test_hub_round_trip_in_a_fresh_process(tone_tokenizer, char_tokenizer, tmp_path):
    """Save as a Hub folder does (the processor registered for AutoProcessor, the speech tokenizer always registered
    for AutoFeatureExtractor), load with AutoProcessor and trust_remote_code, offline, where towerzoo cannot be
    imported: the same codebook, options and outputs. No config.json is needed."""
    processor = ZipperProcessor(tone_tokenizer, char_tokenizer, speech_pad_token_id=12)
    ZipperProcessor.register_for_auto_class("AutoProcessor")
    folder = tmp_path / "hub"
    processor.save_pretrained(folder)
    assert sorted(path.name for path in folder.iterdir()) == [
        "processing_zipper.py",
        "processor_config.json",
        "speech_tokenization_zipper.py",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    check_self_contained(folder)  # soundfile and soxr are imported behind `try:`
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_zipper.ZipperProcessor"}
    assert (config["speech_bos_token_id"], config["speech_eos_token_id"], config["speech_pad_token_id"]) == (8, 9, 12)
    assert config["feature_extractor"]["codebook"] == tone_tokenizer.codebook.tolist()
    assert config["feature_extractor"]["auto_map"]["AutoFeatureExtractor"] == (
        "speech_tokenization_zipper.KMeansSpeechTokenizer"
    )
    # towerzoo's own loader reads the speech tokenizer from the processor's config too
    assert torch.equal(SpeechTokenizer.from_pretrained(folder).codebook, tone_tokenizer.codebook)

    audio = [tones(0.4), tones(0.25, 22050)]
    np.save(tmp_path / "audio0.npy", audio[0])
    np.save(tmp_path / "audio1.npy", audio[1])
    expected = {
        "asr": processor(audio=audio[:1], text=["ab c"], sampling_rate=16000),
        "tts": processor(text=["ab c", "d"], task="tts"),
        "resampled": processor(audio=audio[1], sampling_rate=22050),
    }
    generated = torch.tensor([[8, 3, 3, 5, 9, 12], [8, 1, 12, 2, 9, 4]])
    expected_speech = processor.batch_decode(generated, modality="speech")
    script = f"""
        import json
        import numpy as np, torch, transformers
        processor = transformers.AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        speech = processor.speech_tokenizer
        audio = [np.load({str(tmp_path / "audio0.npy")!r}), np.load({str(tmp_path / "audio1.npy")!r})]
        outputs = {{
            "asr": dict(processor(audio=audio[:1], text=["ab c"], sampling_rate=16000)),
            "tts": dict(processor(text=["ab c", "d"], task="tts")),
            "resampled": dict(processor(audio=audio[1], sampling_rate=22050)),
            "speech": processor.batch_decode(torch.tensor({generated.tolist()!r}), modality="speech"),
            "codebook": speech.codebook,
        }}
        torch.save(outputs, {str(tmp_path / "outputs.pt")!r})
        print(json.dumps({{
            "processor": type(processor).__module__ + "." + type(processor).__name__,
            "speech_tokenizer": type(speech).__module__ + "." + type(speech).__name__,
            "specials": [processor.speech_bos_token_id, processor.speech_eos_token_id, processor.speech_pad_token_id],
            "sampling_rate": processor.sampling_rate,
            "text": processor.batch_decode([[0, 5, 6, 1, 2]]),
        }}))
    """
    result = run_without_towerzoo(script, tmp_path)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["processor"].startswith("transformers_modules.") and info["processor"].endswith(".ZipperProcessor")
    assert info["speech_tokenizer"].endswith("speech_tokenization_zipper.KMeansSpeechTokenizer")
    assert info["specials"] == [8, 9, 12] and info["sampling_rate"] == 16000 and info["text"] == ["ab"]
    got = torch.load(tmp_path / "outputs.pt", weights_only=False)
    assert got["codebook"].dtype == torch.float32 and torch.equal(got["codebook"], tone_tokenizer.codebook)
    for name, batch in expected.items():
        assert set(got[name]) == set(batch), name
        for key in batch:
            assert torch.equal(got[name][key], batch[key]), (name, key)
    for waveform, want in zip(got["speech"], expected_speech):
        np.testing.assert_array_equal(waveform, want)


# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("audio", "rate", "error", "message"),
    [
        ([steps(1), np.stack([steps(1), steps(1)])], 16000, SpeechInputError, r"audio\[1\]: audio must be mono.*mean"),
        ([steps(1), np.zeros(400, np.float32)], 16000, SilentAudioError, r"audio\[1\]: audio is silent"),
        (np.ones(400, np.float32), 16000, ClippedAudioError, r"audio\[0\]: audio is clipped: 100.00%"),
        (np.zeros(0, np.float32), 16000, SpeechInputError, r"audio\[0\]: audio is empty"),
        ((steps(1) * 3000).astype(np.int16), 16000, SpeechInputError, "integer PCM"),
        (steps(1), "16k", SpeechInputError, "sampling_rate must be a positive integer number of Hz, got '16k'"),
        (steps(1), 16000.5, SpeechInputError, "sampling_rate must be a positive integer"),
        (steps(1), None, SpeechInputError, "sampling_rate is required with audio arrays"),
        ([], 16000, ValueError, "audio is an empty list"),
    ],
)
def test_bad_audio(char_tokenizer, audio, rate, error, message):
    processor = ZipperProcessor(SignSpeechTokenizer(16000, on_clipping="error"), char_tokenizer)
    with pytest.raises(error, match=message):
        processor(audio=audio, sampling_rate=rate)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"audio": AUDIO, "text": ["ab", " "]}, ValueError, r"text\[1\] is empty"),
        ({"text": [""], "task": "tts"}, ValueError, r"text\[0\] is empty"),
        ({"text": ["ab", 3], "task": "tts"}, TypeError, r"text\[1\] must be a string"),
        ({"text": [], "task": "tts"}, ValueError, "text is an empty list"),
        ({"audio": AUDIO, "text": ["ab"]}, ValueError, "got 2 audio inputs and 1 texts"),
        ({"text": ["ab"]}, ValueError, "task 'asr' needs audio"),
        ({"audio": AUDIO, "task": "tts"}, ValueError, "task 'tts' needs text"),
        ({"audio": AUDIO, "task": "s2t"}, ValueError, r"task must be one of \('asr', 'tts'\)"),
    ],
)
def test_bad_requests(sign_processor, kwargs, error, message):
    with pytest.raises(error, match=message):
        sign_processor(sampling_rate=16000, **kwargs)


def test_bad_audio_files(sign_processor, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        sign_processor(audio=str(tmp_path / "missing.wav"))
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(SpeechInputError, match=r"junk.wav: cannot decode audio"):
        sign_processor(audio=str(tmp_path / "junk.wav"))
    monkeypatch.setattr(pz, "soundfile", None)
    with pytest.raises(ImportError, match=r"needs the soundfile package .*or pass the samples as arrays"):
        sign_processor(audio=str(tmp_path / "junk.wav"))


def test_bad_processor_settings(char_tokenizer):
    with pytest.raises(ValueError, match="reads one token stream, but DMelSpeechTokenizer gives 80 tokens per frame"):
        ZipperProcessor(DMelSpeechTokenizer(), char_tokenizer)
    with pytest.raises(ValueError, match=r"distinct and >= 2 \(unit ids are 0..1\), got \(2, 3, 3\)"):
        ZipperProcessor(SignSpeechTokenizer(16000), char_tokenizer, speech_pad_token_id=3)
    with pytest.raises(ValueError, match=r"got \(1, 3, 4\)"):
        ZipperProcessor(SignSpeechTokenizer(16000), char_tokenizer, speech_bos_token_id=1)
    with pytest.raises(ValueError, match="sampling_rate 22050 differs from the speech tokenizer's 16000"):
        ZipperProcessor(SignSpeechTokenizer(16000), char_tokenizer, sampling_rate=22050)
    with pytest.raises(TypeError, match="FeatureExtractionMixin was expected"):
        ZipperProcessor(object(), char_tokenizer)
    no_bos = AutoTokenizer.from_pretrained(char_tokenizer.name_or_path, bos_token=None)
    with pytest.raises(ValueError, match="needs a bos token"):
        ZipperProcessor(SignSpeechTokenizer(16000), no_bos)
