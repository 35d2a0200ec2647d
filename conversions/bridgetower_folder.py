"""What the BridgeTower-family converters share: picking the head class, strict loading, the check, the Hub folder.

ManagerTower has BridgeTower's heads and class names (`ManagerTowerForMaskedLM`, …): everything here works from the
config's class, which names the model package (`towerzoo.models.<arch>`) and the architecture prefix.
"""

import datetime
import importlib
import types
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPImageProcessor, ProcessorMixin

import towerzoo
from towerzoo.conversions.common import ConversionError, load_strict, read_labels
from towerzoo.conversions.hub_folder import write_hub_folder
from towerzoo.hub_cards.card import write_card
from towerzoo.models.bridgetower import BridgeTowerConfig

# head → (parameter prefix, single-head class without the architecture prefix)
HEADS = {
    "mlm": ("mlm_score.", "ForMaskedLM"),
    "itm": ("itm_score.", "ForImageAndTextRetrieval"),
    "itc": ("itc_", "ForContrastiveLearning"),
    "vqa": ("vqa_classifier.", "ForVisualQuestionAnswering"),
    "snli": ("snli_classifier.", "ForVisualEntailment"),
    "nlvr2": ("nlvr2_classifier.", "ForNLVR2"),
}
PRETRAINING_HEADS = ("mlm", "itm", "itc")


def towerzoo_package(model_type: str | None) -> types.ModuleType:
    """The installed towerzoo model package of a config's `model_type` (`towerzoo_bridgetower` →
    `towerzoo.models.bridgetower`); also for a folder's remote-code config."""
    if not model_type or not model_type.startswith("towerzoo_"):
        raise ConversionError(f"model_type {model_type!r} is not a towerzoo architecture (towerzoo_bridgetower, …).")
    try:
        return importlib.import_module(f"towerzoo.models.{model_type.removeprefix('towerzoo_')}")
    except ModuleNotFoundError:
        raise ConversionError(f"towerzoo has no architecture for model_type {model_type!r}.") from None


def model_package(config: BridgeTowerConfig) -> tuple[types.ModuleType, str]:
    """The towerzoo package of a config and its architecture prefix (`BridgeTowerConfig` → "BridgeTower")."""
    return towerzoo_package(config.model_type), type(config).__name__.removesuffix("Config")


def heads_in(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The task heads whose parameters a towerzoo-layout state dict holds, in `HEADS` order."""
    return [head for head, (prefix, _) in HEADS.items() if any(k.startswith(prefix) for k in state_dict)]


def model_class_for(heads: list[str], architecture: str = "BridgeTower") -> str:
    """One head → its class; several pre-training heads → `…ForPreTraining`; none → the bare model."""
    if not heads:
        return f"{architecture}Model"
    if len(heads) == 1:
        return architecture + HEADS[heads[0]][1]
    if set(heads) <= set(PRETRAINING_HEADS):
        return f"{architecture}ForPreTraining"
    raise ConversionError(
        f"the checkpoint holds the heads {heads}; towerzoo combines only pre-training heads {PRETRAINING_HEADS} "
        "in one model. Convert a checkpoint fine-tuned for one task."
    )


def build_model(config: BridgeTowerConfig, state_dict: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    """Instantiate the class matching the checkpoint's heads (in the config's model package) and load it strictly, in
    eval mode."""
    heads = heads_in(state_dict)
    package, architecture = model_package(config)
    class_name = model_class_for(heads, architecture)
    if class_name.endswith("ForPreTraining"):
        config.pretraining_heads = heads
    model = getattr(package, class_name)(config)
    if not heads:  # the bare model: its keys lack the base-model prefix
        state_dict = {k.removeprefix(f"{model.base_model_prefix}."): v for k, v in state_dict.items()}
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


def build_processor(tokenizer_dir: Path, config: BridgeTowerConfig, max_text_length: int = 50) -> ProcessorMixin:
    """The original preprocessing at the model's image size, with the tokenizer found in `tokenizer_dir` (the
    package's `<Arch>Processor`, from its `processing_<arch>.py`)."""
    package, architecture = model_package(config)
    processing = importlib.import_module(f"{package.__name__}.processing_{architecture.lower()}")
    size = config.vision_config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    limit = config.text_config.max_position_embeddings - config.text_config.pad_token_id - 1
    processor_class = getattr(processing, f"{architecture}Processor")
    return processor_class(image_processor, tokenizer, max_text_length=min(max_text_length, limit))


def exposed_classes(model: torch.nn.Module) -> dict[str, str]:
    """The classes a folder saved from `model` can be loaded as, with their Auto classes."""
    package, architecture = model_package(model.config)
    names = [type(model).__name__, f"{architecture}Model"]
    if type(model).__name__.endswith("ForPreTraining"):
        names += [architecture + HEADS[head][1] for head in model.config.pretraining_heads]
    return {name: package.AUTO_CLASSES[name] for name in names if name in package.AUTO_CLASSES}


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
    folder = write_hub_folder(
        model,
        output_dir,
        exposed=exposed_classes(model),
        processor=processor,
        verification=verification,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
    )
    write_card(folder)  # the model card (README.md), from the written folder
    return folder
