"""Speech tokenizers for Zipper: audio in, discrete token ids out, and back to audio.

`SpeechTokenizer` is the interface every speech tokenizer follows (`encode`, `decode`, `sampling_rate`,
`frame_rate`, `vocab_size`, `num_codebooks`). It is a transformers `FeatureExtractionMixin`, so it saves to
`preprocessor_config.json` (or inside a processor's `processor_config.json`) and travels in a Hub folder as remote
code: a processor holds it under the attribute name `feature_extractor` and `AutoProcessor` /
`AutoFeatureExtractor` with `trust_remote_code=True` restore it. Subclasses register themselves by their
`tokenizer_type`, so `SpeechTokenizer.from_pretrained(folder)` builds whichever tokenizer the folder names.

`LogMelSpeechTokenizer` holds what the two tokenizers here share: the log-mel analysis and its inverse (a
least-squares inverse of the mel filterbank, then fast Griffin-Lim), so both decode without trained weights.

`DMelSpeechTokenizer` is dMel (Bai et al. 2024, "dMel: Speech Tokenization made Simple", arXiv 2407.15835): log-mel
filterbank energies, each channel of each frame mapped to the nearest of `num_bins` evenly spaced values between fixed
bounds, so one token per (frame, channel), every channel sharing one vocabulary. Defaults are the paper's: 80
channels, 16 bins, 50 ms windows with a 25 ms hop (40 frames per second) at 16 kHz; the analysis follows the authors'
released `dmel` package (Hann window, 1024-point FFT, magnitude spectrum, Slaney mel filters from 80 to 7600 Hz,
log10, bins spanning [-7, 2] with both ends included). The paper inverts dMel with a trained vocoder; here the bin
values go back to mel magnitudes and fast Griffin-Lim (Perraudin et al. 2013) with zero initial phase and a fixed
number of iterations recovers a waveform, so decoding is deterministic. The audio is intelligible but buzzy; a neural
vocoder can replace `decode` later without changing the tokens.

`KMeansSpeechTokenizer` gives ONE token per frame, which is what a causal speech LM needs: each log-mel frame (the
same analysis as dMel) becomes the index of its nearest centroid in a codebook of K log-mel frames; decoding turns
each unit back into its centroid frame and runs the same Griffin-Lim inverse. `fit_kmeans_codebook` learns a codebook
from log-mel frames (k-means++ then Lloyd iterations, seeded) and `KMeansSpeechTokenizer.fit` does it from audio, so
no download is needed.

Input checks (`SpeechInputError` and its subclasses are `ValueError`s a harness can catch and count): 1-D float
audio only (stereo must be downmixed by the caller), finite, non-empty, a positive integer sampling rate; all-silent
audio raises `SilentAudioError` (or passes with `on_silence="ignore"`); audio with more than `clipping_threshold` of
its samples at full scale warns (`on_clipping="warn"`), raises `ClippedAudioError` (`"error"`) or passes
(`"ignore"`). Audio at another sampling rate is resampled with `soxr` when it is installed, else with a windowed-sinc
polyphase filter in torch.
"""

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from transformers import FeatureExtractionMixin
from transformers.audio_utils import mel_filter_bank

try:
    import soxr
except ImportError:
    soxr = None

# Samples at or above this magnitude count as clipped: the largest positive 16-bit sample is 32767/32768.
CLIP_LEVEL = 1.0 - 2.0**-14
ON_SILENCE = ("error", "ignore")
ON_CLIPPING = ("warn", "error", "ignore")


class SpeechInputError(ValueError):
    """Audio a speech tokenizer refuses to encode."""


class SilentAudioError(SpeechInputError):
    """The audio is silent: its peak is at or below the tokenizer's `silence_threshold`."""


class ClippedAudioError(SpeechInputError):
    """More than the tokenizer's `clipping_threshold` of the samples are at full scale."""


def _check_sampling_rate(sampling_rate, name: str = "sampling_rate") -> int:
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float, np.integer, np.floating)):
        raise SpeechInputError(f"{name} must be a positive integer number of Hz, got {sampling_rate!r}")
    if not math.isfinite(sampling_rate) or sampling_rate <= 0 or int(sampling_rate) != sampling_rate:
        raise SpeechInputError(f"{name} must be a positive integer number of Hz, got {sampling_rate!r}")
    return int(sampling_rate)


def sinc_resample(
    waveform: torch.Tensor, orig_rate: int, target_rate: int, *, zero_crossings: int = 24, rolloff: float = 0.945
) -> torch.Tensor:
    """Resample 1-D audio with a Hann-windowed sinc low-pass filter, one polyphase filter per output phase.

    The cut-off is `rolloff` times the lower Nyquist frequency; the filter spans `zero_crossings` zero crossings on
    each side. The output has ceil(len * target_rate / orig_rate) samples."""
    gcd = math.gcd(orig_rate, target_rate)
    up, down = target_rate // gcd, orig_rate // gcd
    cutoff = 0.5 * rolloff * min(1.0, up / down)  # cycles per input sample
    half_width = zero_crossings / (2 * cutoff)  # input samples
    taps = 2 * math.ceil(half_width) + down
    if up * taps > 2**25:
        raise SpeechInputError(
            f"resampling {orig_rate} Hz to {target_rate} Hz needs a {up}x{taps} filter table; install soxr "
            "(pip install soxr) for arbitrary rate ratios"
        )
    # Output sample n lies at input position n * down / up; phase p = n mod up sees input samples starting at
    # (n // up) * down - (W - 1), W = ceil(half_width), with tap j at distance p * down / up + W - 1 - j.
    first = math.ceil(half_width) - 1
    phase_offsets = torch.arange(up, dtype=torch.float64) * down / up
    distance = phase_offsets[:, None] + first - torch.arange(taps, dtype=torch.float64)[None, :]
    window = torch.where(
        distance.abs() < half_width, torch.cos(0.5 * math.pi * distance / half_width) ** 2, torch.zeros(())
    )
    kernels = (2 * cutoff * torch.sinc(2 * cutoff * distance) * window).to(waveform.device)
    length = math.ceil(waveform.shape[-1] * up / down)
    steps = math.ceil(length / up)
    padded = torch.nn.functional.pad(waveform.to(torch.float64), (first, steps * down + taps))
    out = torch.nn.functional.conv1d(padded[None, None], kernels[:, None, :], stride=down)[0, :, :steps]
    return out.T.reshape(-1)[:length].to(waveform.dtype)


def resample(waveform: torch.Tensor, orig_rate: int, target_rate: int) -> torch.Tensor:
    """Resample 1-D float audio: `soxr` (its high-quality setting) when installed, else `sinc_resample`."""
    orig_rate = _check_sampling_rate(orig_rate, "orig_rate")
    target_rate = _check_sampling_rate(target_rate, "target_rate")
    if orig_rate == target_rate:
        return waveform
    if soxr is not None:
        out = soxr.resample(waveform.detach().cpu().double().numpy(), orig_rate, target_rate, quality="HQ")
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=waveform.device, dtype=waveform.dtype)
    return sinc_resample(waveform, orig_rate, target_rate)


# Keys transformers writes next to a speech tokenizer's arguments: the class names (`from_dict` picks the class by
# them), the `auto_map` of a saved Hub folder and the processor class.
SAVED_KEYS = ("feature_extractor_type", "tokenizer_type", "auto_map", "processor_class")


class SpeechTokenizer(FeatureExtractionMixin):
    """Base class: checks and resamples the audio, then hands a 1-D float32 tensor at `sampling_rate` to
    `_encode`; checks token ids before `_decode`. Subclasses set `tokenizer_type`, implement `_encode`, `_decode`,
    `frame_rate`, `vocab_size`, `num_codebooks` and extend `to_dict` with their constructor arguments
    (JSON-serialisable).

    Args:
        sampling_rate: the rate the tokenizer works at; `encode` resamples other rates to it, `decode` returns it.
        silence_threshold: audio whose peak magnitude is at or below this is silent (1e-4 is -80 dBFS).
        on_silence: `"error"` raises `SilentAudioError` for silent audio, `"ignore"` encodes it.
        clipping_threshold: the largest fraction of samples at full scale (|x| >= `CLIP_LEVEL`) accepted silently.
        on_clipping: above that fraction, `"warn"` warns, `"error"` raises `ClippedAudioError`, `"ignore"` passes.
        **saved: only the `SAVED_KEYS` that a saved config carries; anything else is a `TypeError`.
    """

    tokenizer_type = ""
    _registry: dict[str, type["SpeechTokenizer"]] = {}
    # Speech tokenizers exist only as remote code: a saved config always names the class for AutoFeatureExtractor.
    _auto_class = "AutoFeatureExtractor"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.tokenizer_type:
            SpeechTokenizer._registry[cls.tokenizer_type] = cls

    def __init__(
        self,
        sampling_rate: int,
        *,
        silence_threshold: float = 1e-4,
        on_silence: str = "error",
        clipping_threshold: float = 1e-3,
        on_clipping: str = "warn",
        **saved,
    ):
        unexpected = sorted(set(saved) - set(SAVED_KEYS))
        if unexpected:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {unexpected}")
        if on_silence not in ON_SILENCE:
            raise ValueError(f"on_silence must be one of {ON_SILENCE}, got {on_silence!r}")
        if on_clipping not in ON_CLIPPING:
            raise ValueError(f"on_clipping must be one of {ON_CLIPPING}, got {on_clipping!r}")
        if not 0 <= clipping_threshold < 1:
            raise ValueError(f"clipping_threshold must be a fraction in [0, 1), got {clipping_threshold!r}")
        if silence_threshold < 0:
            raise ValueError(f"silence_threshold must be >= 0, got {silence_threshold!r}")
        super().__init__()
        self.auto_map = saved.get("auto_map")
        self.sampling_rate = _check_sampling_rate(sampling_rate)
        self.silence_threshold = float(silence_threshold)
        self.on_silence = on_silence
        self.clipping_threshold = float(clipping_threshold)
        self.on_clipping = on_clipping

    @property
    def frame_rate(self) -> float:
        """Token frames per second of audio."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids (ids are 0 .. vocab_size - 1); every codebook shares it."""
        raise NotImplementedError

    @property
    def num_codebooks(self) -> int | None:
        """Token ids per frame: `encode` returns (frames, num_codebooks), or (frames,) when this is None."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """The class names and constructor arguments, so that `type(self)(**self.to_dict())` rebuilds this tokenizer;
        transformers writes it as the JSON config."""
        output = {
            "feature_extractor_type": type(self).__name__,
            "tokenizer_type": self.tokenizer_type,
            "sampling_rate": self.sampling_rate,
            "silence_threshold": self.silence_threshold,
            "on_silence": self.on_silence,
            "clipping_threshold": self.clipping_threshold,
            "on_clipping": self.on_clipping,
        }
        if self.auto_map is not None:
            # transformers' `custom_object_save` takes any class named "...Tokenizer..." for a text tokenizer and
            # records a (slow, fast) pair, which AutoFeatureExtractor cannot load: keep the class name alone.
            output["auto_map"] = {
                auto_class: name[0] if isinstance(name, (list, tuple)) else name
                for auto_class, name in self.auto_map.items()
            }
        return output

    @classmethod
    def from_dict(cls, feature_extractor_dict: dict, **kwargs) -> "SpeechTokenizer":
        """Build the registered tokenizer type the config names (`cls` itself or a subclass of it); what
        `from_pretrained` (a folder, a `preprocessor_config.json`, or a Hub repo) and `AutoFeatureExtractor` call."""
        tokenizer_type = feature_extractor_dict.get("tokenizer_type")
        target = SpeechTokenizer._registry.get(tokenizer_type)
        if target is None:
            raise ValueError(
                f"the config names speech tokenizer type {tokenizer_type!r}; known types: "
                f"{', '.join(sorted(SpeechTokenizer._registry))}"
            )
        if not issubclass(target, cls):
            raise ValueError(f"the config holds a {target.__name__}, not a {cls.__name__}")
        return super(SpeechTokenizer, target).from_dict(dict(feature_extractor_dict), **kwargs)

    def encode(self, waveform: torch.Tensor | np.ndarray, sampling_rate: int) -> torch.LongTensor:
        """Token ids of 1-D float audio at `sampling_rate` Hz (resampled to `self.sampling_rate` first)."""
        return self._encode(self._prepare(waveform, sampling_rate))

    def decode(self, ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """A 1-D float32 waveform at `self.sampling_rate` from token ids shaped as `encode` returns them."""
        ids = torch.as_tensor(ids)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
        shape = "(frames,)" if self.num_codebooks is None else f"(frames, {self.num_codebooks})"
        expected_dim = 1 if self.num_codebooks is None else 2
        if (
            ids.dim() != expected_dim
            or ids.shape[0] == 0
            or (expected_dim == 2 and ids.shape[1] != self.num_codebooks)
        ):
            raise ValueError(f"token ids must have shape {shape} with at least one frame, got {tuple(ids.shape)}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size - 1}], got values from {int(ids.min())} to {int(ids.max())}"
            )
        return self._decode(ids.long())

    def check_waveform(self, waveform: torch.Tensor | np.ndarray, sampling_rate: int) -> torch.Tensor:
        """The audio as a 1-D float32 tensor, or a `SpeechInputError` saying what is wrong with it."""
        _check_sampling_rate(sampling_rate)
        if not isinstance(waveform, torch.Tensor):
            waveform = torch.from_numpy(np.array(waveform))
        if not waveform.is_floating_point():
            raise SpeechInputError(
                f"audio must be floating point in [-1, 1], got dtype {waveform.dtype}; convert integer PCM first "
                "(e.g. int16 samples / 32768)"
            )
        if waveform.dim() != 1:
            raise SpeechInputError(
                f"audio must be mono and 1-D (samples,), got shape {tuple(waveform.shape)}; downmix multi-channel "
                "audio first, e.g. waveform.mean(0) for (channels, samples) or waveform.mean(-1) for "
                "(samples, channels)"
            )
        if waveform.numel() == 0:
            raise SpeechInputError("audio is empty (0 samples)")
        finite = torch.isfinite(waveform)
        if not bool(finite.all()):
            raise SpeechInputError(f"audio has {int((~finite).sum())} NaN or infinite samples")
        waveform = waveform.to(torch.float32)
        magnitude = waveform.abs()
        if self.on_silence == "error" and float(magnitude.max()) <= self.silence_threshold:
            raise SilentAudioError(
                f"audio is silent (peak {float(magnitude.max()):.3g} <= silence_threshold {self.silence_threshold})"
            )
        clipped = float((magnitude >= CLIP_LEVEL).float().mean())
        if clipped > self.clipping_threshold and self.on_clipping != "ignore":
            message = (
                f"audio is clipped: {100 * clipped:.2f}% of its samples are at full scale "
                f"(clipping_threshold {100 * self.clipping_threshold:.2f}%)"
            )
            if self.on_clipping == "error":
                raise ClippedAudioError(message)
            warnings.warn(message, stacklevel=4)
        return waveform

    def _prepare(self, waveform: torch.Tensor | np.ndarray, sampling_rate: int) -> torch.Tensor:
        """The checked audio, resampled to `self.sampling_rate`."""
        return resample(self.check_waveform(waveform, sampling_rate), sampling_rate, self.sampling_rate)

    def _encode(self, waveform: torch.Tensor) -> torch.LongTensor:
        raise NotImplementedError

    def _decode(self, ids: torch.LongTensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        arguments = ", ".join(
            f"{key}=<{len(value)} rows>" if isinstance(value, list) else f"{key}={value!r}"
            for key, value in self.to_dict().items()
            if key not in SAVED_KEYS
        )
        return f"{type(self).__name__}({arguments})"


class LogMelSpeechTokenizer(SpeechTokenizer):
    """What the log-mel tokenizers share: the log-mel analysis (`log_mel`, `features`) and its inverse
    (`waveform_from_log_mel`: mel magnitudes through the filterbank's pseudo-inverse, then fast Griffin-Lim).
    Subclasses implement `_encode` and `dequantize` (ids to log-mel frames); decoding is shared.

    Args:
        sampling_rate: working rate in Hz (dMel: 16 kHz).
        n_fft: FFT size.
        win_length: Hann window length in samples (50 ms at 16 kHz).
        hop_length: hop between frames in samples (25 ms at 16 kHz, so 40 frames per second).
        n_mels: mel channels.
        f_min, f_max: frequency range of the Slaney-scale, Slaney-normalised mel filters, in Hz.
        griffin_lim_iterations: fixed number of fast Griffin-Lim iterations in `decode`.
        griffin_lim_momentum: fast Griffin-Lim's momentum (0 gives plain Griffin-Lim).
        **kwargs: the input checks of `SpeechTokenizer`.

    Frames: N samples give 1 + N // hop_length frames (the signal is zero-padded by n_fft // 2 on each side, centred
    frames); T frames decode to (T - 1) * hop_length samples.
    """

    def __init__(
        self,
        sampling_rate: int = 16000,
        *,
        n_fft: int = 1024,
        win_length: int = 800,
        hop_length: int = 400,
        n_mels: int = 80,
        f_min: float = 80.0,
        f_max: float = 7600.0,
        griffin_lim_iterations: int = 64,
        griffin_lim_momentum: float = 0.99,
        **kwargs,
    ):
        super().__init__(sampling_rate, **kwargs)
        if not 0 < hop_length <= win_length <= n_fft:
            raise ValueError(f"need 0 < hop_length <= win_length <= n_fft, got {hop_length}, {win_length}, {n_fft}")
        if not 0 <= f_min < f_max <= self.sampling_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sampling_rate / 2, got {f_min}, {f_max}")
        if griffin_lim_iterations < 0 or not 0 <= griffin_lim_momentum < 1:
            raise ValueError("need griffin_lim_iterations >= 0 and 0 <= griffin_lim_momentum < 1")
        self.n_fft, self.win_length, self.hop_length = int(n_fft), int(win_length), int(hop_length)
        self.n_mels, self.f_min, self.f_max = int(n_mels), float(f_min), float(f_max)
        self.griffin_lim_iterations = int(griffin_lim_iterations)
        self.griffin_lim_momentum = float(griffin_lim_momentum)
        filters = mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=self.n_mels,
            min_frequency=self.f_min,
            max_frequency=self.f_max,
            sampling_rate=self.sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        if (filters.max(axis=0) <= 0).any():
            raise ValueError(f"{self.n_mels} mel channels are too many for n_fft={self.n_fft}: some filters are empty")
        self.mel_filters = torch.from_numpy(filters.T).to(torch.float32)  # (n_mels, n_fft // 2 + 1)
        self.inverse_mel_filters = torch.linalg.pinv(self.mel_filters.double()).to(torch.float32)
        self.window = torch.hann_window(self.win_length)

    @property
    def frame_rate(self) -> float:
        return self.sampling_rate / self.hop_length

    def to_dict(self) -> dict:
        return {
            **super().to_dict(),
            "n_fft": self.n_fft,
            "win_length": self.win_length,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "f_min": self.f_min,
            "f_max": self.f_max,
            "griffin_lim_iterations": self.griffin_lim_iterations,
            "griffin_lim_momentum": self.griffin_lim_momentum,
        }

    def _stft(self, waveform: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(waveform, (self.n_fft // 2, self.n_fft // 2))
        window = self.window.to(waveform.device)
        return torch.stft(
            padded, self.n_fft, self.hop_length, self.win_length, window, center=False, return_complex=True
        )

    def _istft(self, spectrogram: torch.Tensor) -> torch.Tensor:
        window = self.window.to(spectrogram.device)
        length = (spectrogram.shape[-1] - 1) * self.hop_length
        return torch.istft(spectrogram, self.n_fft, self.hop_length, self.win_length, window, length=length)

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(frames, n_mels) log10 mel magnitudes of 1-D float audio at `sampling_rate`, before discretisation."""
        magnitude = self._stft(waveform.to(torch.float32)).abs()
        mel = self.mel_filters.to(magnitude.device) @ magnitude
        return torch.log10(mel.clamp(min=1e-10)).T

    def features(self, waveform: torch.Tensor | np.ndarray, sampling_rate: int) -> torch.Tensor:
        """`log_mel` of audio at `sampling_rate` Hz after the checks and resampling `encode` applies."""
        return self.log_mel(self._prepare(waveform, sampling_rate))

    def dequantize(self, ids: torch.LongTensor) -> torch.Tensor:
        """(frames, n_mels) log10 mel magnitudes the ids stand for."""
        raise NotImplementedError

    def _decode(self, ids: torch.LongTensor) -> torch.Tensor:
        return self.waveform_from_log_mel(self.dequantize(ids))

    def waveform_from_log_mel(self, log_mel: torch.Tensor) -> torch.Tensor:
        """A waveform whose log-mel spectrogram approximates `log_mel` (frames, n_mels): the filterbank's
        pseudo-inverse gives linear magnitudes, Griffin-Lim the phase."""
        mel = 10.0**log_mel.T  # (n_mels, frames)
        magnitude = (self.inverse_mel_filters.to(mel.device) @ mel).clamp(min=0)
        return self.griffin_lim(magnitude)

    def griffin_lim(self, magnitude: torch.Tensor) -> torch.Tensor:
        """A waveform whose STFT magnitude approximates `magnitude` (n_fft // 2 + 1, frames): fast Griffin-Lim
        from zero phase for `griffin_lim_iterations` iterations."""
        if magnitude.shape[-1] < 2:  # one centred frame spans no hop: (1 - 1) * hop_length samples
            return torch.zeros(0, device=magnitude.device)
        estimate = magnitude.to(torch.complex64)
        previous = torch.zeros_like(estimate)
        for _ in range(self.griffin_lim_iterations):
            phase = estimate / estimate.abs().clamp(min=1e-12)
            rebuilt = self._stft(self._istft(magnitude * phase))
            estimate = rebuilt + self.griffin_lim_momentum * (rebuilt - previous)
            previous = rebuilt
        phase = estimate / estimate.abs().clamp(min=1e-12)
        return self._istft(magnitude * phase)


class DMelSpeechTokenizer(LogMelSpeechTokenizer):
    """dMel: discretised log-mel filterbanks, one token per (frame, mel channel), decoded with Griffin-Lim.

    Args:
        num_bins: values per channel (the vocabulary size; the paper's 2^K = 16).
        log_min, log_max: the first and last bin values of log10 mel magnitude; values outside are clamped.
        **kwargs: the analysis of `LogMelSpeechTokenizer` (defaults are the paper's) and the input checks of
            `SpeechTokenizer`.
    """

    tokenizer_type = "dmel"

    def __init__(
        self, sampling_rate: int = 16000, *, num_bins: int = 16, log_min: float = -7.0, log_max: float = 2.0, **kwargs
    ):
        super().__init__(sampling_rate, **kwargs)
        if num_bins < 2 or not log_min < log_max:
            raise ValueError(f"need num_bins >= 2 and log_min < log_max, got {num_bins}, {log_min}, {log_max}")
        self.num_bins, self.log_min, self.log_max = int(num_bins), float(log_min), float(log_max)
        self.bin_values = torch.linspace(self.log_min, self.log_max, self.num_bins)

    @property
    def vocab_size(self) -> int:
        return self.num_bins

    @property
    def num_codebooks(self) -> int:
        return self.n_mels

    def to_dict(self) -> dict:
        return {**super().to_dict(), "num_bins": self.num_bins, "log_min": self.log_min, "log_max": self.log_max}

    def _encode(self, waveform: torch.Tensor) -> torch.LongTensor:
        log_mel = self.log_mel(waveform).clamp(self.log_min, self.log_max)
        step = (self.log_max - self.log_min) / (self.num_bins - 1)
        return torch.round((log_mel - self.log_min) / step).long()

    def dequantize(self, ids: torch.LongTensor) -> torch.Tensor:
        """(frames, n_mels) log10 mel magnitudes the ids stand for (each bin's value)."""
        return self.bin_values.to(ids.device)[ids]


class KMeansSpeechTokenizer(LogMelSpeechTokenizer):
    """One unit per log-mel frame: the index of the nearest centroid (Euclidean, ties to the lower index) in a codebook
    of K log10 mel frames; decoding replaces each unit by its centroid and inverts it with Griffin-Lim.

    Args:
        codebook: (K, n_mels) centroids in the space of `log_mel` (e.g. from `fit_kmeans_codebook` or `fit`); unit
            ids are 0 .. K-1. Saved as a nested list; float32 values survive the JSON round trip exactly.
        deduplicate: collapse runs of the same unit into one (`encode` then loses durations, and `decode` gives
            one frame per unit, so speech comes out faster). Off by default.
        **kwargs: the analysis of `LogMelSpeechTokenizer` (the codebook must come from the same analysis) and the
            input checks of `SpeechTokenizer`.
    """

    tokenizer_type = "kmeans"

    def __init__(self, codebook: torch.Tensor | np.ndarray | Sequence, *, deduplicate: bool = False, **kwargs):
        super().__init__(**kwargs)
        codebook = torch.as_tensor(codebook, dtype=torch.float32).detach().cpu().clone()
        if codebook.dim() != 2 or codebook.shape[0] == 0 or codebook.shape[1] != self.n_mels:
            raise ValueError(
                f"codebook must have shape (units >= 1, n_mels={self.n_mels}), got {tuple(codebook.shape)}"
            )
        if not bool(torch.isfinite(codebook).all()):
            raise ValueError("codebook has NaN or infinite values")
        self.codebook = codebook
        self.deduplicate = bool(deduplicate)

    @classmethod
    def fit(
        cls,
        waveforms: Sequence[torch.Tensor | np.ndarray],
        sampling_rate: int,
        num_units: int,
        *,
        seed: int = 0,
        iterations: int = 50,
        deduplicate: bool = False,
        **kwargs,
    ) -> "KMeansSpeechTokenizer":
        """A tokenizer whose codebook is `fit_kmeans_codebook` over the log-mel frames of `waveforms` (1-D audio at
        `sampling_rate` Hz, checked and resampled as `encode` does); `kwargs` set the analysis and input checks."""
        analysis = LogMelSpeechTokenizer(**kwargs)
        features = torch.cat([analysis.features(waveform, sampling_rate) for waveform in waveforms])
        codebook = fit_kmeans_codebook(features, num_units, seed, iterations)
        return cls(codebook, deduplicate=deduplicate, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.codebook.shape[0]

    @property
    def num_codebooks(self) -> None:
        return None

    def to_dict(self) -> dict:
        return {**super().to_dict(), "codebook": self.codebook.tolist(), "deduplicate": self.deduplicate}

    def _encode(self, waveform: torch.Tensor) -> torch.LongTensor:
        frames = self.log_mel(waveform)
        codebook = self.codebook.to(frames.device)
        distances = torch.cdist(frames[None], codebook[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
        ids = distances.argmin(1)
        return torch.unique_consecutive(ids) if self.deduplicate else ids

    def dequantize(self, ids: torch.LongTensor) -> torch.Tensor:
        """(frames, n_mels) log10 mel frames the units stand for (their centroids)."""
        return self.codebook.to(ids.device)[ids]


def fit_kmeans_codebook(features: torch.Tensor, num_units: int, seed: int, iterations: int = 50) -> torch.Tensor:
    """(num_units, dim) k-means centroids of `features` (N, dim): k-means++ seeding (Arthur & Vassilvitskii 2007)
    drawn from a torch generator seeded with `seed`, then up to `iterations` Lloyd steps (fewer once assignments stop
    changing); a cluster left empty restarts at the point farthest from its centroid. Deterministic for a seed.
    Computed in float64 (memory grows as N * num_units), returned as float32."""
    features = torch.as_tensor(features)
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(
            f"features must be a floating-point (N, dim) tensor, got {features.dtype} {tuple(features.shape)}"
        )
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features have NaN or infinite values")
    if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1:
        raise ValueError(f"num_units must be a positive integer, got {num_units!r}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations!r}")
    points = features.detach().to("cpu", torch.float64)
    distinct = len(torch.unique(points, dim=0))
    if distinct < num_units:
        raise ValueError(f"need at least num_units={num_units} distinct feature rows, got {distinct}")
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(len(points), (1,), generator=generator))]
    nearest = ((points - points[chosen[0]]) ** 2).sum(1)
    for _ in range(1, num_units):
        chosen.append(int(torch.multinomial(nearest, 1, generator=generator)))
        nearest = torch.minimum(nearest, ((points - points[chosen[-1]]) ** 2).sum(1))
    centroids = points[chosen]
    assignment = None
    for _ in range(iterations):
        distances = torch.cdist(points, centroids)
        new_assignment = distances.argmin(1)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        counts = torch.bincount(assignment, minlength=num_units)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        centroids = sums / counts.clamp(min=1)[:, None].to(sums.dtype)
        gaps = distances.gather(1, assignment[:, None])[:, 0]
        for empty in (counts == 0).nonzero().flatten().tolist():
            farthest = int(gaps.argmax())
            centroids[empty] = points[farthest]
            gaps[farthest] = -1.0
    return centroids.to(torch.float32)
