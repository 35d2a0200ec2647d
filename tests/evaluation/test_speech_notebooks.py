"""`evaluation/notebooks/asr.ipynb` and `tts.ipynb` run headless on the committed espeak-ng speech (the ASR notebook
with its defaults, which build the tiny test Zipper; the TTS notebook on a prebuilt one and the audiofolder layout)
and show what the harness wrote: the metrics, every utterance, audio players and spectrograms."""

import json

import pytest
from notebook_runner import images, isolate_jupyter, outputs, run_notebook, tagged
from zipper_fixtures import AUDIOFOLDER, tiny_zipper_folder

from towerzoo.evaluation.metrics.wer.error_rates import error_rates


@pytest.fixture(autouse=True)
def _jupyter_offline(tmp_path, monkeypatch):
    isolate_jupyter(tmp_path, monkeypatch)


def _audio_players(notebook, tag: str) -> int:
    (position,) = tagged(notebook, tag)
    return sum("<audio" in output.get("data", {}).get("text/html", "") for output in notebook.cells[position].outputs)


def test_asr_notebook_builds_the_tiny_model_by_default(tmp_path):
    parameters = {
        "LIMIT": 5,
        "BATCH_SIZE": 2,
        "NUM_WORKERS": 0,
        "MAX_NEW_TOKENS": 6,
        "DEVICE": "cpu",
        "DTYPE": "fp32",
        "OUTPUT_DIR": str(tmp_path / "results"),
        "NUM_EXAMPLES": 2,
    }
    table = "print(predictions.to_json(orient='index'))"
    notebook = run_notebook("asr.ipynb", parameters, tmp_path, last_cell=table)

    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["model"] == str(tmp_path / "results" / "tiny-zipper") and results["num_examples"] == 5
    metrics = outputs(notebook, "metrics-table")
    for value in (results["metrics"]["wer"], results["metrics"]["cer"], results["metrics"]["rtfx"]):
        assert f"{value:.2f}" in metrics
    assert "open-asr-leaderboard" in metrics and "whisper-english" in metrics
    shown = json.loads(outputs(notebook, "last"))
    assert list(shown) == [p["utterance_id"] for p in results["predictions"]]
    for saved in results["predictions"]:
        row = shown[saved["utterance_id"]]
        assert (row["prediction"], row["reference"]) == (saved["prediction"], saved["reference"])
        assert row["WER (%)"] == error_rates([saved["prediction"]], [saved["reference"]])["wer"]
    assert _audio_players(notebook, "examples") == 2
    assert images(notebook) == 1  # the spectrograms


def test_tts_notebook(tmp_path):
    parameters = {
        "MODEL": str(tiny_zipper_folder(tmp_path / "model")),
        "DATA": str(AUDIOFOLDER),
        "LAYOUT": "audiofolder",
        "SPLIT": "test",
        "BATCH_SIZE": 2,
        "MAX_NEW_TOKENS": 12,
        "ASR_MAX_NEW_TOKENS": 4,
        "AVERAGE": "utterance",
        "DEVICE": "cpu",
        "DTYPE": "fp32",
        "OUTPUT_DIR": str(tmp_path / "results"),
        "NUM_EXAMPLES": 2,
    }
    notebook = run_notebook("tts.ipynb", parameters, tmp_path)

    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["protocol"]["asr_model"] == parameters["MODEL"] and results["protocol"]["average"] == "utterance"
    assert [row["utterance_id"] for row in results["utterances"]] == ["cat.flac", "door.flac"]
    assert all((tmp_path / "results" / "wavs" / name).is_file() for name in ("cat.wav", "door.wav"))
    metrics = outputs(notebook, "metrics-table")
    for scores in results["by_average"].values():
        assert f"{scores['wer']:.2f}" in metrics and f"{scores['cer']:.2f}" in metrics
    durations = outputs(notebook, "durations-table")
    for value in results["durations"]["synthesized_seconds"].values():
        assert f"{value:.2f}" in durations
    assert f"{results['durations']['ratio_to_reference']['total']:.2f}" in durations
    table = outputs(notebook, "utterances-table")
    assert all(row["text"] in table for row in results["utterances"])
    assert _audio_players(notebook, "examples") == 4  # synthesis and reference recording, twice
    assert images(notebook) == 2  # the duration plots and the spectrograms
