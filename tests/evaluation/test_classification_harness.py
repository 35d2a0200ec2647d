"""`towerzoo eval classification`: the accuracy metric and harmonic mean on hand-computed cases, predictions equal to
the model's own argmax image by image, base-to-novel results on an odd class count, killed runs resuming to the same
result, and bad input failing clearly (one line from the CLI)."""

import json
from pathlib import Path

import evaluate
import pytest
import torch
import transformers
from classification_fixtures import CLASSNAMES, COLOURS, IMAGES_PER_CLASS, restore_folder, write_coop_dataset
from evaluation_fixtures import tiny_model_folder
from PIL import Image

from towerzoo.evaluation import classification
from towerzoo.evaluation.classification import ClassificationOptions, evaluate_classification
from towerzoo.evaluation.metrics import metric_path
from towerzoo.evaluation.metrics.classification_accuracy.accuracy import harmonic_mean
from towerzoo.evaluation.runner import EvaluationError

# --------------------------------------------------------------------------------------------------------------------
# The metric
# --------------------------------------------------------------------------------------------------------------------


def test_accuracy_metric_on_hand_computed_cases():
    metric = evaluate.load(metric_path("classification_accuracy"))
    # 3 of 5 right; class 0: 3 of 4, class 1: 0 of 1 -> mean per class (75 + 0) / 2
    result = metric.compute(predictions=[0, 0, 0, 1, 2], references=[0, 0, 0, 0, 1], mean_per_class=True)
    assert result == {"accuracy": 60.0, "mean_per_class_accuracy": 37.5}
    assert metric.compute(predictions=[2, 1, 1], references=[2, 1, 0]) == {"accuracy": 66.67}  # round(200 / 3, 2)
    assert metric.compute(predictions=[4], references=[4]) == {"accuracy": 100.0}


def test_harmonic_mean_on_hand_computed_values():
    assert harmonic_mean(80.0, 60.0) == 68.57  # 2·80·60 / 140 = 68.571…
    assert harmonic_mean(50.0, 50.0) == 50.0
    assert harmonic_mean(100.0, 0.0) == 0.0 and harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(82.28, 75.14) == 78.55  # MaPLe's 11-dataset average (Table 1): base, novel, HM


# --------------------------------------------------------------------------------------------------------------------
# A tiny RESTORE folder and a CoOp-layout dataset
# --------------------------------------------------------------------------------------------------------------------


def tiny_restore_folder(root: Path) -> Path:
    """`classification_fixtures.restore_folder` on the first three (base) classes, its prompts and surgery perturbed so
    that the prompted model differs from zero-shot CLIP."""
    from towerzoo.conversions.hub_folder import write_hub_folder
    from towerzoo.models.restore import AUTO_CLASSES, RestoreForImageClassification, RestoreProcessor

    folder = restore_folder(root, [name.replace("_", " ") for name in CLASSNAMES[:3]], layers=2)
    model = RestoreForImageClassification.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5 * torch.randn_like(parameter))
        model.surgery_ratios.fill_(0.5)
    processor = RestoreProcessor.from_pretrained(folder)
    return write_hub_folder(model, root / "model", exposed=AUTO_CLASSES, processor=processor, overwrite=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("classification")
    return {"model": tiny_restore_folder(root), "data": write_coop_dataset(root / "data")}


def _options(setup, tmp_path, **overrides) -> ClassificationOptions:
    values = {
        "model": str(setup["model"]),
        "data": setup["data"],
        "output": tmp_path / "results.json",
        "batch_size": 2,
        "num_workers": 0,
        **overrides,
    }
    return ClassificationOptions(**values)


def _own_argmax(setup, classnames: list[str], labels: range, zero_shot: bool = False) -> list[int]:
    """Each test image of `labels` classified on its own by the model, outside the harness, among `classnames`."""
    model = transformers.AutoModelForImageClassification.from_pretrained(setup["model"], trust_remote_code=True).eval()
    processor = transformers.AutoProcessor.from_pretrained(setup["model"], trust_remote_code=True)
    model.set_classnames(classnames, processor)
    predictions = []
    for label in labels:
        for k in range(IMAGES_PER_CLASS):
            image = Image.open(setup["data"] / "images" / CLASSNAMES[label] / f"test_{k}.png").convert("RGB")
            with torch.no_grad():
                logits = model(pixel_values=processor(images=[image])["pixel_values"], zero_shot=zero_shot).logits
            predictions.append(int(logits.argmax()))
    return predictions


def _accuracy_by_hand(predictions: list[int]) -> float:
    labels = [label for label in range(len(predictions) // IMAGES_PER_CLASS) for _ in range(IMAGES_PER_CLASS)]
    return round(100 * sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels), 2)


# --------------------------------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------------------------------


def test_base_to_novel_scores_are_the_models_argmax(setup, tmp_path):
    results = evaluate_classification(_options(setup, tmp_path))
    base = _own_argmax(setup, ["red fox", "green", "blue jay"], range(3))
    novel = _own_argmax(setup, ["yellow", "cyan"], range(3, 5))
    expected = {"base_accuracy": _accuracy_by_hand(base), "novel_accuracy": _accuracy_by_hand(novel)}
    expected["harmonic_mean"] = harmonic_mean(expected["base_accuracy"], expected["novel_accuracy"])
    assert results["metrics"] == expected
    assert len(set(base)) > 1 or len(set(novel)) > 1  # the model does not answer one class for everything

    written = json.loads((tmp_path / "results.json").read_text())
    assert written == {"schema_version": 1, **json.loads(json.dumps(results))}
    assert written["task"] == "classification"
    assert written["dataset"] == "Toy" and written["split"] == "test" and written["num_examples"] == 15
    protocol = written["protocol"]
    assert protocol["name"] == "coop-base-to-novel" and protocol["subset"] == "base-to-novel"
    assert (protocol["num_classes"], protocol["num_base_classes"], protocol["num_novel_classes"]) == (5, 3, 2)
    assert protocol["prompt_template"] == "a photo of a {}." and protocol["zero_shot"] is False
    assert protocol["layout"] == "coop" and "seed" in protocol and "harmonic_mean" in protocol
    assert written["subsets"]["base"]["classnames"] == ["red fox", "green", "blue jay"]
    assert written["subsets"]["novel"]["classnames"] == ["yellow", "cyan"]
    assert written["subsets"]["novel"]["num_examples"] == 6
    assert written["subsets"]["base"]["metrics"]["accuracy"] == expected["base_accuracy"]
    assert written["config"]["batch_size"] == 2 and {"loading", "inference", "total"} <= set(written["timing"])
    assert not (tmp_path / "results.json.work").exists()  # removed after success


def test_one_subset_and_zero_shot(setup, tmp_path):
    results = evaluate_classification(_options(setup, tmp_path, subset="all", zero_shot=True))
    predictions = _own_argmax(setup, [name.replace("_", " ") for name in CLASSNAMES], range(5), zero_shot=True)
    assert results["metrics"]["accuracy"] == _accuracy_by_hand(predictions)
    assert set(results["metrics"]) == {"accuracy", "mean_per_class_accuracy"}
    assert results["protocol"]["zero_shot"] is True and results["protocol"]["name"] == "coop-all-classes"
    novel = evaluate_classification(_options(setup, tmp_path / "novel", subset="novel", limit=4))
    assert novel["num_examples"] == 4 and list(novel["subsets"]) == ["novel"]


def test_killed_run_resumes_to_the_same_result(setup, tmp_path, monkeypatch):
    reference = evaluate_classification(_options(setup, tmp_path / "reference"))
    loaded = {"batches": 0}
    load_batch = classification.image_inputs

    def killed_at_the_third_batch(*args):
        loaded["batches"] += 1
        if loaded["batches"] == 3:
            raise KeyboardInterrupt("killed")
        return load_batch(*args)

    options = _options(setup, tmp_path / "resumed")
    monkeypatch.setattr(classification, "image_inputs", killed_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_classification(options)
    assert not options.output.exists()
    monkeypatch.undo()
    resumed = evaluate_classification(options)
    assert resumed["resumed_batches"] == 2
    assert resumed["subsets"]["base"]["resumed_batches"] == 2 and resumed["subsets"]["novel"]["resumed_batches"] == 0
    assert resumed["metrics"] == reference["metrics"]
    strip = ("computed_batches", "resumed_batches")
    for name in ("base", "novel"):
        assert {k: v for k, v in resumed["subsets"][name].items() if k not in strip} == {
            k: v for k, v in reference["subsets"][name].items() if k not in strip
        }


def test_bad_input_fails_clearly(setup, tmp_path):
    with pytest.raises(EvaluationError, match="unknown --subset 'new'"):
        evaluate_classification(_options(setup, tmp_path, subset="new"))
    with pytest.raises(EvaluationError, match="splits train, val and test, not 'dev'"):
        evaluate_classification(_options(setup, tmp_path, split="dev"))
    vqa = tiny_model_folder(tmp_path / "vqa")
    with pytest.raises(EvaluationError, match="has no model for AutoModelForImageClassification"):
        evaluate_classification(_options(setup, tmp_path, model=str(vqa)))

    data = tmp_path / "data"
    for label, name in enumerate(["a", "b"]):
        (data / "test" / name).mkdir(parents=True)
        Image.new("RGB", (16, 16), COLOURS[label]).save(data / "test" / name / "0.png")
    Image.new("I;16", (16, 16)).save(data / "test" / "b" / "1.png")
    with pytest.raises(EvaluationError, match=r"1.png has PIL mode 'I;16'"):
        evaluate_classification(_options(setup, tmp_path, data=data))
    (data / "test" / "b" / "1.png").write_bytes(b"not a png")
    with pytest.raises(EvaluationError, match=r"cannot read image .*b/1.png"):
        evaluate_classification(_options(setup, tmp_path, data=data))


def test_cli_reports_bad_input_in_one_line(setup, tmp_path, capsys):
    from towerzoo.cli import main

    argv = ["eval", "classification", "--model", str(setup["model"]), "--output", str(tmp_path / "results.json")]
    assert main(argv) == 2
    assert (
        capsys.readouterr().err.strip()
        == "towerzoo eval classification: error: towerzoo eval classification needs --data."
    )
    assert main([*argv, "--data", str(tmp_path / "none")]) == 2
    error = capsys.readouterr().err
    assert "dataset folder" in error and "does not exist" in error and error.count("\n") == 1
    argv += ["--data", str(setup["data"]), "--subset", "novel", "--batch-size", "4", "--num-workers", "0"]
    assert main(argv) == 0
    assert "accuracy" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["protocol"]["subset"] == "novel"
