"""`towerzoo convert vidla-from-clip`: a transformers `CLIPModel` checkpoint → a VidLA Hub folder initialised from it
(the paper's starting point, VidLA Sec. 4 and 5: both towers from CLIP).

Input: a folder with `config.json` and `model.safetensors` (or sharded safetensors / `pytorch_model.bin`) of
transformers' `CLIPModel`. Every CLIP key is renamed through `clip_weights.CLIP_KEY_RULES` or dropped by a rule that says why;
VidLA's new parameters are filled so that the model starts as CLIP (`new_parameters`):
  * temporal position embeddings: zero (a frame carries only CLIP's spatial position);
  * temporal attention: q/k/v drawn as CLIP's own attention init (N(0, width^-1/2)), LayerNorm at (1, 0), output
    projection weight and bias zero, so the temporal branch adds nothing until trained;
  * [MST] tokens: CLIP's class token input (class embedding + spatial position 0) plus N(0, 0.02²) noise from a fixed
    seed, so each starts as a [CLS]-like summary and the tokens of a level are not identical (identical tokens under
    identical masks would get identical gradients forever). The paper initialises the [MST] tokens randomly
    (Sec. 4); starting them at the class token's input keeps them on the scale CLIP's first LayerNorm and attention
    were trained for, which is the "start as CLIP" point of the conversion.
The check runs transformers' `CLIPModel` on the source weights and the converted model with one frame and the [MST]
tokens switched off (same weights otherwise), and records the largest difference in `verification.json`.
"""

from pathlib import Path

import torch
import transformers
from transformers.initialization import no_init_weights

from towerzoo.conversions.clip_source import clip_features, clip_tower_fields, read_clip_checkpoint, reference_clip
from towerzoo.conversions.common import ConversionError, load_strict
from towerzoo.conversions.hub_folder import write_hub_folder
from towerzoo.models.vidla import AUTO_CLASSES, VidLAConfig, VidLAModel, VidLAProcessor
from towerzoo.models.vidla.clip_weights import rename_clip_weights
from towerzoo.models.vidla.video_processing_vidla import VidLAVideoProcessor

# New VidLA parameters and how they start (see the module docstring).
NEW_PARAMETERS = {
    r"^video_model\.embeddings\.temporal_position_embedding$": "zeros",
    r"^video_model\.embeddings\.mst_embeddings$": "class token + N(0, 0.02^2)",
    r"^video_model\.layers\.\d+\.temporal_layer_norm\.weight$": "ones",
    r"^video_model\.layers\.\d+\.temporal_layer_norm\.bias$": "zeros",
    r"^video_model\.layers\.\d+\.temporal_attn\.[qkv]_proj\.weight$": "N(0, width^-1/2)",
    r"^video_model\.layers\.\d+\.temporal_attn\.[qkv]_proj\.bias$": "zeros",
    r"^video_model\.layers\.\d+\.temporal_attn\.o_proj\.(weight|bias)$": "zeros",
}
MST_NOISE_STD = 0.02


def to_vidla(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename every CLIP key (`clip_weights.CLIP_KEY_RULES`); return (renamed state dict, {dropped key: reason}).
    Unknown keys raise."""
    renamed, dropped, unknown = rename_clip_weights(state_dict, vision_prefix="video_model")
    if unknown:
        raise ConversionError(
            f"{len(unknown)} key(s) of the checkpoint have no place in VidLA: {', '.join(unknown[:6])}. Is this a "
            "transformers CLIPModel checkpoint (not CLIPVisionModel/CLIPTextModel or a fine-tuned head)?"
        )
    return renamed, dropped


def new_parameters(config: VidLAConfig, state_dict: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """VidLA's parameters that CLIP lacks, initialised so that the model starts as CLIP."""
    vision = config.vision_config
    width, generator = vision.hidden_size, torch.Generator().manual_seed(seed)
    dtype = state_dict["video_model.embeddings.class_embedding"].dtype
    class_token = (
        state_dict["video_model.embeddings.class_embedding"]
        + state_dict["video_model.embeddings.position_embedding.weight"][0]
    )
    noise = torch.randn(vision.num_mst_tokens, width, generator=generator) * MST_NOISE_STD
    new = {
        "video_model.embeddings.temporal_position_embedding": torch.zeros(vision.num_frames, width, dtype=dtype),
        "video_model.embeddings.mst_embeddings": (class_token.float() + noise).to(dtype),
    }
    if vision.temporal_attention:
        for i in range(vision.num_hidden_layers):
            prefix = f"video_model.layers.{i}.temporal_"
            new[prefix + "layer_norm.weight"] = torch.ones(width, dtype=dtype)
            new[prefix + "layer_norm.bias"] = torch.zeros(width, dtype=dtype)
            for name in ("q_proj", "k_proj", "v_proj"):
                weight = torch.randn(width, width, generator=generator) * width**-0.5
                new[f"{prefix}attn.{name}.weight"] = weight.to(dtype)
                new[f"{prefix}attn.{name}.bias"] = torch.zeros(width, dtype=dtype)
            new[prefix + "attn.o_proj.weight"] = torch.zeros(width, width, dtype=dtype)
            new[prefix + "attn.o_proj.bias"] = torch.zeros(width, dtype=dtype)
    return new


def config_from_clip(clip_config: dict, **vision_overrides) -> VidLAConfig:
    """VidLA's config from a transformers `CLIPConfig` dict (temporal settings: the paper's defaults)."""
    fields = clip_tower_fields(clip_config)
    fields["vision_config"].update(vision_overrides)
    return VidLAConfig(**fields)


@torch.no_grad()
def verify_against_clip(model: VidLAModel, reference: transformers.CLIPModel, seed: int = 0) -> dict[str, float]:
    """Largest differences between CLIP and VidLA (one frame, [MST] tokens off, same weights) on random inputs."""
    config = model.config
    without_mst = {**config.vision_config.to_dict(), "mst_num_levels": 0}
    with no_init_weights():
        single = VidLAModel(VidLAConfig(**{**config.to_dict(), "vision_config": without_mst})).eval()
    state = {k: v for k, v in model.state_dict().items() if k != "video_model.embeddings.mst_embeddings"}
    result = single.load_state_dict(state, strict=False)
    assert result.missing_keys == ["video_model.embeddings.mst_embeddings"] and not result.unexpected_keys
    generator = torch.Generator().manual_seed(seed)
    vision, text = config.vision_config, config.text_config
    pixels = torch.randn(2, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
    length = min(text.max_position_embeddings, 12)
    input_ids = torch.randint(0, text.vocab_size, (2, length), generator=generator)
    input_ids[input_ids == text.eos_token_id] = 0
    input_ids[:, -1] = text.eos_token_id
    input_ids[1, length // 2] = text.eos_token_id  # the second text ends early; the rest is padding
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, length // 2 + 1 :] = 0
    video = single.get_video_features(pixels[:, None])
    text_features = single.get_text_features(input_ids, attention_mask)
    return {
        "video_features": float(
            (clip_features(reference.get_image_features(pixel_values=pixels)) - video).abs().max()
        ),
        "text_features": float(
            (
                clip_features(reference.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
                - text_features
            )
            .abs()
            .max()
        ),
    }


def build_processor(tokenizer_dir: Path, config: VidLAConfig, num_frames: int = 12) -> VidLAProcessor:
    """The folder's processor: CLIP's tokenizer from `tokenizer_dir` and the video processor at the model's image
    size, sampling `num_frames` frames uniformly (the paper pre-trains with 12; pass `num_frames` at call time for
    32-frame fine-tuning)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if "CLIP" not in type(tokenizer).__name__:
        raise ConversionError(
            f"{tokenizer_dir} holds a {type(tokenizer).__name__}; VidLA's text tower is CLIP's and needs the CLIP "
            "tokenizer of the source checkpoint (e.g. the folder of openai/clip-vit-base-patch16)."
        )
    video_processor = VidLAVideoProcessor(num_frames=num_frames, size=config.vision_config.image_size)
    max_length = min(77, config.text_config.max_position_embeddings)
    return VidLAProcessor(video_processor, tokenizer, max_text_length=max_length)


def run(
    input_path: Path,
    output_dir: Path,
    tokenizer: Path | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    labels: Path | None = None,
    tolerance: float = 1e-4,
) -> Path:
    """Convert, verify against transformers' CLIPModel, and write the Hub folder."""
    if labels is not None:
        raise ConversionError("vidla-from-clip makes a contrastive model without a classifier; drop --labels.")
    clip_config, source = read_clip_checkpoint(input_path, "vidla-from-clip")
    config = config_from_clip(clip_config)
    state_dict, dropped = to_vidla(source)
    state_dict.update(new_parameters(config, state_dict))
    with no_init_weights():
        model = VidLAModel(config)
    load_strict(model, state_dict, source=str(input_path))
    model.eval()
    diffs = verify_against_clip(model, reference_clip(clip_config, source))
    worst = max(diffs.values())
    if not worst <= tolerance:
        raise ConversionError(
            f"the converted model differs from transformers' CLIPModel by {worst:.3g} (> {tolerance:g}): {diffs}."
        )
    processor = build_processor(Path(tokenizer), config) if tokenizer is not None else None
    verification = {
        "source_format": "vidla-from-clip",
        "source": str(input_path),
        "reference": "transformers CLIPModel (one frame, [MST] tokens off)",
        "max_abs_diff": worst,
        "diffs": diffs,
        "dropped_keys": dropped,
        "new_parameters": NEW_PARAMETERS,
    }
    return write_hub_folder(
        model,
        output_dir,
        exposed=AUTO_CLASSES,
        processor=processor,
        verification=verification,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
    )
