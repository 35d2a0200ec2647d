"""Fidelity against transformers' built-in BridgeTower: same weights, same inputs, outputs equal to 1e-5."""

import json

import pytest
import torch
import transformers
from testing_utils import padded_text_batch, random_pixels, transformers_config

import towerzoo.models.bridgetower as bt
from towerzoo.conversions.bridgetower_keys import to_towerzoo
from towerzoo.conversions.bridgetower_transformers import config_from_transformers
from towerzoo.conversions.bridgetower_transformers import run as convert_transformers

ATOL = 1e-5
OPTIONS = {
    "default": ({}, {}),
    "separate_layernorms": ({}, {"share_layernorm": False}),
    "scaled_add": ({"link_tower_type": "scaled_add"}, {}),
    "interpolate": ({"link_tower_type": "interpolate"}, {}),
    "per_layer_transforms": ({"share_cross_modal_transformer_layers": False}, {}),
}
HEADS = {
    "BridgeTowerModel": ("text_features", "image_features", "pooler_output"),
    "BridgeTowerForMaskedLM": ("logits",),
    "BridgeTowerForImageAndTextRetrieval": ("logits",),
    "BridgeTowerForContrastiveLearning": ("text_embeds", "image_embeds", "cross_embeds"),
}


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter off its initial value (unit LayerNorms, zero biases, 1.0/0.5 link scalars would hide
    mistakes in which parameter goes where)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def towerzoo_twin(reference: torch.nn.Module, class_name: str) -> torch.nn.Module:
    source = {k.removeprefix("bridgetower."): v for k, v in reference.state_dict().items()}
    config = config_from_transformers(reference.config.to_dict())
    state_dict, dropped = to_towerzoo(source, config.task_head_layers)
    if class_name == "BridgeTowerModel":
        state_dict = {k.removeprefix("bridgetower."): v for k, v in state_dict.items()}
    model = getattr(bt, class_name)(config)
    model.load_state_dict(state_dict, strict=True)
    assert set(dropped) <= {"text_model.pooler.dense.weight", "text_model.pooler.dense.bias"}
    return model.eval()


def compare(reference, model, class_name: str, backends=("eager", "sdpa", "flex_attention")) -> None:
    config = model.config
    input_ids, attention_mask = padded_text_batch(config, 3)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": random_pixels(config, 3)}
    with torch.no_grad():
        expected = reference(**inputs)
        for backend in backends:
            model.set_attn_implementation(backend)
            got = model(**inputs)
            for name in HEADS[class_name]:
                diff = (getattr(expected, name) - getattr(got, name)).abs().max().item()
                assert diff <= ATOL, f"{class_name} {name} ({backend}) differs by {diff:.3g}"


@pytest.mark.parametrize("class_name", list(HEADS))
@pytest.mark.parametrize("option", list(OPTIONS))
def test_matches_transformers(option, class_name):
    if option == "per_layer_transforms" and class_name == "BridgeTowerForContrastiveLearning":
        pytest.skip("transformers' contrastive head calls the per-layer ModuleList as a module and crashes")
    top, vision = OPTIONS[option]
    torch.manual_seed(0)
    reference = perturbed(getattr(transformers, class_name)(transformers_config(vision=vision, **top)))
    compare(reference, towerzoo_twin(reference, class_name), class_name)


def test_shared_link_towers_match_transformers_with_equal_link_weights():
    """transformers' `share_link_tower_layers=True` crashes in its forward (it indexes a single module), so the
    reference is its per-layer version with every link tower holding the same weights — what sharing means."""
    torch.manual_seed(0)
    hf_config = transformers_config(link_tower_type="scaled_add")
    hf_config.num_hidden_layers = 3
    hf_config.text_config.num_hidden_layers = hf_config.vision_config.num_hidden_layers = 3
    reference = perturbed(transformers.BridgeTowerModel(hf_config))
    with torch.no_grad():
        for towers in (reference.cross_modal_text_link_tower, reference.cross_modal_image_link_tower):
            for tower in towers[1:]:
                tower.load_state_dict(towers[0].state_dict())
    source = {k: v for k, v in reference.state_dict().items() if "_link_tower." not in k or "_link_tower.0." in k}
    source = {k.replace("_link_tower.0.", "_link_tower."): v for k, v in source.items()}
    shared_config = hf_config.to_dict() | {"share_link_tower_layers": True}
    config = config_from_transformers(shared_config)
    state_dict, _ = to_towerzoo(source, config.task_head_layers)
    model = bt.BridgeTowerModel(config)
    model.load_state_dict({k.removeprefix("bridgetower."): v for k, v in state_dict.items()}, strict=True)
    assert not isinstance(model.cross_modal_text_link_tower, torch.nn.ModuleList)
    compare(reference, model.eval(), "BridgeTowerModel")


def test_converter_writes_a_verified_folder(tmp_path, tiny_tokenizer_dir):
    torch.manual_seed(0)
    reference = perturbed(transformers.BridgeTowerForMaskedLM(transformers_config()))
    reference.save_pretrained(tmp_path / "hf")
    folder = convert_transformers(tmp_path / "hf", tmp_path / "out", tokenizer=tiny_tokenizer_dir)
    verification = json.loads((folder / "verification.json").read_text())
    assert verification["max_abs_diff"] <= ATOL
    assert {"mlm_logits", "pooler_output"} <= verification["max_abs_diff_per_output"].keys()
    assert set(verification["dropped_keys"]) == {"text_model.pooler.dense.weight", "text_model.pooler.dense.bias"}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForMaskedLM"] == "modeling_bridgetower.BridgeTowerForMaskedLM"
    assert auto_map["AutoModel"] == "modeling_bridgetower.BridgeTowerModel"
    model = bt.BridgeTowerForMaskedLM.from_pretrained(folder).eval()
    compare(reference, model, "BridgeTowerForMaskedLM", backends=("sdpa",))
    assert (folder / "processor_config.json").is_file() and (folder / "tokenizer.json").is_file()


def test_cli_shards_large_weights_and_the_shards_load(tmp_path):
    from towerzoo.cli import main

    torch.manual_seed(0)
    reference = perturbed(transformers.BridgeTowerModel(transformers_config()))
    reference.save_pretrained(tmp_path / "hf")
    out = tmp_path / "out"
    assert (
        main(["convert", "bridgetower-transformers", str(tmp_path / "hf"), str(out), "--max-shard-size", "300KB"]) == 0
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((out / shard).is_file() for shard in shards)
    assert not (out / "model.safetensors").exists()
    compare(reference, bt.BridgeTowerModel.from_pretrained(out).eval(), "BridgeTowerModel", backends=("sdpa",))
