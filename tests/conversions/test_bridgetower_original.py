"""`towerzoo convert bridgetower-original`: tiny original-layout Lightning checkpoints (built from the base
checkpoint's key manifest, see tests/original_bridgetower_checkpoints.py) convert into folders whose models reproduce the functional
original forward pass for every head, and bad files fail cleanly without writing anything."""

import hashlib
import json
import math
import os
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
from original_bridgetower_checkpoints import (
    HIDDEN,
    NUM_HEADS,
    TASKS,
    family,
    lightning_checkpoint,
    original_state_dict,
    read_manifest,
    run_config,
    save_lightning,
    tiny_shapes,
    write_task_checkpoint,
)

import towerzoo.models.bridgetower as bt
from towerzoo.cli import main
from towerzoo.conversions import bridgetower_original as converter
from towerzoo.conversions.bridgetower_folder import random_inputs
from towerzoo.conversions.bridgetower_original_reference import reference_outputs
from towerzoo.conversions.common import ConversionError

TOLERANCE = 1e-5

# task → (towerzoo class, outputs verification.json must compare)
EXPECTED = {
    "pretrain": ("BridgeTowerForPreTraining", {"mlm_logits", "itm_logits"}),
    "vqa": ("BridgeTowerForVisualQuestionAnswering", {"vqa_logits"}),
    "snli": ("BridgeTowerForVisualEntailment", {"snli_logits"}),
    "nlvr2": ("BridgeTowerForNLVR2", {"nlvr2_logits", "pooler_output_image2"}),
    "irtr_itm_itc": ("BridgeTowerForPreTraining", {"itm_logits", "itc_image_embeds", "itc_logits_per_text"}),
    "irtr_rank": ("BridgeTowerForImageAndTextRetrieval", {"irtr_score"}),
    "no_hparams": ("BridgeTowerForPreTraining", {"mlm_logits", "itm_logits", "itc_text_embeds"}),
    "separate_ln": ("BridgeTowerForPreTraining", {"mlm_logits", "itm_logits", "itc_image_embeds"}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("original_ckpts")
    return {task: write_task_checkpoint(folder, task) for task in TASKS}


@pytest.fixture(scope="module")
def converted(checkpoints, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("converted")
    return {task: converter.run(path, out / task) for task, path in checkpoints.items()}


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


# --------------------------------------------------------------------------------------------------------------------
# Successful conversions
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_conversion_matches_original(task, converted):
    folder = converted[task]
    class_name, outputs = EXPECTED[task]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [class_name]
    record = json.loads((folder / "verification.json").read_text())
    assert record["source_format"] == "bridgetower-original"
    assert outputs | {"text_features", "image_features", "pooler_output"} <= set(record["max_abs_diff_per_output"])
    assert record["max_abs_diff"] <= TOLERANCE, record["max_abs_diff_per_output"]
    dropped = record["dropped_keys"]
    for key in (
        "text_transformer.embeddings.position_ids",
        "text_transformer.pooler.dense.weight",
        "vit_model.positional_embedding",
        "vit_model.ln_final.weight",
    ):
        assert dropped[key], key


@pytest.mark.parametrize("task", list(TASKS))
def test_saved_folder_reproduces_original_with_eager_and_sdpa(task, checkpoints, converted):
    """Reload the written folder with each attention backend; every head equals the functional original."""
    class_name, _ = EXPECTED[task]
    source = converter.read_checkpoint(checkpoints[task]).state_dict
    results = {}
    for backend in ("eager", "sdpa"):
        model, info = getattr(bt, class_name).from_pretrained(
            converted[task], attn_implementation=backend, output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        results[backend] = _head_outputs(model.eval(), task)
    inputs = random_inputs(model.config, seed=5)
    second = random_inputs(model.config, seed=6)["pixel_values"] if task == "nlvr2" else None
    heads = NUM_HEADS if run_config(task) else HIDDEN // 64
    expected = reference_outputs(
        source, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], heads, second
    )
    if task == "irtr_rank":
        expected["itm_logits"] = torch.stack([torch.zeros_like(expected["irtr_score"]), expected["irtr_score"]], -1)
    for name, eager in results["eager"].items():
        assert torch.allclose(eager, results["sdpa"][name], atol=TOLERANCE, rtol=0), name
        reference = expected[name]
        assert (eager - reference).abs().max() <= TOLERANCE, (name, float((eager - reference).abs().max()))


@torch.no_grad()
def _head_outputs(model, task: str) -> dict[str, torch.Tensor]:
    inputs = random_inputs(model.config, seed=5)
    if task == "nlvr2":
        pair = torch.stack([inputs["pixel_values"], random_inputs(model.config, seed=6)["pixel_values"]], dim=1)
        return {"nlvr2_logits": model(inputs["input_ids"], inputs["attention_mask"], pixel_values=pair).logits}
    base = model.bridgetower(**inputs)
    outputs = {"text_feats": base.text_features, "image_feats": base.image_features, "cls_feats": base.pooler_output}
    out = model(**inputs)
    if isinstance(model, bt.BridgeTowerForPreTraining):
        if out.mlm_logits is not None:
            outputs["mlm_logits"] = out.mlm_logits
        if out.itm_logits is not None:
            outputs["itm_logits"] = out.itm_logits
        if out.contrastive is not None:
            outputs["itc_text_embeds"] = out.contrastive.text_embeds
            outputs["itc_image_embeds"] = out.contrastive.image_embeds
            outputs["itc_logits_per_text"] = out.contrastive.logits_per_text
    else:
        name = {"vqa": "vqa_logits", "snli": "snli_logits", "irtr_rank": "itm_logits"}[task]
        outputs[name] = out.logits
    return outputs


def test_config_follows_the_original(converted):
    def config(task):
        return bt.BridgeTowerConfig.from_pretrained(converted[task])

    pretrain = config("pretrain")
    assert pretrain.layer_norm_eps == 1e-12  # RobertaConfig default: cross-modal layers + MLM head
    assert pretrain.link_tower_layer_norm_eps == 1e-5
    assert pretrain.text_config.layer_norm_eps == pretrain.vision_config.layer_norm_eps == 1e-5
    assert pretrain.contrastive_image_features == "uni_modal" and not pretrain.contrastive_cross_modal_head
    assert pretrain.num_attention_heads == NUM_HEADS and pretrain.num_hidden_layers == 2
    assert pretrain.pretraining_heads == ["mlm", "itm"] and not pretrain.tie_word_embeddings
    assert pretrain.vision_config.image_size == 32 and pretrain.vision_config.patch_size == 8
    assert pretrain.text_config.max_position_embeddings == 40 and pretrain.text_config.type_vocab_size == 2
    assert math.isclose(config("separate_ln").logit_scale_init_value, math.log(1 / 0.05), rel_tol=1e-6)
    # compute_itc clamps the temperature to [0.001, 0.5] before use
    assert math.isclose(config("irtr_itm_itc").logit_scale_init_value, math.log(2.0), rel_tol=1e-6)
    nlvr2 = config("nlvr2")
    assert nlvr2.num_token_types == 3 and nlvr2.task_head_layers == 1 and nlvr2.id2label == {0: "False", 1: "True"}
    assert config("snli").id2label == {0: "contradiction", 1: "neutral", 2: "entailment"}
    vqa = config("vqa")
    assert vqa.num_labels == 7 and vqa.task_head_layers == 2 and vqa.head_hidden_scale == 2
    assert not config("separate_ln").vision_config.share_layernorm
    no_hparams = config("no_hparams")
    assert no_hparams.num_attention_heads == HIDDEN // 64 and no_hparams.contrastive_hidden_size == 16
    assert no_hparams.pretraining_heads == ["mlm", "itm", "itc"]


def test_config_overrides_supply_and_are_checked(checkpoints, tmp_path):
    folder = converter.run(checkpoints["no_hparams"], tmp_path / "out", config_overrides={"num_heads": 4})
    assert bt.BridgeTowerConfig.from_pretrained(folder).num_attention_heads == 4
    assert json.loads((folder / "verification.json").read_text())["max_abs_diff"] <= TOLERANCE
    with pytest.raises(ConversionError, match=r"num_layers=3 but there are 2 cross-modal layers"):
        converter.run(checkpoints["vqa"], tmp_path / "bad", config_overrides={"num_layers": 3})
    assert not (tmp_path / "bad").exists()


def test_every_key_is_renamed_or_dropped_and_every_manifest_family_lands(checkpoints):
    seen_families, dropped_reasons = set(), {}
    for task, path in checkpoints.items():
        checkpoint = converter.read_checkpoint(path)
        layout = converter.infer_layout(checkpoint.state_dict)
        result = converter.convert_state_dict(checkpoint.state_dict, layout)
        source = set(checkpoint.state_dict)
        assert set(result.renamed) | set(result.dropped) == source, task
        assert not set(result.renamed) & set(result.dropped), task
        assert all(reason for reason in result.dropped.values())
        renamed_targets = {new for targets in result.renamed.values() for new in targets}
        assert renamed_targets == set(result.state_dict), task
        seen_families |= {family(k) for k in result.renamed} | {family(k) for k in result.dropped}
        dropped_reasons.update(result.dropped)
    manifest_families = {family(k) for k in read_manifest()}
    assert manifest_families <= seen_families, sorted(manifest_families - seen_families)
    # only the documented drops happen
    allowed = r"^(text_transformer\.(pooler\.|embeddings\.position_ids)|vit_model\.(positional_embedding|ln_final\.)|itm_score\.fc\.|temperature$)"
    assert all(re.match(allowed, key) for key in dropped_reasons), sorted(dropped_reasons)


def test_irtr_rank_output_is_folded_into_itm(checkpoints, converted):
    source = converter.read_checkpoint(checkpoints["irtr_rank"]).state_dict
    model = bt.BridgeTowerForImageAndTextRetrieval.from_pretrained(converted["irtr_rank"])
    assert torch.equal(model.itm_score.weight[1], source["rank_output.weight"][0])
    assert torch.equal(model.itm_score.weight[0], torch.zeros(2 * HIDDEN))
    record = json.loads((converted["irtr_rank"] / "verification.json").read_text())
    assert record["irtr_rank_head"] == "fold" and "one storage" in record["dropped_keys"]["itm_score.fc.weight"]


def test_irtr_rank_output_can_be_dropped(checkpoints, tmp_path):
    folder = converter.run(checkpoints["irtr_rank"], tmp_path / "out", rank_head="drop")
    source = converter.read_checkpoint(checkpoints["irtr_rank"]).state_dict
    model = bt.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    assert torch.equal(model.itm_score.weight, source["itm_score.fc.weight"])
    assert torch.equal(model.itm_score.weight[1], source["rank_output.weight"][0])  # the original's shared storage
    record = json.loads((folder / "verification.json").read_text())
    assert "itm_logits" in record["max_abs_diff_per_output"] and "rank_output.weight" in record["dropped_keys"]


def test_the_reference_catches_a_model_that_departs_from_the_original(checkpoints):
    """The check is independent of towerzoo's code: transformers' ITC image path is detected as a difference."""
    checkpoint = converter.read_checkpoint(checkpoints["separate_ln"])
    layout = converter.infer_layout(checkpoint.state_dict)
    config = converter.towerzoo_config(layout, checkpoint.hyper_parameters, checkpoint.state_dict)
    config.contrastive_image_features = "cross_modal_transform"  # same shapes here (vision width == hidden)
    result = converter.convert_state_dict(checkpoint.state_dict, layout)
    model = converter.build_model(config, result.state_dict, "test")
    diffs = converter.verify_against_original(model, checkpoint.state_dict, layout, folded_rank=False)
    assert diffs["itc_image_embeds"] > 1e-2
    with pytest.raises(ConversionError, match="differs from the original BridgeTower forward pass"):
        converter.check_tolerance(diffs, 1e-4, converter.REFERENCE)


# --------------------------------------------------------------------------------------------------------------------
# Safe reading
# --------------------------------------------------------------------------------------------------------------------


def test_reads_without_sacred_and_returns_plain_containers(checkpoints):
    assert "sacred" not in sys.modules
    checkpoint = converter.read_checkpoint(checkpoints["vqa"])
    config = checkpoint.hyper_parameters
    assert type(config) is dict and type(config["loss_names"]) is dict and type(config["datasets"]) is list
    assert config == run_config("vqa")


def test_reads_old_style_sacred_containers_and_legacy_format(tmp_path):
    """Old sacred pickled its containers with instance state (NEWOBJ + BUILD); torch < 1.6 wrote the non-zip format."""
    state_dict = original_state_dict("vqa")
    checkpoint = lightning_checkpoint(state_dict, run_config("vqa"))
    path = save_lightning(tmp_path / "old.ckpt", checkpoint, legacy_format=True, old_style_sacred=True)
    read = converter.read_checkpoint(path)
    assert read.hyper_parameters == run_config("vqa")
    assert set(read.state_dict) == set(state_dict)
    assert all(torch.equal(read.state_dict[k], v.float()) for k, v in state_dict.items())


class _Exploit:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize(
    ("func", "named"),
    [(os.system, r"(posix|os|nt)\.system"), (eval, r"builtins\.eval")],
    ids=["os.system", "eval"],
)
def test_refuses_pickled_code_and_writes_nothing(tmp_path, func, named):
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w')"
    checkpoint = lightning_checkpoint(
        original_state_dict("vqa"), run_config("vqa"), {"callbacks": _Exploit(func, arg)}
    )
    path = save_lightning(tmp_path / "evil.ckpt", checkpoint)
    parent = tmp_path / "parent"
    parent.mkdir()
    before = snapshot(parent)
    with pytest.raises(ConversionError, match=rf"refusing to read .*`{named}`"):
        converter.run(path, parent / "out")
    assert not marker.exists()
    assert snapshot(parent) == before


# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------


def _truncated(tmp_path, checkpoints):
    data = checkpoints["vqa"].read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.ckpt"


def _text_file(tmp_path, checkpoints):
    (tmp_path / "notes.ckpt").write_text("this is not a checkpoint\n")
    return tmp_path / "notes.ckpt"


def _saved(obj):
    def make(tmp_path, checkpoints):
        torch.save(obj() if callable(obj) else obj, tmp_path / "file.ckpt")
        return tmp_path / "file.ckpt"

    return make


def _edited(task: str, edit_state=None, edit_config=None):
    def make(tmp_path, checkpoints):
        state_dict, config = original_state_dict(task), run_config(task)
        if edit_state:
            edit_state(state_dict)
        if edit_config:
            edit_config(config)
        return save_lightning(tmp_path / "edited.ckpt", lightning_checkpoint(state_dict, config))

    return make


def _set(key, value):
    return lambda config: config.__setitem__(key, value)


BAD_FILES = {
    "truncated": (_truncated, r"cannot read .*corrupt, truncated"),
    "not_a_torch_file": (_text_file, r"cannot read .* as a PyTorch checkpoint"),
    "not_a_dict": (_saved([1, 2, 3]), r"not a PyTorch Lightning checkpoint: .*found list"),
    "bare_state_dict": (_saved(lambda: dict(original_state_dict("vqa"))), r"bare state dict.*Wrap it"),
    "random_checkpoint": (
        _saved({"state_dict": {"encoder.weight": torch.zeros(2, 2)}}),
        r"not an original BridgeTower checkpoint",
    ),
    "managertower": (
        _edited("vqa", lambda sd: sd.update({"cross_modal_text_manager_tower.0.weight": torch.zeros(2)})),
        r"looks like a ManagerTower checkpoint",
    ),
    "transformers_layout": (
        _saved({"state_dict": {"bridgetower.text_model.embeddings.word_embeddings.weight": torch.zeros(2, 2)}}),
        r"bridgetower-transformers",
    ),
    "missing_key": (
        _edited("vqa", lambda sd: sd.pop("cross_modal_text_layers.1.output.dense.weight")),
        r"missing keys \(1\): bridgetower\.cross_modal_text_layers\.1\.mlp\.fc2\.weight",
    ),
    "missing_block": (
        _edited("vqa", lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("text_transformer.encoder.layer.1.")]),
        r"text_transformer\.encoder\.layer\.\*` blocks are numbered \[0, 2\]",
    ),
    "unknown_key": (
        _edited("vqa", lambda sd: sd.update({"vit_model.visual.proj": torch.zeros(64, 32)})),
        r"1 key\(s\) .*belong to no BridgeTower module.*vit_model\.visual\.proj",
    ),
    "image_size_contradicts_positions": (
        _edited("vqa", edit_config=_set("image_size", 64)),
        r"image_size=64 but vit_model\.visual\.positional_embedding holds a 4² grid",
    ),
    "hidden_size_contradicts_weights": (
        _edited("vqa", edit_config=_set("hidden_size", 128)),
        r"hidden_size=128 but the cross-modal width is 64",
    ),
    "loss_names_contradict_heads": (
        _edited("vqa", edit_config=lambda c: c["loss_names"].update({"mlm": 1})),
        r"loss_names creates the heads \['mlm', 'vqa'\] but the state dict holds \['vqa'\]",
    ),
    "separate_ln_contradicts_config": (
        _edited("vqa", edit_config=_set("vit_layernorm_shared", False)),
        r"vit_layernorm_shared=False but the checkpoint has no vit_model\.visual\.ln_separate",
    ),
    "bert_text_tower": (
        _edited("vqa", edit_config=_set("tokenizer", "bert-base-uncased")),
        r"tokenizer='bert-base-uncased'",
    ),
    "towers_of_different_depth": (
        _edited("vqa", lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("text_transformer.encoder.layer.2.")]),
        r"text tower has 2 layers and its ViT 3 blocks",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_fails_cleanly(case, tmp_path, checkpoints):
    make, pattern = BAD_FILES[case]
    source = make(tmp_path, checkpoints)
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "sibling.txt").write_text("not ours")
    before = snapshot(parent)
    with pytest.raises(ConversionError) as error:
        converter.run(source, parent / "out")
    assert re.search(pattern, str(error.value), re.DOTALL), str(error.value)
    assert snapshot(parent) == before


def test_missing_file(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        converter.run(tmp_path / "nope.ckpt", tmp_path / "out")


def test_existing_output_needs_overwrite(checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists; pass --overwrite"):
        converter.run(checkpoints["snli"], out)
    assert (out / "keep.txt").read_text() == "mine"
    converter.run(checkpoints["snli"], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "verification.json").is_file()


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def test_cli_reports_a_bad_file_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"callbacks": _Exploit(os.system, "true")}, protocol=2))
    code = main(["convert", "bridgetower-original", str(bad), str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    assert re.search(r"towerzoo convert: error: refusing to read .*system", captured.err), captured.err
    assert not (tmp_path / "out").exists()


def test_cli_converts_with_tokenizer(checkpoints, tmp_path, capsys, tiny_tokenizer_dir):
    out = tmp_path / "vqa"
    code = main(
        ["convert", "bridgetower-original", str(checkpoints["vqa"]), str(out), "--tokenizer", tiny_tokenizer_dir]
    )
    assert code == 0, capsys.readouterr().err
    assert f"wrote {out.resolve()}" in capsys.readouterr().out
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor["max_text_length"] == 32  # the run's max_text_len
    assert (out / "tokenizer_config.json").is_file()


def test_tiny_manifest_scaling_keeps_every_family():
    shapes = tiny_shapes()
    assert {family(k) for k in shapes} == {family(k) for k in read_manifest()}
    assert shapes["vit_model.visual.positional_embedding"] == (17, HIDDEN)
    assert shapes["vqa_classifier.0.weight"] == (4 * HIDDEN, 2 * HIDDEN)


def test_unrecorded_head_counts_are_reported_as_assumptions(checkpoints, converted):
    with_config = json.loads((converted["vqa"] / "verification.json").read_text())["assumptions"]
    without = json.loads((converted["no_hparams"] / "verification.json").read_text())["assumptions"]
    assert len(with_config) == 1 and "text-tower attention heads" in with_config[0]
    assert any("cross-modal attention heads = hidden/64" in note for note in without)


def test_separate_layernorms_with_fusion_trained_itm_are_refused(tmp_path):
    """With vit_layernorm_shared=False the original scores ITM of itm_itc/irtr_itm_itc runs through `infer_fusion`
    (ln_separate per routed layer), not `infer` (ln_post) as towerzoo and transformers do: refuse, not mis-convert."""
    config = {**run_config("separate_ln"), "loss_names": {"mlm": 1, "itm_itc": 1}}
    path = save_lightning(tmp_path / "itm_itc.ckpt", lightning_checkpoint(original_state_dict("separate_ln"), config))
    with pytest.raises(ConversionError, match=r"vit_layernorm_shared=False with loss_names \['itm_itc'\]"):
        converter.run(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
