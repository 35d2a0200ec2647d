"""The original recipes as data, and the optimizer groups they train with: each parameter's learning-rate group and
weight decay as the original's `set_schedule` decides them, on towerzoo's names."""

import re
from pathlib import Path

import pytest
import torch
from testing_utils import tiny_bridgetower_config, tiny_managertower_config
from transformers import TrainingArguments

import towerzoo.models.bridgetower as bt
import towerzoo.models.managertower as mt
from towerzoo.training import TrainingError
from towerzoo.training.recipes import RECIPES, TASKS, default_recipe, get_recipe, optimizer_groups, parameter_group
from towerzoo.training.trainer import FinetuneOptions, RecipeTrainer, effective_settings

# (towerzoo name, original name, group, decayed?) — the original's decision from its own name
# fmt: off
BRIDGETOWER_CASES = [
    ("bridgetower.text_model.embeddings.word_embeddings.weight", "text_transformer.embeddings.word_embeddings.weight", "backbone", True),
    ("bridgetower.text_model.embeddings.layer_norm.weight", "text_transformer.embeddings.LayerNorm.weight", "backbone", False),
    ("bridgetower.text_model.layers.0.mlp.layer_norm.weight", "text_transformer.encoder.layer.0.output.LayerNorm.weight", "backbone", False),
    ("bridgetower.text_model.layers.0.self_attention.attn.q_proj.bias", "text_transformer.encoder.layer.0.attention.self.query.bias", "backbone", False),
    ("bridgetower.vision_model.layers.0.layer_norm1.weight", "vit_model.visual.transformer.resblocks.0.ln_1.weight", "backbone", True),
    ("bridgetower.vision_model.layers.0.layer_norm1.bias", "vit_model.visual.transformer.resblocks.0.ln_1.bias", "backbone", False),
    ("bridgetower.vision_model.post_layernorm.weight", "vit_model.visual.ln_post.weight", "backbone", True),
    ("bridgetower.vision_model.embeddings.class_embedding", "vit_model.visual.class_embedding", "backbone", True),
    ("bridgetower.token_type_embeddings.weight", "token_type_embeddings.weight", "backbone", True),
    ("bridgetower.cross_modal_text_transform.weight", "cross_modal_text_transform.weight", "cross_modal", True),
    ("bridgetower.cross_modal_image_layernorm.weight", "cross_modal_image_layernorm.weight", "cross_modal", False),
    ("bridgetower.cross_modal_text_link_tower.0.layer_norm.weight", "cross_modal_text_link_tower.0.LayerNorm.weight", "cross_modal", False),
    ("bridgetower.cross_modal_image_layers.1.cross_attention.layer_norm.weight", "cross_modal_image_layers.1.crossattention.output.LayerNorm.weight", "cross_modal", False),
    ("bridgetower.cross_modal_image_layers.1.mlp.fc1.weight", "cross_modal_image_layers.1.intermediate.dense.weight", "cross_modal", True),
    ("bridgetower.cross_modal_text_pooler.dense.weight", "cross_modal_text_pooler.dense.weight", "cross_modal", True),
    ("vqa_classifier.dense.weight", "vqa_classifier.0.weight", "head", True),
    ("vqa_classifier.layer_norm.weight", "vqa_classifier.1.weight", "head", True),
    ("vqa_classifier.layer_norm.bias", "vqa_classifier.1.bias", "head", False),
    ("nlvr2_classifier.out_proj.weight", "nlvr2_classifier.3.weight", "head", True),
    ("mlm_score.layer_norm.weight", "mlm_score.transform.LayerNorm.weight", "head", False),
    ("mlm_score.bias", "mlm_score.bias", "head", False),
    ("itm_score.weight", "itm_score.fc.weight", "head", True),
    ("itc_text_head.weight", "itc_text_head.fc.weight", "head", True),
    ("itc_cross_modal_head.weight", None, "head", True),  # transformers' port only: a head
    ("logit_scale", "temperature", "backbone", False),  # departure: no decay on the log-parametrised scale
]
MANAGERTOWER_CASES = [
    ("itc_text_head.weight", "cross_modal_itc_text_head.fc.weight", "cross_modal", True),
    ("itm_score.bias", "itm_score.fc.bias", "head", False),
    ("managertower.layer_embeddings_text.weight", "layer_embeddings_text.weight", "backbone", True),
    ("managertower.cross_modal_text_managers.1.expert_layer_norms.0.weight", "cross_modal_text_manager_tower.1.manager_layer.LayerNorm.0.weight", "cross_modal", True),
    ("managertower.cross_modal_text_managers.1.expert_layer_norms.0.bias", "cross_modal_text_manager_tower.1.manager_layer.LayerNorm.0.bias", "cross_modal", False),
    ("managertower.cross_modal_image_managers.1.other_layer_norm.weight", "cross_modal_image_manager_tower.1.manager_layer.extra_query_LayerNorm.weight", "cross_modal", False),
    ("managertower.cross_modal_image_managers.1.scores", "cross_modal_image_manager_tower.1.manager_layer.layer_scores", "cross_modal", True),
    ("managertower.cross_modal_image_managers.1.temperature", "cross_modal_image_manager_tower.1.manager_layer.softmax_temperature", "cross_modal", True),
    ("managertower.cross_modal_text_managers.2.controller.weight", "cross_modal_text_manager_tower.2.manager_layer.linear_controller.weight", "cross_modal", True),
]
# fmt: on

# the original's rule (meter_utils.set_schedule), applied to original names, to check the cases above against
ORIGINAL_NO_DECAY = ["bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight", "norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight"]  # fmt: skip


@pytest.mark.parametrize(
    ("architecture", "cases"), [("BridgeTower", BRIDGETOWER_CASES), ("ManagerTower", MANAGERTOWER_CASES)]
)
def test_each_parameter_lands_where_the_original_puts_it(architecture, cases):
    for name, original, group, decay in cases:
        assert parameter_group(name, architecture) == (group, decay), name
        if original is not None and original != "temperature":
            assert (not any(rule in original for rule in ORIGINAL_NO_DECAY)) == decay, original


def _groups_by_name(model, architecture):
    return {name: parameter_group(name, architecture) for name, _ in model.named_parameters()}


def test_every_parameter_of_the_heads_and_towers_has_a_group():
    config = tiny_bridgetower_config(pretraining_heads=["mlm", "itm", "itc"])
    groups = _groups_by_name(bt.BridgeTowerForPreTraining(config), "BridgeTower")
    heads = {n for n in groups if re.match(r"(mlm_score|itm_score|itc_)", n)}
    assert {n for n, (group, _) in groups.items() if group == "head"} == heads
    cross = {n for n, (group, _) in groups.items() if group == "cross_modal"}
    assert cross == {n for n in groups if "cross_modal" in n and n not in heads}
    backbone = {n for n, (group, _) in groups.items() if group == "backbone"}
    assert all(re.match(r"bridgetower\.(text_model|vision_model|token_type)|logit_scale", n) for n in backbone)

    managers = _groups_by_name(mt.ManagerTowerForPreTraining(tiny_managertower_config()), "ManagerTower")
    assert all(managers[n][0] == "cross_modal" for n in managers if "_managers." in n)
    assert {managers[n][0] for n in managers if n.startswith("itc_")} == {"cross_modal"}


def test_optimizer_groups_carry_the_multiplied_learning_rates(tmp_path):
    model = bt.BridgeTowerForVisualQuestionAnswering(tiny_bridgetower_config(num_labels=5))
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-5, weight_decay=0.05, report_to="none")
    trainer = RecipeTrainer(
        model=model, args=args, architecture="BridgeTower", lr_multipliers={"head": 50, "cross_modal": 5}
    )
    optimizer = trainer.create_optimizer()
    expected_lr = {"backbone": 1e-5, "cross_modal": 5e-5, "head": 5e-4}
    by_name = {group["name"]: group for group in optimizer.param_groups}
    assert set(by_name) == {f"{g}{d}" for g in expected_lr for d in ("", "_no_decay")}
    for name, group in by_name.items():
        assert group["lr"] == pytest.approx(expected_lr[name.removesuffix("_no_decay")])
        assert group["weight_decay"] == (0.0 if name.endswith("_no_decay") else 0.05)
        assert group["betas"] == (0.9, 0.999)  # the Trainer's optimizer class and arguments, the recipe's groups
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    head = {id(p) for g in optimizer.param_groups if g["name"].startswith("head") for p in g["params"]}
    assert head == {id(p) for p in model.vqa_classifier.parameters()}
    # the scheduler scales every group alike: after warm-up the ratios stay
    trainer.create_scheduler(num_training_steps=10)
    for _ in range(3):
        optimizer.step()
        trainer.lr_scheduler.step()
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs["head"] / lrs["backbone"] == pytest.approx(50)
    assert lrs["cross_modal_no_decay"] / lrs["backbone_no_decay"] == pytest.approx(5)


def test_recipes_are_the_scripts_values():
    assert set(TASKS) == {recipe.task for recipe in RECIPES.values()}
    vqa = RECIPES["bridgetower-vqav2"]
    assert (vqa.learning_rate, vqa.lr_mult_head, vqa.lr_mult_cross_modal, vqa.weight_decay) == (1e-5, 50, 5, 0.05)
    assert (vqa.warmup_ratio, vqa.num_train_epochs, vqa.total_batch_size, vqa.image_size) == (0.06, 10, 512, 576)
    assert (vqa.adam_beta2, vqa.lr_scheduler_type) == (0.98, "linear")
    assert RECIPES["managertower-vqav2"].learning_rate == 9e-6
    assert RECIPES["bridgetower-retrieval-coco"].max_text_length == 40
    for recipe in RECIPES.values():
        script = recipe.source.split()[-1]
        assert Path(script).suffix == ".sh" and recipe.task in TASKS


def test_default_recipe_by_architecture_and_dataset():
    assert default_recipe("retrieval", "BridgeTower", "coco").name == "bridgetower-retrieval-coco"
    assert default_recipe("retrieval", "BridgeTower", "flickr30k").name == "bridgetower-retrieval-flickr30k"
    assert default_recipe("retrieval", "ManagerTower", "coco").name == "managertower-retrieval-flickr30k"
    assert default_recipe("nlvr2", "ManagerTower").name == "managertower-nlvr2"
    with pytest.raises(TrainingError, match="no original vqav2 recipe for VidLA"):
        default_recipe("vqav2", "VidLA")
    with pytest.raises(TrainingError, match="is for vqav2, not nlvr2"):
        get_recipe("bridgetower-vqav2", "nlvr2")


def test_settings_take_the_recipe_then_the_overrides(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = RECIPES["bridgetower-vqav2"]
    options = FinetuneOptions(task="vqav2", output_dir=Path("x"), learning_rate=2e-5)
    settings = effective_settings(recipe, options, scratch=False)
    assert settings["learning_rate"] == 2e-5 and settings["lr_mult_head"] == 50
    assert settings["gradient_accumulation_steps"] == 16 and settings["total_batch_size"] == 512  # 16 × 2 × 16
    assert settings["image_size"] == 576
    assert effective_settings(recipe, options, scratch=True)["image_size"] is None
    options.gradient_accumulation_steps = 3
    assert effective_settings(recipe, options, scratch=False)["total_batch_size"] == 96
    # 504 // (4 × 2) = 63: the original's floor division (ManagerTower's 504 over 8 GPUs of 4 gives 15 steps, 480)
    settings = effective_settings(
        RECIPES["managertower-vqav2"], FinetuneOptions(task="vqav2", output_dir=Path("x")), False
    )
    assert settings["gradient_accumulation_steps"] == 63 and settings["total_batch_size"] == 504


def test_optimizer_state_is_all_trainable_parameters():
    model = bt.BridgeTowerForVisualQuestionAnswering(tiny_bridgetower_config(num_labels=3))
    model.vqa_classifier.out_proj.weight.requires_grad_(False)
    groups = optimizer_groups(model.named_parameters(), "BridgeTower", 1e-5, 0.01, {"head": 10})
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len(list(model.parameters())) - 1
    assert all(torch.is_tensor(p) for p in params)
