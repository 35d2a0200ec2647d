"""`towerzoo finetune` end to end on tiny models and data: the loss goes down on every task, the folder it writes is a
Hub folder (code, processor, training.json, card) that `towerzoo eval` scores, and a resumed run ends with the weights
of an uninterrupted one."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from towerzoo.evaluation.retrieval import RetrievalOptions, evaluate_retrieval
from towerzoo.evaluation.vqav2 import VQAv2Options, evaluate_vqav2

# each task learns its tiny data in 60 steps with these learning rates (the recipes' multipliers, head ×5)
STEPS = ["--max-steps", "60", "--learning-rate", "3e-4", "--lr-mult-head", "5"]
# the eval splits are the training files again (held-out data would not show learning in 60 steps)
EVAL = {
    "vqav2": ["--eval-questions", "questions", "--eval-annotations", "annotations", "--eval-images", "images"],
    "retrieval": ["--eval-split", "test"],
    "snli-ve": ["--eval-annotations", "annotations", "--eval-images", "images"],
    "nlvr2": [],
}
RUNS = {task: ("bridgetower", task) for task in EVAL} | {"vqav2-managertower": ("managertower", "vqav2")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, finetune, config_files, training_data):
    """One run from scratch per entry of RUNS, evaluated halfway and at the end: {name: output dir}."""
    outputs = {}
    for name, (architecture, task) in RUNS.items():
        outputs[name] = tmp_path_factory.mktemp(name)
        evaluation = [str(training_data[task].get(option, option)) for option in EVAL[task]]
        if evaluation and architecture == "bridgetower":
            evaluation += ["--eval-steps", "30"]
        else:
            evaluation = []
        assert finetune(task, outputs[name], *STEPS, *evaluation, init_config=config_files[architecture]) == 0
    return outputs


def _record(output) -> dict:
    return json.loads((output / "model" / "training.json").read_text())


@pytest.mark.parametrize("name", list(RUNS))
def test_loss_goes_down(trained, name):
    losses = [loss for _, loss in _record(trained[name])["losses"]]
    assert len(losses) == 60 and all(map(torch.isfinite, torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)


def test_eval_splits_are_scored_as_the_original_scores_them(trained):
    vqa, snli = _record(trained["vqav2"])["eval_metrics"], _record(trained["snli-ve"])["eval_metrics"]
    assert vqa["eval_vqa_score"] > 0.9 and snli["eval_accuracy"] > 0.5  # learnt their training data
    assert _record(trained["retrieval"])["eval_metrics"]["eval_loss"] > 0
    assert _record(trained["nlvr2"])["eval_metrics"] is None
    history = json.loads((trained["vqav2"] / "model" / "training.json").read_text())["losses"]
    assert len(history) == 60  # evaluation entries are not training losses


def test_the_folder_is_a_hub_folder_with_the_training_record(trained, training_data, config_files):
    folder = trained["snli-ve"] / "model"
    names = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_bridgetower.py", "processor_config.json"} <= names
    assert {"training.json", "README.md", "tokenizer.json"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["BridgeTowerForVisualEntailment"]
    assert config["auto_map"]["AutoModelForSequenceClassification"].endswith("BridgeTowerForVisualEntailment")
    assert config["id2label"] == {"0": "contradiction", "1": "neutral", "2": "entailment"}
    record = _record(trained["snli-ve"])
    assert record["task"] == "snli-ve" and record["recipe"]["name"] == "bridgetower-snli-ve"
    assert record["recipe"]["source"] == "microsoft/BridgeTower scripts/ftfpt_base_snlive.sh"
    assert record["settings"]["learning_rate"] == 3e-4 and record["settings"]["weight_decay"] == 0.01
    assert record["settings"]["image_size"] == 32  # from scratch: the config's resolution, not the recipe's 384
    assert record["steps"] == 60 and record["final_loss"] == record["losses"][-1][1]
    assert record["start"]["init_config"] == str(config_files["bridgetower"])
    assert record["data"]["train"]["examples"] == 16
    assert record["data"]["train"]["files"][0]["path"] == str(training_data["snli-ve"]["annotations"].resolve())
    assert (folder / "README.md").read_text().startswith("---")
    retrieval = json.loads((trained["retrieval"] / "model" / "config.json").read_text())
    assert retrieval["architectures"] == ["BridgeTowerForPreTraining"]
    assert retrieval["pretraining_heads"] == ["itm", "itc"]
    assert json.loads((trained["nlvr2"] / "model" / "config.json").read_text())["num_token_types"] == 3


def test_towerzoo_eval_scores_the_saved_folders(trained, training_data, tmp_path):
    vqa = training_data["vqav2"]
    results = evaluate_vqav2(
        VQAv2Options(
            model=str(trained["vqav2"] / "model"),
            questions=vqa["questions"],
            annotations=vqa["annotations"],
            images=vqa["images"],
            output=tmp_path / "vqa.json",
            num_workers=0,
        )
    )
    assert results["metrics"]["accuracy"] > 90  # the tiny model learnt its three answers
    karpathy = training_data["retrieval"]
    results = evaluate_retrieval(
        RetrievalOptions(
            model=str(trained["retrieval"] / "model"),
            karpathy=karpathy["karpathy"],
            images=karpathy["images"],
            output=tmp_path / "retrieval.json",
            cache_dir=tmp_path / "cache",
            num_workers=0,
            k=2,
        )
    )
    assert set(results["metrics"]) >= {"ir_r1", "tr_r1", "r_mean"}


# ManagerTower draws training noise for its layer scores from torch's generator: the resumed run must restore it
@pytest.mark.parametrize(
    ("task", "architecture"), [("vqav2", "bridgetower"), ("retrieval", "bridgetower"), ("snli-ve", "managertower")]
)
def test_resuming_from_a_checkpoint_ends_with_the_uninterrupted_weights(
    task, architecture, finetune, config_files, tmp_path
):
    steps = ["--max-steps", "6", "--save-steps", "3", "--learning-rate", "1e-3"]
    scratch = {"init_config": config_files[architecture]}
    whole = tmp_path / "whole"
    assert finetune(task, whole, *steps, **scratch) == 0
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    # a run killed after step 3: its output folder holds checkpoint-3 only; `last` picks it up
    killed = tmp_path / "killed"
    shutil.copytree(whole / "checkpoints" / "checkpoint-3", killed / "checkpoints" / "checkpoint-3")
    resumed = ["--resume-from-checkpoint", "last"]
    assert finetune(task, killed, *steps, *resumed, **scratch) == 0

    expected, got = load_file(whole / "model" / "model.safetensors"), load_file(killed / "model" / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    record = _record(killed)
    assert record["resumed_from"].endswith("checkpoint-3") and record["steps"] == 6

    # and the checkpoint is what it continued from: nudge one of its weights and the end differs
    tampered = tmp_path / "tampered" / "checkpoints" / "checkpoint-3"
    shutil.copytree(whole / "checkpoints" / "checkpoint-3", tampered)
    weights = load_file(tampered / "model.safetensors")
    key = next(k for k in weights if k.endswith("token_type_embeddings.weight"))
    save_file({**weights, key: weights[key] + 0.5}, tampered / "model.safetensors", metadata={"format": "pt"})
    assert finetune(task, tmp_path / "tampered", *steps, *resumed, **scratch) == 0
    nudged = load_file(tmp_path / "tampered" / "model" / "model.safetensors")
    assert not torch.equal(nudged[key.removeprefix("model.")], expected[key.removeprefix("model.")])


def test_push_to_hub_hands_the_written_folder_to_push_folder(finetune, config_files, tmp_path, monkeypatch):
    pushed = []

    def push_folder(folder, repo_id, *, private=False, token=None):
        pushed.append((folder, repo_id, private, token, (folder / "training.json").is_file()))
        return f"https://hub.example/{repo_id}/commit/1"

    monkeypatch.setattr("towerzoo.hub_cards.push.push_folder", push_folder)
    hub = ["--push-to-hub", "org/tiny-nlvr2", "--private", "--hub-token", "secret", "--max-steps", "1"]
    hub += ["--dataloader-num-workers", "1"]  # the collator in a worker process
    assert finetune("nlvr2", tmp_path, *hub, init_config=config_files["bridgetower"]) == 0
    assert pushed == [(tmp_path / "model", "org/tiny-nlvr2", True, "secret", True)]


@pytest.mark.slow
def test_two_processes_train_one_model(training_data, config_files, tiny_tokenizer_dir, tmp_path):
    """torchrun with two CPU processes (gloo DDP, as on a GPU machine with NCCL): one run of world size 2, the folder
    written once, by the main process."""
    karpathy = training_data["retrieval"]
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "towerzoo.cli"),
        *("finetune", "retrieval", "--init-config", config_files["bridgetower"], "--tokenizer", tiny_tokenizer_dir),
        *("--output-dir", tmp_path, "--karpathy", karpathy["karpathy"], "--images", karpathy["images"]),
        *(
            "--splits",
            "test",
            "--per-device-train-batch-size",
            "3",
            "--max-steps",
            "4",
            "--dataloader-num-workers",
            "0",
        ),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1
    record = _record(tmp_path)
    assert record["settings"]["world_size"] == 2 and record["steps"] == 4
