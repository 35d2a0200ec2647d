"""A transformers `CLIPModel` checkpoint as the source of the architectures that start from CLIP (VidLA, RESTORE):
reading the folder, the towers' config fields, the reference model the conversions verify against."""

from pathlib import Path

import torch
import transformers
from transformers.initialization import no_init_weights

from towerzoo.conversions.common import ConversionError, load_state_dict_file, read_json

_SHARED_FIELDS = (
    "hidden_size intermediate_size num_hidden_layers num_attention_heads hidden_act layer_norm_eps".split()
)
_TEXT_FIELDS = "vocab_size max_position_embeddings attention_dropout pad_token_id bos_token_id eos_token_id".split()
_VISION_FIELDS = "image_size patch_size num_channels attention_dropout".split()


def read_clip_checkpoint(input_path: Path, converter: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json as a dict, state dict) of a `CLIPModel` folder or weights file; `converter` names the command in
    errors."""
    path = Path(input_path)
    folder = path if path.is_dir() else path.parent
    if not (folder / "config.json").is_file():
        raise ConversionError(f"no config.json next to {path}; a transformers CLIPModel checkpoint needs one.")
    clip_config = read_json(folder / "config.json")
    if clip_config.get("model_type") != "clip":
        raise ConversionError(
            f"config.json has model_type={clip_config.get('model_type')!r}, not 'clip': `{converter}` takes a "
            "transformers CLIPModel checkpoint."
        )
    return clip_config, load_state_dict_file(path)


def clip_config_object(clip_config: dict) -> transformers.CLIPConfig:
    return transformers.CLIPConfig(**{k: v for k, v in clip_config.items() if k != "architectures"})


def clip_tower_fields(clip_config: dict) -> dict:
    """`text_config`, `vision_config`, `projection_dim` and `logit_scale_init_value` for towerzoo's CLIP configs."""
    reference = clip_config_object(clip_config)
    text, vision = reference.text_config, reference.vision_config
    return {
        "text_config": {key: getattr(text, key) for key in _SHARED_FIELDS + _TEXT_FIELDS},
        "vision_config": {key: getattr(vision, key) for key in _SHARED_FIELDS + _VISION_FIELDS},
        "projection_dim": reference.projection_dim,
        "logit_scale_init_value": reference.logit_scale_init_value,
    }


def reference_clip(clip_config: dict, state_dict: dict[str, torch.Tensor]) -> transformers.CLIPModel:
    """transformers' `CLIPModel` holding the source weights (the conversions' reference)."""
    with no_init_weights():
        model = transformers.CLIPModel(clip_config_object(clip_config))
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ConversionError(f"the checkpoint does not fit transformers' CLIPModel: missing {missing[:5]}.")
    return model.eval()


def clip_features(output) -> torch.Tensor:
    """`get_*_features` return a tensor in older transformers and an output with `pooler_output` in newer ones."""
    return output.pooler_output if hasattr(output, "pooler_output") else output
