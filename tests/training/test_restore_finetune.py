"""`towerzoo finetune restore` on a tiny RESTORE and a 5-class coloured-image dataset (4 images per class in train,
4-shot on the 3 base classes: 12 images, 3 steps per epoch, 10 epochs): the loss goes down, only RESTORE's own
parameters change, the learning rate follows Dassl's per-epoch schedule, the surgery ratios are raised once after
epoch 10 // 3 (also when resumed around it), the folders (full and adapters-only) load back to the same logits, and
`towerzoo eval classification` scores the result base-to-novel."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import transformers
from classification_fixtures import CLASSNAMES, write_coop_dataset
from classification_fixtures import restore_folder as build_restore_folder
from PIL import Image
from safetensors.torch import load_file, save_file
from testing_utils import CLIP_MEAN, CLIP_STD, run_without_towerzoo

from towerzoo.cli import main
from towerzoo.models.restore.modeling_restore import ADAPTERS_FILE, RESTORE_OWN_PREFIXES
from towerzoo.training import restore
from towerzoo.training.restore import RestoreCollator, RestoreOptions, augment, load_few_shot, random_crop_box

BASE = [name.replace("_", " ") for name in CLASSNAMES[:3]]
STEPS_PER_EPOCH, EPOCHS = 3, 10  # 3 base classes × 4 shots / batch 4
# the dtd recipe: vision ratio 0.15, text ratio 0.1, λ 0.5
RUN = ["--dataset-recipe", "dtd", "--num-shots", "4", "--seed", "1", "--logging-steps", "1"]
RUN += ["--dataloader-num-workers", "0", "--save-steps", "3"]
PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def finetune(*arguments) -> int:
    """`towerzoo finetune restore …` in this process, on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["finetune", "restore", *map(str, arguments)])
    finally:
        torch.set_num_threads(threads)


def hand_gram_means(model) -> torch.Tensor:
    """(text, vision): the mean over the deep layers of ‖PᵀP‖_F, written out as the official `get_current_shift`."""
    learner = model.prompt_learner
    text = [torch.linalg.matrix_norm(p.T @ p) for p in learner.text_deep]
    vision = [f(p) for f, p in zip(learner.vision_projections[1:], learner.text_deep, strict=True)]
    vision = [torch.linalg.matrix_norm(v.T @ v) for v in vision]
    return torch.stack([torch.stack(text).mean(), torch.stack(vision).mean()])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The data, the starting folder, and two runs of the same seed, full and adapters-only, each with what the spies
    saw: the optimizer's parameters, each change of the surgery ratios, the logits of the model it saved."""
    root = tmp_path_factory.mktemp("restore-finetune")
    data = write_coop_dataset(root / "data", {"train": 4})
    start = build_restore_folder(root, BASE)
    seen = []  # one dict per run

    def create_optimizer(self, model=None):
        optimizer = original_optimizer(self, model)
        names = {id(p): name for name, p in self.model.named_parameters()}
        seen[-1]["optimized"] = {names[id(p)] for group in optimizer.param_groups for p in group["params"]}
        seen[-1]["trainable"] = {name for name, p in self.model.named_parameters() if p.requires_grad}
        return optimizer

    def on_step_end(self, args, state, control, model=None, **kwargs):
        before, gram = model.surgery_ratios.clone(), hand_gram_means(model).detach()
        original_step_end(self, args, state, control, model=model, **kwargs)
        if not torch.equal(before, model.surgery_ratios):
            seen[-1]["bumps"].append((state.global_step, state.epoch, before, gram, model.surgery_ratios.clone()))

    def save_model_folder(model, *args, **kwargs):
        with torch.no_grad():
            seen[-1]["logits"] = model(pixel_values=PIXELS).logits
        return original_save(model, *args, **kwargs)

    original_optimizer, original_step_end = (
        restore.RestoreTrainer.create_optimizer,
        restore.SurgeryRatioBump.on_step_end,
    )
    original_save = restore.save_model_folder
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(restore.RestoreTrainer, "create_optimizer", create_optimizer)
        patch.setattr(restore.SurgeryRatioBump, "on_step_end", on_step_end)
        patch.setattr(restore, "save_model_folder", save_model_folder)
        for name, extra in (("full", []), ("adapters", ["--adapters-only"])):
            seen.append({"bumps": []})
            assert finetune("--model", start, "--data", data, "--output-dir", root / name, *RUN, *extra) == 0
    return {"root": root, "data": data, "start": start, "seen": seen[0], "adapters_seen": seen[1]}


def _record(folder) -> dict:
    return json.loads((folder / "training.json").read_text())


def test_the_loss_goes_down(runs):
    losses = [loss for _, loss in _record(runs["root"] / "full" / "model")["losses"]]
    assert len(losses) == STEPS_PER_EPOCH * EPOCHS and all(map(math.isfinite, losses))
    # at the official learning rate the tiny frozen CLIP's features separate the colours slowly (about 1.29 → 0.97)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_only_prompts_and_surgery_train_and_clip_is_bit_identical(runs):
    seen = runs["seen"]
    assert seen["optimized"] == seen["trainable"]
    assert seen["trainable"] and all(name.startswith(RESTORE_OWN_PREFIXES) for name in seen["trainable"])
    before = load_file(runs["start"] / "model.safetensors")
    after = load_file(runs["root"] / "full" / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    clip = [key for key in before if not key.startswith(RESTORE_OWN_PREFIXES)]
    assert len(clip) > 50 and "logit_scale" in clip
    for key in clip:
        assert torch.equal(before[key], after[key]), key
    for name in seen["trainable"]:
        assert not torch.equal(before[name], after[name]), f"{name} did not train"


def test_learning_rate_follows_dassls_warmup_then_cosine(runs):
    record = _record(runs["root"] / "full" / "model")
    assert record["updates_per_epoch"] == STEPS_PER_EPOCH and record["steps"] == 30
    for step, rate in record["learning_rates"]:
        epoch = (step - 1) // STEPS_PER_EPOCH
        expected = 1e-5 if epoch == 0 else 0.0035 * (1 + math.cos(math.pi * (epoch - 1) / EPOCHS)) / 2
        assert rate == pytest.approx(expected, rel=1e-9), step
    settings = record["settings"]
    assert (settings["momentum"], settings["weight_decay"], settings["feature_shift_loss_weight"]) == (0.9, 5e-4, 0.5)
    assert record["recipe"]["name"] == "dtd" and record["data"]["train"]["classnames"] == BASE
    assert record["data"]["train"]["examples"] == 12 and settings["seed"] == 1


def test_surgery_ratios_are_raised_once_after_epoch_max_epoch_over_3(runs):
    (bump,) = runs["seen"]["bumps"]
    step, epoch, before, gram, after = bump
    # epoch index 10 // 3 = 3 (0-based) ends at its third step: global step 12
    assert (step, epoch) == (4 * STEPS_PER_EPOCH, 4.0)
    torch.testing.assert_close(before, torch.tensor([0.1, 0.15]))  # dtd: text 0.1, vision 0.15
    torch.testing.assert_close(after, before + torch.tensor([0.02, 0.005]) * gram, rtol=1e-6, atol=0)
    saved = load_file(runs["root"] / "full" / "model" / "model.safetensors")["surgery_ratios"]
    assert torch.equal(saved, after)
    ratios = _record(runs["root"] / "full" / "model")["surgery_ratios"]
    assert (ratios["bump_after_epoch"], ratios["bump_step"], ratios["bumped"]) == (3, 12, True)
    config = json.loads((runs["root"] / "full" / "model" / "config.json").read_text())
    assert (config["surgery_ratio_text"], config["surgery_ratio_vision"]) == (0.1, 0.15)


@pytest.mark.parametrize("checkpoint", [9, 12])  # before the raise, and the checkpoint of the step that raises
def test_resuming_ends_with_the_uninterrupted_weights(runs, checkpoint, tmp_path):
    whole = runs["root"] / "full"
    name = f"checkpoint-{checkpoint}"
    shutil.copytree(whole / "checkpoints" / name, tmp_path / "checkpoints" / name)
    resumed = ["--resume-from-checkpoint", "last"]
    assert finetune("--model", runs["start"], "--data", runs["data"], "--output-dir", tmp_path, *RUN, *resumed) == 0
    expected, got = (load_file(f / "model" / "model.safetensors") for f in (whole, tmp_path))
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert _record(tmp_path / "model")["resumed_from"].endswith(name)


def test_saved_folders_load_to_the_trained_logits(runs, tmp_path):
    trained = runs["seen"]["logits"]
    torch.testing.assert_close(runs["adapters_seen"]["logits"], trained, rtol=0, atol=0)  # the same seeded run
    full = runs["root"] / "full" / "model"
    model = transformers.AutoModelForImageClassification.from_pretrained(full, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=PIXELS).logits, trained, rtol=0, atol=0)

    adapters = runs["root"] / "adapters" / "model"
    names = {path.name for path in adapters.iterdir()}
    assert ADAPTERS_FILE in names and "model.safetensors" not in names and "training.json" in names
    stored = load_file(adapters / ADAPTERS_FILE)
    assert all(key.startswith(RESTORE_OWN_PREFIXES) for key in stored)
    assert (adapters / ADAPTERS_FILE).stat().st_size < 0.25 * (full / "model.safetensors").stat().st_size
    save_file({"pixels": PIXELS}, tmp_path / "pixels.safetensors")
    loaded = run_without_towerzoo(
        f"""
        import json, torch, transformers
        from safetensors.torch import load_file, save_file
        model = transformers.AutoModelForImageClassification.from_pretrained({str(adapters)!r}, trust_remote_code=True)
        with torch.no_grad():
            logits = model.eval()(pixel_values=load_file({str(tmp_path / "pixels.safetensors")!r})["pixels"]).logits
        print(json.dumps(logits.tolist()))
        """,
        tmp_path,
    )
    torch.testing.assert_close(torch.tensor(json.loads(loaded.stdout)), trained, rtol=0, atol=1e-6)


def test_eval_classification_scores_the_result_base_to_novel(runs, tmp_path, capsys):
    output = tmp_path / "results.json"
    arguments = ["eval", "classification", "--model", runs["root"] / "full" / "model", "--data", runs["data"]]
    arguments += ["--subset", "base-to-novel", "--output", output, "--num-workers", "0", "--batch-size", "4"]
    assert main(list(map(str, arguments))) == 0
    results = json.loads(output.read_text())
    assert set(results["metrics"]) == {"base_accuracy", "novel_accuracy", "harmonic_mean"}
    assert results["metrics"]["base_accuracy"] > 100 / 3  # above chance on the held-out base images
    assert results["protocol"]["seed"] == 1  # from the folder's training.json
    assert results["subsets"]["base"]["classnames"] == BASE and results["num_examples"] == 15
    assert "harmonic_mean" in capsys.readouterr().out


def test_augmentation_is_a_seeded_crop_and_flip_fed_to_the_processor_unchanged(runs):
    processor = transformers.AutoProcessor.from_pretrained(runs["start"], trust_remote_code=True)
    path = runs["data"] / "images" / CLASSNAMES[1] / "train_3.png"  # 40 × 44 px
    torch.manual_seed(3)
    batch = RestoreCollator(processor)([{"image": str(path), "label": 1}])
    torch.manual_seed(3)
    crop = np.asarray(augment(Image.open(path).convert("RGB"), 32, (0.08, 1.0)), dtype=np.float64) / 255
    expected = torch.tensor(((crop - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1), dtype=torch.float32)
    torch.testing.assert_close(batch["pixel_values"][0], expected, rtol=0, atol=1e-5)
    assert batch["labels"].tolist() == [1]

    draws = {random_crop_box(40, 44, (0.08, 1.0), generator=torch.Generator().manual_seed(s)) for s in range(50)}
    assert len(draws) > 40
    for left, top, w, h in draws:
        assert 0 <= left and left + w <= 40 and 0 <= top and top + h <= 44
        assert 0.08 * 40 * 44 * 0.9 <= w * h <= 40 * 44 and 0.7 <= w / h <= 1.4
    # ten misses (a long strip cannot hold 3/4 … 4/3 regions of most of its area): the centred 4/3 region
    assert random_crop_box(200, 10, (0.9, 1.0), generator=torch.Generator().manual_seed(0)) == (93, 0, 13, 10)


def test_bad_input_is_one_line_and_exit_status_2(runs, tmp_path, capsys):
    common = ["--data", runs["data"], "--output-dir", tmp_path, "--seed", "1"]
    cases = [
        (["--model", runs["start"], *common, "--dataset-recipe", "pets"], "unknown --dataset-recipe 'pets'; the "),
        (["--model", runs["start"], *common, "--dataset-recipe", "dtd", "--num-shots", "5"], "fewer than 5 shots"),
        (["--model", runs["root"] / "clip", *common, "--dataset-recipe", "dtd"], "holds a 'clip' model, not RESTORE"),
        ([*common, "--dataset-recipe", "dtd"], "needs --model"),
    ]
    for arguments, message in cases:
        assert finetune(*arguments) == 2
        error = capsys.readouterr().err
        assert error.startswith("towerzoo finetune: error: ") and error.count("\n") == 1, error
        assert message in error, error


def test_shots_are_drawn_per_class_with_the_seed_then_the_subset_kept(runs):
    def draw(subset: str, seed: int, shots: int = 2):
        options = RestoreOptions(output_dir=runs["root"], data=runs["data"], seed=seed, subset=subset)
        return load_few_shot(options, shots)

    base, rows, record = draw("base", 1)
    assert base.classnames == BASE and sorted(base.labels) == [0, 0, 1, 1, 2, 2]
    assert rows["label"] == base.labels and rows["image"] == [str(path) for path in base.paths]
    assert all(f"/{CLASSNAMES[label]}/train_" in str(path) for path, label in base.items)
    assert record["num_shots"] == 2 and record["items"] == [[str(p), label] for p, label in base.items]
    assert draw("base", 1)[0].items == base.items and draw("base", 2)[0].items != base.items
    everything = draw("all", 1)[0]
    assert len(everything.classnames) == 5 and len(everything) == 10
    # CoOp draws the shots over all classes, then keeps the base ones: the base draw is part of the full one
    assert set(base.paths) <= set(everything.paths)


def test_push_to_hub_hands_the_written_folder_to_push_folder(runs, tmp_path, monkeypatch):
    pushed = []

    def push_folder(folder, repo_id, *, private=False, token=None):
        pushed.append((folder, repo_id, private, token, (folder / ADAPTERS_FILE).is_file()))
        return f"https://hub.example/{repo_id}/commit/1"

    monkeypatch.setattr("towerzoo.hub_cards.push.push_folder", push_folder)
    hub = ["--adapters-only", "--push-to-hub", "org/tiny-restore", "--hub-token", "secret", "--max-steps", "1"]
    assert finetune("--model", runs["start"], "--data", runs["data"], "--output-dir", tmp_path, *RUN, *hub) == 0
    assert pushed == [(tmp_path / "model", "org/tiny-restore", False, "secret", True)]
