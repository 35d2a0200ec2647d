"""On a CUDA device (`pytest -m gpu`): RESTORE, Zipper and LLaVA-OV-Manager in bf16 on every attention backend the
machine has (sdpa — its flash/cuDNN kernels —, flex_attention, flash_attention_2 where flash-attn is installed) agree
with their own fp32 eager outputs within bf16 tolerance. Skipped without CUDA."""

import pytest
import torch

BACKENDS = ("eager", "sdpa", "flex_attention", "flash_attention_2")


def _restore():
    from towerzoo.models.restore import RestoreConfig, RestoreForImageClassification

    text = {"vocab_size": 99, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
            "num_attention_heads": 4, "max_position_embeddings": 16, "pad_token_id": 1, "bos_token_id": 97,
            "eos_token_id": 98}  # fmt: skip
    vision = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    config = RestoreConfig(
        text_config=text, vision_config=vision, projection_dim=32, prompt_depth=3, surgery_zero_init=False
    )
    model = RestoreForImageClassification(config)
    input_ids = torch.randint(2, 97, (4, 10))
    input_ids[:, 0], input_ids[:, -1] = 97, 98
    inputs = {"pixel_values": torch.randn(3, 3, 32, 32), "input_ids": input_ids}
    return model, inputs, lambda out: out.logits


def _zipper():
    from towerzoo.models.zipper import ZipperConfig, ZipperForConditionalGeneration

    def tower(vocab, width):
        return {"model_type": "llama", "vocab_size": vocab, "hidden_size": width, "intermediate_size": 2 * width,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "bos_token_id": 1,
                "eos_token_id": 2, "pad_token_id": 0}  # fmt: skip

    model = ZipperForConditionalGeneration(ZipperConfig(text_config=tower(40, 64), speech_config=tower(30, 96)))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 0:
                parameter.fill_(0.8)  # open the gates: the cross-attention must be exercised
    source = torch.randint(3, 27, (2, 9))
    mask = torch.ones_like(source)
    mask[1, 6:] = 0
    inputs = {"input_ids": torch.randint(3, 27, (2, 7)), "source_input_ids": source, "source_attention_mask": mask}
    return model, inputs, lambda out: out.logits


def _llava():
    from towerzoo.models.llava_ov_manager import (
        LlavaOnevisionManagerConfig,
        LlavaOnevisionManagerForConditionalGeneration,
    )

    config = LlavaOnevisionManagerConfig(
        text_config={"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100},
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 64, "num_hidden_layers": 5,
                       "num_attention_heads": 4, "intermediate_size": 128, "image_size": 28, "patch_size": 14},
        image_token_index=99, image_grid_pinpoints=[[28, 28], [28, 56]], manager_vision_layers=[2, 3, 4],
        manager_llm_layers=[0, 2],
    )  # fmt: skip
    model = LlavaOnevisionManagerForConditionalGeneration(config)
    with torch.no_grad():
        for manager in model.model.managers.values():
            manager.scores.normal_()
    pixel_values, image_sizes = torch.randn(1, 3, 3, 28, 28), torch.tensor([[30, 50]])
    tokens = sum(f.shape[0] for f in model.model.get_image_features(pixel_values, image_sizes).pooler_output)
    input_ids = torch.tensor([[5, 6] + [99] * tokens + [7, 8]])
    inputs = {"input_ids": input_ids, "pixel_values": pixel_values, "image_sizes": image_sizes, "use_cache": False}
    return model, inputs, lambda out: out.logits


ARCHITECTURES = {"restore": _restore, "zipper": _zipper, "llava_ov_manager": _llava}


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bf16_backend_matches_fp32_eager(architecture, backend):
    if backend == "flash_attention_2":
        pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    torch.manual_seed(0)
    model, inputs, output = ARCHITECTURES[architecture]()
    device = torch.device("cuda")
    model = model.to(device).eval()
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    with torch.no_grad():
        model.set_attn_implementation("eager")
        reference = output(model(**inputs)).float()
        model.to(torch.bfloat16)
        model.set_attn_implementation(backend)
        floats = {
            k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items() if torch.is_tensor(v)
        }
        got = output(model(**{**inputs, **floats})).float()
    scale = reference.abs().max().item()
    assert (got - reference).abs().max().item() <= 0.05 * max(scale, 1.0), f"{architecture} on {backend} in bf16"
