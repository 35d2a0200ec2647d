"""What both BridgeTower converters share: picking the head class, strict loading, the check, the Hub folder."""

import datetime
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPImageProcessor

import towerzoo
import towerzoo.models.bridgetower as bridgetower
from towerzoo.conversions.common import ConversionError, load_strict, read_labels
from towerzoo.conversions.hub_folder import write_hub_folder
from towerzoo.models.bridgetower import BridgeTowerConfig
from towerzoo.models.bridgetower.processing_bridgetower import BridgeTowerProcessor

# head → (parameter prefix, single-head class)
HEADS = {
    "mlm": ("mlm_score.", "BridgeTowerForMaskedLM"),
    "itm": ("itm_score.", "BridgeTowerForImageAndTextRetrieval"),
    "itc": ("itc_", "BridgeTowerForContrastiveLearning"),
    "vqa": ("vqa_classifier.", "BridgeTowerForVisualQuestionAnswering"),
    "snli": ("snli_classifier.", "BridgeTowerForVisualEntailment"),
    "nlvr2": ("nlvr2_classifier.", "BridgeTowerForNLVR2"),
}
PRETRAINING_HEADS = ("mlm", "itm", "itc")


def heads_in(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The task heads whose parameters a towerzoo-layout state dict holds, in `HEADS` order."""
    return [head for head, (prefix, _) in HEADS.items() if any(k.startswith(prefix) for k in state_dict)]


def model_class_for(heads: list[str]) -> str:
    """One head → its class; several pre-training heads → `BridgeTowerForPreTraining`; none → the bare model."""
    if not heads:
        return "BridgeTowerModel"
    if len(heads) == 1:
        return HEADS[heads[0]][1]
    if set(heads) <= set(PRETRAINING_HEADS):
        return "BridgeTowerForPreTraining"
    raise ConversionError(
        f"the checkpoint holds the heads {heads}; towerzoo combines only pre-training heads {PRETRAINING_HEADS} "
        "in one model. Convert a checkpoint fine-tuned for one task."
    )


def build_model(config: BridgeTowerConfig, state_dict: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    """Instantiate the class matching the checkpoint's heads and load it strictly, in eval mode."""
    heads = heads_in(state_dict)
    class_name = model_class_for(heads)
    if class_name == "BridgeTowerForPreTraining":
        config.pretraining_heads = heads
    model = getattr(bridgetower, class_name)(config)
    if class_name == "BridgeTowerModel":
        state_dict = {k.removeprefix("bridgetower."): v for k, v in state_dict.items()}
    load_strict(model, state_dict, source)
    return model.eval()


def random_inputs(config: BridgeTowerConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A padded batch of two random texts and images at the model's size (fixed seed): the verification inputs."""
    generator = torch.Generator().manual_seed(seed)
    text = config.text_config
    input_ids = torch.randint(3, text.vocab_size, (2, 8), generator=generator)
    input_ids[:, 0] = text.bos_token_id
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = text.pad_token_id
    size = config.vision_config.image_size
    pixel_values = torch.randn(2, config.vision_config.num_channels, size, size, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def check_tolerance(diffs: dict[str, float], tolerance: float, reference: str) -> None:
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > tolerance:
        raise ConversionError(
            f"the converted model differs from {reference} by {diffs[worst]:.3g} on {worst} (tolerance "
            f"{tolerance:g}); the checkpoint and the inferred config disagree. Nothing was written."
        )


def verification_record(source_format: str, input_path, diffs: dict, dropped: dict, reference: str) -> dict:
    """The content of `verification.json`."""
    return {
        "source_format": source_format,
        "source": str(input_path),
        "reference": reference,
        "max_abs_diff": max(diffs.values()),
        "max_abs_diff_per_output": diffs,
        "dtype": "float32",
        "dropped_keys": dropped,
        "towerzoo_version": towerzoo.__version__,
        "date": datetime.date.today().isoformat(),
    }


def build_processor(tokenizer_dir: Path, config: BridgeTowerConfig, max_text_length: int = 50) -> BridgeTowerProcessor:
    """The original preprocessing at the model's image size, with the tokenizer found in `tokenizer_dir`."""
    size = config.vision_config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    limit = config.text_config.max_position_embeddings - config.text_config.pad_token_id - 1
    return BridgeTowerProcessor(image_processor, tokenizer, max_text_length=min(max_text_length, limit))


def exposed_classes(model: torch.nn.Module) -> dict[str, str]:
    """The classes a folder saved from `model` can be loaded as, with their Auto classes."""
    names = ["BridgeTowerModel", type(model).__name__]
    if type(model).__name__ == "BridgeTowerForPreTraining":
        names += [HEADS[head][1] for head in model.config.pretraining_heads]
    return {name: bridgetower.AUTO_CLASSES[name] for name in names}


def save_bridgetower(
    model: torch.nn.Module,
    output_dir: Path,
    tokenizer: Path | None,
    verification: dict,
    overwrite: bool = False,
    max_text_length: int = 50,
    max_shard_size: str = "5GB",
    labels: Path | None = None,
) -> Path:
    """Write the Hub folder (with processor files given a tokenizer folder, and classifier labels from a JSON file)."""
    if labels is not None:
        if not set(heads_in(model.state_dict())) & {"vqa", "snli", "nlvr2"}:
            raise ConversionError(
                "--labels names a classifier's outputs, but this checkpoint has no VQA/SNLI-VE/NLVR2 head."
            )
        model.config.id2label = read_labels(labels, model.config.num_labels)
        model.config.label2id = {label: index for index, label in model.config.id2label.items()}
    processor = build_processor(tokenizer, model.config, max_text_length) if tokenizer else None
    card = (
        f"---\nlibrary_name: transformers\ntags:\n- towerzoo\n- bridgetower\n---\n\n# {Path(output_dir).name}\n\n"
        f"BridgeTower converted by towerzoo from `{verification['source_format']}`; outputs match "
        f"{verification['reference']} to {verification['max_abs_diff']:.2e} (fp32, see verification.json).\n"
        "Load with `AutoModel.from_pretrained(path, trust_remote_code=True)`.\n"
    )
    return write_hub_folder(
        model,
        output_dir,
        exposed=exposed_classes(model),
        processor=processor,
        verification=verification,
        card=card,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
    )
