"""`towerzoo convert managertower-original`: tiny original-layout ManagerTower checkpoints (built from the base
checkpoint's key manifest, see tests/original_managertower_checkpoints.py) convert completely into folders whose
models reproduce the functional original forward pass, the functional original's managers follow the paper's
equations, and bad files fail cleanly without writing anything."""

import json
import math
import re

import pytest
import torch
from original_bridgetower_checkpoints import (
    HIDDEN,
    NUM_HEADS,
    family,
    read_manifest,
    write_edited,
)
from original_bridgetower_checkpoints import original_state_dict as bridgetower_state_dict
from original_bridgetower_checkpoints import run_config as bridgetower_run_config
from original_managertower_checkpoints import (
    MANAGED,
    MANIFEST_NAME,
    TASKS,
    original_state_dict,
    run_config,
    tiny_shapes,
    write_task_checkpoint,
)

import towerzoo.models.managertower as mt
from towerzoo.cli import main
from towerzoo.conversions import bridgetower_original, managertower_original
from towerzoo.conversions.bridgetower_folder import build_model, check_tolerance, random_inputs
from towerzoo.conversions.common import ConversionError
from towerzoo.conversions.managertower_original_reference import manager, reference_outputs

TOLERANCE = 1e-5

# task → (towerzoo class, head outputs verification.json must compare)
EXPECTED = {
    "pretrain": ("ManagerTowerForPreTraining", {"mlm_logits", "itm_logits", "itc_logits_per_text"}),
    "vqa": ("ManagerTowerForVisualQuestionAnswering", {"vqa_logits"}),
    "snli": ("ManagerTowerForVisualEntailment", {"snli_logits"}),
    "nlvr2": ("ManagerTowerForNLVR2", {"nlvr2_logits", "pooler_output_image2"}),
    "irtr": ("ManagerTowerForImageAndTextRetrieval", {"irtr_score"}),
    "no_hparams": ("ManagerTowerForPreTraining", {"mlm_logits", "itm_logits", "itc_image_embeds"}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("managertower_ckpts")
    return {task: write_task_checkpoint(folder, task) for task in TASKS}


@pytest.fixture(scope="module")
def converted(checkpoints, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("managertower_converted")
    return {task: managertower_original.run(path, out / task) for task, path in checkpoints.items()}


# --------------------------------------------------------------------------------------------------------------------
# The reference's managers, computed by hand from the equations
# --------------------------------------------------------------------------------------------------------------------


def _layer_norm(x: list[float], weight: list[float], bias: list[float], eps: float = 1e-5) -> list[float]:
    mean = sum(x) / len(x)
    var = sum((v - mean) ** 2 for v in x) / len(x)
    return [(v - mean) / math.sqrt(var + eps) * w + b for v, w, b in zip(x, weight, bias)]


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v - max(values)) for v in values]
    return [e / sum(exps) for e in exps]


def _affine(weight: list[list[float]], bias: list[float], x: list[float]) -> list[float]:
    return [sum(w * v for w, v in zip(row, x)) + b for row, b in zip(weight, bias)]


def _by_hand(sd: dict, experts, previous, other) -> list[list[float]]:
    """out[l][d] = sum_j softmax_j(s_j / T) · LN_j(expert_j[l])[d] + c · LN_N(previous[l])[d], with SAUE's learned
    scores s and c, or AAUE's per-token s = controller(cat(attention-pooled LN(other), LN_N(previous))) and its
    learned c; plain Python floats, one token and channel at a time."""
    p = {k.removeprefix("m."): v.tolist() for k, v in sd.items()}
    n, hidden = len(experts), len(experts[0][0])

    def norm(x: list[float], name: str) -> list[float]:
        return _layer_norm(x, p[f"{name}.weight"], p[f"{name}.bias"])

    def per_channel(score: list[float]) -> list[float]:  # width 1 (scalar) or hidden (vector)
        return score * (hidden // len(score))

    out = []
    for token in range(len(experts[0])):
        normed = [norm(experts[j][token], f"LayerNorm.{j}") for j in range(n)]
        if previous is not None:
            normed.append(norm(previous[token], f"LayerNorm.{n}"))
        if "linear_controller.weight" in p:
            others = [norm(o, "extra_query_LayerNorm") for o in other]
            query = _affine(p["fusion_attention.q_proj.weight"], p["fusion_attention.q_proj.bias"], normed[n])
            keys = [_affine(p["fusion_attention.k_proj.weight"], p["fusion_attention.k_proj.bias"], o) for o in others]
            attention = _softmax([sum(q * k for q, k in zip(query, key)) / math.sqrt(hidden) for key in keys])
            pooled = [sum(a * o[d] for a, o in zip(attention, others)) for d in range(hidden)]
            generated = _affine(p["linear_controller.weight"], p["linear_controller.bias"], pooled + normed[n])
            scores = [[g] * hidden for g in generated] + [per_channel(p["layer_scores_cross"][0][0][0])]
        else:
            scores = [per_channel(score[0]) for score in p["layer_scores"][0]]
        row = []
        for d in range(hidden):
            weights = _softmax([scores[j][d] / p["softmax_temperature"][0] for j in range(n)])
            if previous is not None:
                weights.append(scores[n][d])  # the previous output's raw score
            row.append(sum(w * normed[j][d] for j, w in enumerate(weights)))
        out.append(row)
    return out


@pytest.mark.parametrize("weight_type", ["scalar", "vector"])
@pytest.mark.parametrize("kind", ["SAUE first layer", "SAUE", "AAUE"])
def test_reference_manager_follows_the_equations(kind, weight_type):
    generator = torch.Generator().manual_seed(3)
    n, hidden, width = 2, 3, 1 if weight_type == "scalar" else 3
    previous_too = kind != "SAUE first layer"

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    sd = {"m.softmax_temperature": torch.tensor([0.7]), "m.softmax_temperature_cross": torch.tensor([3.0])}
    for j in range(n + previous_too):
        sd[f"m.LayerNorm.{j}.weight"], sd[f"m.LayerNorm.{j}.bias"] = 1 + 0.2 * rand(hidden), 0.2 * rand(hidden)
    if kind == "AAUE":
        sd.update(
            {
                "m.layer_scores_cross": rand(1, 1, 1, width),
                "m.linear_controller.weight": rand(n, 2 * hidden),
                "m.linear_controller.bias": rand(n),
                "m.fusion_attention.q_proj.weight": rand(hidden, hidden),
                "m.fusion_attention.q_proj.bias": rand(hidden),
                "m.fusion_attention.k_proj.weight": rand(hidden, hidden),
                "m.fusion_attention.k_proj.bias": rand(hidden),
                "m.extra_query_LayerNorm.weight": 1 + 0.2 * rand(hidden),
                "m.extra_query_LayerNorm.bias": 0.2 * rand(hidden),
            }
        )
    else:
        sd["m.layer_scores"] = rand(1, n + previous_too, 1, width)
    experts, previous, other = rand(1, n, 2, hidden), rand(1, 2, hidden), rand(1, 4, hidden)
    got = manager(sd, "m.", experts, previous if previous_too else None, other)
    expected = _by_hand(sd, experts[0].tolist(), previous[0].tolist() if previous_too else None, other[0].tolist())
    assert torch.allclose(got[0], torch.tensor(expected), atol=1e-6, rtol=0), (got, expected)


# --------------------------------------------------------------------------------------------------------------------
# Successful conversions
# --------------------------------------------------------------------------------------------------------------------


def test_tiny_checkpoints_hold_every_manifest_family():
    manifest = {family(k) for k in read_manifest(MANIFEST_NAME)}
    assert {family(k) for k in tiny_shapes()} == manifest
    first_scores = tiny_shapes()["cross_modal_text_manager_tower.0.manager_layer.layer_scores"]
    assert first_scores == (1, MANAGED["text"], 1, HIDDEN)
    saue = tiny_shapes("SAUE", "scalar")
    assert saue["cross_modal_image_manager_tower.1.manager_layer.layer_scores"] == (1, MANAGED["image"] + 1, 1, 1)
    assert not any("linear_controller" in k for k in saue)


@pytest.mark.parametrize("task", list(TASKS))
def test_conversion_matches_original(task, converted):
    class_name, outputs = EXPECTED[task]
    config = json.loads((converted[task] / "config.json").read_text())
    assert config["architectures"] == [class_name] and config["model_type"] == "towerzoo_managertower"
    record = json.loads((converted[task] / "verification.json").read_text())
    assert record["source_format"] == "managertower-original"
    assert outputs | {"text_features", "image_features", "pooler_output"} <= set(record["max_abs_diff_per_output"])
    assert record["max_abs_diff"] <= TOLERANCE, record["max_abs_diff_per_output"]
    reason = record["dropped_keys"]["cross_modal_text_manager_tower.0.manager_layer.softmax_temperature_cross"]
    assert "never read by the original forward" in reason


@torch.no_grad()
def _outputs(model, inputs: dict, second: torch.Tensor | None) -> dict:
    """Every output of a loaded model, under the reference's names."""
    base = model.base_model(**inputs)
    found = {"text_feats": base.text_features, "image_feats": base.image_features, "cls_feats": base.pooler_output}
    if second is not None:
        pair = torch.stack([inputs["pixel_values"], second], dim=1)
        return found | {"nlvr2_logits": model(inputs["input_ids"], inputs["attention_mask"], pixel_values=pair).logits}
    out = model(**inputs)
    contrastive = getattr(out, "contrastive", None)
    heads = {
        "mlm_logits": getattr(out, "mlm_logits", None),
        "itm_logits": getattr(out, "itm_logits", None),
        "itc_text_embeds": contrastive.text_embeds if contrastive else None,
        "itc_image_embeds": contrastive.image_embeds if contrastive else None,
        "itc_logits_per_text": contrastive.logits_per_text if contrastive else None,
    }
    if not isinstance(model, mt.ManagerTowerForPreTraining):
        task = type(model).__name__.partition("For")[2]
        name = {"ImageAndTextRetrieval": "itm_logits", "VisualQuestionAnswering": "vqa_logits"}.get(
            task, "snli_logits"
        )
        heads = {name: out.logits}
    return found | {k: v for k, v in heads.items() if v is not None}


@pytest.mark.parametrize("task", list(TASKS))
def test_saved_folder_reproduces_original(task, checkpoints, converted):
    """Reload the written folder (eager and sdpa); every output equals the functional original on new inputs."""
    source = bridgetower_original.read_checkpoint(checkpoints[task], managertower_original.MANAGERTOWER.check_keys)
    model_class = getattr(mt, EXPECTED[task][0])
    config = mt.ManagerTowerConfig.from_pretrained(converted[task])
    inputs = random_inputs(config, seed=5)
    second = random_inputs(config, seed=6)["pixel_values"] if task == "nlvr2" else None
    heads = NUM_HEADS if run_config(task) else HIDDEN // 64
    expected = reference_outputs(
        source.state_dict, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], heads, second
    )
    if task == "irtr":  # the rank head folded into itm_score: logit 1 - logit 0 is the original's score
        expected["itm_logits"] = torch.stack([torch.zeros_like(expected["irtr_score"]), expected["irtr_score"]], -1)
    for backend in ("eager", "sdpa"):
        model, info = model_class.from_pretrained(
            converted[task], attn_implementation=backend, output_loading_info=True
        )
        assert not any(info.values()), info
        got = _outputs(model.eval(), inputs, second)
        assert len(got) >= 4
        for name, value in got.items():
            diff = float((value - expected[name]).abs().max())
            assert diff <= TOLERANCE, (backend, name, diff)


def test_config_follows_the_original(converted):
    def config(task):
        return mt.ManagerTowerConfig.from_pretrained(converted[task])

    pretrain = config("pretrain")
    assert (pretrain.manager_type, pretrain.manager_weight_type) == ("AAUE", "vector")
    assert (pretrain.managed_layers_text, pretrain.managed_layers_image) == (MANAGED["text"], MANAGED["image"])
    assert (pretrain.text_config.num_hidden_layers, pretrain.vision_config.num_hidden_layers) == (3, 4)
    assert pretrain.layer_norm_eps == 1e-12 and pretrain.manager_layer_norm_eps == 1e-5
    assert not pretrain.manager_mask_query_padding
    assert pretrain.contrastive_image_features == "uni_modal" and not pretrain.contrastive_cross_modal_head
    assert pretrain.pretraining_heads == ["mlm", "itm", "itc"] and pretrain.num_hidden_layers == 2
    assert math.isclose(pretrain.logit_scale_init_value, math.log(1 / 0.5), rel_tol=1e-6)  # 0.6 clamped to 0.5
    snli = config("snli")
    assert (snli.manager_type, snli.manager_weight_type) == ("SAUE", "scalar")
    assert snli.vision_config.share_layernorm  # its ln_separate norms are never read, hence dropped
    assert snli.id2label == {0: "contradiction", 1: "neutral", 2: "entailment"}
    assert (config("irtr").manager_type, config("irtr").manager_weight_type) == ("SAUE", "vector")
    nlvr2 = config("nlvr2")
    assert nlvr2.num_token_types == 3 and nlvr2.manager_weight_type == "scalar" and nlvr2.task_head_layers == 2
    assert config("no_hparams").num_attention_heads == HIDDEN // 64 and config("vqa").num_attention_heads == NUM_HEADS


def test_every_key_is_renamed_or_dropped_and_every_manifest_family_lands(checkpoints):
    seen, dropped = set(), {}
    for task, path in checkpoints.items():
        conversion = managertower_original.convert(path)
        result, source = conversion.converted, set(conversion.checkpoint.state_dict)
        assert set(result.renamed) | set(result.dropped) == source, task
        assert not set(result.renamed) & set(result.dropped), task
        assert {new for targets in result.renamed.values() for new in targets} == set(result.state_dict), task
        assert set(result.state_dict) == set(conversion.model.state_dict()), task
        seen |= {family(k) for k in source}
        dropped.update(result.dropped)
    assert {family(k) for k in read_manifest(MANIFEST_NAME)} <= seen
    allowed = (
        r"^(text_transformer\.(pooler\.|embeddings\.position_ids)|vit_model\.(positional_embedding|ln_final\.|"
        r"visual\.ln_separate\.)|itm_score\.fc\.|temperature$|.*manager_layer\.softmax_temperature_cross$)"
    )
    assert all(re.match(allowed, key) and reason for key, reason in dropped.items()), sorted(dropped)


def test_irtr_rank_output_is_folded_into_itm(checkpoints, converted):
    source = bridgetower_original.read_checkpoint(checkpoints["irtr"], managertower_original.MANAGERTOWER.check_keys)
    model = mt.ManagerTowerForImageAndTextRetrieval.from_pretrained(converted["irtr"])
    assert torch.equal(model.itm_score.weight[1], source.state_dict["rank_output.weight"][0])
    assert torch.equal(model.itm_score.weight[0], torch.zeros(2 * HIDDEN))


def test_the_reference_catches_a_model_that_departs_from_the_original(checkpoints):
    """Masking the padded text out of the adaptive image managers' attention is a real difference (the original
    attends to padding): the check sees it."""
    conversion = managertower_original.convert(checkpoints["vqa"])
    conversion.config.manager_mask_query_padding = True
    model = build_model(conversion.config, conversion.converted.state_dict, "test")
    diffs = bridgetower_original.verify_against_original(
        model, conversion.checkpoint.state_dict, conversion.layout, False, reference=reference_outputs
    )
    assert diffs["vqa_logits"] > 1e-3
    with pytest.raises(ConversionError, match="differs from the original ManagerTower forward pass"):
        check_tolerance(diffs, 1e-4, managertower_original.REFERENCE)


def test_cli_converts_with_tokenizer(checkpoints, tmp_path, capsys, tiny_tokenizer_dir):
    out = tmp_path / "snli"
    code = main(
        ["convert", "managertower-original", str(checkpoints["snli"]), str(out), "--tokenizer", tiny_tokenizer_dir]
    )
    assert code == 0, capsys.readouterr().err
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor["processor_class"] == "ManagerTowerProcessor" and processor["max_text_length"] == 32
    assert json.loads((out / "verification.json").read_text())["max_abs_diff"] <= TOLERANCE


# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------


def _edited(task: str, edit_state=None, **config_updates):
    """A bad-file maker: `task`'s tiny checkpoint with its state dict edited and run-config entries replaced."""

    def make(tmp_path, checkpoints):
        state_dict, config = original_state_dict(task), run_config(task)
        return write_edited(tmp_path / "edited.ckpt", state_dict, config, edit_state, config_updates)

    return make


def _first_third(tmp_path, checkpoints):
    (tmp_path / "cut.ckpt").write_bytes(checkpoints["vqa"].read_bytes()[: checkpoints["vqa"].stat().st_size // 3])
    return tmp_path / "cut.ckpt"


def _bridgetower(tmp_path, checkpoints):
    return write_edited(tmp_path / "bridgetower.ckpt", bridgetower_state_dict("vqa"), bridgetower_run_config("vqa"))


AAUE_LAYER_1 = "cross_modal_text_manager_tower.1.manager_layer."
BAD_FILES = {
    "truncated": (_first_third, r"cannot read .*corrupt, truncated.*Re-download"),
    "bridgetower_checkpoint": (
        _bridgetower,
        r"looks like an original BridgeTower.*`towerzoo convert bridgetower-original`",
    ),
    "no_managers": (
        _edited("vqa", lambda sd: [sd.pop(k) for k in list(sd) if "_manager_tower." in k]),
        r"no ManagerTower managers",
    ),
    "missing_key": (
        _edited("vqa", lambda sd: sd.pop(f"{AAUE_LAYER_1}fusion_attention.q_proj.weight")),
        r"missing keys \(1\): managertower\.cross_modal_text_managers\.1\.query_proj\.weight.*checkpoint is complete",
    ),
    "missing_scores": (
        _edited("vqa", lambda sd: sd.pop("cross_modal_image_manager_tower.0.manager_layer.layer_scores")),
        r"missing keys \(1\): managertower\.cross_modal_image_managers\.0\.scores",
    ),
    "unexpected_key": (
        _edited("vqa", lambda sd: sd.update({f"{AAUE_LAYER_1}gate.weight": torch.zeros(2)})),
        r"1 key\(s\) .*belong to no ManagerTower module.*manager_layer\.gate\.weight.*Remove those keys",
    ),
    "manager_type_contradicts_keys": (
        _edited("vqa", manager_type="SAUE"),
        r"manager_type='SAUE' but the checkpoint says 'AAUE' \(the managers after the first have linear_controller.*"
        r"config_overrides",
    ),
    "managed_layers_contradict_norms": (
        _edited("vqa", managed_layers_image=4),
        r"managed_layers_image=4 but the checkpoint says 3",
    ),
    "weight_type_contradicts_scores": (
        _edited("snli", manager_weight_type="vector"),
        r"manager_weight_type='vector' but the checkpoint says 'scalar' \(the managers' scores end in width 1\)",
    ),
    "bridgetower_run_config": (
        _edited("vqa", model_type="BT"),
        r"model_type='BT': `managertower-original` converts ManagerTower \('MT'\) checkpoints only; convert it with "
        r"`towerzoo convert bridgetower-original`",
    ),
    "bert_text_tower": (
        _edited("vqa", tokenizer="bert-base-uncased"),
        r"tokenizer='bert-base-uncased'",
    ),
    "mixed_manager_types": (
        _edited(
            "vqa", lambda sd: [sd.pop(k) for k in list(sd) if k.startswith(AAUE_LAYER_1) and "LayerNorm" not in k]
        ),
        r"mixes static \(SAUE\) and adaptive \(AAUE\) managers",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_fails_cleanly(case, tmp_path, checkpoints):
    make, pattern = BAD_FILES[case]
    source = make(tmp_path, checkpoints)
    with pytest.raises(ConversionError) as error:
        managertower_original.run(source, tmp_path / "out")
    assert re.search(pattern, str(error.value), re.DOTALL), str(error.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_bridgetower_converter_points_to_this_one(checkpoints, tmp_path):
    with pytest.raises(ConversionError, match=r"looks like a ManagerTower.*`towerzoo convert managertower-original`"):
        bridgetower_original.run(checkpoints["vqa"], tmp_path / "out")
