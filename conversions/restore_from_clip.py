"""`towerzoo convert restore-from-clip CLIP_DIR OUT --classnames FILE`: a transformers `CLIPModel` checkpoint → a
RESTORE Hub folder built on it (RESTORE starts from frozen CLIP and learns prompts and surgery blocks only).

CLIP's weights are renamed through `clip_weights.CLIP_KEY_RULES` (every key used, or dropped with its reason);
RESTORE's own parameters start as the official code starts them (`RestoreForImageClassification._init_weights`, seeded):
text context from the template's word embeddings, deep text prompts N(0, 0.02²), the prompt maps and the surgery's
first layer as nn.Linear's default U(±1/sqrt(fan_in)), the surgery's output projection at zero (towerzoo's choice). The class prompts come from the class
names file through CLIP's tokenizer. The check: with prompts off, logits equal transformers' `CLIPModel` zero-shot
logits on the template prompts ("a photo of a {class}."), recorded in `verification.json`.
"""

from pathlib import Path

import torch
import transformers

from towerzoo.conversions.clip_source import clip_tower_fields, read_clip_checkpoint, reference_clip
from towerzoo.conversions.common import ConversionError
from towerzoo.conversions.hub_folder import write_hub_folder
from towerzoo.evaluation.classification_data import read_classnames
from towerzoo.models.restore import AUTO_CLASSES, RestoreConfig, RestoreForImageClassification, RestoreProcessor

NEW_PARAMETERS = {
    r"^prompt_learner\.text_context$": "template word embeddings (prompt_init='template') or N(0, 0.02^2)",
    r"^prompt_learner\.text_deep$": "N(0, 0.02^2)",
    r"^prompt_learner\.vision_projections\.\d+\.(weight|bias)$": "U(+-1/sqrt(fan_in)) (nn.Linear's default)",
    r"^(text|vision)_surgery\.fc1\.(weight|bias)$": "U(+-1/sqrt(fan_in)) (nn.Linear's default)",
    r"^(text|vision)_surgery\.fc2\.(weight|bias)$": "zeros (surgery_zero_init)",
    r"^(text|vision)_surgery\.layer_norm\.(weight|bias)$": "ones / zeros",
}


def build_processor(tokenizer_dir: Path, image_size: int) -> RestoreProcessor:
    """CLIP's tokenizer from `tokenizer_dir` and its image processor (the folder's own, or CLIP's defaults at
    `image_size`)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if "CLIP" not in type(tokenizer).__name__:
        raise ConversionError(
            f"{tokenizer_dir} holds a {type(tokenizer).__name__}; RESTORE's text tower is CLIP's and needs the CLIP "
            "tokenizer of the source checkpoint (pass --tokenizer with the CLIP folder)."
        )
    if (Path(tokenizer_dir) / "preprocessor_config.json").is_file():
        image_processor = transformers.CLIPImageProcessor.from_pretrained(str(tokenizer_dir))
    else:
        image_processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    return RestoreProcessor(image_processor, tokenizer)


def build_from_clip(
    clip_dir: Path,
    classnames: list[str],
    tokenizer_dir: Path | None = None,
    seed: int = 0,
    **config_overrides,
) -> tuple[RestoreForImageClassification, RestoreProcessor, dict[str, str]]:
    """(model, processor, dropped keys) built from a `CLIPModel` folder; `config_overrides` go to `RestoreConfig`
    (e.g. `num_prompt_tokens=0`). The tokenizer is read from `tokenizer_dir` (default: the CLIP folder)."""
    clip_config, source = read_clip_checkpoint(clip_dir, "restore-from-clip")
    folder = Path(clip_dir) if Path(clip_dir).is_dir() else Path(clip_dir).parent
    config_overrides.setdefault("base_model_name_or_path", str(folder.resolve()))
    fields = clip_tower_fields(clip_config)
    depth = min(fields["text_config"]["num_hidden_layers"], fields["vision_config"]["num_hidden_layers"])
    config_overrides.setdefault("prompt_depth", min(RestoreConfig().prompt_depth, depth))  # shallow test towers
    config = RestoreConfig(**fields, classnames=classnames, **config_overrides)
    processor = build_processor(Path(tokenizer_dir or folder), config.vision_config.image_size)
    torch.manual_seed(seed)
    model = RestoreForImageClassification(config)
    try:
        dropped = model.load_clip_weights(source)
        model.set_classnames(classnames, processor)
    except ValueError as error:
        raise ConversionError(str(error)) from None
    model.start_context_from_template()
    return model.eval(), processor, dropped


@torch.no_grad()
def verify_against_clip(
    model: RestoreForImageClassification, reference: transformers.CLIPModel, processor: RestoreProcessor, seed: int = 0
) -> dict[str, float]:
    """Largest difference between the model's zero-shot logits and transformers' `CLIPModel` logits on the template
    prompts of every class, on random images."""
    size = model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, model.config.vision_config.num_channels, size, size, generator=generator)
    input_ids, attention_mask = model.class_prompts()
    expected = reference(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels).logits_per_image
    logits = model(pixel_values=pixels, zero_shot=True).logits
    return {"zero_shot_logits": float((expected - logits).abs().max())}


def run(
    input_path: Path,
    output_dir: Path,
    tokenizer: Path | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    labels: Path | None = None,
    classnames: Path | None = None,
    adapters_only: bool = False,
    tolerance: float = 1e-4,
) -> Path:
    """Build, verify against transformers' CLIPModel, and write the Hub folder."""
    if labels is not None:
        raise ConversionError(
            "restore-from-clip builds its classifier from class names: pass --classnames, not --labels."
        )
    if classnames is None:
        raise ConversionError("restore-from-clip needs --classnames FILE (one class name per line).")
    try:
        names = read_classnames(Path(classnames))
    except ValueError as error:
        raise ConversionError(str(error)) from None
    model, processor, dropped = build_from_clip(Path(input_path), names, tokenizer)
    clip_config, source = read_clip_checkpoint(input_path, "restore-from-clip")
    diffs = verify_against_clip(model, reference_clip(clip_config, source), processor)
    worst = max(diffs.values())
    if not worst <= tolerance:
        raise ConversionError(
            f"the converted model differs from transformers' CLIPModel by {worst:.3g} (> {tolerance:g}): {diffs}."
        )
    verification = {
        "source_format": "restore-from-clip",
        "source": str(input_path),
        "reference": "transformers CLIPModel zero-shot logits on the template prompts (prompts and surgery off)",
        "max_abs_diff": worst,
        "diffs": diffs,
        "dropped_keys": dropped,
        "new_parameters": NEW_PARAMETERS,
        "classnames": names,
    }
    return write_hub_folder(
        model,
        output_dir,
        exposed=AUTO_CLASSES,
        processor=processor,
        verification=verification,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
        save_kwargs={"adapters_only": adapters_only} if adapters_only else None,
    )
