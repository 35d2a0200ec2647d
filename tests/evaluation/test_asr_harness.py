"""`towerzoo eval asr` on the committed espeak-ng speech with a tiny Zipper: the predictions are the model's own
transcriptions in corpus order, WER/CER equal `error_rates` on the saved predictions, both layouts, the protocol
options recorded, killed runs resume to the same results, two processes give the single-process results, and bad
input fails clearly (one line from the CLI) or is skipped and counted."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import transformers
from evaluation_fixtures import run_eval_in_processes
from zipper_fixtures import AUDIOFOLDER, LIBRISPEECH, tiny_zipper_folder

from towerzoo.evaluation import asr
from towerzoo.evaluation.asr import ASROptions, evaluate_asr, length_sorted_batches
from towerzoo.evaluation.audio_io import load_audio, read_librispeech
from towerzoo.evaluation.metrics.wer.error_rates import error_rates
from towerzoo.evaluation.runner import EvaluationError

MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_zipper_folder(tmp_path_factory.mktemp("zipper") / "model")


def _options(model_dir, tmp_path, **overrides) -> ASROptions:
    values = {
        "model": str(model_dir),
        "data": LIBRISPEECH,
        "output": tmp_path / "results.json",
        "batch_size": 3,
        "num_workers": 0,
        "max_new_tokens": MAX_NEW_TOKENS,
        **overrides,
    }
    return ASROptions(**values)


def _own_transcriptions(model_dir, paths) -> list[str]:
    """Each file transcribed on its own (a batch of one) by the model, outside the harness."""
    model = transformers.AutoModelForSpeechSeq2Seq.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = transformers.AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    texts = []
    for path in paths:
        inputs = processor(audio=[load_audio(path, 16000)], sampling_rate=16000, task="asr")
        with torch.no_grad():
            ids = model.generate(**inputs, output_modality="text", max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        texts += processor.batch_decode(ids, modality="text")
    return texts


def test_length_sorted_batches():
    assert length_sorted_batches([1.0, 3.0, 2.0, 3.0, 0.5], 2) == [[1, 3], [2, 0], [4]]
    assert length_sorted_batches([], 4) == []


def test_predictions_are_the_models_in_corpus_order_and_scores_equal_error_rates(model_dir, tmp_path):
    results = evaluate_asr(_options(model_dir, tmp_path))
    corpus = read_librispeech(LIBRISPEECH).utterances
    predictions = results["predictions"]
    assert [p["utterance_id"] for p in predictions] == [u.utterance_id for u in corpus]  # corpus order
    assert [p["reference"] for p in predictions] == [u.transcript for u in corpus]
    own = _own_transcriptions(model_dir, [u.audio_path for u in corpus])
    assert [p["prediction"] for p in predictions] == own
    assert len(set(own)) > 4  # the transcriptions depend on the audio: a wrong order would show
    assert all(p["truncated"] for p in predictions)  # random weights never say eos within 8 tokens

    expected = error_rates(own, [u.transcript for u in corpus])
    assert results["metrics"]["wer"] == expected["wer"] and results["metrics"]["cer"] == expected["cer"]
    assert expected["wer"] > 0
    counts = results["counts"]
    assert counts["audio_seconds"] == pytest.approx(sum(soundfile.info(u.audio_path).duration for u in corpus))
    assert results["metrics"]["rtfx"] == round(counts["audio_seconds"] / counts["transcription_seconds"], 2)
    assert all(p["duration"] == soundfile.info(p["audio"]).duration for p in predictions)

    written = json.loads((tmp_path / "results.json").read_text())
    assert written == {"schema_version": 1, **json.loads(json.dumps(results))}
    assert (written["task"], written["dataset"], written["num_examples"]) == ("asr", "librispeech", 8)
    assert written["skipped"] == {
        "empty_transcripts": 0,
        "silent_audio": 0,
        "clipped_audio": 0,
        "unreadable_audio": 0,
        "empty_normalized_references": 0,
    }
    protocol = written["protocol"]
    assert protocol["name"] == "open-asr-leaderboard" and protocol["normalizer"] == "whisper-english"
    assert protocol["average"] == "corpus" and protocol["keep_apostrophes"] is False
    assert protocol["spelling_mapping"]["entries"] > 1000
    assert protocol["decoding"] == {"num_beams": 1, "max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}
    assert written["config"]["batch_size"] == 3 and {"loading", "inference", "scoring"} <= set(written["timing"])
    assert not (tmp_path / "results.json.work").exists()  # removed after success


def test_audiofolder_layout_and_protocol_options(model_dir, tmp_path):
    options = _options(model_dir, tmp_path, data=AUDIOFOLDER, layout="audiofolder", split="test")
    results = evaluate_asr(options)
    assert (results["dataset"], results["split"], results["num_examples"]) == ("audiofolder", "test", 2)
    references = ["A cat sits on the mat.", "Don't open the red door!"]
    assert [p["reference"] for p in results["predictions"]] == references
    own = _own_transcriptions(model_dir, [AUDIOFOLDER / "test" / "cat.flac", AUDIOFOLDER / "test" / "door.flac"])
    assert [p["prediction"] for p in results["predictions"]] == own
    assert results["metrics"]["wer"] == error_rates(own, references)["wer"]

    raw = evaluate_asr(_options(model_dir, tmp_path, normalize=False, average="utterance", num_beams=2))
    predictions = [p["prediction"] for p in raw["predictions"]]
    expected = error_rates(
        predictions, [p["reference"] for p in raw["predictions"]], normalize=False, average="utterance"
    )
    assert (raw["metrics"]["wer"], raw["metrics"]["cer"]) == (expected["wer"], expected["cer"])
    assert raw["protocol"]["normalize"] is False and raw["protocol"]["normalizer"] is None
    assert raw["protocol"]["average"] == "utterance" and raw["protocol"]["decoding"]["num_beams"] == 2


def test_killed_run_resumes_to_the_same_result(model_dir, tmp_path, monkeypatch):
    reference = evaluate_asr(_options(model_dir, tmp_path / "reference"))
    loaded = {"batches": 0}
    load_batch = asr.speech_batch

    def killed_at_the_third_batch(*args):
        loaded["batches"] += 1
        if loaded["batches"] == 3:
            raise KeyboardInterrupt("killed")
        return load_batch(*args)

    options = _options(model_dir, tmp_path / "resumed")
    monkeypatch.setattr(asr, "speech_batch", killed_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_asr(options)
    assert not options.output.exists()
    monkeypatch.undo()
    resumed = evaluate_asr(options)
    assert resumed["resumed_batches"] == 2
    assert resumed["predictions"] == reference["predictions"]
    assert resumed["metrics"]["wer"] == reference["metrics"]["wer"]
    assert resumed["counts"]["audio_seconds"] == reference["counts"]["audio_seconds"]


def test_two_processes_give_the_single_process_result(model_dir, tmp_path):
    single = evaluate_asr(_options(model_dir, tmp_path / "single"))
    run_eval_in_processes(
        [
            *("asr", "--model", str(model_dir), "--data", str(LIBRISPEECH)),
            *("--batch-size", "3", "--num-workers", "0", "--max-new-tokens", str(MAX_NEW_TOKENS)),
            *("--output", str(tmp_path / "sharded" / "results.json")),
        ]
    )
    sharded = json.loads((tmp_path / "sharded" / "results.json").read_text())
    assert sharded["config"]["num_processes"] == 2
    assert sharded["predictions"] == single["predictions"]
    assert sharded["metrics"]["wer"] == single["metrics"]["wer"]


# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------


def _bad_audiofolder(root: Path) -> Path:
    """An audiofolder split whose rows are: two good files, an empty transcript, a silent file, a clipped file, a
    text file, a corrupt FLAC and an AIFF file (readable, but not a supported format)."""
    split = root / "test"
    shutil.copytree(AUDIOFOLDER / "test", split)
    soundfile.write(split / "silent.flac", np.zeros(16000, dtype=np.float32), 16000)
    square = np.sign(np.sin(np.linspace(0, 400 * np.pi, 16000))).astype(np.float32)
    soundfile.write(split / "clipped.flac", square, 16000)
    (split / "notes.txt").write_text("not audio")
    (split / "corrupt.flac").write_bytes(b"fLaC but not really")
    soundfile.write(split / "other.aiff", load_audio(split / "cat.flac", 16000), 16000)
    rows = [
        ("cat.flac", "A cat sits on the mat."),
        ("door.flac", "Don't open the red door!"),
        ("cat.flac", " "),
        ("silent.flac", "nothing to hear"),
        ("clipped.flac", "too loud"),
        ("notes.txt", "a text file"),
        ("corrupt.flac", "a broken file"),
        ("other.aiff", "a cat sits on the mat"),
    ]
    with (split / "metadata.csv").open("w", newline="") as file:
        csv.writer(file).writerows([("file_name", "transcription"), *rows])
    return root


def test_bad_audio_fails_naming_the_file_or_is_skipped_and_counted(model_dir, tmp_path):
    data = _bad_audiofolder(tmp_path / "bad")
    options = {"data": data, "layout": "audiofolder", "split": "test"}
    with pytest.raises(EvaluationError, match=r"cannot use audio .*notes\.txt.*--skip-bad-audio"):
        evaluate_asr(_options(model_dir, tmp_path, **options))

    results = evaluate_asr(_options(model_dir, tmp_path, **options, skip_bad_audio=True))
    assert results["skipped_utterances"] == {
        "empty_transcripts": ["cat.flac"],
        "silent_audio": ["silent.flac"],
        "clipped_audio": ["clipped.flac"],
        "unreadable_audio": ["notes.txt", "corrupt.flac", "other.aiff"],
    }
    assert results["skipped"]["unreadable_audio"] == 3 and results["skipped"]["silent_audio"] == 1
    assert [p["utterance_id"] for p in results["predictions"]] == ["cat.flac", "door.flac"]
    assert results["num_examples"] == 2 and results["protocol"]["bad_audio"] == "skipped and counted"

    # files that pass the header check fail in the loader, each named
    rows = (data / "test" / "metadata.csv").read_text().splitlines()
    for name, reason in (
        ("silent.flac", "audio is silent"),
        ("clipped.flac", "audio is clipped"),
        ("other.aiff", "unsupported audio format"),
    ):
        kept = [row for row in rows if not row.startswith(("notes.txt", "corrupt.flac"))]
        kept = [row for row in kept if row.startswith(("file_name", "door.flac", name))]
        (data / "test" / "metadata.csv").write_text("\n".join(kept) + "\n")
        with pytest.raises(EvaluationError, match=rf"{name}.*{reason}"):
            evaluate_asr(_options(model_dir, tmp_path, **options))


def test_bad_data_and_options_fail_clearly(model_dir, tmp_path):
    data = tmp_path / "missing"
    shutil.copytree(LIBRISPEECH, data)
    (data / "121" / "121726" / "121-121726-0001.flac").unlink()
    with pytest.raises(EvaluationError, match=r"121-121726.trans.txt:2: audio file 121-121726-0001.flac not found"):
        evaluate_asr(_options(model_dir, tmp_path, data=data))
    with pytest.raises(EvaluationError, match="no \\*.trans.txt transcript files"):
        evaluate_asr(_options(model_dir, tmp_path, data=AUDIOFOLDER))
    with pytest.raises(EvaluationError, match="unknown --layout 'kaldi'"):
        evaluate_asr(_options(model_dir, tmp_path, layout="kaldi"))
    with pytest.raises(EvaluationError, match="unknown --average 'mean'"):
        evaluate_asr(_options(model_dir, tmp_path, average="mean"))
    with pytest.raises(EvaluationError, match="--num-beams and --max-new-tokens must be >= 1"):
        evaluate_asr(_options(model_dir, tmp_path, num_beams=0))


def test_cli_reports_bad_input_in_one_line(model_dir, tmp_path, capsys):
    from towerzoo.cli import main

    argv = ["eval", "asr", "--model", str(model_dir), "--output", str(tmp_path / "results.json")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == "towerzoo eval asr: error: towerzoo eval asr needs --data."
    bad = _bad_audiofolder(tmp_path / "bad")
    assert main([*argv, "--data", str(bad), "--layout", "audiofolder", "--split", "test", "--num-workers", "0"]) == 2
    error = capsys.readouterr().err
    assert "notes.txt" in error and "--skip-bad-audio" in error and error.count("\n") == 1
    argv += ["--data", str(AUDIOFOLDER), "--layout", "audiofolder", "--split", "test", "--num-workers", "0"]
    assert main([*argv, "--max-new-tokens", "4", "--no-normalize", "--average", "utterance"]) == 0
    out = capsys.readouterr().out
    assert "wer" in out and "rtfx" in out
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["protocol"]["normalize"] is False and written["protocol"]["average"] == "utterance"
    assert written["config"]["max_new_tokens"] == 4
