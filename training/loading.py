"""The model a fine-tuning run starts from, and the task model built from it.

- `--model PATH_OR_REPO`: a towerzoo Hub folder, loaded with its own code (`trust_remote_code`) as the class it was
  saved as, with its processor.
- `--init-config CONFIG_JSON --tokenizer DIR`: a randomly initialised model (seeded) of the config's architecture
  (towerzoo's installed code, chosen by `model_type`), with the processor built for it.

The task model is always built fresh from a copy of the source config adjusted for the task (labels, heads, the
NLVR2 image-type row, the image size), seeded, and filled from the source weights by name: the shared encoder, and
the task head when the source has it with the same labels. What is new (initialised as the original initialises it),
adapted (NLVR2's third image-type row copied from the second, as the original does; the ViT position table
interpolated bicubically to a new image size, as the original's `adapt_position_encoding`) or dropped (other heads)
is reported.
"""

import copy
import logging
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from towerzoo.conversions.bridgetower_folder import HEADS, build_processor, towerzoo_package
from towerzoo.conversions.common import read_json
from towerzoo.training import TrainingError

logger = logging.getLogger(__name__)

# task → (class name after the architecture prefix, the heads it trains)
TASK_MODELS = {
    "vqav2": ("ForVisualQuestionAnswering", ("vqa",)),
    "retrieval": ("ForPreTraining", ("itm", "itc")),
    "snli-ve": ("ForVisualEntailment", ("snli",)),
    "nlvr2": ("ForNLVR2", ("nlvr2",)),
}
POSITION_TABLE = "vision_model.embeddings.position_embedding.weight"
TOKEN_TYPES = "token_type_embeddings.weight"


def installed_config(data: dict):
    """A config dict (e.g. of a folder's remote-code config) as the installed towerzoo config class of its
    `model_type`."""
    package = towerzoo_package(data.get("model_type"))
    classes = [getattr(package, name) for name in package.__all__ if name.endswith("Config")]
    config_class = next(c for c in classes if getattr(c, "model_type", None) == data["model_type"])
    return config_class.from_dict(data)


@dataclass
class ModelSource:
    """What a run starts from: the config, the architecture's classes, the weights (None from scratch), the
    processor, and a description for `training.json`."""

    config: object
    classes: types.ModuleType
    model: torch.nn.Module | None
    processor: object
    description: dict

    @property
    def architecture(self) -> str:
        return type(self.config).__name__.removesuffix("Config")


def load_source(model: str, tokenizer: Path | None = None, attn_implementation: str | None = None) -> ModelSource:
    """A towerzoo Hub folder or repo id, as the class it was saved as, with its processor (or one built from
    `tokenizer` when the folder has none)."""
    from transformers import AutoConfig, AutoProcessor
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=True)
    except (OSError, ValueError) as error:
        raise TrainingError(f"cannot load a model config from {model} ({error}).") from None
    towerzoo_package(getattr(config, "model_type", None))
    auto_map = getattr(config, "auto_map", None) or {}
    if "AutoModel" not in auto_map:
        raise TrainingError(f"{model} has no auto_map entry for AutoModel: is it a towerzoo Hub folder?")
    module = auto_map["AutoModel"].rsplit(".", 1)[0]
    architecture = type(config).__name__.removesuffix("Config")
    class_name = (getattr(config, "architectures", None) or [f"{architecture}Model"])[0]
    model_class = get_class_from_dynamic_module(f"{module}.{class_name}", model)
    source = model_class.from_pretrained(model, dtype=torch.float32, attn_implementation=attn_implementation)
    if tokenizer is not None:
        processor = build_processor(Path(tokenizer), installed_config(source.config.to_dict()))
    else:
        try:
            processor = AutoProcessor.from_pretrained(model, trust_remote_code=True)
        except (OSError, ValueError, TypeError) as error:
            raise TrainingError(
                f"{model} has no processor files ({error}); pass --tokenizer DIR to build one."
            ) from None
    where = str(Path(model).resolve()) if Path(model).exists() else model
    description = {"model": where, "class": class_name, "revision": getattr(config, "_commit_hash", None)}
    return ModelSource(source.config, sys.modules[model_class.__module__], source, processor, description)


def scratch_source(init_config: Path, tokenizer: Path) -> ModelSource:
    """A config JSON of a towerzoo architecture (no weights) and the processor for it."""
    if not Path(init_config).is_file():
        raise TrainingError(f"--init-config {init_config} does not exist.")
    data = read_json(Path(init_config))
    package = towerzoo_package(data.get("model_type"))
    config = installed_config(data)
    processor = build_processor(Path(tokenizer), config)
    description = {"init_config": str(init_config), "tokenizer": str(tokenizer)}
    return ModelSource(config, package, None, processor, description)


@dataclass
class TransferReport:
    """How the task model was filled from the source weights."""

    loaded: int = 0
    new: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def resize_position_table(table: torch.Tensor, num_positions: int) -> torch.Tensor:
    """The ViT position table for another grid: class row kept, patch rows interpolated bicubically (the original's
    `adapt_position_encoding`)."""
    grid, new_grid = round((table.shape[0] - 1) ** 0.5), round((num_positions - 1) ** 0.5)
    patches = table[1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return torch.cat([table[:1], patches.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1)])


def transfer_weights(
    source: torch.nn.Module, target: torch.nn.Module, skip_prefixes: tuple[str, ...] = ()
) -> TransferReport:
    """Copy every source tensor whose name the target has (skipping heads starting with `skip_prefixes`), adapting
    the NLVR2 type table and the ViT position table; report what was new and what was dropped."""
    state = source.state_dict()
    prefix = f"{target.base_model_prefix}."
    if not any(key.startswith(prefix) for key in state):  # a bare encoder: its keys lack the prefix
        state = {prefix + key: value for key, value in state.items()}
    wanted = target.state_dict()
    report, loaded = TransferReport(), {}
    for key, value in wanted.items():
        given = state.get(key)
        if given is None or key.startswith(skip_prefixes):
            report.new.append(key)
        elif given.shape == value.shape:
            loaded[key] = given
        elif key.endswith(TOKEN_TYPES) and given.shape[0] == 2 and value.shape[0] == 3:
            loaded[key] = torch.cat([given, given[1:2]])
            report.adapted.append(f"{key}: image type 2 copied from type 1")
        elif key.endswith(POSITION_TABLE):
            loaded[key] = resize_position_table(given, value.shape[0])
            report.adapted.append(f"{key}: {given.shape[0]} → {value.shape[0]} positions (bicubic)")
        else:
            raise TrainingError(
                f"{key} has shape {tuple(given.shape)} in the source model and {tuple(value.shape)} in the task "
                "model; the source config and the task disagree."
            )
    target.load_state_dict(loaded, strict=False)
    report.loaded = len(loaded)
    report.dropped = sorted(set(state) - set(loaded))
    return report


def _has_head(model: torch.nn.Module | None, heads: tuple[str, ...]) -> bool:
    if model is None:
        return False
    names = [name for name, _ in model.named_parameters()]
    return all(any(name.startswith(HEADS[head][0]) for name in names) for head in heads)


@dataclass(kw_only=True)
class TaskModelSpec:
    """How the task model differs from the source: its labels, new-head shape, image size."""

    task: str
    id2label: dict[int, str] | None = None
    task_head_layers: int | None = None  # None: the config's
    head_hidden_scale: float | None = None
    image_size: int | None = None
    seed: int = 0
    attn_implementation: str | None = None


def build_task_model(source: ModelSource, spec: TaskModelSpec) -> tuple[torch.nn.Module, TransferReport, bool]:
    """The task model (fresh, seeded), filled from the source weights; returns it, the transfer report, and whether
    its head is new."""
    suffix, heads = TASK_MODELS[spec.task]
    class_name = source.architecture + suffix
    model_class = getattr(source.classes, class_name, None)
    if model_class is None:
        raise TrainingError(f"{source.architecture} has no {spec.task} head ({class_name}); pick another model.")
    config = copy.deepcopy(source.config)
    same_labels = spec.id2label is None or (
        {int(k): v for k, v in config.id2label.items()} == spec.id2label and config.num_labels == len(spec.id2label)
    )
    head_is_new = not (_has_head(source.model, heads) and same_labels)
    if spec.id2label is not None:
        config.id2label = dict(spec.id2label)
        config.label2id = {label: index for index, label in spec.id2label.items()}
    if spec.task == "retrieval":
        config.pretraining_heads = list(heads)
    if spec.task == "nlvr2":
        config.num_token_types = 3
    if head_is_new and spec.task != "retrieval":
        if spec.task_head_layers is not None:
            config.task_head_layers = spec.task_head_layers
        if spec.head_hidden_scale is not None:
            config.head_hidden_scale = spec.head_hidden_scale
    if spec.image_size is not None and spec.image_size != config.vision_config.image_size:
        patch = config.vision_config.patch_size
        if spec.image_size % patch:
            raise TrainingError(f"--image-size {spec.image_size} is not a multiple of the patch size {patch}.")
        config.vision_config.image_size = spec.image_size
    torch.manual_seed(spec.seed)
    model = model_class._from_config(config, dtype=torch.float32, attn_implementation=spec.attn_implementation)
    if source.model is None:
        return model, TransferReport(), True
    skip = tuple(HEADS[head][0] for head in heads) if head_is_new else ()
    report = transfer_weights(source.model, model, skip)
    return model, report, head_is_new


def configure_processor(processor, image_size: int, max_text_length: int, position_limit: int) -> None:
    """Set the processor's image size (resize and crop) and text length (capped by the text position table)."""
    image_processor = processor.image_processor
    image_processor.size = {"shortest_edge": image_size}
    image_processor.crop_size = {"height": image_size, "width": image_size}
    processor.max_text_length = min(max_text_length, position_limit)
