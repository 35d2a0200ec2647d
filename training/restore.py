"""`towerzoo finetune restore`: RESTORE's few-shot prompt learning (the official base-to-novel training) on
`transformers.Trainer`, saved as a Hub folder (the full model, or RESTORE's own weights on top of the base CLIP).

The official run (Yaphabates/RESTORE_, `scripts/maple_fsa/base2new_train.sh` with the per-dataset arguments of
`run_maple_fsa.sh`, `configs/trainers/MaPLe_FSA/vit_b16_c2_ep5_batch4_2ctx.yaml`, the `MaPLe_FSA` trainer of
`trainers/maple_fsa.py` on Dassl):
- data: K = 16 images per class drawn with the run's seed (seeds 1, 2, 3) from the train split, then the base half of
  the classes kept (CoOp's order: `generate_fewshot_dataset`, then `subsample_classes`); the model classifies among
  the base classes;
- augmentation: a random resized crop of the decoded image (area 8-100 %, aspect ratio 3/4-4/3, bicubic) to the model's
  resolution, a random horizontal flip, CLIP's normalisation;
- optimisation: only the prompts, their maps into the vision tower and the surgery blocks train; SGD with learning
  rate 0.0035 and Dassl's defaults (momentum 0.9, weight decay 5e-4 on every trained parameter, no dampening, no
  Nesterov), batch 4, 10 epochs (the yaml's MAX_EPOCH; its file name says ep5), no gradient clipping; the learning rate
  changes once per epoch: 1e-5 for the warm-up epoch, then cosine over MAX_EPOCH epochs counted from the end of the
  warm-up (Dassl's `ConstantWarmupScheduler` after `CosineAnnealingLR(T_max=MAX_EPOCH)`, WARMUP_RECOUNT);
- the surgery ratios start at the dataset's values and are raised once, after the epoch whose 0-based index is
  MAX_EPOCH // 3 (`model.bump_surgery_ratios()`, the trainer's `update_calib`); λ (the consistency weight) per dataset.

Here each epoch's learning rate is a factor of a `LambdaLR` stepped per optimizer step (`WarmupCosine`), the bump is a
`TrainerCallback` (`SurgeryRatioBump`) acting at the last optimizer step of that epoch, before that step's checkpoint,
so a run resumed from any checkpoint bumps exactly once; the ratios are model buffers and are saved with it.
"""

import datetime
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import torch
from transformers import Trainer, TrainerCallback

from towerzoo.evaluation.classification_data import (
    ClassificationSplit,
    few_shot,
    load_classification_dataset,
    open_rgb_image,
    subsample_classes,
)
from towerzoo.training import TrainingError
from towerzoo.training.data import data_fingerprint
from towerzoo.training.trainer import (
    FinetuneOptions,
    _check_options,
    _losses,
    _resume_path,
    save_model_folder,
    trained_model,
    training_arguments,
)

logger = logging.getLogger(__name__)

RESTORE_MODEL_TYPE = "towerzoo_restore"
SUBSETS = ("base", "all")
# `training_arguments` reads these; RestoreTrainer builds its own SGD and schedule, so they take no effect
_UNUSED_TRAINER_SETTINGS = {
    "warmup_ratio": 0.0,
    "lr_scheduler_type": "constant",
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
}

# --------------------------------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------------------------------

_SOURCE = (
    "Yaphabates/RESTORE_ run_maple_fsa.sh + scripts/maple_fsa/base2new_train.sh (DATASET SEED VIS_CALIB_R "
    "TEXT_CALIB_R FS_LOSS_R) + configs/trainers/MaPLe_FSA/vit_b16_c2_ep5_batch4_2ctx.yaml"
)
_NOTES = (
    "MAX_EPOCH is 10 in the yaml although its file name says ep5",
    "SGD momentum 0.9 and weight decay 5e-4 are Dassl's defaults (dassl/config/defaults.py), which the yaml keeps",
    "the official run keeps CLIP in fp16 (PREC fp16, no autocast); towerzoo trains in fp32 unless --fp16/--bf16 "
    "(autocast) is given",
    "the official surgery ratios are Python floats; here they are fp32 buffers",
    "CoOp draws the K shots from Python's global generator (and caches them); towerzoo draws them from "
    "random.Random(seed): the same procedure, not the same images",
)


@dataclass(frozen=True)
class RestoreRecipe:
    """One dataset's official base-to-novel training setting (the defaults of `towerzoo finetune restore`)."""

    name: str
    surgery_ratio_vision: float
    surgery_ratio_text: float
    feature_shift_loss_weight: float
    learning_rate: float = 0.0035
    momentum: float = 0.9
    weight_decay: float = 5e-4
    num_train_epochs: int = 10
    per_device_train_batch_size: int = 4
    warmup_epochs: int = 1
    warmup_learning_rate: float = 1e-5
    num_shots: int = 16
    crop_scale: tuple[float, float] = (0.08, 1.0)
    seeds: tuple[int, ...] = (1, 2, 3)
    # what the official model has (set when the model is built: `towerzoo convert restore-from-clip`)
    prompt_depth: int = 9
    num_prompt_tokens: int = 2
    source: str = _SOURCE
    notes: tuple[str, ...] = _NOTES

    def as_dict(self) -> dict:
        return asdict(self)


# (vision ratio, text ratio, λ) per dataset, in run_maple_fsa.sh's argument order
RESTORE_RECIPES: dict[str, RestoreRecipe] = {
    recipe.name: recipe
    for recipe in (
        RestoreRecipe("fgvc_aircraft", 0.1, 0.1, 1.0),
        RestoreRecipe("caltech101", 0.1, 0.1, 1.0),
        RestoreRecipe("stanford_cars", 0.1, 0.1, 1.0),
        RestoreRecipe("oxford_pets", 0.01, 0.1, 1.0),
        RestoreRecipe("oxford_flowers", 0.1, 0.1, 1.0),
        RestoreRecipe("food101", 0.1, 0.1, 1.0),
        RestoreRecipe("sun397", 0.05, 0.05, 1.0),
        RestoreRecipe("ucf101", 0.05, 0.05, 1.0),
        RestoreRecipe("dtd", 0.15, 0.1, 0.5),
        RestoreRecipe("eurosat", 0.01, 0.1, 1.0),
        RestoreRecipe("imagenet", 0.05, 0.05, 1.0),
    )
}
# the recipe fields a command-line option overrides (None = the recipe's value)
RECIPE_OVERRIDES = (
    "learning_rate",
    "momentum",
    "weight_decay",
    "num_train_epochs",
    "per_device_train_batch_size",
    "warmup_epochs",
    "warmup_learning_rate",
    "num_shots",
    "surgery_ratio_text",
    "surgery_ratio_vision",
    "feature_shift_loss_weight",
)


def get_restore_recipe(name: str | None) -> RestoreRecipe:
    if name not in RESTORE_RECIPES:
        given = "no --dataset-recipe" if name is None else f"unknown --dataset-recipe {name!r}"
        raise TrainingError(f"{given}; the official settings: {', '.join(RESTORE_RECIPES)}.")
    return RESTORE_RECIPES[name]


@dataclass(kw_only=True)
class RestoreOptions(FinetuneOptions):
    """What `towerzoo finetune restore` takes; recipe fields left None take the dataset recipe's value."""

    task: str = "restore"
    data: Path | None = None
    dataset_recipe: str | None = None
    split: str = "train"
    layout: str = "auto"
    classnames: Path | None = None
    image_dir: Path | None = None
    subset: str = "base"
    num_shots: int | None = None
    momentum: float | None = None
    warmup_epochs: int | None = None
    warmup_learning_rate: float | None = None
    surgery_ratio_text: float | None = None
    surgery_ratio_vision: float | None = None
    feature_shift_loss_weight: float | None = None
    adapters_only: bool = False


def restore_settings(recipe: RestoreRecipe, options: RestoreOptions) -> dict:
    """The recipe's values with the command line's overrides, and the batch they make."""
    settings = {name: getattr(recipe, name) for name in RECIPE_OVERRIDES}
    settings.update({name: getattr(options, name) for name in RECIPE_OVERRIDES if getattr(options, name) is not None})
    epochs = settings["num_train_epochs"]
    if epochs != int(epochs) or epochs < 1 or settings["warmup_epochs"] < 0:
        raise TrainingError(
            f"--num-train-epochs must be a whole number of at least 1 (got {epochs}) and --warmup-epochs at least 0: "
            "the schedule and the surgery bump are per epoch."
        )
    settings["num_train_epochs"] = int(epochs)
    settings["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    settings["gradient_accumulation_steps"] = options.gradient_accumulation_steps or 1
    settings["total_batch_size"] = (
        settings["per_device_train_batch_size"] * settings["world_size"] * settings["gradient_accumulation_steps"]
    )
    settings["crop_scale"] = list(recipe.crop_scale)
    settings["subset"] = options.subset
    return settings


# --------------------------------------------------------------------------------------------------------------------
# Data: the K-shot split and train-time augmentation
# --------------------------------------------------------------------------------------------------------------------


def load_few_shot(options: RestoreOptions, num_shots: int) -> tuple[ClassificationSplit, datasets.Dataset, dict]:
    """K shots per class of the train split drawn with the run's seed, then the `--subset` classes (relabelled 0..):
    the split, the training rows (`image`, `label`) and the data record for `training.json`."""
    if options.subset not in SUBSETS:
        raise TrainingError(f"unknown --subset {options.subset!r}; choose one of {', '.join(SUBSETS)}.")
    split = load_classification_dataset(
        options.data, options.split, options.layout, options.classnames, options.image_dir
    )
    shots = subsample_classes(few_shot(split, num_shots, options.seed), options.subset)
    rows = datasets.Dataset.from_dict({"image": [str(path) for path in shots.paths], "label": shots.labels})
    files = [Path(path) for path in split.source.values() if Path(path).is_file()]
    record = data_fingerprint(
        files,
        len(rows),
        dataset=split.dataset,
        layout=split.layout,
        split=options.split,
        subset=options.subset,
        num_shots=num_shots,
        classnames=shots.classnames,
        items=[[str(path), label] for path, label in shots.items],
    )
    return shots, rows, record


def random_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3), generator=None
) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a random region of `scale` × the image's area with an aspect ratio log-uniform in
    `ratio`; after ten misses, the largest centred region within `ratio` (torchvision's RandomResizedCrop, which is
    Dassl's "random_resized_crop"). Draws from torch's generator (which the Trainer seeds) unless given one."""
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        area = width * height * torch.empty(1).uniform_(*scale, generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_low, log_high, generator=generator).item())
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, w, h
    w, h = width, height
    if width / height < ratio[0]:
        h = round(width / ratio[0])
    elif width / height > ratio[1]:
        w = round(height * ratio[1])
    return (width - w) // 2, (height - h) // 2, w, h


def augment(image, size: int, scale: tuple[float, float], generator=None):
    """The official train-time augmentation before normalisation: a random resized crop to `size` × `size` (bicubic),
    then a horizontal flip with probability 1/2."""
    from PIL import Image

    left, top, w, h = random_crop_box(*image.size, scale, generator=generator)
    image = image.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BICUBIC)
    if torch.rand(1, generator=generator).item() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


@dataclass
class RestoreCollator:
    """Few-shot rows → model inputs: decodes each image (RGB), augments it at the model's resolution, and normalises it
    with the model's `RestoreProcessor` (whose resize and centre crop leave a crop of that size unchanged)."""

    processor: object
    crop_scale: tuple[float, float] = (0.08, 1.0)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        size = self.processor.image_processor.crop_size["height"]
        images = [augment(open_rgb_image(row["image"]), size, tuple(self.crop_scale)) for row in rows]
        pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": torch.tensor([row["label"] for row in rows])}


# --------------------------------------------------------------------------------------------------------------------
# Optimizer, schedule, surgery bump
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class WarmupCosine:
    """The learning-rate factor of optimizer step `step` (a `LambdaLR` function): constant within an epoch,
    `warmup_factor` for the warm-up epochs, then ½(1 + cos(π·(epoch − warmup_epochs) / max_epochs))."""

    updates_per_epoch: int
    warmup_epochs: int
    max_epochs: int
    warmup_factor: float

    def __call__(self, step: int) -> float:
        epoch = step // self.updates_per_epoch
        if epoch < self.warmup_epochs:
            return self.warmup_factor
        return 0.5 * (1 + math.cos(math.pi * (epoch - self.warmup_epochs) / self.max_epochs))


class RestoreTrainer(Trainer):
    """`Trainer` with the official optimizer and schedule: SGD on the trainable parameters only (one group: weight
    decay on all of them, as Dassl), the per-epoch `WarmupCosine` learning rate."""

    def __init__(self, *args, momentum: float, warmup_epochs: int, warmup_learning_rate: float, **kwargs):
        self.momentum, self.warmup_epochs, self.warmup_learning_rate = momentum, warmup_epochs, warmup_learning_rate
        super().__init__(*args, **kwargs)

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        self.updates_per_epoch = values[1]
        return values

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            trained = [p for p in (self.model if model is None else model).parameters() if p.requires_grad]
            self.optimizer = torch.optim.SGD(
                trained, lr=self.args.learning_rate, momentum=self.momentum, weight_decay=self.args.weight_decay
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            schedule = WarmupCosine(
                self.updates_per_epoch,
                self.warmup_epochs,
                int(self.args.num_train_epochs),
                self.warmup_learning_rate / self.args.learning_rate,
            )
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, schedule)
        return self.lr_scheduler


class SurgeryRatioBump(TrainerCallback):
    """Raises the surgery ratios once (`model.bump_surgery_ratios()`) at the last optimizer step of the epoch whose
    0-based index is `after_epoch` (the official trainer's max_epoch // 3), before that step's checkpoint is saved."""

    def __init__(self, after_epoch: int):
        self.after_epoch = after_epoch

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # Trainer sets state.epoch = epoch + (step + 1) / steps_in_epoch: exactly after_epoch + 1 at that step only
        if math.isclose(state.epoch, self.after_epoch + 1, rel_tol=0, abs_tol=1e-9):
            ratios = model.bump_surgery_ratios()
            logger.info("surgery ratios raised to %s after epoch %d", ratios.tolist(), self.after_epoch)


# --------------------------------------------------------------------------------------------------------------------
# Model, folder, run
# --------------------------------------------------------------------------------------------------------------------


def check_restore_model(model: str) -> None:
    """Refuse a `--model` that is not a RESTORE folder or repo (reading its config only)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=True)
    except (OSError, ValueError) as error:
        raise TrainingError(f"cannot load a model config from {model} ({error}).") from None
    if config.model_type != RESTORE_MODEL_TYPE:
        raise TrainingError(
            f"{model} holds a {config.model_type!r} model, not RESTORE ({RESTORE_MODEL_TYPE!r}); build one from a "
            "CLIP checkpoint with `towerzoo convert restore-from-clip CLIP_DIR OUT --classnames FILE`."
        )


def load_restore(model: str, attn_implementation: str | None) -> tuple[torch.nn.Module, object, dict]:
    """The RESTORE model (its folder's own code, fp32; adapters-only folders load their base CLIP), its processor and
    a description for `training.json`."""
    from transformers import AutoModelForImageClassification, AutoProcessor

    restore = AutoModelForImageClassification.from_pretrained(
        model, trust_remote_code=True, dtype=torch.float32, attn_implementation=attn_implementation
    )
    try:
        processor = AutoProcessor.from_pretrained(model, trust_remote_code=True)
    except (OSError, ValueError, TypeError) as error:
        raise TrainingError(f"{model} has no processor files ({error}); it needs CLIP's tokenizer.") from None
    description = {
        "model": str(Path(model).resolve()) if Path(model).exists() else model,
        "class": type(restore).__name__,
        "revision": getattr(restore.config, "_commit_hash", None),
        "base_model": restore.config.base_model_name_or_path,
    }
    return restore, processor, description


def apply_recipe(model: torch.nn.Module, settings: dict, recipe: RestoreRecipe) -> None:
    """The run's initial surgery ratios and consistency weight, into the config and the ratio buffer."""
    config = model.config
    config.surgery_ratio_text = settings["surgery_ratio_text"]
    config.surgery_ratio_vision = settings["surgery_ratio_vision"]
    config.feature_shift_loss_weight = settings["feature_shift_loss_weight"]
    with torch.no_grad():
        model.surgery_ratios.copy_(model.initial_surgery_ratios())
    built = (config.prompt_depth, config.num_prompt_tokens)
    if built != (recipe.prompt_depth, recipe.num_prompt_tokens):
        logger.warning(
            "the model has prompt depth %d and %d context tokens; the official model has %d and %d",
            *built,
            recipe.prompt_depth,
            recipe.num_prompt_tokens,
        )


def finetune_restore(options: RestoreOptions) -> dict:
    """Train RESTORE's prompts and surgery on a K-shot split and write `OUTPUT_DIR/model/` (on the main process);
    returns the training record."""
    import transformers

    import towerzoo

    if options.model is None or options.data is None:
        raise TrainingError("towerzoo finetune restore needs --model (a RESTORE folder or repo) and --data.")
    _check_options(options)
    resume = _resume_path(options)
    recipe = get_restore_recipe(options.dataset_recipe)
    settings = restore_settings(recipe, options)
    check_restore_model(options.model)
    shots, train_set, data_record = load_few_shot(options, settings["num_shots"])

    model, processor, start = load_restore(options.model, options.attn_implementation)
    apply_recipe(model, settings, recipe)
    model.set_classnames(shots.classnames, processor)
    initial_ratios = model.surgery_ratios.tolist()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "recipe %s; %d-shot %s classes (%d images); %d trainable parameters; batch %d",
        *(recipe.name, settings["num_shots"], options.subset, len(train_set), trainable, settings["total_batch_size"]),
    )

    args = training_arguments(options, {**settings, **_UNUSED_TRAINER_SETTINGS}, has_eval=False)
    args.max_grad_norm = 0.0  # Dassl does not clip
    # Dassl drops the last incomplete training batch when there is a full one
    args.dataloader_drop_last = len(train_set) >= settings["per_device_train_batch_size"]
    checkpoints = Path(options.output_dir) / "checkpoints"
    if options.overwrite and resume is None and checkpoints.is_dir() and int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(checkpoints)
    bump_after = settings["num_train_epochs"] // 3
    trainer = RestoreTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        data_collator=RestoreCollator(processor, recipe.crop_scale),
        processing_class=processor,
        callbacks=[SurgeryRatioBump(bump_after)],
        momentum=settings["momentum"],
        warmup_epochs=settings["warmup_epochs"],
        warmup_learning_rate=settings["warmup_learning_rate"],
    )
    result = trainer.train(resume_from_checkpoint=resume)
    losses = _losses(trainer.state.log_history)
    bump_step = (bump_after + 1) * trainer.updates_per_epoch
    record = {
        "task": "restore",
        "recipe": recipe.as_dict(),
        "settings": {**settings, "seed": options.seed, "bf16": options.bf16, "fp16": options.fp16},
        "start": {**start, "trainable_parameters": trainable},
        "data": {"train": data_record},
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "updates_per_epoch": trainer.updates_per_epoch,
        "final_loss": losses[-1][1] if losses else None,
        "mean_train_loss": result.training_loss,
        "losses": losses,
        "learning_rates": [[e["step"], e["learning_rate"]] for e in trainer.state.log_history if "learning_rate" in e],
        "surgery_ratios": {
            "initial": initial_ratios,
            "bump_after_epoch": bump_after,
            "bump_step": bump_step,
            "bumped": trainer.state.global_step >= bump_step,
            "final": model.surgery_ratios.tolist(),
        },
        "adapters_only": options.adapters_only,
        "resumed_from": resume,
        "versions": {
            "towerzoo": towerzoo.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    model = trained_model(trainer, model)
    if trainer.is_world_process_zero():
        folder = Path(options.output_dir) / "model"
        save_kwargs = {"adapters_only": True} if options.adapters_only else None
        folder = save_model_folder(model.eval(), processor, folder, record, save_kwargs)
        record["folder"] = str(folder)
        if options.push_to_hub is not None:
            from towerzoo.hub_cards.push import push_folder

            record["pushed"] = push_folder(
                folder, options.push_to_hub, private=options.private, token=options.hub_token
            )
    return record
