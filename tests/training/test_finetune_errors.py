"""Bad input to `towerzoo finetune` fails before training, as one line `towerzoo finetune: error: …` (exit status 2)
naming the problem and the fix."""

import json
import shutil

import pytest
from evaluation_fixtures import tiny_model_folder
from testing_utils import tiny_bridgetower_config

import towerzoo.models.bridgetower as bt
import towerzoo.models.vidla as vidla
from towerzoo.conversions.bridgetower_folder import exposed_classes
from towerzoo.conversions.hub_folder import write_hub_folder
from towerzoo.training import TrainingError
from towerzoo.training.loading import ModelSource, TaskModelSpec, build_task_model


@pytest.fixture
def refused(finetune, capsys):
    """`finetune(…)`'s one-line error (asserting exit status 2 and no model written)."""

    def run(task, output_dir, *arguments, **keywords) -> str:
        before = sorted(output_dir.rglob("*")) if output_dir.exists() else []
        assert finetune(task, output_dir, *arguments, **keywords) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("towerzoo finetune: error: ")
        assert (sorted(output_dir.rglob("*")) if output_dir.exists() else []) == before
        return lines[-1]

    return run


def test_model_options(refused, config_files, tmp_path):
    scratch = config_files["bridgetower"]
    assert "give either --model" in refused("snli-ve", tmp_path, "--model", "x", init_config=scratch)
    assert "give either --model" in refused("snli-ve", tmp_path)
    assert "needs --tokenizer" in refused("snli-ve", tmp_path, "--init-config", scratch)
    assert "cannot load a model config from" in refused("snli-ve", tmp_path, "--model", tmp_path / "absent")
    config = tmp_path / "foreign.json"
    config.write_text(json.dumps({"model_type": "bridgetower"}))
    assert "'bridgetower' is not a towerzoo architecture" in refused("snli-ve", tmp_path, init_config=config)
    assert "--init-config" in refused("snli-ve", tmp_path, init_config=tmp_path / "absent.json")


def test_folders_without_a_processor_or_with_other_labels(refused, tmp_path):
    model = bt.BridgeTowerForVisualEntailment(tiny_bridgetower_config(num_labels=3))
    bare = write_hub_folder(model, tmp_path / "bare", exposed=exposed_classes(model))
    assert "has no processor files" in refused("snli-ve", tmp_path / "out", "--model", bare, "--image-size", "32")

    labels = {0: "yes", 1: "no", 2: "maybe"}
    other = tiny_model_folder(tmp_path / "other", bt.BridgeTowerForVisualEntailment, id2label=labels)
    message = refused("snli-ve", tmp_path / "out", "--model", other, "--image-size", "32")
    assert "labels ['contradiction', 'entailment', 'neutral'] that the classifier's labels" in message


def test_an_architecture_without_the_tasks_head():
    source = ModelSource(vidla.VidLAConfig(), vidla, None, None, {})
    with pytest.raises(TrainingError, match=r"VidLA has no vqav2 head \(VidLAForVisualQuestionAnswering\)"):
        build_task_model(source, TaskModelSpec(task="vqav2", id2label={0: "yes"}))


def test_data_options_and_files(refused, config_files, training_data, tmp_path):
    scratch = {"init_config": config_files["bridgetower"]}
    snli = training_data["snli-ve"]
    message = refused("snli-ve", tmp_path, data=["--images", snli["images"]], **scratch)
    assert message.endswith("towerzoo finetune snli-ve needs --annotations.")
    absent = ["--annotations", tmp_path / "absent.jsonl", "--images", snli["images"]]
    assert "SNLI-VE file" in refused("snli-ve", tmp_path, data=absent, **scratch)
    assert "the eval split also needs --eval-images" in refused(
        "snli-ve", tmp_path, "--eval-annotations", snli["annotations"], **scratch
    )
    vqa = training_data["vqav2"]
    few = ["--questions", vqa["questions"], "--annotations", vqa["annotations"], "--images", vqa["images"]]
    assert "lower --min-answer-count" in refused(
        "vqav2", tmp_path, *few, "--min-answer-count", "50", data=[], **scratch
    )
    karpathy = training_data["retrieval"]
    no_images = ["--karpathy", karpathy["karpathy"], "--images", tmp_path / "nowhere"]
    assert "does not exist" in refused("retrieval", tmp_path, data=no_images, **scratch)


def test_output_folder_and_resuming(refused, finetune, config_files, tmp_path):
    scratch = {"init_config": config_files["bridgetower"]}
    assert "no checkpoint-* folder" in refused("nlvr2", tmp_path, "--resume-from-checkpoint", "last", **scratch)
    assert "does not exist" in refused("nlvr2", tmp_path, "--resume-from-checkpoint", tmp_path / "absent", **scratch)
    assert "is not a valid repo id" in refused("nlvr2", tmp_path, "--push-to-hub", "a b/c", **scratch)

    done = tmp_path / "done"
    assert finetune("nlvr2", done, "--max-steps", "2", "--save-steps", "1", **scratch) == 0
    assert "pass --overwrite to replace it" in refused("nlvr2", done, **scratch)
    shutil.rmtree(done / "model")
    assert "holds an earlier run's checkpoints" in refused("nlvr2", done, **scratch)
    assert finetune("nlvr2", done, "--max-steps", "1", "--save-steps", "1", "--overwrite", **scratch) == 0
    assert sorted(path.name for path in (done / "checkpoints").iterdir()) == ["checkpoint-1"]
