"""`towerzoo convert llava-ov-manager-original`: tiny released-layout folders (the fork's key names, a LLaVA-NeXT
config.json, a local SigLIP config for `mm_vision_tower`), written from a tiny towerzoo model by inverting the key
table, convert back to the same weights and logits, pass the verification against the fork's forward pass, and bad
folders fail with one line and write nothing."""

import json
import re

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from towerzoo.cli import main as towerzoo_main
from towerzoo.conversions import llava_ov_manager_original as original
from towerzoo.conversions.common import ConversionError
from towerzoo.models.llava_ov_manager import LlavaOnevisionManagerConfig, LlavaOnevisionManagerForConditionalGeneration

VISION = "model.vision_tower.vision_tower.vision_model."
IMAGE_TOKEN, VIDEO_TOKEN = 98, 99  # the tokenizer's 98 words, then <image> and <video> added by the converter
SIZE = 56  # 4×4 patches of 14
FORK_PINPOINTS = [[56, 56], [112, 56]]  # (width, height), as the fork lists them: 1×1 or two tiles side by side
TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "max_position_embeddings": 256,
}
VISION_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 5,
    "num_attention_heads": 4,
    "image_size": SIZE,
    "patch_size": 14,
}
VISION_LAYERS, LLM_LAYERS = [2, 3, 4], [0, 2]

# towerzoo prefix → the fork's, the inverse of the converter's table (managers separately)
TO_FORK = [
    ("model.vision_tower.", VISION),
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("model.language_model.", "model."),
    ("model.image_newline", "model.image_newline"),
    ("model.manager_layer_embedding", "model.manager_layer_embedding"),
    ("lm_head.weight", "lm_head.weight"),
]


def tiny_model(anyres: bool, grid: str = "all", tied: bool = False, seed: int = 0):
    config = LlavaOnevisionManagerConfig(
        text_config={"model_type": "qwen2", **TEXT, "tie_word_embeddings": tied},
        vision_config={"model_type": "siglip_vision_model", **VISION_CONFIG, "vision_use_head": False},
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=[[h, w] for w, h in FORK_PINPOINTS] if anyres else [[SIZE, SIZE]],
        vision_aspect_ratio="anyres_max_1" if anyres else "anyres_max_9",  # max 1 tile: the fork's shrinking runs
        image_token_index=IMAGE_TOKEN,
        video_token_index=VIDEO_TOKEN,
        tie_word_embeddings=tied,
        manager_vision_layers=VISION_LAYERS,
        manager_llm_layers=LLM_LAYERS,
        manager_grid=grid,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionManagerForConditionalGeneration(config).eval()
    with torch.no_grad():
        for manager in model.model.managers.values():
            manager.scores.normal_()
        if not anyres:
            model.model.image_newline.zero_()  # a square checkpoint has none: the converter adds zeros
    return model


def to_fork(model) -> dict[str, torch.Tensor]:
    """The towerzoo state dict under the fork's names, as a released folder stores it."""
    state = {}
    for key, tensor in model.state_dict().items():
        if match := re.match(r"^model\.managers\.(\d+)\.scores$", key):
            state[f"model.manager.{LLM_LAYERS.index(int(match[1]))}.layer_scores"] = tensor.clone()
            continue
        prefix, fork = next((p, f) for p, f in TO_FORK if key.startswith(p))
        state[fork + key[len(prefix) :]] = tensor.clone()
    if model.config.tie_word_embeddings:
        del state["lm_head.weight"]  # safetensors keeps one copy of tied tensors
    return state


def fork_config(anyres: bool, grid: str, tied: bool, tower: str) -> dict:
    return {
        "architectures": ["LlavaQwenManagerForCausalLM"],
        "model_type": "llava_qwen_manager",
        **TEXT,
        "tie_word_embeddings": tied,
        "use_sliding_window": False,
        "torch_dtype": "float32",
        "mm_hidden_size": 32,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_tower": tower,
        "mm_vision_select_layer": -2,
        "mm_patch_merge_type": "spatial_unpad" if anyres else "flat",
        "image_aspect_ratio": "anyres_max_1" if anyres else "square",
        "image_grid_pinpoints": FORK_PINPOINTS if anyres else None,
        "mm_manager_type": "static_zerouni",
        "mm_manager_grid_type": grid,
        "mm_manager_vision_select_layers_start": 2,
        "mm_manager_vision_select_layers_interval": 1,
        "mm_manager_vision_select_layers_end": 5,
        "mm_manager_injection_start": 0,
        "mm_manager_injection_interval": 2,
        "mm_manager_injection_end": 4,
        "mm_manager_residual": True,
        "mm_manager_select_layer_index_list": VISION_LAYERS,
        "mm_manager_index_list": LLM_LAYERS,
        "tokenizer_padding_side": "right",
    }


def write_released(folder, model, anyres: bool, grid: str = "all", tied: bool = False, extra: bool = True):
    """A released-layout folder (and the local SigLIP config its `mm_vision_tower` names) for `model`."""
    tower = folder.parent / f"{folder.name}-siglip"
    tower.mkdir(parents=True)
    (tower / "config.json").write_text(json.dumps({"model_type": "siglip", "vision_config": VISION_CONFIG}))
    state = to_fork(model)
    if not anyres:
        del state["model.image_newline"]  # "flat" merging: the fork builds no newline
    if extra:  # tensors a released folder may carry that the converter drops
        state[f"{VISION}head.probe"] = torch.zeros(1, 1, 32)
        state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(fork_config(anyres, grid, tied, str(tower))))
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A word-level tokenizer of 98 words (no <image>/<video>: the converter adds them as 98 and 99)."""
    vocab = {f"w{i}": i for i in range(97)} | {"<unk>": 97}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path_factory.mktemp("tokenizer")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>").save_pretrained(folder)
    return folder


def anyres_inputs(model, seed: int = 0) -> dict:
    """One wide image (two tiles) inside a prompt, as transformers' processor lays it out."""
    generator = torch.Generator().manual_seed(seed)
    image_sizes = torch.tensor([[71, 143]])
    pixel_values = torch.randn(1, 3, 3, SIZE, SIZE, generator=generator)
    count = model.model.get_image_features(pixel_values, image_sizes).pooler_output[0].shape[0]
    words = torch.randint(0, IMAGE_TOKEN, (5,), generator=generator).tolist()
    input_ids = torch.tensor([words[:2] + [IMAGE_TOKEN] * count + words[2:]])
    return {"input_ids": input_ids, "pixel_values": pixel_values, "image_sizes": image_sizes}


def square_inputs(model, seed: int = 0) -> dict:
    """Two prompts with one image each in the fork's square layout (16 tokens, no newline)."""
    generator = torch.Generator().manual_seed(seed)
    outputs = original.square_image_outputs(model, torch.randn(2, 3, SIZE, SIZE, generator=generator))
    rows = [[1, 2] + [IMAGE_TOKEN] * 16 + [3, 4, 5], [6, 7] + [IMAGE_TOKEN] * 16 + [8, 9, 10]]
    return {"input_ids": torch.tensor(rows), "mm_encoder_outputs": {"image": outputs}}


def assert_same_model(converted, source) -> None:
    ours, theirs = converted.state_dict(), source.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


# --------------------------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", ["all", "main"])
def test_anyres_folder_round_trip(tmp_path, tokenizer_dir, grid, capsys):
    source = tiny_model(anyres=True, grid=grid)
    released = write_released(tmp_path / "released", source, anyres=True, grid=grid)
    out = tmp_path / "out"
    argv = ["convert", "llava-ov-manager-original", str(released), str(out), "--tokenizer", str(tokenizer_dir)]
    assert towerzoo_main(argv) == 0, capsys.readouterr().err
    converted = LlavaOnevisionManagerForConditionalGeneration.from_pretrained(out).eval()
    assert_same_model(converted, source)
    assert converted.config.image_grid_pinpoints == [[56, 56], [56, 112]]  # (height, width), transposed
    assert (converted.config.image_token_index, converted.config.video_token_index) == (IMAGE_TOKEN, VIDEO_TOKEN)
    inputs = anyres_inputs(source)
    assert inputs["input_ids"].shape[1] > 16 + 5  # base view + the unpadded, shrunk tiles with their newlines
    with torch.no_grad():
        assert torch.equal(converted(**inputs).logits, source(**inputs).logits)
    verification = json.loads((out / "verification.json").read_text())
    compared = {f"{layout}_{output}" for layout in ("square", "anyres") for output in ("hidden", "logits", "managers")}
    assert set(verification["max_abs_diff_per_output"]) == compared
    assert verification["max_abs_diff"] < 1e-5
    assert set(verification["dropped_keys"]) == {f"{VISION}head.probe", "model.layers.0.self_attn.rotary_emb.inv_freq"}
    assert any("<image> added" in note for note in verification["assumptions"])
    assert any("heads = 4" in note for note in verification["assumptions"])


def test_square_tied_folder_round_trip(tmp_path, tokenizer_dir):
    source = tiny_model(anyres=False, tied=True)
    released = write_released(tmp_path / "released", source, anyres=False, tied=True, extra=False)
    out = original.run(released, tmp_path / "out", tokenizer=tokenizer_dir)
    converted = LlavaOnevisionManagerForConditionalGeneration.from_pretrained(out).eval()
    assert_same_model(converted, source)
    assert converted.config.tie_word_embeddings and converted.config.image_grid_pinpoints == [[SIZE, SIZE]]
    assert converted.lm_head.weight.data_ptr() == converted.model.language_model.embed_tokens.weight.data_ptr()
    inputs = square_inputs(source)
    with torch.no_grad():
        assert torch.equal(converted(**inputs).logits, source(**inputs).logits)
    verification = json.loads((out / "verification.json").read_text())
    assert set(verification["max_abs_diff_per_output"]) == {"square_hidden", "square_logits", "square_managers"}
    assert verification["max_abs_diff"] < 1e-5
    assert list(verification["new_parameters"]) == ["model.image_newline"]
    assert not any(name.endswith("lm_head.weight") for name in verification["dropped_keys"])


def test_reference_follows_the_fork_layout_and_managers(tmp_path):
    """The reference's square layout has 16 tokens per image and no newline, and its manager contributions are the
    hand computation Σ_u s_u ⊙ (projector(vision layer u) + e_u) (layer 0 without the last expert)."""
    source = tiny_model(anyres=False)
    state = to_fork(source)
    (tmp_path / "config.json").write_text(json.dumps(VISION_CONFIG))  # a local SigLIP (vision) config
    layout = original.infer_layout(fork_config(False, "all", False, str(tmp_path)), state)
    inputs = square_inputs(source)
    pixels = torch.randn(2, 1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    _, contributions = original.reference_forward(state, layout, inputs["input_ids"], IMAGE_TOKEN, list(pixels))
    with torch.no_grad():
        hidden = source.model.vision_tower(pixels[:, 0], output_hidden_states=True).hidden_states
        experts = [
            source.model.multi_modal_projector(hidden[u]) + source.model.manager_layer_embedding[i]
            for i, u in enumerate(VISION_LAYERS)
        ]
        for layer in LLM_LAYERS:
            scores = source.model.managers[str(layer)].scores[0, :, 0]
            expected = sum(scores[u] * experts[u] for u in range(scores.shape[0])).flatten(0, 1)
            assert contributions[layer].shape == (2 * 16, 32)
            assert torch.allclose(contributions[layer], expected, atol=1e-5)


def test_verification_catches_a_wrong_table(tmp_path, tokenizer_dir, monkeypatch):
    """Swapping the projector's two (same-shaped) linears loads strictly but no longer matches the fork."""
    source = tiny_model(anyres=False)
    released = write_released(tmp_path / "released", source, anyres=False)
    swapped = {
        r"^model\.mm_projector\.0\.": "model.multi_modal_projector.linear_2.",
        r"^model\.mm_projector\.2\.": "model.multi_modal_projector.linear_1.",
    }
    table = [(pattern, swapped.get(pattern, rename)) for pattern, rename in original.KEY_TABLE]
    monkeypatch.setattr(original, "KEY_TABLE", table)
    with pytest.raises(ConversionError, match="differs from the fork's forward pass"):
        original.run(released, tmp_path / "out", tokenizer=tokenizer_dir)
    assert not (tmp_path / "out").exists()


def test_align_processor_gives_the_processor_the_model_grid():
    image_processor = type("ImageProcessor", (), {"image_grid_pinpoints": [[384, 384], [384, 768]]})()
    processor = type("Processor", (), {"image_processor": image_processor, "vision_aspect_ratio": "anyres_max_9"})()
    processor.num_image_tokens, processor.vision_feature_select_strategy = 16, "full"
    layout = original.ReleasedLayout(
        text={},
        vision={"image_size": SIZE, "patch_size": 14},
        vision_layers=VISION_LAYERS,
        llm_layers=LLM_LAYERS,
        grid="all",
        aspect_ratio="square",
        pinpoints=None,
        tied=False,
    )
    notes = original.align_processor(processor, layout)
    assert image_processor.image_grid_pinpoints == [[SIZE, SIZE]]
    assert len(notes) == 1 and "image_grid_pinpoints" in notes[0]


# --------------------------------------------------------------------------------------------------------------------
# Bad folders: one line on stderr, nothing written
# --------------------------------------------------------------------------------------------------------------------


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def _drop_key(folder, key):
    state = load_file(str(folder / "model.safetensors"))
    del state[key]
    save_file(state, str(folder / "model.safetensors"))


BAD = {
    "adaptive": (lambda f: _edit_config(f, mm_manager_type="adaptive_cross_zerouni"), "not implemented"),
    "missing_key": (lambda f: _drop_key(f, "model.layers.1.mlp.up_proj.weight"), "missing keys (1)"),
    "corrupt": (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64), "corrupt or truncated"),
    "other_model": (lambda f: _edit_config(f, model_type="llava_qwen"), "not 'llava_qwen_manager'"),
    "no_safetensors": (lambda f: (f / "model.safetensors").unlink(), "only safetensors are read"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_folders_fail_in_one_line(tmp_path, tokenizer_dir, capsys, case):
    edit, message = BAD[case]
    released = write_released(tmp_path / "released", tiny_model(anyres=False), anyres=False)
    edit(released)
    out = tmp_path / "out"
    argv = ["convert", "llava-ov-manager-original", str(released), str(out), "--tokenizer", str(tokenizer_dir)]
    assert towerzoo_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_token_ids_must_fit_the_embeddings(tmp_path):
    released = write_released(tmp_path / "released", tiny_model(anyres=False), anyres=False)
    with pytest.raises(ConversionError, match="do not fit the 100-row embeddings"):
        original.run(released, tmp_path / "out")  # no --tokenizer: transformers' 151646 / 151647
    assert not (tmp_path / "out").exists()
