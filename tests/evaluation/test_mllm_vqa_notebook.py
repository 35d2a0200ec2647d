"""`evaluation/notebooks/mllm_vqa.ipynb` runs headless on a tiny LLaVA-OV-Manager folder, for VQAv2 and for multiple
choice, and shows what the harness wrote: the scores, the protocol, every question's generation and the examples."""

import json

import pytest
from evaluation_fixtures import write_vqav2
from llava_fixtures import tiny_llava_ov_manager_folder, write_multiple_choice
from notebook_runner import images, isolate_jupyter, outputs, run_notebook


@pytest.fixture(autouse=True)
def _jupyter_offline(tmp_path, monkeypatch):
    isolate_jupyter(tmp_path, monkeypatch)


@pytest.mark.parametrize("data_format", ["vqav2", "multiple-choice"])
def test_mllm_vqa_notebook(tmp_path, data_format):
    if data_format == "vqav2":
        data = write_vqav2(tmp_path / "data", num_questions=8)
    else:
        data = {**write_multiple_choice(tmp_path / "data", num_questions=6, layout="json"), "annotations": None}
    parameters = {
        "MODEL": str(tiny_llava_ov_manager_folder(tmp_path / "model")),
        "FORMAT": data_format,
        "QUESTIONS": str(data["questions"]),
        "ANNOTATIONS": data["annotations"] and str(data["annotations"]),
        "IMAGES": str(data["images"]),
        "MAX_NEW_TOKENS": 4,
        "LIMIT": None,
        "BATCH_SIZE": 4,
        "NUM_WORKERS": 0,
        "DEVICE": "cpu",
        "DTYPE": "fp32",
        "OUTPUT_DIR": str(tmp_path / "results"),
        "NUM_EXAMPLES": 3,
    }
    notebook = run_notebook("mllm_vqa.ipynb", parameters, tmp_path)

    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["format"] == data_format and results["config"]["max_new_tokens"] == 4
    scores = outputs(notebook, "metrics-table")
    assert f"{results['metrics']['accuracy']:.2f}" in scores
    assert results["protocol"]["example_prompt"] in scores
    if data_format == "vqav2":
        accuracy = results["metrics"]["accuracy"]
        assert f"official scorer on answers.json: {accuracy:.2f} (harness: {accuracy:.2f})" in scores
        assert all(f"{value:.2f}" in scores for value in results["metrics"]["per_answer_type"].values())
    else:
        assert "no letter found" in scores
    table = outputs(notebook, "predictions-table")
    assert all(str(p["question_id"]) in table and p["generation"] in table for p in results["predictions"])
    assert images(notebook) == 1  # the examples grid
