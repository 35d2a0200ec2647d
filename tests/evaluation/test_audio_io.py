"""Audio loading (formats, channels, resampling lengths, bad files) and the LibriSpeech and audiofolder readers
(layouts, empty transcripts counted, missing audio named), on tiny files written with soundfile and espeak-ng."""

import json
import math

import numpy as np
import pytest
import soundfile
from speech_fixtures import ESPEAK_MISSING, espeak_available, write_librispeech_fixture

from towerzoo.evaluation.audio_io import (
    SUPPORTED_EXTENSIONS,
    AudioFileError,
    Utterance,
    load_audio,
    read_audiofolder,
    read_librispeech,
)


def tone(rate: int, seconds: float = 0.25, frequency: float = 440.0, channels: int = 1) -> np.ndarray:
    """A sine at `frequency`, amplitude 0.5; with channels > 1, channel c is scaled by 1 / (c + 1)."""
    samples = 0.5 * np.sin(2 * np.pi * frequency * np.arange(int(rate * seconds)) / rate)
    if channels == 1:
        return samples.astype(np.float32)
    return np.stack([samples / (c + 1) for c in range(channels)], axis=1).astype(np.float32)


@pytest.mark.parametrize("rate", [16000, 8000, 44100])
@pytest.mark.parametrize("extension", [".wav", ".flac", ".ogg"])
def test_load_audio_resamples_to_the_target_rate(tmp_path, rate, extension):
    path = tmp_path / f"tone{extension}"
    soundfile.write(path, tone(rate), rate)
    audio = load_audio(path, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == math.ceil(len(tone(rate)) * 16000 / rate)  # 4000 samples
    expected = tone(16000)
    middle = slice(400, -400)
    tolerance = 0.05 if extension == ".ogg" else 2e-3  # Vorbis is lossy; 8 kHz PCM_16 is exact up to 3e-5
    assert np.abs(audio[middle] - expected[middle]).max() < tolerance


def test_load_audio_keeps_the_rate_and_downmixes_channels(tmp_path):
    path = tmp_path / "stereo.wav"
    soundfile.write(path, tone(16000, channels=2), 16000, subtype="FLOAT")
    audio = load_audio(path, 16000)
    assert np.allclose(audio, tone(16000) * 0.75, atol=1e-7)  # mean of 1 and 1/2


def test_load_audio_mp3_when_libsndfile_supports_it(tmp_path):
    if ".mp3" not in SUPPORTED_EXTENSIONS:
        with pytest.raises(AudioFileError, match=r"unsupported audio format '\.mp3'"):
            load_audio(tmp_path / "a.mp3", 16000)
        return
    path = tmp_path / "tone.mp3"
    soundfile.write(path, tone(16000, seconds=0.5), 16000, format="MP3")
    audio = load_audio(path, 16000)
    assert abs(len(audio) - 8000) < 1200  # the MP3 codec pads with its frame delay
    assert 0.3 < np.abs(audio).max() < 0.7


@pytest.mark.parametrize("name", ["notes.txt", "audio", "clip.m4a"])
def test_unsupported_format_names_the_file_and_the_formats(tmp_path, name):
    path = tmp_path / name
    path.write_text("not audio")
    with pytest.raises(AudioFileError, match=rf"{name}: unsupported audio format .*supported: \.flac, \.wav, \.ogg"):
        load_audio(path, 16000)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav", 16000)
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    with pytest.raises(AudioFileError, match=r"corrupt\.flac: cannot decode audio"):
        load_audio(corrupt, 16000)
    text = tmp_path / "text.wav"
    text.write_text("RIFF? no, just text")
    with pytest.raises(AudioFileError, match=r"text\.wav: cannot decode audio"):
        load_audio(text, 16000)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioFileError, match=r"empty\.wav: the file holds no audio samples"):
        load_audio(empty, 16000)
    with pytest.raises(ValueError, match="target_rate must be a positive integer"):
        load_audio(empty, 0)


def write_tone_librispeech(root, lines: dict[str, list[str]], write_audio: bool = True):
    """LibriSpeech layout with tones instead of speech: {"<speaker>-<chapter>": [transcript lines]}."""
    for prefix, transcript_lines in lines.items():
        speaker, chapter = prefix.split("-")
        folder = root / speaker / chapter
        folder.mkdir(parents=True)
        (folder / f"{prefix}.trans.txt").write_text("".join(line + "\n" for line in transcript_lines))
        for line in transcript_lines if write_audio else []:
            if line.strip():
                soundfile.write(folder / f"{line.split()[0]}.flac", tone(16000, 0.1), 16000)


def test_read_librispeech(tmp_path):
    write_tone_librispeech(
        tmp_path,
        {
            "84-121123": ["84-121123-0001 GO DO YOU HEAR", "84-121123-0000 BUT IN LESS THAN FIVE MINUTES", ""],
            "61-70968": ["61-70968-0000 HE BEGAN A CONFUSED COMPLAINT", "61-70968-0001"],
        },
    )
    corpus = read_librispeech(tmp_path)
    assert [u.utterance_id for u in corpus.utterances] == ["61-70968-0000", "84-121123-0000", "84-121123-0001"]
    assert corpus.utterances[0] == Utterance(
        "61-70968-0000", tmp_path / "61" / "70968" / "61-70968-0000.flac", "HE BEGAN A CONFUSED COMPLAINT"
    )
    assert corpus.empty_transcripts == ["61-70968-0001"]
    assert load_audio(corpus.utterances[0].audio_path, 16000).shape == (1600,)


def test_read_librispeech_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="LibriSpeech folder not found"):
        read_librispeech(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no \*\.trans\.txt"):
        read_librispeech(tmp_path)
    write_tone_librispeech(tmp_path / "a", {"1-2": ["1-2-0000 HELLO"]}, write_audio=False)
    with pytest.raises(FileNotFoundError, match=r"1-2\.trans\.txt:1: audio file 1-2-0000\.flac not found"):
        read_librispeech(tmp_path / "a")
    write_tone_librispeech(tmp_path / "b", {"1-2": ["1-3-0000 HELLO"]})
    with pytest.raises(ValueError, match=r"1-2\.trans\.txt:1: utterance id '1-3-0000' does not start with '1-2-'"):
        read_librispeech(tmp_path / "b")
    write_tone_librispeech(tmp_path / "c", {"1-2": ["1-2-0000 HELLO", "1-2-0000 AGAIN"]})
    with pytest.raises(ValueError, match=r"1-2\.trans\.txt:2: utterance id '1-2-0000' appears twice"):
        read_librispeech(tmp_path / "c")


def test_librispeech_fixture_with_espeak(tmp_path):
    if not espeak_available():
        pytest.skip(ESPEAK_MISSING)
    written = write_librispeech_fixture(tmp_path, ["one two three", "the cat sat"])
    corpus = read_librispeech(tmp_path)
    assert [tuple(u) for u in corpus.utterances] == written
    assert [u.transcript for u in corpus.utterances] == ["ONE TWO THREE", "THE CAT SAT"]
    info = soundfile.info(corpus.utterances[0].audio_path)
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    audio = load_audio(corpus.utterances[0].audio_path, 16000)
    assert 0.5 < len(audio) / 16000 < 2.5 and np.abs(audio).max() > 0.1


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("column", ["transcription", "text", "sentence"])
def test_read_audiofolder(tmp_path, kind, column):
    folder = tmp_path / "test"
    (folder / "clips").mkdir(parents=True)
    rows = [
        {"file_name": "clips/a.wav", column: "hello world", "speaker": "x"},
        {"file_name": "b.flac", column: "  ", "speaker": "y"},
        {"file_name": "c.ogg", column: "good morning", "speaker": "z"},
    ]
    for row in rows:
        soundfile.write(folder / row["file_name"], tone(8000, 0.1), 8000)
    if kind == "csv":
        header = f"file_name,{column},speaker\n"
        (folder / "metadata.csv").write_text(
            header + "".join(f"{r['file_name']},{r[column]},{r['speaker']}\n" for r in rows)
        )
    else:
        (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    corpus = read_audiofolder(tmp_path, split="test")
    assert corpus.utterances == [
        Utterance("clips/a.wav", folder / "clips" / "a.wav", "hello world"),
        Utterance("c.ogg", folder / "c.ogg", "good morning"),
    ]
    assert corpus.empty_transcripts == ["b.flac"]
    assert read_audiofolder(folder) == corpus


def test_read_audiofolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="audiofolder not found"):
        read_audiofolder(tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match="no metadata.csv or metadata.jsonl"):
        read_audiofolder(tmp_path)
    (tmp_path / "metadata.csv").write_text("file_name,label\na.wav,dog\n")
    with pytest.raises(ValueError, match="needs a file_name column and one of transcription, text, sentence; has"):
        read_audiofolder(tmp_path)
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="both metadata.csv and metadata.jsonl"):
        read_audiofolder(tmp_path)
    (tmp_path / "metadata.csv").unlink()
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.wav", "text": "hi"}\n{"file_name": \n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl:2: not a JSON object"):
        read_audiofolder(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.wav", "text": "hi"}\n')
    with pytest.raises(FileNotFoundError, match=r"metadata\.jsonl: row 1 names a\.wav, which does not exist"):
        read_audiofolder(tmp_path)
