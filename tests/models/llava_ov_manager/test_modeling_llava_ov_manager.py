"""LLaVA-OV-Manager: the common battery, equality with transformers' LLaVA-OneVision with the managers at zero (logits on
every CPU backend, greedy and beam generation), the manager equation against a hand computation, AnyRes packing of the
experts, the prefill-only managers with and without the cache, and `towerzoo convert llava-ov-manager-from-llava-ov`."""

import json
import textwrap

import pytest
import torch
import transformers
from common_model_tester import CommonModelTests
from testing_utils import run_without_towerzoo

from towerzoo.cli import main as towerzoo_main
from towerzoo.models.llava_ov_manager import (
    AUTO_CLASSES,
    LlavaOnevisionManagerConfig,
    LlavaOnevisionManagerForConditionalGeneration,
)

BACKENDS = ("eager", "sdpa", "flex_attention")
IMAGE_TOKEN = 99
BASE = {
    "text_config": {
        "model_type": "qwen2",
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 37,
        "vocab_size": 100,
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "num_hidden_layers": 5,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "image_size": 28,
        "patch_size": 14,
    },
    "image_token_index": IMAGE_TOKEN,
    "image_grid_pinpoints": [[28, 28], [28, 56], [56, 28]],
}
MANAGERS = {"manager_vision_layers": [2, 3, 4], "manager_llm_layers": [0, 2]}
IMAGE_SIZES = torch.tensor([[30, 50], [40, 20]])  # one wide (2 tiles + base), one tall


def tiny_config(**overrides) -> LlavaOnevisionManagerConfig:
    return LlavaOnevisionManagerConfig(**BASE, **{**MANAGERS, **overrides})


def reference_for(model) -> transformers.LlavaOnevisionForConditionalGeneration:
    reference = transformers.LlavaOnevisionForConditionalGeneration(transformers.LlavaOnevisionConfig(**BASE)).eval()
    result = reference.load_state_dict(model.state_dict(), strict=False)
    assert not result.missing_keys and all("manager" in key for key in result.unexpected_keys)
    return reference


def prompt_batch(model, seed: int = 0, padding_side: str = "left") -> dict:
    """Two prompts with one image each, in the processor's layout, padded on `padding_side` (left for generation,
    right as in training)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(2, 3, 3, 28, 28, generator=generator)
    counts = [f.shape[0] for f in model.model.get_image_features(pixel_values, IMAGE_SIZES).pooler_output]
    rows, length = [], max(counts) + 6
    for count, extra in zip(counts, (3, 5)):
        words = torch.randint(1, 90, (extra,), generator=generator).tolist()
        row = words[:2] + [IMAGE_TOKEN] * count + words[2:]
        padding = [0] * (length - len(row))
        rows.append(padding + row if padding_side == "left" else row + padding)
    input_ids = torch.tensor(rows)
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != 0).long(),  # 0 pads (the words are 1 … 89)
        "pixel_values": pixel_values,
        "image_sizes": IMAGE_SIZES,
    }


def experts_of(outputs) -> torch.Tensor:
    """(image tokens, U, D) from the image outputs' `deepstack_features` ([layer][image] tensors)."""
    return torch.stack([torch.cat(images) for images in outputs["deepstack_features"]], dim=1)


def open_managers(model, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for manager in model.model.managers.values():
            manager.scores.normal_()


class TestLlavaOvManager(CommonModelTests):
    model_classes = (LlavaOnevisionManagerForConditionalGeneration,)
    auto_classes = AUTO_CLASSES
    base_class_name = "LlavaOnevisionManagerModel"
    expected_code_files = ("configuration_llava_ov_manager.py", "manager.py", "modeling_llava_ov_manager.py")

    def make_model(self, model_class, seed: int = 0):
        model = super().make_model(model_class, seed)
        open_managers(model, seed)
        return model

    def get_config(self):
        return tiny_config()

    loss_uses_num_items_in_batch = True  # transformers' LLaVA-OneVision loss

    def prepare_inputs(self, model_class, config):
        # right padding: the training layout, where every position (padding included) attends to real tokens
        torch.manual_seed(0)
        model = LlavaOnevisionManagerForConditionalGeneration(config).eval()
        return {**prompt_batch(model, padding_side="right"), "use_cache": False}

    def prepare_labels(self, model_class, config, inputs):
        ignored = (inputs["input_ids"] == IMAGE_TOKEN) | (inputs["attention_mask"] == 0)
        return {"labels": inputs["input_ids"].masked_fill(ignored, -100)}

    def output_tensors(self, model_class, outputs):
        return {"logits": outputs.logits}

    def expected_shapes(self, model_class, config, inputs):
        return {"logits": (*inputs["input_ids"].shape, 100)}


# --------------------------------------------------------------------------------------------------------------------
# Managers at zero = transformers' LLaVA-OneVision
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_managers_equal_llava_onevision(backend):
    torch.manual_seed(0)
    model = LlavaOnevisionManagerForConditionalGeneration(tiny_config()).eval()
    reference = reference_for(model)
    inputs = prompt_batch(model)
    with torch.no_grad():
        model.set_attn_implementation(backend)
        reference.set_attn_implementation(backend)
        assert torch.equal(model(**inputs).logits, reference(**inputs).logits)


@pytest.mark.parametrize("options", [{"do_sample": False}, {"do_sample": False, "num_beams": 3}])
def test_zero_managers_generate_as_llava_onevision(options):
    torch.manual_seed(0)
    model = LlavaOnevisionManagerForConditionalGeneration(tiny_config()).eval()
    reference = reference_for(model)
    inputs = prompt_batch(model)
    with torch.no_grad():
        expected = reference.generate(**inputs, max_new_tokens=6, **options)
        assert torch.equal(model.generate(**inputs, max_new_tokens=6, **options), expected)


def test_manager_type_none_has_no_managers_and_is_llava_onevision():
    torch.manual_seed(0)
    model = LlavaOnevisionManagerForConditionalGeneration(tiny_config(manager_type="none")).eval()
    assert not any("manager" in name for name, _ in model.named_parameters())
    inputs = prompt_batch(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference_for(model)(**inputs).logits)


# --------------------------------------------------------------------------------------------------------------------
# The managers
# --------------------------------------------------------------------------------------------------------------------


def test_experts_are_projected_layers_packed_as_the_image_features():
    """Expert u of every image token = the projector on vision layer u + e_u, packed (AnyRes tiles, newline) like
    transformers packs the main features; the main features are the layer-(-1) expert without e_u."""
    torch.manual_seed(0)
    model = LlavaOnevisionManagerForConditionalGeneration(tiny_config(manager_vision_layers=[2, 5])).eval()
    inner = model.model
    pixel_values = prompt_batch(model)["pixel_values"]
    with torch.no_grad():
        outputs = inner.get_image_features(pixel_values, IMAGE_SIZES)
        experts = experts_of(outputs)
        main = torch.cat(outputs.pooler_output)
        assert experts.shape == (main.shape[0], 2, 32)
        with torch.no_grad():
            inner.manager_layer_embedding.zero_()
        without_embedding = experts_of(inner.get_image_features(pixel_values, IMAGE_SIZES))
    assert torch.equal(without_embedding[:, 1], main)  # layer 5 is the last hidden state, the main feature layer
    newline = (main == inner.image_newline).all(dim=-1)
    assert newline.any()  # newline tokens: the plain newline in every expert (no layer embedding)
    assert torch.equal(experts[newline][:, 0], inner.image_newline.expand(int(newline.sum()), -1))
    assert not torch.equal(experts[~newline][:, 1], main[~newline])  # the layer embedding is added elsewhere


def test_manager_adds_the_weighted_experts_at_the_image_tokens_before_its_layer():
    """Hand computation: the input of language-model layer 2 (after its manager) is the zero-manager model's plus
    Σ_u w_u ⊙ E_u at the image tokens, nothing elsewhere; layer 0's manager drops the last expert."""
    torch.manual_seed(0)
    model = LlavaOnevisionManagerForConditionalGeneration(tiny_config(manager_llm_layers=[2])).eval()
    inputs = prompt_batch(model)
    seen = []
    norm = model.model.language_model.layers[2].input_layernorm  # runs after the layer's pre-hooks
    norm.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    with torch.no_grad():
        model(**inputs)  # the manager at zero
        open_managers(model)
        model(**inputs)
        experts = experts_of(model.model.get_image_features(inputs["pixel_values"], IMAGE_SIZES))
    scores = model.model.managers["2"].scores[0, :, 0]  # (U, D)
    expected = seen[0].clone()
    mask = inputs["input_ids"] == IMAGE_TOKEN
    expected[mask] += (scores[None] * experts).sum(dim=1)
    assert torch.allclose(seen[1], expected, atol=1e-6)
    assert torch.equal(seen[1][~mask], seen[0][~mask])
    assert model.model.managers["2"].num_experts == 3
    assert LlavaOnevisionManagerForConditionalGeneration(tiny_config()).model.managers["0"].num_experts == 2


def test_managers_run_in_prefill_only_and_the_cache_agrees():
    torch.manual_seed(0)
    model = LlavaOnevisionManagerForConditionalGeneration(tiny_config()).eval()
    open_managers(model)
    inputs = prompt_batch(model)
    calls = []
    model.model.managers["2"].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert len(calls) == 1  # the prefill only
        uncached = model.generate(**inputs, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    reference = reference_for(model)
    with torch.no_grad():
        assert not torch.equal(model(**inputs).logits, reference(**inputs).logits)


def test_jitter_only_in_training():
    torch.manual_seed(0)
    model = LlavaOnevisionManagerForConditionalGeneration(tiny_config()).eval()
    open_managers(model)
    inputs = prompt_batch(model)
    with torch.no_grad():
        first, second = model(**inputs).logits, model(**inputs).logits
        assert torch.equal(first, second)
        model.train()
        torch.manual_seed(1)
        jittered = model(**inputs).logits
    assert 0 < (jittered - first).abs().max() < 0.5


def test_main_grid_restricts_the_managers_to_the_base_view():
    torch.manual_seed(0)
    model = LlavaOnevisionManagerForConditionalGeneration(tiny_config(manager_grid="main")).eval()
    open_managers(model)
    inputs = prompt_batch(model)
    experts = experts_of(model.model.get_image_features(inputs["pixel_values"], IMAGE_SIZES))
    assert experts.shape[0] == 2 * 4  # 2x2 patches of the base view per image
    with torch.no_grad():
        assert model(**inputs).logits.isfinite().all()


def test_bad_configs_and_prompts():
    with pytest.raises(ValueError, match="manager_vision_layers"):
        tiny_config(manager_vision_layers=[9])
    with pytest.raises(ValueError, match="manager_llm_layers"):
        tiny_config(manager_llm_layers=[4])
    with pytest.raises(ValueError, match="manager_type"):
        tiny_config(manager_type="adaptive_cross")
    torch.manual_seed(0)
    model = LlavaOnevisionManagerForConditionalGeneration(tiny_config()).eval()
    inputs = prompt_batch(model)
    inputs["input_ids"] = inputs["input_ids"].clone()
    inputs["input_ids"][0, -1] = IMAGE_TOKEN  # one image token too many
    with pytest.raises(ValueError, match="image tokens"):
        model(**inputs)


# --------------------------------------------------------------------------------------------------------------------
# towerzoo convert llava-ov-manager-from-llava-ov
# --------------------------------------------------------------------------------------------------------------------


def test_convert_round_trip_in_a_fresh_process(tmp_path):
    torch.manual_seed(3)
    source = transformers.LlavaOnevisionForConditionalGeneration(transformers.LlavaOnevisionConfig(**BASE)).eval()
    source.save_pretrained(tmp_path / "llava_ov")
    out = tmp_path / "manager"
    assert towerzoo_main(["convert", "llava-ov-manager-from-llava-ov", str(tmp_path / "llava_ov"), str(out)]) == 0
    verification = json.loads((out / "verification.json").read_text())
    assert verification["max_abs_diff"] == 0.0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "towerzoo_llava_ov_manager"
    assert config["auto_map"]["AutoModelForImageTextToText"].endswith("LlavaOnevisionManagerForConditionalGeneration")
    inputs = prompt_batch(source)
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import torch, transformers
        model = transformers.AutoModelForImageTextToText.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(**torch.load({str(tmp_path / "inputs.pt")!r})).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        """
    )
    run_without_towerzoo(script, tmp_path)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "logits.pt"), source(**inputs).logits)


def test_convert_refuses_other_checkpoints(tmp_path, capsys):
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    code = towerzoo_main(["convert", "llava-ov-manager-from-llava-ov", str(tmp_path / "clip"), str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and "not 'llava_onevision'" in error and len(error.strip().splitlines()) == 1
