"""Audio files for the speech harnesses: decoding with soundfile, resampling with soxr, and reading the speech
corpora's on-disk layouts (LibriSpeech folders, Hugging Face `audiofolder` folders with a metadata file).

The readers return `Utterance(utterance_id, audio_path, transcript)` tuples plus the ids whose transcript is empty
(skipped and counted, never scored); a transcript line whose audio file is missing is an error naming both.
"""

import csv
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile
import soxr

# Container formats soundfile (libsndfile) decodes, by file extension; MP3 needs libsndfile >= 1.1.
_EXTENSION_FORMATS = {".flac": "FLAC", ".wav": "WAV", ".ogg": "OGG", ".oga": "OGG", ".opus": "OGG", ".mp3": "MP3"}
SUPPORTED_EXTENSIONS = tuple(
    extension for extension, name in _EXTENSION_FORMATS.items() if name in soundfile.available_formats()
)
AUDIOFOLDER_TEXT_COLUMNS = ("transcription", "text", "sentence")


class AudioFileError(ValueError):
    """An audio file that cannot be used: unsupported format, undecodable, or without samples."""


class Utterance(NamedTuple):
    utterance_id: str
    audio_path: Path
    transcript: str


class SpeechCorpus(NamedTuple):
    """The utterances to score, and the ids skipped because their transcript is empty."""

    utterances: list[Utterance]
    empty_transcripts: list[str]


def load_audio(path: str | Path, target_rate: int) -> np.ndarray:
    """Decode an audio file to float32 mono at `target_rate` Hz: channels are averaged, other rates resampled
    with soxr (high quality)."""
    path = Path(path)
    if isinstance(target_rate, bool) or not isinstance(target_rate, int) or target_rate <= 0:
        raise ValueError(f"target_rate must be a positive integer number of Hz, got {target_rate!r}")
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise AudioFileError(
            f"{path}: unsupported audio format {path.suffix or '(no extension)'!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, EOFError) as error:
        raise AudioFileError(f"{path}: cannot decode audio ({error})") from error
    if samples.shape[0] == 0:
        raise AudioFileError(f"{path}: the file holds no audio samples")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _audio_file(stem: Path, source: str) -> Path:
    """The audio file `stem` + one of the supported extensions, or an error naming it and where it was listed."""
    for extension in SUPPORTED_EXTENSIONS:
        candidate = stem.with_name(stem.name + extension)
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{source}: audio file {stem.name}{SUPPORTED_EXTENSIONS[0]} not found in {stem.parent} "
        f"(nor with {', '.join(SUPPORTED_EXTENSIONS[1:])})"
    )


def read_librispeech(root: str | Path) -> SpeechCorpus:
    """Utterances of a LibriSpeech-style folder: `<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` files whose
    lines are `<speaker>-<chapter>-<utterance> TRANSCRIPT`, audio next to them as `<id>.flac` (or another
    supported extension). Sorted by utterance id."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LibriSpeech folder not found: {root}")
    transcript_files = sorted(root.rglob("*.trans.txt"))
    if not transcript_files:
        raise FileNotFoundError(f"{root}: no *.trans.txt transcript files (expected <speaker>/<chapter>/ folders)")
    utterances, empty, seen = [], [], set()
    for transcript_file in transcript_files:
        prefix = transcript_file.name.removesuffix(".trans.txt") + "-"
        for number, line in enumerate(transcript_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            utterance_id, _, transcript = line.strip().partition(" ")
            where = f"{transcript_file}:{number}"
            if not utterance_id.startswith(prefix):
                raise ValueError(f"{where}: utterance id {utterance_id!r} does not start with {prefix!r}")
            if utterance_id in seen:
                raise ValueError(f"{where}: utterance id {utterance_id!r} appears twice")
            seen.add(utterance_id)
            transcript = transcript.strip()
            if not transcript:
                empty.append(utterance_id)
                continue
            audio_path = _audio_file(transcript_file.parent / utterance_id, where)
            utterances.append(Utterance(utterance_id, audio_path, transcript))
    utterances.sort(key=lambda utterance: utterance.utterance_id)
    return SpeechCorpus(utterances, sorted(empty))


def _metadata_rows(metadata: Path) -> list[dict]:
    if metadata.suffix == ".csv":
        with metadata.open(newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))
    rows = []
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{metadata}:{number}: not a JSON object ({error.msg})") from error
    return rows


def read_audiofolder(root: str | Path, split: str | None = None) -> SpeechCorpus:
    """Utterances of a Hugging Face `audiofolder` layout: `metadata.csv` or `metadata.jsonl` in `root` (or in
    `root/<split>`) with a `file_name` column (relative to the metadata file) and the transcript in the first of
    `transcription`, `text`, `sentence` that it has. Utterance ids are the `file_name`s, in file order."""
    folder = Path(root) / split if split is not None else Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"audiofolder not found: {folder}")
    candidates = [folder / name for name in ("metadata.csv", "metadata.jsonl") if (folder / name).is_file()]
    if len(candidates) != 1:
        found = "both metadata.csv and metadata.jsonl" if candidates else "no metadata.csv or metadata.jsonl"
        raise FileNotFoundError(f"{folder}: {found}; an audiofolder needs exactly one")
    metadata = candidates[0]
    rows = _metadata_rows(metadata)
    columns = set().union(*(row.keys() for row in rows if isinstance(row, dict)))
    text_column = next((name for name in AUDIOFOLDER_TEXT_COLUMNS if name in columns), None)
    if "file_name" not in columns or text_column is None:
        raise ValueError(
            f"{metadata}: needs a file_name column and one of {', '.join(AUDIOFOLDER_TEXT_COLUMNS)}; "
            f"has {', '.join(sorted(columns)) or 'none'}"
        )
    utterances, empty = [], []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{metadata}: row {number} is not an object with named columns")
        file_name = row.get("file_name")
        if not file_name:
            raise ValueError(f"{metadata}: row {number} has no file_name")
        transcript = row.get(text_column)
        transcript = transcript.strip() if isinstance(transcript, str) else ""
        if not transcript:
            empty.append(file_name)
            continue
        audio_path = folder / file_name
        if not audio_path.is_file():
            raise FileNotFoundError(f"{metadata}: row {number} names {file_name}, which does not exist ({audio_path})")
        utterances.append(Utterance(file_name, audio_path, transcript))
    return SpeechCorpus(utterances, empty)
