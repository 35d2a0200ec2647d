"""The evaluation notebooks run headless, top to bottom, on tiny fixtures, and show what the harness computed.

Each notebook is executed by `notebook_runner.run_notebook` (nbclient, a kernel of this interpreter, the fixture
parameters injected after the notebook's `parameters` cell).
"""

import json
import math
import sys

import nbformat
import pytest
import torch
from evaluation_fixtures import tiny_model_folder, write_karpathy, write_vqav2
from notebook_runner import NOTEBOOKS, images, isolate_jupyter, outputs, run_notebook, tagged
from safetensors.torch import load_file
from video_fixtures import tiny_vidla_folder, write_msrvtt, write_msrvtt_videos

import towerzoo.models.bridgetower as bt
from towerzoo.evaluation.video_retrieval import METRIC_NAMES


@pytest.fixture(autouse=True)
def _jupyter_offline(tmp_path, monkeypatch):
    isolate_jupyter(tmp_path, monkeypatch)


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebooks_are_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    assert len(tagged(notebook, "parameters")) == 1
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "clear the outputs"


def test_vqav2_notebook(tmp_path):
    data = write_vqav2(tmp_path / "data", num_questions=12)
    parameters = {
        "MODEL": str(tiny_model_folder(tmp_path / "model")),
        "QUESTIONS": str(data["questions"]),
        "ANNOTATIONS": str(data["annotations"]),
        "IMAGES": str(data["images"]),
        "LIMIT": 10,
        "BATCH_SIZE": 4,
        "NUM_WORKERS": 0,
        "DEVICE": "cpu",
        "DTYPE": "fp32",
        "OUTPUT_DIR": str(tmp_path / "results"),
        "NUM_EXAMPLES": 5,
    }
    notebook = run_notebook("vqav2.ipynb", parameters, tmp_path, last_cell="import sys\nprint(sys.executable)")
    assert outputs(notebook, "last").strip() == sys.executable  # the kernel runs this venv's interpreter

    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["num_examples"] == 10 and results["config"]["batch_size"] == 4
    table = outputs(notebook, "metrics-table")
    assert f"{results['metrics']['accuracy']:.2f}" in table
    for kind, accuracy in results["metrics"]["per_answer_type"].items():
        assert kind in table and f"{accuracy:.2f}" in table
    answers = {a["question_id"]: a["answer"] for a in json.loads((tmp_path / "results" / "answers.json").read_text())}
    examples = outputs(notebook, "examples-table")
    shown = [qid for qid in answers if str(qid) in examples]
    assert len(shown) == 5
    assert all(answers[qid] in examples for qid in shown)
    assert images(notebook) == 2  # the accuracy plots and the examples grid


def test_retrieval_notebook(tmp_path):
    data = write_karpathy(tmp_path / "data", num_images=6)
    model = tiny_model_folder(
        tmp_path / "model", model_class=bt.BridgeTowerForPreTraining, pretraining_heads=["itm", "itc"]
    )
    parameters = {
        "MODEL": str(model),
        "KARPATHY": str(data["karpathy"]),
        "IMAGES": str(data["images"]),
        "LIMIT": None,
        "K": 2,
        "BATCH_SIZE": 4,
        "RERANK_BATCH_SIZE": 8,
        "NUM_WORKERS": 0,
        "DEVICE": "cpu",
        "DTYPE": "fp32",
        "OUTPUT_DIR": str(tmp_path / "results"),
        "CACHE_DIR": str(tmp_path / "cache"),
        "NUM_QUERIES": 2,
        "TOP": 4,
    }
    examples = ("text_to_image_examples", "image_to_text_examples")
    tables = f"import json\nprint(json.dumps([table.to_dict('records') for table in ({', '.join(examples)})]))"
    notebook = run_notebook("retrieval.ipynb", parameters, tmp_path, last_cell=tables)

    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["counts"]["images"] == 6 and results["protocol"]["k"] == 2
    table = outputs(notebook, "metrics-table")
    for metrics in (results["metrics"], results["itc_metrics"]):
        for name in ("tr_r1", "tr_r5", "ir_r1", "ir_r5", "r_mean"):
            assert f"{metrics[name]:.2f}" in table
    # every example is the saved matrices' pair, ranked by the final scores
    saved = load_file(tmp_path / "results" / "scores.safetensors")
    text_queries, image_queries = json.loads(outputs(notebook, "last"))
    for rows, direction in ((text_queries, "caption_index"), (image_queries, "image_index")):
        assert len(rows) == 2 * 4
        for row in rows:
            caption, image = row["caption_index"], row["image_index"]
            assert row["query"] == row[direction]
            assert row["ITC"] == pytest.approx(float(saved["itc_similarity"][caption, image]))
            final = float(saved["scores"][caption, image])
            if final > -100:
                assert row["ITM"] == pytest.approx(final)
            else:
                assert math.isnan(row["ITM"])  # not a re-ranked candidate
            assert row["correct"] == (int(saved["text_to_image"][caption]) == image)
        for query in {row["query"] for row in rows}:
            ranked = [row for row in rows if row["query"] == query]
            column = saved["scores"][query] if direction == "caption_index" else saved["scores"][:, query]
            other = "image_index" if direction == "caption_index" else "caption_index"
            expected = torch.sort(column, descending=True, stable=True).indices[:4].tolist()
            assert [row[other] for row in ranked] == expected
    assert images(notebook) == 3  # the recall bars and the two example figures


def test_video_retrieval_notebook(tmp_path):
    video_ids = write_msrvtt_videos(tmp_path / "videos", 5, short=4)
    parameters = {
        "MODEL": str(tiny_vidla_folder(tmp_path / "vidla")),
        "DATASET": "msrvtt",
        "ANNOTATIONS": str(write_msrvtt(tmp_path / "MSRVTT_JSFUSION_test.csv", video_ids)),
        "VIDEOS": str(tmp_path / "videos"),
        "NUM_FRAMES": 4,
        "LIMIT": None,
        "BATCH_SIZE": 4,
        "NUM_WORKERS": 0,
        "DEVICE": "cpu",
        "DTYPE": "fp32",
        "DUAL_SOFTMAX": True,
        "OUTPUT_DIR": str(tmp_path / "results"),
        "CACHE_DIR": str(tmp_path / "cache"),
        "NUM_EXAMPLES": 2,
        "TOP": 3,
        "FRAMES_SHOWN": 3,
    }
    examples = "import json\nprint(json.dumps(text_to_video_examples.to_dict('records')))"
    notebook = run_notebook("video_retrieval.ipynb", parameters, tmp_path, last_cell=examples)

    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["counts"]["videos"] == 5 and results["config"]["num_frames"] == 4
    table = outputs(notebook, "metrics-table")
    assert "dual softmax (transductive)" in table and results["dual_softmax_metrics"]["transductive"]
    for metrics in (results["metrics"], results["dual_softmax_metrics"]):
        for name in METRIC_NAMES.values():
            assert f"{metrics[name]:.2f}" in table
    # each query's top videos by the saved similarity, then its own video with its rank when it is not among them
    saved = load_file(tmp_path / "results" / "scores.safetensors")
    rows = json.loads(outputs(notebook, "last"))
    queries = sorted({row["query"] for row in rows})
    assert len(queries) == 2
    for query in queries:
        shown = [row for row in rows if row["query"] == query]
        order = torch.sort(saved["similarity"][query], descending=True, stable=True).indices.tolist()
        correct = int(saved["text_to_video"][query])
        expected = order[:3] + ([correct] if order.index(correct) >= 3 else [])
        assert [row["video_index"] for row in shown] == expected
        assert [row["rank"] for row in shown] == [order.index(video) + 1 for video in expected]
        assert [row["correct"] for row in shown] == [video == correct for video in expected]
        for row in shown:
            assert row["video"] == video_ids[row["video_index"]]
            assert row["similarity"] == pytest.approx(float(saved["similarity"][query, row["video_index"]]))
            dual = saved["dual_softmax_text_to_video"][query, row["video_index"]]
            assert row["dual_softmax"] == pytest.approx(float(dual))
    assert images(notebook) == 2  # the recall bars and the frame strips
