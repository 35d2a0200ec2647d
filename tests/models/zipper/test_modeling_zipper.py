"""Zipper: the common battery, each tower equal to its source decoder with the gates at 0 (every CPU backend, both
directions), the cross-attention's masking, depth map and gating, frozen towers, generation with and without the
caches (greedy, beam search, sampling; ASR and TTS), the flash cross-attention path, and `towerzoo convert
zipper-from-decoders`."""

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from common_model_tester import CommonModelTests
from testing_utils import run_without_towerzoo
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from towerzoo.cli import main as towerzoo_main
from towerzoo.models.zipper import AUTO_CLASSES, ZipperConfig, ZipperForConditionalGeneration

BACKENDS = ("eager", "sdpa", "flex_attention")
TEXT = {
    "model_type": "llama",
    "vocab_size": 40,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
SPEECH = {
    "model_type": "llama",
    "vocab_size": 30,
    "hidden_size": 48,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "bos_token_id": 27,
    "eos_token_id": 28,
    "pad_token_id": 29,
}
TOWERS = {"text": TEXT, "speech": SPEECH}


def tiny_config(**overrides) -> ZipperConfig:
    return ZipperConfig(text_config=TEXT, speech_config=SPEECH, **overrides)


def open_gates(model: ZipperForConditionalGeneration, value: float = 0.8) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 0:  # the gates α and β
                parameter.fill_(value)


def batch(modality: str, batch_size: int = 3, length: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded tokens of a modality (rows end earlier and earlier)."""
    tower = TOWERS[modality]
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 27, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(batch_size):
        input_ids[row, length - row :] = tower["pad_token_id"]
        attention_mask[row, length - row :] = 0
    return input_ids, attention_mask


def inputs_for(output_modality: str, seed: int = 0) -> dict:
    input_ids, attention_mask = batch(output_modality, seed=seed)
    source, source_mask = batch("speech" if output_modality == "text" else "text", length=9, seed=seed + 1)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "source_input_ids": source,
        "source_attention_mask": source_mask,
        "output_modality": output_modality,
    }


class TestZipper(CommonModelTests):
    model_classes = (ZipperForConditionalGeneration,)
    auto_classes = AUTO_CLASSES
    base_class_name = "ZipperForConditionalGeneration"
    expected_code_files = ("configuration_zipper.py", "modeling_zipper.py", "tower_attention.py")

    def make_model(self, model_class, seed: int = 0):
        model = super().make_model(model_class, seed)
        open_gates(model)  # the battery must see the cross-attention at work
        return model

    def get_config(self):
        return tiny_config()

    def prepare_inputs(self, model_class, config):
        return inputs_for("text")

    def prepare_labels(self, model_class, config, inputs):
        return {"labels": inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)}

    def output_tensors(self, model_class, outputs):
        return {"logits": outputs.logits}

    def unused_parameter_prefixes(self, model_class, inputs):
        # text output: the speech tower's own cross-attention and LM head are the other direction's
        return ("speech_cross_attention.", "speech_model.lm_head.")

    def expected_shapes(self, model_class, config, inputs):
        return {"logits": (3, 7, TEXT["vocab_size"])}


# --------------------------------------------------------------------------------------------------------------------
# Fidelity: gates at 0 = the source decoders
# --------------------------------------------------------------------------------------------------------------------


def source_decoder(model: ZipperForConditionalGeneration, modality: str) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(**{k: v for k, v in TOWERS[modality].items() if k != "model_type"})
    decoder = transformers.LlamaForCausalLM(config).eval()
    decoder.load_state_dict(model.tower(modality).state_dict())
    return decoder


@pytest.mark.parametrize("input_projection", ["gated", "none"])
@pytest.mark.parametrize("modality", ["text", "speech"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gates_at_zero_leave_each_tower_its_source_decoder(backend, modality, input_projection):
    torch.manual_seed(0)
    model = ZipperForConditionalGeneration(tiny_config(input_projection=input_projection)).eval()
    reference = source_decoder(model, modality)
    inputs = inputs_for(modality)
    with torch.no_grad():
        model.set_attn_implementation(backend)
        reference.set_attn_implementation(backend)
        expected = reference(inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        assert torch.equal(model(**inputs).logits, expected)


def test_replace_projection_and_open_gates_change_the_tower():
    torch.manual_seed(0)
    inputs = inputs_for("text")
    model = ZipperForConditionalGeneration(tiny_config(input_projection="replace")).eval()
    with torch.no_grad():
        expected = source_decoder(model, "text")(inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        assert (model(**inputs).logits - expected).abs().max() > 1e-3  # the paper's h0 = ReLU(MLP(e))
        gated = ZipperForConditionalGeneration(tiny_config()).eval()
        open_gates(gated)
        assert (gated(**inputs).logits - expected).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# Cross-attention: placement, depth map, masking, gating
# --------------------------------------------------------------------------------------------------------------------


def test_blocks_follow_the_intervals_and_the_depth_map():
    model = ZipperForConditionalGeneration(tiny_config(speech_cross_attention_interval=2))
    # text (2 blocks) attends after blocks 1, 2 to speech states round(l·3/2): 2 (round half even) and 3
    assert {k: b.source_layer for k, b in model.text_cross_attention.items()} == {"0": 2, "1": 3}
    # speech (3 blocks) every 2nd block: after block 2 to text states round(2·2/3) = 1
    assert {k: b.source_layer for k, b in model.speech_cross_attention.items()} == {"1": 1}
    with pytest.raises(ValueError, match="text_cross_attention_interval"):
        tiny_config(text_cross_attention_interval=3)


def test_cross_attention_reads_the_mapped_source_states():
    torch.manual_seed(0)
    model = ZipperForConditionalGeneration(tiny_config()).eval()
    open_gates(model)
    inputs = inputs_for("text")
    seen = {}
    for key, block in model.text_cross_attention.items():
        block.source_projection.register_forward_hook(lambda m, a, o, key=key: seen.update({key: a[0]}) or None)
    with torch.no_grad():
        model(**inputs)
        states = model.source_hidden_states("speech", inputs["source_input_ids"], inputs["source_attention_mask"])
    assert torch.equal(seen["0"], states[2]) and torch.equal(seen["1"], states[3])


def test_padded_source_tokens_are_never_seen():
    torch.manual_seed(0)
    model = ZipperForConditionalGeneration(tiny_config()).eval()
    open_gates(model)
    inputs = inputs_for("text")
    other = dict(inputs, source_input_ids=inputs["source_input_ids"].clone())
    other["source_input_ids"][inputs["source_attention_mask"] == 0] = 5
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, model(**other).logits)
        changed = dict(inputs, source_input_ids=inputs["source_input_ids"].clone())
        changed["source_input_ids"][0, 0] = 6
        assert not torch.equal(model(**inputs).logits, model(**changed).logits)


def test_only_the_output_towers_cross_attention_trains_and_frozen_towers_stay():
    torch.manual_seed(0)
    model = ZipperForConditionalGeneration(tiny_config(freeze_text_tower=True)).train()
    open_gates(model)
    inputs = inputs_for("text")
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert not any(name.startswith("text_model.") for name in grads)  # frozen
    assert not any(name.startswith("speech_cross_attention.") for name in grads)  # the input tower does not attend
    assert {n for n in grads if n.startswith("text_cross_attention.0.")} >= {
        "text_cross_attention.0.gate",
        "text_cross_attention.0.attention.q_proj.weight",
    }
    assert any(name.startswith("speech_model.model.layers.") for name in grads)  # the source tower learns through it


def test_missing_source_input_is_explained():
    model = ZipperForConditionalGeneration(tiny_config()).eval()
    with pytest.raises(ValueError, match="source_input_ids"):
        model(input_ids=torch.tensor([[1, 5]]), output_modality="text")
    with pytest.raises(ValueError, match="modality must be one of"):
        model(input_ids=torch.tensor([[1, 5]]), output_modality="image")


# --------------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_modality", ["text", "speech"])
@pytest.mark.parametrize(
    "options", [{"do_sample": False}, {"do_sample": False, "num_beams": 3}, {"do_sample": True, "top_k": 5}]
)
def test_generation_with_caches_equals_without(output_modality, options):
    torch.manual_seed(0)
    model = ZipperForConditionalGeneration(tiny_config()).eval()
    open_gates(model, 1.5)
    inputs = inputs_for(output_modality)
    bos = torch.full((3, 1), TOWERS[output_modality]["bos_token_id"])
    kwargs = {k: inputs[k] for k in ("source_input_ids", "source_attention_mask")}
    results = []
    for use_cache in (True, False):
        torch.manual_seed(1)
        results.append(
            model.generate(
                bos, **kwargs, output_modality=output_modality, max_new_tokens=6, use_cache=use_cache, **options
            )
        )
    assert torch.equal(*results)
    assert results[0].shape[0] == 3 and results[0].shape[1] <= 7
    assert bool((results[0] < TOWERS[output_modality]["vocab_size"]).all())


def test_generation_stops_at_the_output_towers_eos():
    torch.manual_seed(0)
    model = ZipperForConditionalGeneration(tiny_config()).eval()
    with torch.no_grad():  # make the speech tower always predict its eos
        model.speech_model.lm_head.bias = None
        model.speech_model.lm_head.weight.zero_()
        model.speech_model.lm_head.weight[SPEECH["eos_token_id"]] = 1.0
        model.speech_model.model.norm.weight.fill_(0.0)
        model.speech_model.model.norm.weight[0] = 1.0
    text, text_mask = batch("text", batch_size=1)
    out = model.generate(
        torch.tensor([[27]]), source_input_ids=text, source_attention_mask=text_mask, output_modality="speech"
    )
    assert out.tolist()[0][-1] == SPEECH["eos_token_id"] and out.shape[1] <= 3


# --------------------------------------------------------------------------------------------------------------------
# Flash cross-attention with a padded source (through the pure-PyTorch varlen stand-in)
# --------------------------------------------------------------------------------------------------------------------


def _flash_stand_in():
    path = Path(__file__).resolve().parents[1] / "test_attention_backends.py"
    spec = importlib.util.spec_from_file_location("_attention_backends_for_zipper", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VarlenReference()


def test_flash_cross_attention_with_padded_source_matches_eager(monkeypatch):
    fake = _flash_stand_in()
    monkeypatch.setitem(AttentionInterface._global_mapping, "flash_attention_2", fake)
    assert ALL_ATTENTION_FUNCTIONS.get_interface("flash_attention_2", None) is fake
    torch.manual_seed(0)
    model = ZipperForConditionalGeneration(tiny_config()).eval()
    open_gates(model)
    inputs = inputs_for("text")
    with torch.no_grad():
        expected = model(**inputs).logits
        model.config._attn_implementation = "flash_attention_2"  # set directly: flash-attn itself is not installed
        for tower in (model.config.text_config, model.config.speech_config):  # the towers stay on sdpa
            tower._attn_implementation = "sdpa"
        assert model.text_cross_attention["0"].attention.config._attn_implementation == "flash_attention_2"
        got = model(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert fake.calls and all(call["varlen"] for call in fake.calls)


# --------------------------------------------------------------------------------------------------------------------
# towerzoo convert zipper-from-decoders
# --------------------------------------------------------------------------------------------------------------------


def _save_decoder(folder: Path, modality: str, seed: int) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{k: v for k, v in TOWERS[modality].items() if k != "model_type"})
    decoder = transformers.LlamaForCausalLM(config).eval()
    decoder.save_pretrained(folder)
    return decoder


def test_convert_zipper_from_decoders_round_trip(tmp_path):
    text = _save_decoder(tmp_path / "text_lm", "text", 1)
    _save_decoder(tmp_path / "speech_lm", "speech", 2)
    out = tmp_path / "zipper"
    args = ["convert", "zipper-from-decoders", str(tmp_path / "text_lm"), str(tmp_path / "speech_lm"), str(out)]
    assert towerzoo_main(args) == 0
    verification = json.loads((out / "verification.json").read_text())
    assert verification["max_abs_diff"] == 0.0 and set(verification["diffs"]) == {"text_logits", "speech_logits"}
    input_ids, attention_mask = batch("text")
    torch.save({"input_ids": input_ids, "attention_mask": attention_mask}, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import torch, transformers
        model = transformers.AutoModelForSpeechSeq2Seq.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            logits = model(**inputs, source_input_ids=torch.tensor([[27, 5, 6, 28]] * 3), output_modality="text").logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        """
    )
    run_without_towerzoo(script, tmp_path)
    with torch.no_grad():
        expected = text(input_ids, attention_mask=attention_mask).logits
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)


def test_convert_zipper_refuses_bad_inputs(tmp_path, capsys):
    _save_decoder(tmp_path / "text_lm", "text", 1)
    out = str(tmp_path / "zipper")
    assert towerzoo_main(["convert", "zipper-from-decoders", str(tmp_path / "text_lm"), out]) == 2
    assert "zipper-from-decoders takes TEXT_LM_DIR SPEECH_LM_DIR OUTPUT_DIR" in capsys.readouterr().err
    (tmp_path / "bert").mkdir()
    transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path / "bert"
    )
    code = towerzoo_main(["convert", "zipper-from-decoders", str(tmp_path / "text_lm"), str(tmp_path / "bert"), out])
    error = capsys.readouterr().err
    assert code == 2 and "the speech tower, BertLMHeadModel" in error and len(error.strip().splitlines()) == 1
    (tmp_path / "broken").mkdir()
    _save_decoder(tmp_path / "broken", "speech", 3)
    weights = tmp_path / "broken" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code = towerzoo_main(["convert", "zipper-from-decoders", str(tmp_path / "text_lm"), str(tmp_path / "broken"), out])
    assert code == 2 and "corrupt" in capsys.readouterr().err
    assert not Path(out).exists()
