"""Zipper's speech tokenizers: the dMel round trip on real espeak-ng speech (encode -> Griffin-Lim decode keeps the
log-mel spectrogram close), token ids, determinism, save/load and the pluggable registry, resampling (soxr and the
torch fallback), a Hub user's environment without towerzoo or soxr, and bad input."""

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from speech_fixtures import ESPEAK_MISSING, ESPEAK_RATE, espeak_available, speak
from testing_utils import run_without_towerzoo

import towerzoo.models.zipper.speech_tokenization_zipper as st
from towerzoo.conversions.hub_folder import check_self_contained
from towerzoo.models.zipper.speech_tokenization_zipper import (
    ClippedAudioError,
    DMelSpeechTokenizer,
    SilentAudioError,
    SpeechInputError,
    SpeechTokenizer,
    resample,
    sinc_resample,
)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[np.ndarray, int]:
    """'one two three' spoken by espeak-ng at its native 22,050 Hz, float32 in [-1, 1]."""
    if not espeak_available():
        pytest.skip(ESPEAK_MISSING)
    path = speak("one two three", tmp_path_factory.mktemp("speech") / "one_two_three.wav")
    samples, rate = soundfile.read(path, dtype="float32")
    return samples, rate


@pytest.fixture(scope="module")
def tokenizer() -> DMelSpeechTokenizer:
    return DMelSpeechTokenizer()


@pytest.fixture(scope="module")
def fast_tokenizer() -> DMelSpeechTokenizer:
    """Fewer Griffin-Lim iterations, for tests that only need some decoded audio."""
    return DMelSpeechTokenizer(griffin_lim_iterations=4)


def test_defaults_are_the_papers(tokenizer):
    assert tokenizer.sampling_rate == 16000
    assert tokenizer.frame_rate == 40.0  # 25 ms hop
    assert tokenizer.win_length / tokenizer.sampling_rate == 0.05
    assert (tokenizer.vocab_size, tokenizer.num_codebooks) == (16, 80)
    assert tokenizer.bin_values[0] == -7.0 and tokenizer.bin_values[-1] == 2.0
    assert tokenizer.mel_filters.shape == (80, 513)


def test_round_trip_keeps_the_log_mel_spectrogram_close(speech, tokenizer):
    # Measured: mean |log10 mel| error 0.25 over all cells (0.17 where the original is above 1e-4, i.e. speech),
    # against 0.11 for quantisation alone (bins are 0.6 apart); re-encoding the decoded audio gives back 90 % of
    # the tokens exactly and 94 % within one bin.
    samples, rate = speech
    ids = tokenizer.encode(samples, rate)
    decoded = tokenizer.decode(ids)
    original = tokenizer.log_mel(resample(torch.from_numpy(samples), rate, 16000))
    frames = len(ids)
    assert decoded.shape == ((frames - 1) * tokenizer.hop_length,) and decoded.dtype == torch.float32
    bounds = (tokenizer.log_min, tokenizer.log_max)
    original = original[:frames].clamp(*bounds)
    rebuilt = tokenizer.log_mel(decoded)[:frames].clamp(*bounds)
    speech_cells = original > -4
    assert (original - tokenizer.dequantize(ids)).abs().max() <= 0.3 + 1e-5  # half a bin
    assert (original - rebuilt).abs().mean() < 0.3
    assert (original - rebuilt)[speech_cells].abs().mean() < 0.22
    reencoded = tokenizer.encode(decoded, tokenizer.sampling_rate)
    assert (reencoded == ids).float().mean() > 0.85
    assert ((reencoded - ids).abs() <= 1).float().mean() > 0.9


def test_token_ids(speech, tokenizer):
    samples, rate = speech
    ids = tokenizer.encode(samples, rate)
    resampled_length = math.ceil(len(samples) * 16000 / rate)
    assert ids.dtype == torch.int64
    assert ids.shape == (1 + resampled_length // tokenizer.hop_length, 80)
    assert 0 <= ids.min() and ids.max() < tokenizer.vocab_size
    assert len(torch.unique(ids)) >= 8  # speech uses much of the range
    # espeak-ng ends with 0.3 s of digital silence: the floor bin
    assert (ids[-5:] == 0).all()


def test_discretisation_is_the_nearest_bin(monkeypatch):
    tokenizer = DMelSpeechTokenizer()
    step = 9 / 15  # 16 values from -7 to 2, both included
    values = torch.tensor([-9.0, -7.0, -6.71, -6.69, 0.4, 1.71, 1.99, 2.0, 3.0])
    monkeypatch.setattr(tokenizer, "log_mel", lambda waveform: values[:, None].expand(-1, 80))
    ids = tokenizer._encode(torch.zeros(1))
    assert ids[:, 0].tolist() == [0, 0, 0, 1, 12, 15, 15, 15, 15]
    assert (ids == ids[:, :1]).all()
    assert torch.allclose(tokenizer.dequantize(ids[:, 0]), -7 + step * ids[:, 0].float())


def test_encode_and_decode_are_deterministic(speech, fast_tokenizer):
    samples, rate = speech
    ids = fast_tokenizer.encode(samples, rate)
    assert torch.equal(ids, fast_tokenizer.encode(samples.copy(), rate))
    assert torch.equal(ids, fast_tokenizer.encode(torch.from_numpy(samples), rate))
    assert torch.equal(fast_tokenizer.decode(ids), DMelSpeechTokenizer(griffin_lim_iterations=4).decode(ids))


def test_save_and_load(tmp_path, speech):
    samples, rate = speech
    tokenizer = DMelSpeechTokenizer(num_bins=32, log_min=-6.0, griffin_lim_iterations=3, on_clipping="error")
    [path] = tokenizer.save_pretrained(tmp_path)
    assert Path(path).name == "preprocessor_config.json"
    config = json.loads(Path(path).read_text())
    assert config["tokenizer_type"] == "dmel" and config["num_bins"] == 32
    assert config["feature_extractor_type"] == "DMelSpeechTokenizer"
    assert config["auto_map"] == {"AutoFeatureExtractor": "speech_tokenization_zipper.DMelSpeechTokenizer"}
    assert (tmp_path / "speech_tokenization_zipper.py").is_file()  # the code travels with the config
    loaded = SpeechTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is DMelSpeechTokenizer
    assert loaded.to_dict() == tokenizer.to_dict()
    assert DMelSpeechTokenizer.from_pretrained(str(tmp_path)).to_dict() == tokenizer.to_dict()
    ids = tokenizer.encode(samples, rate)
    assert torch.equal(loaded.encode(samples, rate), ids)
    assert torch.equal(loaded.decode(ids), tokenizer.decode(ids))


def test_save_and_load_errors(tmp_path):
    with pytest.raises(OSError):
        SpeechTokenizer.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"tokenizer_type": "encodec"}))
    with pytest.raises(ValueError, match="'encodec'.*known types: .*dmel"):
        SpeechTokenizer.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"unexpected arguments \['n_mel'\]"):
        DMelSpeechTokenizer.from_dict({"tokenizer_type": "dmel", "n_mel": 40})


class SignSpeechTokenizer(SpeechTokenizer):
    """A toy plug-in: one token per 100 samples, whether their mean is negative (0) or not (1)."""

    tokenizer_type = "test_sign"
    _auto_class = None  # defined in a test module: no code to copy into a saved folder
    frame_rate = 160.0
    vocab_size = 2
    num_codebooks = None

    def _encode(self, waveform):
        frames = waveform[: len(waveform) // 100 * 100].reshape(-1, 100)
        return (frames.mean(1) >= 0).long()

    def _decode(self, ids):
        return (ids.float() * 2 - 1).repeat_interleave(100) * 0.5


def test_a_plugged_in_tokenizer_saves_loads_and_checks_input(tmp_path):
    tokenizer = SignSpeechTokenizer(16000, on_silence="ignore")
    tokenizer.save_pretrained(tmp_path)
    loaded = SpeechTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, SignSpeechTokenizer) and loaded.on_silence == "ignore"
    with pytest.raises(ValueError, match="holds a SignSpeechTokenizer, not a DMelSpeechTokenizer"):
        DMelSpeechTokenizer.from_pretrained(tmp_path)
    ids = loaded.encode(np.r_[-np.ones(100), np.ones(100)] * 0.1, 16000)
    assert ids.tolist() == [0, 1]
    assert loaded.decode(ids).shape == (200,)
    with pytest.raises(ValueError, match=r"shape \(frames,\)"):
        loaded.decode(torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(SpeechInputError, match="downmix"):
        loaded.encode(np.zeros((2, 200)), 16000)


def test_resampling_from_espeaks_rate(speech, tokenizer, tmp_path):
    samples, rate = speech
    assert rate == ESPEAK_RATE
    waveform = torch.from_numpy(samples)
    at_16k = resample(waveform, rate, 16000)
    assert at_16k.shape == (math.ceil(len(samples) * 16000 / rate),) and at_16k.dtype == torch.float32
    assert torch.equal(tokenizer.encode(samples, rate), tokenizer.encode(at_16k, 16000))
    # espeak-ng's audio written at 16 kHz (soxr, then 16-bit PCM) tokenises almost identically: the PCM noise
    # floor moves cells of digital silence off the floor bin (4 % of the cells), speech cells move by one bin at most
    written, _ = soundfile.read(speak("one two three", tmp_path / "16k.wav", rate=16000), dtype="float32")
    assert len(written) == len(at_16k)
    ids = tokenizer.encode(samples, rate)
    difference = (tokenizer.encode(written, 16000) - ids).abs()
    assert (difference == 0).float().mean() > 0.95
    assert (difference[ids >= 4] <= 1).all()


def test_torch_fallback_resampler_matches_soxr(speech, tokenizer, monkeypatch):
    samples, rate = speech
    waveform = torch.from_numpy(samples)
    with_soxr = resample(waveform, rate, 16000)
    ids_with_soxr = tokenizer.encode(samples, rate)
    monkeypatch.setattr(st, "soxr", None)
    without = resample(waveform, rate, 16000)
    assert without.shape == with_soxr.shape
    # they differ in the transition band above 7 kHz (up to 5e-3 here), which the mel filters (to 7.6 kHz) barely see
    assert (without - with_soxr).abs().max() < 1e-2
    difference = (tokenizer.encode(samples, rate) - ids_with_soxr).abs()
    assert (difference == 0).float().mean() > 0.99 and difference.max() <= 1


@pytest.mark.parametrize(("orig", "target"), [(22050, 16000), (44100, 16000), (8000, 16000), (16000, 22050)])
def test_sinc_resampler_on_sines(orig, target):
    seconds = torch.arange(orig // 5, dtype=torch.float64) / orig
    tone = torch.sin(2 * math.pi * 440 * seconds) * 0.5 + 0.3 * torch.sin(2 * math.pi * 1500 * seconds)
    out = sinc_resample(tone, orig, target)
    assert out.shape == (math.ceil(len(tone) * target / orig),)
    at = torch.arange(len(out), dtype=torch.float64) / target
    expected = torch.sin(2 * math.pi * 440 * at) * 0.5 + 0.3 * torch.sin(2 * math.pi * 1500 * at)
    edge = target // 50  # the filter sees zeros beyond both ends
    assert (out - expected)[edge:-edge].abs().max() < 1e-4


def test_the_file_works_as_a_hub_user_has_it(tmp_path):
    """Copied alone into a folder: the import check passes, and it runs where neither towerzoo nor soxr can be
    imported (the resampling falls back to torch)."""
    folder = tmp_path / "hub"
    folder.mkdir()
    shutil.copy(Path(st.__file__), folder / "speech_tokenization_zipper.py")
    check_self_contained(folder)
    script = f"""
        import sys
        sys.modules["soxr"] = None
        sys.path.insert(0, {str(folder)!r})
        import math, torch
        from speech_tokenization_zipper import SpeechTokenizer, DMelSpeechTokenizer, resample
        import speech_tokenization_zipper as module
        assert module.soxr is None
        DMelSpeechTokenizer(griffin_lim_iterations=2).save_pretrained({str(tmp_path / "saved")!r})
        tokenizer = SpeechTokenizer.from_pretrained({str(tmp_path / "saved")!r})
        t = torch.arange(11025) / 22050
        ids = tokenizer.encode(0.5 * torch.sin(2 * math.pi * 300 * t), 22050)
        assert ids.shape == (21, 80), ids.shape
        print(tokenizer.decode(ids).shape[0])
    """
    assert run_without_towerzoo(script, tmp_path).stdout.split() == ["8000"]


@pytest.mark.parametrize(
    ("waveform", "message"),
    [
        (np.zeros((2, 1600), np.float32) + 0.1, r"shape \(2, 1600\); downmix .*mean\(0\)"),
        (np.zeros((1600, 2), np.float32) + 0.1, r"mono and 1-D"),
        (np.float32(0.1), r"mono and 1-D .*shape \(\)"),
        (np.zeros(0, np.float32), "empty"),
        (np.r_[np.full(10, 0.1), np.nan, np.inf].astype(np.float32), "2 NaN or infinite"),
        ((np.ones(1600) * 3000).astype(np.int16), "integer PCM .*32768"),
        (torch.ones(1600, dtype=torch.bool), "floating point"),
    ],
)
def test_bad_audio(fast_tokenizer, waveform, message):
    with pytest.raises(SpeechInputError, match=message):
        fast_tokenizer.encode(waveform, 16000)


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, "16k", True, None, float("nan")])
def test_bad_sampling_rate(fast_tokenizer, rate):
    with pytest.raises(SpeechInputError, match="sampling_rate must be a positive integer"):
        fast_tokenizer.encode(np.full(1600, 0.1, np.float32), rate)


def test_silent_audio(fast_tokenizer):
    with pytest.raises(SilentAudioError, match="silent"):
        fast_tokenizer.encode(np.zeros(16000, np.float32), 16000)
    with pytest.raises(SilentAudioError):
        fast_tokenizer.encode(np.full(16000, 5e-5, np.float32), 16000)
    ids = DMelSpeechTokenizer(on_silence="ignore").encode(np.zeros(16000, np.float32), 16000)
    assert ids.shape == (41, 80) and (ids == 0).all()


def test_clipped_audio(speech):
    samples, rate = speech
    clipped = np.clip(samples * 20, -1.0, 1.0)
    fraction = np.mean(np.abs(clipped) >= 1.0)
    assert fraction > 0.05
    with pytest.warns(UserWarning, match=r"clipped: \d+\.\d+% of its samples"):
        DMelSpeechTokenizer().encode(clipped, rate)
    with pytest.raises(ClippedAudioError, match="clipped"):
        DMelSpeechTokenizer(on_clipping="error").encode(clipped, rate)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DMelSpeechTokenizer(on_clipping="ignore").encode(clipped, rate)
        DMelSpeechTokenizer(clipping_threshold=0.5).encode(clipped, rate)
        DMelSpeechTokenizer(on_clipping="error").encode(samples / np.abs(samples).max(), rate)  # one peak sample


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.zeros(4, 80), "must be integers"),
        (torch.zeros(4, 79, dtype=torch.long), r"shape \(frames, 80\)"),
        (torch.zeros(80, dtype=torch.long), r"shape \(frames, 80\)"),
        (torch.zeros(0, 80, dtype=torch.long), "at least one frame"),
        (torch.full((2, 80), 16), r"lie in \[0, 15\]"),
        (-torch.ones(2, 80, dtype=torch.int32), r"from -1 to -1"),
    ],
)
def test_bad_token_ids(fast_tokenizer, ids, message):
    with pytest.raises(ValueError, match=message):
        fast_tokenizer.decode(ids)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_clipping": "loud"}, "on_clipping must be one of"),
        ({"on_silence": "warn"}, "on_silence must be one of"),
        ({"clipping_threshold": 1.0}, "clipping_threshold"),
        ({"num_bins": 1}, "num_bins >= 2"),
        ({"log_min": 2.0, "log_max": -7.0}, "log_min < log_max"),
        ({"f_max": 9000.0}, "f_max <= sampling_rate / 2"),
        ({"hop_length": 900}, "hop_length <= win_length"),
        ({"n_mels": 400}, "some filters are empty"),
        ({"sampling_rate": 0}, "sampling_rate must be a positive integer"),
    ],
)
@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DMelSpeechTokenizer(**kwargs)
