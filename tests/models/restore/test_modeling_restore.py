"""RESTORE: the common battery, fidelity to transformers' CLIP (prompts off, zero-shot mode, every CPU backend), the
prompt placement against a hand-written MaPLe forward, the surgery and feature-shift equations on hand-computed
cases, the class prompts, adapters-only folders, and `towerzoo convert restore-from-clip`."""

import json
import re
import textwrap

import pytest
import torch
import torch.nn.functional as F
import transformers
from clip_fixtures import tiny_clip_folder
from common_model_tester import CommonModelTests
from testing_utils import run_without_towerzoo

from towerzoo.cli import main as towerzoo_main
from towerzoo.conversions.clip_source import read_clip_checkpoint, reference_clip
from towerzoo.conversions.restore_from_clip import build_from_clip, build_processor
from towerzoo.models.restore import AUTO_CLASSES, RestoreConfig, RestoreForImageClassification, feature_shift
from towerzoo.models.restore.modeling_restore import ADAPTERS_FILE

ATOL = 1e-5
BACKENDS = ("eager", "sdpa", "flex_attention")
CLASSNAMES = ["cat", "dog", "red car", "sea turtle"]
TEXT = {
    "vocab_size": 99,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 16,
    "pad_token_id": 1,
    "bos_token_id": 97,
    "eos_token_id": 98,
}
VISION = {
    "hidden_size": 48,
    "intermediate_size": 37,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 16,
    "patch_size": 4,
}


def tiny_config(**overrides) -> RestoreConfig:
    options = {"num_prompt_tokens": 2, "prompt_depth": 3, "surgery_hidden_size": 40, "surgery_zero_init": False}
    return RestoreConfig(text_config=TEXT, vision_config=VISION, projection_dim=24, **{**options, **overrides})


def class_prompts(num_classes: int = 4, length: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-style prompts: bos, words, eos, padding (rows end at different places)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, 97, (num_classes, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[:, 0] = TEXT["bos_token_id"]
    for row in range(num_classes):
        end = length - 1 - row
        input_ids[row, end] = TEXT["eos_token_id"]
        input_ids[row, end + 1 :] = TEXT["pad_token_id"]
        attention_mask[row, end + 1 :] = 0
    return input_ids, attention_mask


def pixels(batch_size: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed))


class TestRestore(CommonModelTests):
    model_classes = (RestoreForImageClassification,)
    auto_classes = AUTO_CLASSES
    base_class_name = "RestoreForImageClassification"
    expected_code_files = (
        "clip_configuration.py",
        "clip_weights.py",
        "configuration_restore.py",
        "modeling_restore.py",
        "processing_common.py",
        "processing_restore.py",
        "tower_attention.py",
        "tower_blocks.py",
    )

    def get_config(self):
        return tiny_config()

    def prepare_inputs(self, model_class, config):
        input_ids, attention_mask = class_prompts()
        return {"pixel_values": pixels(), "input_ids": input_ids, "attention_mask": attention_mask}

    def prepare_labels(self, model_class, config, inputs):
        return {"labels": torch.tensor([0, 3, 1])}

    def output_tensors(self, model_class, outputs):
        return {"logits": outputs.logits, "image_embeds": outputs.image_embeds, "text_embeds": outputs.text_embeds}

    def expected_shapes(self, model_class, config, inputs):
        return {"logits": (3, 4), "image_embeds": (3, 24), "text_embeds": (4, 24)}

    def build_processor(self, config, tmp_path):
        from towerzoo.tiny import build_tiny_clip_tokenizer

        return build_processor(build_tiny_clip_tokenizer(tmp_path / "tokenizer"), config.vision_config.image_size)


# --------------------------------------------------------------------------------------------------------------------
# Fidelity: transformers' CLIPModel
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip_folder(tmp_path_factory.mktemp("restore-clip"))


def reference(clip_dir) -> transformers.CLIPModel:
    return reference_clip(*read_clip_checkpoint(clip_dir, "test"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_prompts_and_neutral_surgery_logits_equal_clip_zero_shot(clip_dir, backend):
    """num_prompt_tokens=0 and the surgery at its zero initialisation: CLIP's zero-shot logits on "a photo of a {}."."""
    model, processor, _ = build_from_clip(clip_dir, CLASSNAMES, num_prompt_tokens=0)
    clip = reference(clip_dir)
    images = pixels(3, 32)
    prompts = processor(text=[f"a photo of a {name}." for name in CLASSNAMES])
    assert torch.equal(prompts["input_ids"], model.class_input_ids)
    with torch.no_grad():
        expected = clip(**prompts, pixel_values=images).logits_per_image
        model.set_attn_implementation(backend)
        logits = model(pixel_values=images).logits
    assert (logits - expected).abs().max() <= ATOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_shot_mode_of_a_prompted_model_is_clip(clip_dir, backend):
    model, _, _ = build_from_clip(clip_dir, CLASSNAMES, prompt_depth=3)
    with torch.no_grad():
        model.vision_surgery.fc2.weight.normal_()  # a trained-looking surgery must not leak into zero-shot mode
        input_ids, attention_mask = model.class_prompts()
        expected = reference(clip_dir)(input_ids, pixels(2, 32), attention_mask).logits_per_image
        model.set_attn_implementation(backend)
        assert (model(pixel_values=pixels(2, 32), zero_shot=True).logits - expected).abs().max() <= ATOL
        assert (model(pixel_values=pixels(2, 32)).logits - expected).abs().max() > 1e-3


def test_template_context_starts_the_text_tower_as_the_template(clip_dir):
    """prompt_init="template", depth 1: the learned context is the template's word embeddings, so the text side is
    CLIP's text features; the vision side gets two extra tokens and differs."""
    model, _, _ = build_from_clip(clip_dir, CLASSNAMES, prompt_depth=1)
    clip = reference(clip_dir)
    input_ids, attention_mask = model.class_prompts()
    with torch.no_grad():
        expected = clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        expected = getattr(expected, "pooler_output", expected)
        text = model.get_text_features(prompts=model.prompts()).pooler_output
        assert (text - expected).abs().max() <= ATOL
        image = model.get_image_features(pixels(2, 32), model.prompts()).pooler_output
        clip_image = clip.get_image_features(pixel_values=pixels(2, 32))
        assert (image - getattr(clip_image, "pooler_output", clip_image)).abs().max() > 1e-3


def maple_reference_logits(model: RestoreForImageClassification, images, input_ids) -> torch.Tensor:
    """The official (MaPLe_FSA) forward written out with the model's weights, sequence-first as the original: text
    context at positions 1…n before positions are added, deep text prompts replacing positions 1…n before layers
    1…J-1; vision context appended after the position embeddings and before ln_pre, deep vision prompts replacing the
    last n tokens; surgery as r·A(f) + (1 − r)·f with A(f) = f + FFN(LN(f))."""
    learner, n = model.prompt_learner, model.config.num_prompt_tokens
    text_prompts = [learner.text_context, *learner.text_deep]
    vision_prompts = [projection(p) for projection, p in zip(learner.vision_projections, text_prompts)]
    tm, vm = model.text_model, model.vision_model
    x = tm.embeddings.token_embedding(input_ids)
    x = torch.cat([x[:, :1], text_prompts[0].expand(len(x), -1, -1), x[:, 1 + n :]], 1)
    x = (x + tm.embeddings.position_embedding.weight[: x.shape[1]]).transpose(0, 1)  # LND
    causal = torch.full((x.shape[0], x.shape[0]), float("-inf")).triu(1)
    for i, layer in enumerate(tm.layers):
        if 1 <= i < len(text_prompts):
            x = torch.cat([x[:1], text_prompts[i][:, None].expand(-1, x.shape[1], -1), x[1 + n :]], 0)
        x = x + _mha(layer, layer.layer_norm1(x), causal)
        x = x + layer.mlp(layer.layer_norm2(x))
    x = tm.final_layer_norm(x.transpose(0, 1))
    text = model.text_projection(x[torch.arange(len(x)), input_ids.argmax(-1)])
    emb = vm.embeddings
    patches = emb.patch_embedding(images).flatten(2).transpose(1, 2)
    v = torch.cat([emb.class_embedding.expand(len(images), 1, -1), patches], 1) + emb.position_embedding.weight
    v = vm.pre_layernorm(torch.cat([v, vision_prompts[0].expand(len(images), -1, -1)], 1)).transpose(0, 1)
    for i, layer in enumerate(vm.layers):
        if 1 <= i < len(vision_prompts):
            v = torch.cat([v[:-n], vision_prompts[i][:, None].expand(-1, v.shape[1], -1)], 0)
        v = v + _mha(layer, layer.layer_norm1(v), None)
        v = v + layer.mlp(layer.layer_norm2(v))
    image = model.visual_projection(vm.post_layernorm(v[0]))

    def surgery(block, f, r):
        adapted = f + block.fc2(block.act(block.fc1(block.layer_norm(f))))
        return r * adapted + (1 - r) * f

    text = surgery(model.text_surgery, text, model.surgery_ratios[0])
    image = surgery(model.vision_surgery, image, model.surgery_ratios[1])
    text, image = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    return model.logit_scale.exp() * image @ text.t()


def _mha(layer, x, mask):
    """PyTorch's nn.MultiheadAttention (sequence-first, as the original's blocks) with the layer's q/k/v/o weights."""
    attn = layer.self_attn
    out, _ = F.multi_head_attention_forward(
        x, x, x, x.shape[-1], attn.num_heads, None,
        torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]), None, None, False, 0.0,
        attn.o_proj.weight, attn.o_proj.bias, training=False, need_weights=False, attn_mask=mask,
        use_separate_proj_weight=True, q_proj_weight=attn.q_proj.weight, k_proj_weight=attn.k_proj.weight,
        v_proj_weight=attn.v_proj.weight,
    )  # fmt: skip
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompted_model_equals_the_official_forward(clip_dir, backend):
    model, _, _ = build_from_clip(clip_dir, CLASSNAMES, prompt_depth=3, surgery_zero_init=False)
    with torch.no_grad():
        model.prompt_learner.text_context.add_(0.3 * torch.randn_like(model.prompt_learner.text_context))
        model.surgery_ratios.copy_(torch.tensor([0.3, 0.7]))
        expected = maple_reference_logits(model, pixels(3, 32), model.class_input_ids)
        model.set_attn_implementation(backend)
        logits = model(pixel_values=pixels(3, 32)).logits
    assert (logits - expected).abs().max() <= ATOL


# --------------------------------------------------------------------------------------------------------------------
# Surgery and feature shift on hand-computed cases
# --------------------------------------------------------------------------------------------------------------------


def test_surgery_block_is_a_ratio_mix_and_starts_as_identity():
    model = RestoreForImageClassification(tiny_config(surgery_zero_init=True)).eval()
    block = model.text_surgery
    features = torch.randn(5, 24)
    assert torch.equal(block(features, torch.tensor(0.4)), features)  # zero output projection: A(f) = f
    with torch.no_grad():
        block.fc2.weight.normal_()
        block.fc2.bias.normal_()
    adapted = features + block.fc2(block.act(block.fc1(block.layer_norm(features))))
    mixed = 0.4 * adapted + 0.6 * features
    assert torch.allclose(block(features, torch.tensor(0.4)), mixed, atol=1e-6)


def _toy_prompt_model(**overrides) -> RestoreForImageClassification:
    """n = 1, J = 3, vision width 48, every deep prompt and map set by hand."""
    model = RestoreForImageClassification(tiny_config(num_prompt_tokens=1, **overrides)).eval()
    learner = model.prompt_learner
    with torch.no_grad():
        learner.text_deep.zero_()
        learner.text_deep[0, 0, 0] = 2.0  # P_t^1 = 2·e_0
        learner.text_deep[1, 0, :2] = torch.tensor([3.0, 4.0])  # P_t^2: norm 5
        for projection in learner.vision_projections:
            projection.weight.zero_()
            projection.bias.zero_()
            projection.weight[:32, :32] = torch.eye(32)  # F_i copies the text prompt into the first 32 channels
        learner.vision_projections[2].weight[:32, :32] *= 2.0  # F_2 doubles it
        model.feature_shift_reference.copy_(torch.tensor([[1.0, 2.0], [5.0, 10.0]]))
    return model


def test_prompt_gram_consistency_on_a_hand_computed_case():
    """‖ppᵀ‖_F = ‖p‖² for one token: text norms 4 and 25, vision 4 and 100; with references (1, 2) and (5, 10):
    s_t = (4, 5), s_v = (2, 10), L_fs = (4-2)² + (5-10)² = 29; loss = CE + λ·29."""
    model = _toy_prompt_model(feature_shift_loss_weight=0.5)
    assert torch.allclose(model.prompt_learner.gram_norms(), torch.tensor([[4.0, 4.0], [25.0, 100.0]]))
    input_ids, attention_mask = class_prompts()
    labels = torch.tensor([1, 0, 2])
    out = model(pixel_values=pixels(), input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert out.feature_shift_loss.item() == pytest.approx(29.0)
    assert out.classification_loss.item() == pytest.approx(F.cross_entropy(out.logits, labels).item())
    assert out.loss.item() == pytest.approx(out.classification_loss.item() + 0.5 * 29.0)
    out.loss.backward()  # the consistency term reaches the prompts and the maps
    assert model.prompt_learner.text_deep.grad.abs().sum() > 0
    assert model.prompt_learner.vision_projections[2].weight.grad.abs().sum() > 0


def test_embedding_consistency_is_the_relative_shift_against_frozen_clip():
    model = _toy_prompt_model(feature_shift_loss="embedding")
    input_ids, attention_mask = class_prompts()
    images = pixels()
    out = model(
        pixel_values=images, input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([0, 1, 2])
    )
    with torch.no_grad():
        prompts = model.prompts()
        text = model.get_text_features(input_ids, attention_mask, prompts).pooler_output
        text0 = model.get_text_features(input_ids, attention_mask).pooler_output
        image = model.get_image_features(images, prompts).pooler_output
        image0 = model.get_image_features(images).pooler_output
    shift_t = sum(((text[i] - text0[i]).norm() / text0[i].norm()).item() for i in range(4)) / 4
    shift_v = sum(((image[i] - image0[i]).norm() / image0[i].norm()).item() for i in range(3)) / 3
    assert out.feature_shift_loss.item() == pytest.approx((shift_t - shift_v) ** 2, rel=1e-5)
    assert out.feature_shift_loss.item() > 0


def test_bump_surgery_ratios_follows_the_official_rule():
    """r_t += 0.02 · mean(4, 25), r_v += 0.005 · mean(4, 100) from (0.1, 0.2)."""
    model = _toy_prompt_model(surgery_ratio_text=0.1, surgery_ratio_vision=0.2)
    assert torch.allclose(model.surgery_ratios, torch.tensor([0.1, 0.2]))
    ratios = model.bump_surgery_ratios()
    assert torch.allclose(ratios, torch.tensor([0.1 + 0.02 * 14.5, 0.2 + 0.005 * 52.0]))


def test_feature_shift_report():
    model = _toy_prompt_model()
    input_ids, attention_mask = class_prompts()
    report = feature_shift(model, pixels(), input_ids, attention_mask)
    layers = model.config.text_config.num_hidden_layers
    assert report.text.shape == report.vision.shape == (layers + 2,)  # embeddings, each layer, projected output
    assert torch.equal(report.discrepancy, (report.text - report.vision).abs())
    # the embeddings at [EOS] and [CLS] do not see the prompts (no attention yet); every layer after does
    assert report.text[0] == 0 and report.vision[0] == 0
    assert (report.text[1:] > 0).all() and (report.vision[1:] > 0).all()
    # a model without prompts has no shift at all
    plain = RestoreForImageClassification(tiny_config(num_prompt_tokens=0)).eval()
    assert torch.equal(feature_shift(plain, pixels(), input_ids, attention_mask).text, torch.zeros(layers + 2))


# --------------------------------------------------------------------------------------------------------------------
# Class prompts, freezing, caching
# --------------------------------------------------------------------------------------------------------------------


def test_only_prompts_and_surgery_train(clip_dir):
    model, _, _ = build_from_clip(clip_dir, CLASSNAMES, prompt_depth=3)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner", "text_surgery", "vision_surgery"}
    full = RestoreForImageClassification(tiny_config(freeze_clip=False))
    assert all(p.requires_grad for p in full.parameters())


def test_set_classnames_switches_the_classifier(clip_dir):
    model, processor, _ = build_from_clip(clip_dir, CLASSNAMES, num_prompt_tokens=0)
    clip = reference(clip_dir)
    novel = ["zebra", "blue whale", "tree"]
    model.set_classnames(novel, processor)
    assert model.config.classnames == novel and model.config.id2label == {0: "zebra", 1: "blue whale", 2: "tree"}
    prompts = processor(text=[f"a photo of a {name}." for name in novel])
    with torch.no_grad():
        expected = clip(**prompts, pixel_values=pixels(2, 32)).logits_per_image
        assert (model(pixel_values=pixels(2, 32)).logits - expected).abs().max() <= ATOL
    with pytest.raises(ValueError, match="at least one class name"):
        model.set_classnames([], processor)


def test_context_longer_than_the_template_prefix_is_refused(clip_dir):
    _, processor, _ = build_from_clip(clip_dir, CLASSNAMES, num_prompt_tokens=0)
    model = RestoreForImageClassification(tiny_config(num_prompt_tokens=2, prompt_template="{} photo"))
    with pytest.raises(ValueError, match="before the class name"):
        model.set_classnames(CLASSNAMES, processor)


def test_a_model_without_class_prompts_says_how_to_set_them():
    model = RestoreForImageClassification(tiny_config(classnames=["a", "b"])).eval()
    with pytest.raises(ValueError, match="set_classnames"):
        model(pixel_values=pixels())


def test_class_text_features_are_cached_without_gradients_and_refreshed_on_change(clip_dir):
    model, _, _ = build_from_clip(clip_dir, CLASSNAMES, prompt_depth=3)
    calls = []
    model.text_model.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        first = model(pixel_values=pixels(2, 32)).logits
        again = model(pixel_values=pixels(2, 32)).logits
        assert len(calls) == 1 and torch.equal(first, again)
        model.prompt_learner.text_context.add_(0.5)  # in place, as an optimizer step
        changed = model(pixel_values=pixels(2, 32)).logits
    assert len(calls) == 2 and not torch.equal(first, changed)
    model(pixel_values=pixels(2, 32))  # with gradients: always computed
    assert len(calls) == 3


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"feature_shift_loss": "cosine"}, "feature_shift_loss"),
        ({"prompt_init": "zeros"}, "prompt_init"),
        ({"prompt_template": "a photo"}, "exactly one"),
        ({"prompt_depth": 7}, "prompt_depth"),
    ],
)
def test_bad_configs_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


# --------------------------------------------------------------------------------------------------------------------
# Adapters-only folders and the converter
# --------------------------------------------------------------------------------------------------------------------


def test_adapters_only_folder_round_trips_in_a_fresh_process(clip_dir, tmp_path):
    from towerzoo.conversions.hub_folder import write_hub_folder

    model, processor, _ = build_from_clip(clip_dir, CLASSNAMES, prompt_depth=3)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.2 * torch.randn_like(parameter))
        model.bump_surgery_ratios()
        expected = model(pixel_values=pixels(2, 32)).logits
    folder = write_hub_folder(
        model, tmp_path / "adapters", exposed=AUTO_CLASSES, processor=processor, save_kwargs={"adapters_only": True}
    )
    assert not list(folder.glob("model*.safetensors"))
    from safetensors.torch import load_file

    stored = load_file(folder / ADAPTERS_FILE)
    assert stored.keys() == model.adapter_state_dict().keys()
    assert not any(key.startswith(("text_model", "vision_model")) for key in stored)
    torch.save(pixels(2, 32), tmp_path / "pixels.pt")
    script = textwrap.dedent(
        f"""
        import torch, transformers
        model = transformers.AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=True)
        with torch.no_grad():
            logits = model(pixel_values=torch.load({str(tmp_path / "pixels.pt")!r})).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        """
    )
    run_without_towerzoo(script, tmp_path)
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)


def test_adapters_only_needs_a_base_pointer(tmp_path):
    model = RestoreForImageClassification(tiny_config())
    with pytest.raises(ValueError, match="base_model_name_or_path"):
        model.save_pretrained(tmp_path / "x", adapters_only=True)


def test_convert_restore_from_clip_cli(clip_dir, tmp_path, capsys):
    names = tmp_path / "classnames.txt"
    names.write_text("\n".join(CLASSNAMES) + "\n")
    assert (
        towerzoo_main(
            ["convert", "restore-from-clip", str(clip_dir), str(tmp_path / "out"), "--classnames", str(names)]
        )
        == 0
    )
    folder = tmp_path / "out"
    verification = json.loads((folder / "verification.json").read_text())
    assert verification["max_abs_diff"] <= ATOL and verification["classnames"] == CLASSNAMES
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_restore.RestoreForImageClassification"
    assert config["auto_map"]["AutoModel"] == "modeling_restore.RestoreForImageClassification"
    assert (folder / "README.md").is_file()
    script = textwrap.dedent(
        f"""
        import torch, transformers
        from PIL import Image
        model = transformers.AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        processor = transformers.AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        inputs = processor(images=[Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGBA", (30, 30))])
        with torch.no_grad():
            print(model(**inputs).logits.shape, model.config.id2label[3])
        """
    )
    assert run_without_towerzoo(script, tmp_path).stdout.split() == ["torch.Size([2,", "4])", "sea", "turtle"]


@pytest.mark.parametrize(
    "lines, match",
    [("cat\ndog\ncat\n", "duplicate|repeat"), ("cat\n\ndog\n", "empty")],
)
def test_convert_refuses_bad_classnames_files(clip_dir, tmp_path, capsys, lines, match):
    names = tmp_path / "classnames.txt"
    names.write_text(lines)
    code = towerzoo_main(
        ["convert", "restore-from-clip", str(clip_dir), str(tmp_path / "out"), "--classnames", str(names)]
    )
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("towerzoo convert: error:")
    assert len(error.strip().splitlines()) == 1 and re.search(match, error, flags=re.IGNORECASE)
    assert not (tmp_path / "out").exists()


def test_convert_refuses_wrong_inputs(clip_dir, tmp_path, capsys):
    names = tmp_path / "classnames.txt"
    names.write_text("cat\ndog\n")
    out = str(tmp_path / "out")
    assert towerzoo_main(["convert", "restore-from-clip", str(clip_dir), out]) == 2
    assert "--classnames" in capsys.readouterr().err
    assert towerzoo_main(["convert", "vidla-from-clip", str(clip_dir), out, "--classnames", str(names)]) == 2
    assert "--classnames is for restore-from-clip" in capsys.readouterr().err
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert (
        towerzoo_main(["convert", "restore-from-clip", str(tmp_path / "bert"), out, "--classnames", str(names)]) == 2
    )
    assert "not 'clip'" in capsys.readouterr().err
