"""VidLA: the common battery, fidelity to transformers' CLIP, the temporal attention and [MST] masks, padded frames,
the blocked attention layout against the dense one (outputs and gradients, every backend, flash through a stand-in),
the loss, and the `vidla-from-clip` conversion."""

import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
import transformers
from common_model_tester import CommonModelTests
from testing_utils import run_without_towerzoo
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from towerzoo.cli import main as towerzoo_main
from towerzoo.conversions import vidla_from_clip
from towerzoo.conversions.clip_source import clip_features
from towerzoo.models.vidla import AUTO_CLASSES, VidLAConfig, VidLAModel
from towerzoo.models.vidla.modeling_vidla import video_attention_mask

ATOL = 1e-5
BACKENDS = ("eager", "sdpa", "flex_attention")
TEXT = {
    "vocab_size": 99,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 16,
    "pad_token_id": 1,
    "bos_token_id": 97,
    "eos_token_id": 98,
}
VISION = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 16,
    "patch_size": 4,
}


@pytest.fixture(autouse=True)
def static_flex_kernels():
    """Compile flex_attention for static shapes only. These tests run it on many sequence lengths; once dynamo
    switches to a dynamic-shape kernel, torch 2.13's CPU inductor fails to compile some of them (C++ error
    'cur_kvSplitSize1 was not declared'), which is a torch bug and not the model's."""
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        yield


def tiny_vidla_config(**vision_overrides) -> VidLAConfig:
    """Two-layer towers, 16 patches per frame, up to 8 frames, U=3 levels of V=2 [MST] tokens, r=2."""
    vision = {**VISION, "num_frames": 8, "mst_num_levels": 3, "mst_tokens_per_level": 2, **vision_overrides}
    return VidLAConfig(text_config=TEXT, vision_config=vision, projection_dim=24)


def tiny_clip() -> transformers.CLIPModel:
    torch.manual_seed(0)
    config = transformers.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=24)
    return transformers.CLIPModel(config).eval()


def text_batch(batch_size: int = 3, length: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-style texts: bos, tokens, eos, then padding (rows end earlier and earlier)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, 97, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[:, 0] = TEXT["bos_token_id"]
    for row in range(batch_size):
        end = length - 1 - 2 * row
        input_ids[row, end] = TEXT["eos_token_id"]
        input_ids[row, end + 1 :] = TEXT["pad_token_id"]
        attention_mask[row, end + 1 :] = 0
    return input_ids, attention_mask


def clips(batch_size: int = 3, frames: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, frames, 3, 16, 16, generator=generator)


def clip_weights_in_vidla(clip: transformers.CLIPModel, config: VidLAConfig) -> VidLAModel:
    """A VidLA model holding CLIP's weights, through the converter's key table and new-parameter init."""
    state_dict, _ = vidla_from_clip.to_vidla(clip.state_dict())
    state_dict.update(vidla_from_clip.new_parameters(config, state_dict))
    model = VidLAModel(config).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


class TestVidLA(CommonModelTests):
    model_classes = (VidLAModel,)
    auto_classes = AUTO_CLASSES
    base_class_name = "VidLAModel"
    expected_code_files = (
        "clip_configuration.py",
        "configuration_vidla.py",
        "modeling_vidla.py",
        "tower_attention.py",
        "tower_blocks.py",
    )

    def get_config(self):
        return tiny_vidla_config()

    def prepare_inputs(self, model_class, config):
        input_ids, attention_mask = text_batch()
        video_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]])
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values_videos": clips(),
            "video_mask": video_mask,
        }

    def prepare_labels(self, model_class, config, inputs):
        return {"return_loss": True}

    def output_tensors(self, model_class, outputs):
        return {
            "text_embeds": outputs.text_embeds,
            "video_embeds": outputs.video_embeds,
            "logits_per_text": outputs.logits_per_text,
        }

    def expected_shapes(self, model_class, config, inputs):
        batch = inputs["input_ids"].shape[0]
        return {
            "text_embeds": (batch, config.projection_dim),
            "video_embeds": (batch, config.projection_dim),
            "logits_per_text": (batch, batch),
        }


# --------------------------------------------------------------------------------------------------------------------
# Fidelity: one frame, no [MST] tokens = transformers' CLIPModel
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_one_frame_without_mst_tokens_is_clip(backend):
    clip = tiny_clip()
    model = clip_weights_in_vidla(clip, tiny_vidla_config(mst_num_levels=0))
    clip.set_attn_implementation(backend)
    model.set_attn_implementation(backend)
    pixels = clips(3, 1)[:, 0]
    input_ids, attention_mask = text_batch()
    with torch.no_grad():
        expected_video = clip_features(clip.get_image_features(pixel_values=pixels))
        expected_text = clip_features(clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
        expected = clip(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels)
        got = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values_videos=pixels[:, None])
        video = model.get_video_features(pixels[:, None])
        text = model.get_text_features(input_ids, attention_mask)
    torch.testing.assert_close(video, expected_video, atol=ATOL, rtol=0)
    torch.testing.assert_close(text, expected_text, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.logits_per_video, expected.logits_per_image, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.text_model_output.last_hidden_state, expected.text_model_output.last_hidden_state)


def test_text_tower_is_clip_text_model():
    clip = tiny_clip()
    model = clip_weights_in_vidla(clip, tiny_vidla_config())
    input_ids, attention_mask = text_batch()
    with torch.no_grad():
        expected = clip.text_model(input_ids=input_ids, attention_mask=attention_mask)
        got = model.text_model(input_ids, attention_mask)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=ATOL, rtol=0)


def test_converted_temporal_branch_is_neutral():
    """Right after conversion the temporal attention (zero output projection) changes nothing: several frames with
    [MST] tokens give the same tokens as the same weights without the temporal branch."""
    clip = tiny_clip()
    config = tiny_vidla_config()
    model = clip_weights_in_vidla(clip, config)
    plain = VidLAModel(tiny_vidla_config(temporal_attention=False)).eval()
    missing = plain.load_state_dict(model.state_dict(), strict=False).unexpected_keys
    assert missing and all(".temporal_" in key for key in missing)
    pixels, video_mask = clips(2, 4), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        expected = plain.video_model(pixels, video_mask).last_hidden_state
        got = model.video_model(pixels, video_mask).last_hidden_state
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# The temporal attention and the [MST] masks
# --------------------------------------------------------------------------------------------------------------------


def test_temporal_attention_is_spatially_local():
    """Changing one patch (frame 1, position 2) changes the temporal branch's output at position 2 of every frame and
    nowhere else."""
    torch.manual_seed(0)
    model = VidLAModel(tiny_vidla_config()).eval()
    layer = model.video_model.layers[0]
    torch.nn.init.normal_(layer.temporal_attn.o_proj.weight, std=0.2)
    patches = torch.randn(2, 4, 16, 32)
    changed = patches.clone()
    changed[:, 1, 2] += torch.randn(32)
    with torch.no_grad():
        before, after = layer.temporal_mix(patches, None), layer.temporal_mix(changed, None)
    moved = (after - before).abs().amax(dim=(0, 3)) > 1e-6  # (frames, positions)
    assert moved[:, 2].all()
    moved[:, 2] = False
    assert not moved.any()


def _one_layer_outputs(model, pixels):
    with torch.no_grad():
        return model.video_model(pixels).last_hidden_state


@pytest.mark.parametrize("backend", BACKENDS)
def test_mst_token_of_level_u_sees_every_r_to_the_u_th_frame(backend):
    """One block, temporal branch at its zero init: perturbing frame f changes the [MST] tokens of the levels u with
    f mod 2^u == 0 and, among the patches, only frame f's."""
    torch.manual_seed(0)
    config = tiny_vidla_config(num_hidden_layers=1)
    model = VidLAModel(config).eval()
    model.set_attn_implementation(backend)
    pixels = clips(1, 8)
    before = _one_layer_outputs(model, pixels)
    for frame in range(8):
        changed = pixels.clone()
        changed[:, frame] += 1.0
        moved = (_one_layer_outputs(model, changed) - before).abs().amax(dim=(0, 2)) > 1e-6
        assert moved[0], "[CLS] sees every frame"
        mst = moved[1:7].view(3, 2)
        for level in range(3):
            sees = frame % 2**level == 0
            assert mst[level].tolist() == [sees, sees], (frame, level, mst)
        patches = moved[7:].view(8, 16)
        assert patches[frame].all()
        assert not torch.cat([patches[:frame], patches[frame + 1 :]]).any()


@pytest.mark.parametrize(
    ("direction", "sees"),
    [
        ("finer", lambda q, k: k <= q),
        ("coarser", lambda q, k: k >= q),
        ("all", lambda q, k: True),
        ("none", lambda q, k: k == q),
    ],
)
def test_mst_level_attention_direction(direction, sees):
    """Perturbing the [MST] tokens of level k changes level q's outputs exactly when the level mask lets q see k."""
    torch.manual_seed(0)
    model = VidLAModel(tiny_vidla_config(num_hidden_layers=1, mst_level_attention=direction)).eval()
    pixels = clips(1, 4)
    before = _one_layer_outputs(model, pixels)
    mst = model.video_model.embeddings.mst_embeddings
    original = mst.detach().clone()
    for level in range(3):
        with torch.no_grad():
            mst[2 * level : 2 * level + 2] += torch.randn(2, 32)  # (a constant shift would vanish in LayerNorm)
        moved = (_one_layer_outputs(model, pixels) - before).abs().amax(dim=(0, 2))[1:7].view(3, 2) > 1e-6
        with torch.no_grad():
            mst.copy_(original)
        for query in range(3):
            assert moved[query].tolist() == [sees(query, level)] * 2, (direction, query, level)


def test_patches_can_be_kept_from_mst_tokens():
    torch.manual_seed(0)
    model = VidLAModel(tiny_vidla_config(num_hidden_layers=1, patches_attend_to_mst=False)).eval()
    pixels = clips(1, 2)
    before = _one_layer_outputs(model, pixels)
    with torch.no_grad():
        model.video_model.embeddings.mst_embeddings += torch.randn(6, 32)
    moved = (_one_layer_outputs(model, pixels) - before).abs().amax(dim=(0, 2)) > 1e-6
    assert moved[0] and moved[1:7].all() and not moved[7:].any()


@pytest.mark.parametrize("patches_attend_to_cls", [True, False])
def test_patches_and_cls(patches_attend_to_cls):
    """Changing [CLS] moves the patches only when they attend to it, and never the [MST] tokens (one block)."""
    torch.manual_seed(0)
    config = tiny_vidla_config(num_hidden_layers=1, patches_attend_to_cls=patches_attend_to_cls)
    model = VidLAModel(config).eval()
    pixels = clips(1, 2)
    before = _one_layer_outputs(model, pixels)
    with torch.no_grad():
        model.video_model.embeddings.class_embedding += torch.randn(32)
    moved = (_one_layer_outputs(model, pixels) - before).abs().amax(dim=(0, 2)) > 1e-6
    assert moved[0] and not moved[1:7].any()
    assert moved[7:].all() if patches_attend_to_cls else not moved[7:].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_frames_do_not_leak(backend):
    """A clip padded with garbage frames gives the same outputs (every real token) as the clip alone."""
    torch.manual_seed(0)
    config = tiny_vidla_config()
    model = VidLAModel(config).eval()
    for layer in model.video_model.layers:  # make the temporal branch matter
        torch.nn.init.normal_(layer.temporal_attn.o_proj.weight, std=0.2)
    model.set_attn_implementation(backend)
    pixels = clips(2, 5)
    video_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        batched = model.video_model(pixels, video_mask)
        alone = model.video_model(pixels[1:, :3])
    real = 1 + config.vision_config.num_mst_tokens + 3 * 16
    torch.testing.assert_close(batched.last_hidden_state[1:, :real], alone.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(batched.pooler_output[1:], alone.pooler_output, atol=ATOL, rtol=0)


def test_backends_agree_on_every_token():
    torch.manual_seed(0)
    model = VidLAModel(tiny_vidla_config()).eval()
    for layer in model.video_model.layers:
        torch.nn.init.normal_(layer.temporal_attn.o_proj.weight, std=0.2)
    pixels, video_mask = clips(2, 4), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    real = video_mask.repeat_interleave(16, 1).bool()
    outputs = {}
    for backend in BACKENDS:
        model.set_attn_implementation(backend)
        with torch.no_grad():
            outputs[backend] = model.video_model(pixels, video_mask).last_hidden_state
    for backend in BACKENDS[1:]:
        for name, rows in (("head", slice(0, 7)), ("patches", slice(7, None))):
            expected, got = outputs["eager"][:, rows], outputs[backend][:, rows]
            if name == "patches":
                expected, got = expected[real], got[real]
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0, msg=f"{backend} {name}")


def test_flash_backends_refuse_the_dense_mask_with_the_alternatives():
    config = tiny_vidla_config(attention_layout="dense").vision_config
    config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attention_layout='blocked'.*sdpa.*flex_attention.*eager"):
        video_attention_mask(config, torch.zeros(1, 1 + 6 + 2 * 16, 32), torch.ones(1, 2), 16)
    # one frame without [MST] tokens needs no mask, so flash runs it
    single = tiny_vidla_config(mst_num_levels=0, attention_layout="dense").vision_config
    single._attn_implementation = "flash_attention_2"
    assert video_attention_mask(single, torch.zeros(1, 17, 32), torch.ones(1, 1), 16) is None


def test_bad_video_inputs():
    model = VidLAModel(tiny_vidla_config()).eval()
    with pytest.raises(ValueError, match="batch, frames"):
        model.video_model(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="temporal position table"):
        model.video_model(clips(1, 9))
    with pytest.raises(ValueError, match="at least one real frame"):
        model.video_model(clips(2, 2), torch.tensor([[1, 1], [0, 0]]))


# --------------------------------------------------------------------------------------------------------------------
# The blocked attention layout computes what the dense mask does
# --------------------------------------------------------------------------------------------------------------------

LAYOUT_OPTIONS = {
    "paper": {},
    "coarser levels": {"mst_level_attention": "coarser"},
    "no [MST]": {"mst_num_levels": 0},
    "patches without [MST]": {"patches_attend_to_mst": False},
    "patches without [CLS]": {"patches_attend_to_cls": False},
    "patches see their frame only": {"patches_attend_to_mst": False, "patches_attend_to_cls": False},
}
# clips of 5, 3 and 1 frames in one batch
VIDEO_MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])


def _model_with_temporal_branch(**vision_overrides) -> VidLAModel:
    """A tiny model whose temporal attention matters (output projection off zero)."""
    torch.manual_seed(0)
    model = VidLAModel(tiny_vidla_config(**vision_overrides)).eval()
    for layer in model.video_model.layers:
        torch.nn.init.normal_(layer.temporal_attn.o_proj.weight, std=0.2)
    return model


def _video_outputs(model, layout: str, pixels, video_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The real tokens (head, then the patches of real frames) and the pooled state, under `layout`."""
    model.video_model.config.attention_layout = layout
    out = model.video_model(pixels, video_mask)
    num_head = 1 + model.config.vision_config.num_mst_tokens
    real = video_mask.repeat_interleave(16, 1).bool()
    states = out.last_hidden_state
    return torch.cat([states[:, :num_head].flatten(0, 1), states[:, num_head:][real]]), out.pooler_output


@pytest.mark.parametrize("options", LAYOUT_OPTIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_blocked_layout_equals_dense(backend, options):
    model = _model_with_temporal_branch(**LAYOUT_OPTIONS[options])
    model.set_attn_implementation(backend)
    pixels = clips(3, 5)
    with torch.no_grad():
        blocked = _video_outputs(model, "blocked", pixels, VIDEO_MASK)
        dense = _video_outputs(model, "dense", pixels, VIDEO_MASK)
    for got, expected in zip(blocked, dense):
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("options", ["paper", "patches without [CLS]"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_blocked_layout_gradients_equal_dense(backend, options):
    """Same gradients for every parameter and for the pixels (flex_attention has no backward on CPU)."""
    model = _model_with_temporal_branch(**LAYOUT_OPTIONS[options])
    model.set_attn_implementation(backend)
    pixels = clips(3, 5)
    grads = {}
    for layout in ("blocked", "dense"):
        model.zero_grad()
        pixels_in = pixels.clone().requires_grad_(True)
        tokens, pooled = _video_outputs(model, layout, pixels_in, VIDEO_MASK)
        weights = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1))
        ((tokens * weights).sum() + pooled.square().sum()).backward()
        grads[layout] = {
            name: p.grad.clone() for name, p in model.video_model.named_parameters() if p.grad is not None
        }
        grads[layout]["pixels"] = pixels_in.grad
    assert grads["blocked"].keys() == grads["dense"].keys()
    for name, expected in grads["dense"].items():  # fp32 sums of many terms: compared to each gradient's scale
        scale = max(1.0, expected.abs().max().item())
        assert (grads["blocked"][name] - expected).abs().max().item() <= ATOL * scale, name


def _flash_stand_in():
    """The pure-PyTorch flash stand-in of tests/models/test_attention_backends.py (varlen and padded calls), loaded
    from its file: that module is not importable by name when only these tests run."""
    path = Path(__file__).resolve().parents[1] / "test_attention_backends.py"
    spec = importlib.util.spec_from_file_location("_attention_backends_for_vidla", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VarlenReference()


def _module_name(model, module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


@pytest.mark.parametrize("options", ["paper", "patches see their frame only"])
def test_blocked_layout_runs_on_flash(monkeypatch, options):
    """Through a flash interface (the stand-in): the patches of the real frames in one unmasked call over their frame
    and the extra keys, the [CLS]/[MST] rows in packed varlen calls; equal to eager's dense layout."""
    fake = _flash_stand_in()
    monkeypatch.setitem(AttentionInterface._global_mapping, "flash_attention_2", fake)
    assert ALL_ATTENTION_FUNCTIONS.get_interface("flash_attention_2", None) is fake
    model = _model_with_temporal_branch(**LAYOUT_OPTIONS[options])
    vision = model.config.vision_config
    pixels = clips(3, 5)
    with torch.no_grad():
        model.set_attn_implementation("eager")
        expected = _video_outputs(model, "dense", pixels, VIDEO_MASK)
        model.config._attn_implementation = "flash_attention_2"  # set directly: flash-attn itself is not installed
        assert model.video_model.config._attn_implementation == "flash_attention_2"
        got = _video_outputs(model, "blocked", pixels, VIDEO_MASK)
    for tensor, reference in zip(got, expected):
        torch.testing.assert_close(tensor, reference, atol=ATOL, rtol=0)

    global_calls = [c for c in fake.calls if "temporal_attn" not in _module_name(model, c["module"])]
    num_head = 1 + vision.num_mst_tokens
    extra = num_head if vision.patches_attend_to_cls and vision.patches_attend_to_mst else 0
    per_frame = [c for c in global_calls if not c["varlen"]]
    assert len(per_frame) == vision.num_hidden_layers
    assert all(c["mask"] is None and (c["q_len"], c["kv_len"]) == (16, 16 + extra) for c in per_frame)
    head = [c for c in global_calls if c["varlen"]]  # every head key set excludes the padded frames here
    assert sum(c["cu_seq_lens_q"][-1] for c in head) == 3 * num_head * vision.num_hidden_layers
    assert max(c["max_length_k"] for c in head) <= num_head + 5 * 16
    assert len(fake.calls) > len(global_calls)  # the temporal attention ran on flash too


def test_blocked_layout_never_scores_all_tokens(monkeypatch):
    """No attention call of the blocked layout has all 1 + U·V + T·N tokens as queries."""
    calls = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def recording(module, query, key, *args, **kwargs):
        calls.append((query.shape[2], key.shape[2]))
        return sdpa(module, query, key, *args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", recording)
    model = _model_with_temporal_branch()
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        model.video_model(clips(2, 8))
    length = 1 + model.config.vision_config.num_mst_tokens + 8 * 16
    assert calls and max(q for q, _ in calls) < length
    assert max(q * k for q, k in calls) <= 16 * (16 + 7)


# bf16 results relative to their scale, as in tests/models/test_attention_backends.py (bf16 keeps 8 significant bits)
BF16_REL_TOL = 0.06


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "flex_attention", "flash_attention_2", "flash_attention_3"])
def test_blocked_layout_in_bf16_on_gpu(backend):
    """The blocked layout on a GPU kernel in bf16 (head_dim 64, which every flash generation supports) against fp32
    eager's dense layout, padded frames included."""
    available = getattr(transformers.utils, f"is_flash_attn_{backend[-1]}_available", lambda: False)
    if "flash" in backend and not available():
        pytest.skip(f"{backend} is not installed or this GPU cannot run it")
    model = _model_with_temporal_branch(hidden_size=128, intermediate_size=256, num_attention_heads=2).cuda()
    pixels, video_mask = clips(3, 5).cuda(), VIDEO_MASK.cuda()
    with torch.no_grad():
        model.set_attn_implementation("eager")
        expected = _video_outputs(model, "dense", pixels, video_mask)
        model.to(torch.bfloat16).set_attn_implementation(backend)
        got = _video_outputs(model, "blocked", pixels.to(torch.bfloat16), video_mask)
    for tensor, reference in zip(got, expected):
        assert (tensor.float() - reference).abs().max() <= BF16_REL_TOL * reference.abs().max()


# --------------------------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------------------------


def test_loss_is_symmetric_info_nce():
    torch.manual_seed(0)
    model = VidLAModel(tiny_vidla_config()).eval()
    input_ids, attention_mask = text_batch()
    with torch.no_grad():
        out = model(input_ids, clips(), attention_mask, return_loss=True)
        video = model.get_video_features(clips())
        text = model.get_text_features(input_ids, attention_mask)
    video, text = video / video.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    logits = text @ video.t() * model.logit_scale.exp()
    log_p_text = logits.log_softmax(dim=1).diagonal()
    log_p_video = logits.t().log_softmax(dim=1).diagonal()
    expected = -(log_p_text.mean() + log_p_video.mean())  # Eq. (3): both directions summed
    torch.testing.assert_close(out.logits_per_text, logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits_per_video, logits.t(), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.loss, expected, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# Conversion: transformers CLIPModel → VidLA Hub folder
# --------------------------------------------------------------------------------------------------------------------


def test_new_parameters_are_neutral():
    clip = tiny_clip()
    config = tiny_vidla_config()
    state_dict, dropped = vidla_from_clip.to_vidla(clip.state_dict())
    new = vidla_from_clip.new_parameters(config, state_dict)
    assert set(state_dict) | set(new) == set(VidLAModel(config).state_dict())
    assert not set(state_dict) & set(new)
    assert not new["video_model.embeddings.temporal_position_embedding"].any()
    for i in range(config.vision_config.num_hidden_layers):
        assert not new[f"video_model.layers.{i}.temporal_attn.o_proj.weight"].any()
        assert not new[f"video_model.layers.{i}.temporal_attn.o_proj.bias"].any()
    class_token = (
        state_dict["video_model.embeddings.class_embedding"]
        + state_dict["video_model.embeddings.position_embedding.weight"][0]
    )
    offset = new["video_model.embeddings.mst_embeddings"] - class_token
    assert 0 < offset.std() < 0.05
    assert not torch.equal(
        new["video_model.embeddings.mst_embeddings"][0], new["video_model.embeddings.mst_embeddings"][1]
    )


def test_unknown_keys_are_refused():
    state_dict = tiny_clip().state_dict()
    state_dict["classifier.weight"] = torch.zeros(2, 2)
    with pytest.raises(vidla_from_clip.ConversionError, match="classifier.weight"):
        vidla_from_clip.to_vidla(state_dict)


def test_convert_round_trip_loads_in_a_fresh_process(tmp_path):
    clip = tiny_clip()
    clip.save_pretrained(tmp_path / "clip")
    assert towerzoo_main(["convert", "vidla-from-clip", str(tmp_path / "clip"), str(tmp_path / "hub")]) == 0
    folder = tmp_path / "hub"
    verification = json.loads((folder / "verification.json").read_text())
    assert verification["max_abs_diff"] <= ATOL
    assert sorted(p.name for p in folder.glob("*.py")) == sorted(TestVidLA.expected_code_files)

    model = VidLAModel.from_pretrained(folder).eval()
    input_ids, attention_mask = text_batch()
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values_videos": clips(),
        "video_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]),
    }
    with torch.no_grad():
        expected = model(**inputs)
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import torch, transformers
        model = transformers.AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "VidLAModel" and "transformers_modules" in type(model).__module__
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            out = model(**inputs)
        torch.save({{"logits_per_text": out.logits_per_text, "video_embeds": out.video_embeds,
                     "text_embeds": out.text_embeds}}, {str(tmp_path / "outputs.pt")!r})
        """
    )
    run_without_towerzoo(script, tmp_path)
    outputs = torch.load(tmp_path / "outputs.pt")
    for name in ("logits_per_text", "video_embeds", "text_embeds"):
        torch.testing.assert_close(outputs[name], getattr(expected, name), atol=0, rtol=0)


def test_convert_refuses_non_clip_folders(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(vidla_from_clip.ConversionError, match="model_type='bert'"):
        vidla_from_clip.run(tmp_path, tmp_path / "out")


def test_convert_with_tokenizer_writes_the_processor(tmp_path):
    from towerzoo.tiny import build_tiny_clip_tokenizer, build_tiny_tokenizer

    tiny_clip().save_pretrained(tmp_path / "clip")
    clip_tokenizer = build_tiny_clip_tokenizer(tmp_path / "clip-tokenizer")
    folder = vidla_from_clip.run(tmp_path / "clip", tmp_path / "hub", tokenizer=clip_tokenizer)
    processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor).__name__ == "VidLAProcessor" and "transformers_modules" in type(processor).__module__
    config = VidLAModel.from_pretrained(folder).config
    assert processor.video_processor.size == config.vision_config.image_size
    frames = np.random.default_rng(0).integers(0, 255, (5, 40, 48, 3), dtype=np.uint8)
    out = processor(videos=[frames], text=["a cat"])
    assert (
        out["pixel_values_videos"].shape
        == (1, processor.video_processor.num_frames, 3) + (config.vision_config.image_size,) * 2
    )
    with pytest.raises(vidla_from_clip.ConversionError, match="needs the CLIP tokenizer"):
        vidla_from_clip.run(tmp_path / "clip", tmp_path / "hub2", tokenizer=build_tiny_tokenizer(tmp_path / "roberta"))
