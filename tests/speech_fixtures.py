"""Real speech for tests: Debian's espeak-ng speaks known sentences to WAV (22,050 Hz, 16-bit mono), deterministic
for a given espeak-ng version; helpers write them at other rates and as a LibriSpeech-style folder."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile
import soxr

ESPEAK_RATE = 22050
ESPEAK_MISSING = "espeak-ng is not installed (apt-get install espeak-ng)"


def espeak_available() -> bool:
    """Whether the `espeak-ng` program is on PATH."""
    return shutil.which("espeak-ng") is not None


def speak(text: str, path: str | Path, rate: int | None = None, voice: str = "en") -> Path:
    """Speak `text` with espeak-ng into `path` (format from its extension: .wav, .flac, .ogg). `rate` is the
    sampling rate in Hz (resampled with soxr; None keeps espeak's 22,050 Hz)."""
    if not espeak_available():
        raise RuntimeError(ESPEAK_MISSING)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(path.stem + ".espeak.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
    samples, native_rate = soundfile.read(raw, dtype="float32")
    raw.unlink()
    if rate is not None and rate != native_rate:
        samples = soxr.resample(samples, native_rate, rate, quality="HQ")
    soundfile.write(path, np.clip(samples, -1.0, 1.0), rate or native_rate, subtype="PCM_16")
    return path


def write_librispeech_fixture(
    root: str | Path, sentences: list[str], speaker: str = "1089", chapter: str = "134686", rate: int = 16000
) -> list[tuple[str, Path, str]]:
    """Write `<root>/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac` (espeak-ng at `rate` Hz) and
    `<speaker>-<chapter>.trans.txt` with the sentences upper-cased, as LibriSpeech stores them. Returns
    (utterance id, audio path, transcript) per sentence."""
    folder = Path(root) / speaker / chapter
    folder.mkdir(parents=True, exist_ok=True)
    written, lines = [], []
    for index, sentence in enumerate(sentences):
        utterance_id = f"{speaker}-{chapter}-{index:04d}"
        transcript = sentence.upper()
        written.append((utterance_id, speak(sentence, folder / f"{utterance_id}.flac", rate=rate), transcript))
        lines.append(f"{utterance_id} {transcript}\n")
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines), encoding="utf-8")
    return written
