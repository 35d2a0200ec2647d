"""`towerzoo eval vqav2`: answers are the model's, scores are the official scorer's, sharded runs equal single runs,
killed runs resume to the same result, and bad input fails clearly."""

import json
from pathlib import Path

import pytest
import torch
from evaluation_fixtures import ANSWERS, run_eval_in_processes, tiny_model_folder, write_vqav2
from PIL import Image
from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor

import towerzoo.models.bridgetower as bt
from towerzoo.evaluation import vqav2
from towerzoo.evaluation.runner import EvaluationError
from towerzoo.evaluation.vqa import score
from towerzoo.evaluation.vqav2 import VQAv2Options, evaluate_vqav2


@pytest.fixture(scope="module")
def vqa_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqav2")
    return {"model": tiny_model_folder(root / "model"), **write_vqav2(root / "data", num_questions=10)}


def _options(setup, tmp_path, **overrides) -> VQAv2Options:
    values = {
        "model": str(setup["model"]),
        "questions": setup["questions"],
        "images": setup["images"],
        "annotations": setup["annotations"],
        "output": tmp_path / "results.json",
        "submission": tmp_path / "answers.json",
        "batch_size": 3,
        "num_workers": 0,
        **overrides,
    }
    return VQAv2Options(**values)


def _expected_answers(setup) -> dict[int, str]:
    """Each question answered on its own by the model, outside the harness."""
    model = AutoModelForVisualQuestionAnswering.from_pretrained(setup["model"], trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(setup["model"], trust_remote_code=True)
    questions = json.loads(Path(setup["questions"]).read_text())["questions"]
    answers = {}
    for q in questions:
        image = Image.open(Path(setup["images"]) / f"COCO_val2014_{q['image_id']:012d}.jpg").convert("RGB")
        with torch.no_grad():
            logits = model(**processor(images=image, text=q["question"])).logits
        answers[q["question_id"]] = model.config.id2label[int(logits.argmax())]
    return answers


def test_answers_and_scores_are_the_models_and_the_official_scorers(vqa_setup, tmp_path):
    results = evaluate_vqav2(_options(vqa_setup, tmp_path))
    predictions = json.loads((tmp_path / "answers.json").read_text())
    expected = _expected_answers(vqa_setup)
    assert {p["question_id"]: p["answer"] for p in predictions} == expected
    assert set(expected.values()) <= set(ANSWERS)
    official = score(tmp_path / "answers.json", vqa_setup["questions"], vqa_setup["annotations"])
    assert results["metrics"]["accuracy"] == official["accuracy"]
    assert results["metrics"]["per_answer_type"] == official["per_answer_type"]
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["task"] == "vqav2" and written["split"] == "val2014" and written["num_examples"] == 10
    assert written["metrics"] == results["metrics"] and written["config"]["batch_size"] == 3
    assert {"loading", "inference", "total"} <= set(written["timing"])
    assert not (tmp_path / "results.json.work").exists()  # removed after success


def test_test_split_writes_the_submission_file(vqa_setup, tmp_path):
    results = evaluate_vqav2(_options(vqa_setup, tmp_path, annotations=None, submission=None, limit=4))
    assert "metrics" not in results
    submission = json.loads(Path(results["submission"]).read_text())
    assert [set(entry) for entry in submission] == [{"question_id", "answer"}] * 4
    questions = sorted(q["question_id"] for q in json.loads(vqa_setup["questions"].read_text())["questions"])
    assert [entry["question_id"] for entry in submission] == questions[:4]


def test_killed_run_resumes_to_the_same_result(vqa_setup, tmp_path, monkeypatch):
    reference = evaluate_vqav2(_options(vqa_setup, tmp_path / "reference"))
    loaded = {"batches": 0}
    load_batch = vqav2.question_inputs

    def killed_at_the_third_batch(*args):
        loaded["batches"] += 1
        if loaded["batches"] == 3:
            raise KeyboardInterrupt("killed")
        return load_batch(*args)

    options = _options(vqa_setup, tmp_path / "resumed")
    monkeypatch.setattr(vqav2, "question_inputs", killed_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_vqav2(options)
    assert not options.output.exists()
    monkeypatch.undo()
    resumed = evaluate_vqav2(options)
    assert resumed["resumed_batches"] == 2
    assert resumed["metrics"] == reference["metrics"]
    assert (tmp_path / "resumed" / "answers.json").read_text() == (tmp_path / "reference" / "answers.json").read_text()


def test_two_processes_give_the_single_process_result(vqa_setup, tmp_path):
    single = evaluate_vqav2(_options(vqa_setup, tmp_path / "single"))
    run_eval_in_processes(
        [
            *("vqav2", "--model", str(vqa_setup["model"])),
            *("--questions", str(vqa_setup["questions"]), "--annotations", str(vqa_setup["annotations"])),
            *("--images", str(vqa_setup["images"]), "--batch-size", "3", "--num-workers", "0"),
            *("--output", str(tmp_path / "sharded" / "results.json")),
            *("--submission", str(tmp_path / "sharded" / "answers.json")),
        ]
    )
    sharded = json.loads((tmp_path / "sharded" / "results.json").read_text())
    assert sharded["config"]["num_processes"] == 2
    assert sharded["metrics"] == single["metrics"]
    assert (tmp_path / "sharded" / "answers.json").read_text() == (tmp_path / "single" / "answers.json").read_text()


def test_bad_input_fails_clearly(vqa_setup, tmp_path):
    data = tmp_path / "data"
    paths = write_vqav2(data, num_questions=6)
    missing = sorted(paths["images"].iterdir())[0]
    missing.unlink()
    with pytest.raises(EvaluationError, match=rf"missing from .*{missing.name}.*--skip-missing-images"):
        evaluate_vqav2(_options(vqa_setup, tmp_path, **paths))
    results = evaluate_vqav2(_options(vqa_setup, tmp_path, **paths, skip_missing_images=True, submission=None))
    assert results["skipped"] == {"missing_image_questions": 2} and results["num_examples"] == 4

    corrupt = sorted(paths["images"].iterdir())[0]
    corrupt.write_bytes(b"not a jpeg")
    with pytest.raises(EvaluationError, match=rf"cannot read image .*{corrupt.name}"):
        evaluate_vqav2(_options(vqa_setup, tmp_path, **paths, skip_missing_images=True))

    annotations = json.loads(vqa_setup["annotations"].read_text())
    annotations["annotations"] = annotations["annotations"][1:]
    (tmp_path / "partial.json").write_text(json.dumps(annotations))
    with pytest.raises(EvaluationError, match="1 questions have no annotation"):
        evaluate_vqav2(_options(vqa_setup, tmp_path, annotations=tmp_path / "partial.json"))

    itm = tiny_model_folder(tmp_path / "itm", model_class=bt.BridgeTowerForImageAndTextRetrieval)
    with pytest.raises(EvaluationError, match="has no model for AutoModelForVisualQuestionAnswering"):
        evaluate_vqav2(_options(vqa_setup, tmp_path, model=str(itm)))

    no_answers = tiny_model_folder(tmp_path / "no-answers", num_labels=len(ANSWERS))
    with pytest.raises(EvaluationError, match="--labels answer2label.json"):
        evaluate_vqav2(_options(vqa_setup, tmp_path, model=str(no_answers)))
    other_task = tiny_model_folder(tmp_path / "snli", id2label={0: "entailment", 1: "neutral", 2: "contradiction"})
    with pytest.raises(EvaluationError, match="answer vocabulary does not match VQAv2"):
        evaluate_vqav2(_options(vqa_setup, tmp_path, model=str(other_task)))
