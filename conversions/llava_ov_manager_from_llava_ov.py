"""`towerzoo convert llava-ov-manager-from-llava-ov LLAVA_OV_DIR OUT`: a transformers LLaVA-OneVision checkpoint (e.g.
llava-hf/llava-onevision-qwen2-0.5b-si-hf) → a LLaVA-OV-Manager Hub folder on it, managers zero-initialised (the
starting point the Manager paper trains from).

Every key of the source lands under the same name (the model subclasses transformers' classes); the new weights are
the managers' (zeros) and the layer embeddings (N(0, 1/D), seeded). The check: the converted model's logits equal
transformers' `LlavaOnevisionForConditionalGeneration` on the source weights for a random image prompt (recorded in
`verification.json`). The source's processor files (`LlavaOnevisionProcessor`, a transformers class) are copied as
they are.
"""

from pathlib import Path

import torch
import transformers

from towerzoo.conversions.common import ConversionError, read_json
from towerzoo.conversions.hub_folder import write_hub_folder
from towerzoo.models.llava_ov_manager import (
    AUTO_CLASSES,
    LlavaOnevisionManagerConfig,
    LlavaOnevisionManagerForConditionalGeneration,
)

NEW_PARAMETERS = {
    r"^model\.managers\.\d+\.scores$": "zeros (the managers add nothing until trained)",
    r"^model\.manager_layer_embedding$": "N(0, 1/hidden_size), seeded",
}


def read_llava_ov(folder: Path) -> transformers.LlavaOnevisionForConditionalGeneration:
    """transformers' model on the source folder (its loader maps the Hub layout's key names)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConversionError(f"{folder} has no config.json; pass a transformers LLaVA-OneVision folder.")
    model_type = read_json(folder / "config.json").get("model_type")
    if model_type != "llava_onevision":
        raise ConversionError(
            f"config.json has model_type={model_type!r}, not 'llava_onevision': "
            "`llava-ov-manager-from-llava-ov` takes a transformers LlavaOnevisionForConditionalGeneration checkpoint."
        )
    try:
        return transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as error:
        raise ConversionError(
            f"cannot load {folder} as LLaVA-OneVision ({error}); the checkpoint is corrupt."
        ) from None


def manager_layers(vision_layers: int, llm_layers: int) -> dict:
    """The released layout (SigLIP hidden states 13 … 25 of 26 layers, LLM layers 0, 4, …, 20 of 24) carried over to
    other depths in proportion: the upper half of the vision tower, every 4th LLM layer over its first 5/6."""
    return {
        "manager_vision_layers": list(range(round(vision_layers / 2), vision_layers)),
        "manager_llm_layers": list(range(0, min(llm_layers - llm_layers // 6 + 1, llm_layers), 4)),
    }


def build_from_llava_ov(folder: Path, seed: int = 0, **manager_options):
    """(model, reference) from a LLaVA-OneVision folder; `manager_options` go to `LlavaOnevisionManagerConfig`
    (default layers: `manager_layers`)."""
    reference = read_llava_ov(folder).eval()
    fields = {
        k: v for k, v in reference.config.to_dict().items() if k not in ("model_type", "architectures", "auto_map")
    }
    depths = (reference.config.vision_config.num_hidden_layers, reference.config.text_config.num_hidden_layers)
    try:
        config = LlavaOnevisionManagerConfig(**fields, **{**manager_layers(*depths), **manager_options})
    except ValueError as error:
        raise ConversionError(str(error)) from None
    torch.manual_seed(seed)
    model = LlavaOnevisionManagerForConditionalGeneration(config)
    result = model.load_state_dict(reference.state_dict(), strict=False)
    missing = [key for key in result.missing_keys if "manager" not in key]
    if missing or result.unexpected_keys:
        raise ConversionError(
            f"LLaVA-OneVision's weights do not fit: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}."
        )
    return model.eval(), reference


@torch.no_grad()
def verify_against_llava_ov(model, reference, seed: int = 0) -> dict[str, float]:
    """Largest logit difference on a random image (base view + two AnyRes tiles) inside a random prompt."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    image_sizes = torch.tensor([[size + 3, 2 * size - 5]])
    pixel_values = torch.randn(1, 3, 3, size, size, generator=generator)
    num_tokens = sum(f.shape[0] for f in reference.model.get_image_features(pixel_values, image_sizes).pooler_output)
    vocab = config.text_config.vocab_size
    text = torch.randint(0, min(vocab, config.image_token_id), (1, 6), generator=generator)
    input_ids = torch.cat([text[:, :2], torch.full((1, num_tokens), config.image_token_id), text[:, 2:]], dim=1)
    inputs = {"input_ids": input_ids, "pixel_values": pixel_values, "image_sizes": image_sizes}
    return {"logits": float((model(**inputs).logits - reference(**inputs).logits).abs().max())}


# the files of a transformers LLaVA-OneVision processor (copied, not loaded: loading builds its video processor,
# which needs torchvision even for images)
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
)


def processor_files_in(folder: Path) -> list[Path]:
    """The processor files of `folder` (none unless it holds a processor or image-processor config)."""
    if not any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        return []
    return [folder / name for name in PROCESSOR_FILES if (folder / name).is_file()]


def run(
    input_path: Path,
    output_dir: Path,
    tokenizer: Path | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    labels: Path | None = None,
    tolerance: float = 1e-5,
) -> Path:
    """Build, verify against transformers' LLaVA-OneVision, and write the Hub folder."""
    if labels is not None:
        raise ConversionError("llava-ov-manager-from-llava-ov has no classifier; drop --labels.")
    model, reference = build_from_llava_ov(Path(input_path))
    diffs = verify_against_llava_ov(model, reference)
    worst = max(diffs.values())
    if not worst <= tolerance:
        raise ConversionError(f"the converted model differs from LLaVA-OneVision by {worst:.3g} (> {tolerance:g}).")
    processor_files = processor_files_in(Path(tokenizer or input_path))
    verification = {
        "source_format": "llava-ov-manager-from-llava-ov",
        "source": str(input_path),
        "reference": "transformers LlavaOnevisionForConditionalGeneration on the source weights (managers at zero)",
        "max_abs_diff": worst,
        "diffs": diffs,
        "new_parameters": NEW_PARAMETERS,
    }
    return write_hub_folder(
        model,
        output_dir,
        exposed=AUTO_CLASSES,
        verification=verification,
        extra_files=processor_files,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
    )
