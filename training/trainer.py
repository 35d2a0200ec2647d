"""`towerzoo finetune TASK`: a towerzoo model fine-tuned with `transformers.Trainer` under the original recipe, saved as
a Hub folder.

Steps: load the starting model (`loading.py`), pick the recipe (`recipes.py`) and apply the overrides, read the data
(`data.py`), build the task model, train (`RecipeTrainer`: the original's parameter groups; retrieval through
`objectives.RetrievalObjective`), then write `OUTPUT_DIR/model/` — code, config with `auto_map`, safetensors, processor,
`training.json` and the card — atomically. Trainer checkpoints go to `OUTPUT_DIR/checkpoints/`.
"""

import datetime
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from towerzoo.training import TrainingError
from towerzoo.training.data import (
    NLVR2_LABELS,
    SNLI_VE_LABELS,
    Collator,
    class_label2id,
    karpathy_splits_present,
    load_nlvr2_split,
    load_retrieval_split,
    load_snli_ve_split,
    load_vqav2_split,
    named_labels,
)
from towerzoo.training.loading import (
    TASK_MODELS,
    ModelSource,
    TaskModelSpec,
    build_task_model,
    configure_processor,
    load_source,
    scratch_source,
)
from towerzoo.training.objectives import RetrievalObjective
from towerzoo.training.recipes import Recipe, default_recipe, get_recipe, optimizer_groups

logger = logging.getLogger(__name__)

# recipe fields a command-line option may override (None = the recipe's value)
RECIPE_OVERRIDES = (
    "learning_rate",
    "lr_mult_head",
    "lr_mult_cross_modal",
    "weight_decay",
    "warmup_ratio",
    "num_train_epochs",
    "total_batch_size",
    "per_device_train_batch_size",
    "image_size",
    "max_text_length",
    "task_head_layers",
    "head_hidden_scale",
    "lr_scheduler_type",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
)


@dataclass(kw_only=True)
class FinetuneOptions:
    """What `towerzoo finetune TASK` takes (see the CLI's help for each option); recipe fields left None take the
    recipe's value."""

    task: str
    output_dir: Path
    model: str | None = None
    init_config: Path | None = None
    tokenizer: Path | None = None
    attn_implementation: str | None = None
    # data (per task; the CLI says which)
    questions: list[Path] = field(default_factory=list)
    annotations: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    eval_questions: list[Path] = field(default_factory=list)
    eval_annotations: list[Path] = field(default_factory=list)
    eval_images: list[Path] = field(default_factory=list)
    karpathy: Path | None = None
    splits: list[str] | None = None
    eval_split: str | None = None
    min_answer_count: int = 9
    skip_missing_images: bool = False
    text_padding: str = "max_length"
    # the recipe and its overrides
    recipe: str | None = None
    learning_rate: float | None = None
    lr_mult_head: float | None = None
    lr_mult_cross_modal: float | None = None
    weight_decay: float | None = None
    warmup_ratio: float | None = None
    num_train_epochs: float | None = None
    total_batch_size: int | None = None
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    image_size: int | None = None
    max_text_length: int | None = None
    task_head_layers: int | None = None
    head_hidden_scale: float | None = None
    lr_scheduler_type: str | None = None
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    adam_epsilon: float | None = None
    # passed to TrainingArguments
    max_steps: int = -1
    seed: int = 0
    bf16: bool = False
    fp16: bool = False
    logging_steps: int = 50
    save_steps: int = 500
    save_total_limit: int | None = None
    eval_steps: int | None = None
    per_device_eval_batch_size: int | None = None
    dataloader_num_workers: int = 2
    deepspeed: str | None = None
    fsdp: str | None = None
    report_to: str = "none"
    resume_from_checkpoint: str | None = None
    # output
    overwrite: bool = False
    push_to_hub: str | None = None
    private: bool = False
    hub_token: str | None = None


def effective_settings(recipe: Recipe, options: FinetuneOptions, scratch: bool) -> dict:
    """The recipe's values with the command line's overrides. From scratch, the image size and the head's shape are
    the config's unless given (None here): the recipe's belong to fine-tuning a pre-trained model."""
    settings = {name: getattr(recipe, name) for name in RECIPE_OVERRIDES}
    settings.update({name: getattr(options, name) for name in RECIPE_OVERRIDES if getattr(options, name) is not None})
    for name in ("image_size", "task_head_layers", "head_hidden_scale"):
        if scratch and getattr(options, name) is None:
            settings[name] = None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = settings["per_device_train_batch_size"] * world_size
    settings["world_size"] = world_size
    # the original's run.py: batch_size // (per_gpu_batchsize × GPUs), at least 1
    settings["gradient_accumulation_steps"] = options.gradient_accumulation_steps or max(
        1, settings["total_batch_size"] // per_step
    )
    settings["total_batch_size"] = per_step * settings["gradient_accumulation_steps"]
    return settings


def _check_options(options: FinetuneOptions) -> None:
    if (options.model is None) == (options.init_config is None):
        raise TrainingError("give either --model (a towerzoo Hub folder or repo) or --init-config (from scratch).")
    if options.init_config is not None and options.tokenizer is None:
        raise TrainingError("--init-config needs --tokenizer (a tokenizer folder for the processor).")
    if options.push_to_hub is not None:
        from towerzoo.hub_cards.push import check_repo_id

        check_repo_id(options.push_to_hub)
    model_dir = Path(options.output_dir) / "model"
    if model_dir.exists() and not options.overwrite:
        raise TrainingError(f"{model_dir} exists; pass --overwrite to replace it.")
    if (
        options.resume_from_checkpoint is None
        and not options.overwrite
        and any((Path(options.output_dir) / "checkpoints").glob("checkpoint-*"))
    ):
        raise TrainingError(
            f"{options.output_dir}/checkpoints holds an earlier run's checkpoints: pass --resume-from-checkpoint last "
            "to continue it, or --overwrite to start over."
        )


def _resume_path(options: FinetuneOptions) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if options.resume_from_checkpoint != "last":
        if options.resume_from_checkpoint is not None and not Path(options.resume_from_checkpoint).is_dir():
            raise TrainingError(f"checkpoint {options.resume_from_checkpoint} does not exist.")
        return options.resume_from_checkpoint
    folder = Path(options.output_dir) / "checkpoints"
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if last is None:
        raise TrainingError(f"--resume-from-checkpoint last: no checkpoint-* folder in {folder}.")
    return last


def _require(options: FinetuneOptions, *names: str) -> None:
    missing = [f"--{name.replace('_', '-')}" for name in names if not getattr(options, name)]
    if missing:
        raise TrainingError(f"towerzoo finetune {options.task} needs {', '.join(missing)}.")


def _eval_given(options: FinetuneOptions, *names: str) -> bool:
    """Whether an eval split was asked for; all of its options then, or none."""
    given = [name for name in names if getattr(options, name)]
    if given and len(given) != len(names):
        missing = [f"--{name.replace('_', '-')}" for name in names if name not in given]
        raise TrainingError(f"the eval split also needs {', '.join(missing)}.")
    return bool(given)


def _model_labels(source: ModelSource, task: str) -> dict | None:
    """The source's classifier labels when it already has this task's head (None otherwise)."""
    suffix = TASK_MODELS[task][0]
    architectures = getattr(source.config, "architectures", None) or []
    if source.model is None or not any(name.endswith(suffix) for name in architectures):
        return None
    return {int(k): v for k, v in source.config.id2label.items()}


def load_task_data(options: FinetuneOptions, source: ModelSource) -> tuple:
    """The train and eval datasets (eval None when not asked for), the classifier's id2label (None for retrieval) and
    the data fingerprints."""
    task, skip = options.task, options.skip_missing_images
    eval_set, fingerprints = None, {}
    model_labels = _model_labels(source, task)
    if task == "vqav2":
        _require(options, "questions", "annotations", "images")
        label2id = {label: i for i, label in model_labels.items()} if named_labels(model_labels) else None
        train, label2id, fingerprints["train"] = load_vqav2_split(
            options.questions, options.annotations, options.images, label2id, options.min_answer_count, skip
        )
        if _eval_given(options, "eval_questions", "eval_annotations", "eval_images"):
            eval_set, _, fingerprints["eval"] = load_vqav2_split(
                options.eval_questions,
                options.eval_annotations,
                options.eval_images,
                label2id,
                skip_missing_images=skip,
            )
        return train, eval_set, {index: label for label, index in label2id.items()}, fingerprints
    if task == "retrieval":
        _require(options, "karpathy", "images")
        _, present = karpathy_splits_present(options.karpathy)
        splits = options.splits or [split for split in ("train", "restval") if split in present]
        train, fingerprints["train"] = load_retrieval_split(options.karpathy, options.images[0], splits, skip)
        if options.eval_split:
            eval_set, fingerprints["eval"] = load_retrieval_split(
                options.karpathy, options.images[0], [options.eval_split], skip
            )
        return train, eval_set, None, fingerprints
    _require(options, "annotations", "images")
    load, default_labels = (
        (load_snli_ve_split, SNLI_VE_LABELS) if task == "snli-ve" else (load_nlvr2_split, NLVR2_LABELS)
    )
    label2id = class_label2id(model_labels, default_labels, set())
    train, fingerprints["train"] = load(options.annotations[0], options.images[0], label2id, skip)
    if _eval_given(options, "eval_annotations", "eval_images"):
        eval_set, fingerprints["eval"] = load(options.eval_annotations[0], options.eval_images[0], label2id, skip)
    return train, eval_set, {index: label for label, index in label2id.items()}, fingerprints


class RecipeTrainer(Trainer):
    """`Trainer` with the original's optimizer parameter groups (head and cross-modal learning-rate multipliers,
    no weight decay where the original had none)."""

    def __init__(self, *args, architecture: str, lr_multipliers: dict[str, float], **kwargs):
        self.architecture, self.lr_multipliers = architecture, lr_multipliers
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = optimizer_groups(
                opt_model.named_parameters(),
                self.architecture,
                self.args.learning_rate,
                self.args.weight_decay,
                self.lr_multipliers,
            )
            optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_class(groups, **optimizer_kwargs)
        return self.optimizer


@dataclass
class EvalMetric:
    """Per-batch evaluation metric (`batch_eval_metrics`): VQA score (the original's `VQAScore`: the soft score of the
    predicted answer) or accuracy."""

    task: str
    total: float = 0.0
    count: int = 0

    def __call__(self, prediction, compute_result: bool) -> dict | None:
        logits, labels = prediction.predictions, prediction.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        predicted = logits.argmax(-1)
        if self.task == "vqav2":
            self.total += labels.gather(1, predicted[:, None]).sum().item()
        else:
            self.total += (predicted == labels).sum().item()
        self.count += len(predicted)
        if not compute_result:
            return None
        value, self.total, self.count = self.total / max(self.count, 1), 0.0, 0
        return {"vqa_score" if self.task == "vqav2" else "accuracy": value}


def training_arguments(options: FinetuneOptions, settings: dict, has_eval: bool) -> TrainingArguments:
    eval_strategy = ("steps" if options.eval_steps else "epoch") if has_eval else "no"
    return TrainingArguments(
        output_dir=str(Path(options.output_dir) / "checkpoints"),
        per_device_train_batch_size=settings["per_device_train_batch_size"],
        per_device_eval_batch_size=options.per_device_eval_batch_size or settings["per_device_train_batch_size"],
        gradient_accumulation_steps=settings["gradient_accumulation_steps"],
        learning_rate=settings["learning_rate"],
        weight_decay=settings["weight_decay"],
        warmup_steps=settings["warmup_ratio"],  # below 1: a fraction of the training steps
        lr_scheduler_type=settings["lr_scheduler_type"],
        adam_beta1=settings["adam_beta1"],
        adam_beta2=settings["adam_beta2"],
        adam_epsilon=settings["adam_epsilon"],
        optim="adamw_torch",
        num_train_epochs=settings["num_train_epochs"],
        max_steps=options.max_steps,
        seed=options.seed,
        bf16=options.bf16,
        fp16=options.fp16,
        logging_steps=options.logging_steps,
        save_steps=options.save_steps,
        save_total_limit=options.save_total_limit,
        eval_strategy=eval_strategy,
        eval_steps=options.eval_steps,
        batch_eval_metrics=has_eval and options.task != "retrieval",
        prediction_loss_only=options.task == "retrieval",
        dataloader_num_workers=options.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        deepspeed=options.deepspeed,
        fsdp=options.fsdp or "",
        report_to=options.report_to,
        remove_unused_columns=False,
        # without a GPU, torchrun's processes train together on CPU (gloo) only when asked for CPU
        use_cpu=not torch.cuda.is_available(),
    )


def save_model_folder(model, processor, folder: Path, record: dict, save_kwargs: dict | None = None) -> Path:
    """The Hub folder with `training.json`, written atomically, then its card (`save_kwargs` go to the model's
    `save_pretrained`, e.g. RESTORE's `adapters_only=True`)."""
    from towerzoo.conversions.bridgetower_folder import exposed_classes
    from towerzoo.conversions.common import write_folder_atomically
    from towerzoo.conversions.hub_folder import write_hub_folder
    from towerzoo.hub_cards.card import write_card

    exposed = exposed_classes(model)

    def fill(tmp: Path) -> None:
        write_hub_folder(model, tmp, exposed=exposed, processor=processor, overwrite=True, save_kwargs=save_kwargs)
        (tmp / "training.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")

    folder = write_folder_atomically(folder, fill, overwrite=True)
    write_card(folder)
    return folder


def trained_model(trainer: Trainer, model: torch.nn.Module) -> torch.nn.Module | None:
    """The model to save: `model` itself, or, when FSDP or DeepSpeed may have sharded it, a fresh copy filled with
    the gathered full weights on the main process (None on the others). Every process must call it."""
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return model
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not trainer.is_world_process_zero():
        return None
    if isinstance(trainer.model, RetrievalObjective):
        state = {key.removeprefix("model."): value for key, value in state.items()}
    export = type(model)._from_config(model.config, dtype=torch.float32)
    export.load_state_dict(state)
    return export


def _losses(log_history: list[dict]) -> list[list]:
    """[step, loss] of every logged training loss."""
    return [[entry["step"], entry["loss"]] for entry in log_history if "loss" in entry]


def finetune(options: FinetuneOptions) -> dict:
    """Fine-tune and write `OUTPUT_DIR/model/` (on the main process); returns the training record."""
    import transformers

    import towerzoo

    _check_options(options)
    resume = _resume_path(options)
    if options.model is not None:
        source = load_source(options.model, options.tokenizer, options.attn_implementation)
    else:
        source = scratch_source(options.init_config, options.tokenizer)
    dataset = (
        karpathy_splits_present(options.karpathy)[0] if options.task == "retrieval" and options.karpathy else None
    )
    recipe = (
        get_recipe(options.recipe, options.task)
        if options.recipe
        else default_recipe(options.task, source.architecture, dataset)
    )
    settings = effective_settings(recipe, options, scratch=source.model is None)
    train_set, eval_set, id2label, fingerprints = load_task_data(options, source)

    spec = TaskModelSpec(
        task=options.task,
        id2label=id2label,
        task_head_layers=settings["task_head_layers"],
        head_hidden_scale=settings["head_hidden_scale"],
        image_size=settings["image_size"],
        seed=options.seed,
        attn_implementation=options.attn_implementation,
    )
    model, transfer, head_is_new = build_task_model(source, spec)
    source.model = None  # the task model holds what it needs
    text = model.config.text_config
    configure_processor(
        source.processor,
        model.config.vision_config.image_size,
        settings["max_text_length"],
        text.max_position_embeddings - text.pad_token_id - 1,
    )
    settings["image_size"] = model.config.vision_config.image_size
    settings["task_head_layers"], settings["head_hidden_scale"] = (
        model.config.task_head_layers,
        model.config.head_hidden_scale,
    )
    settings["max_text_length"] = source.processor.max_text_length
    start = (
        "from scratch"
        if options.model is None
        else f"{transfer.loaded} tensors loaded, {len(transfer.new)} new, {len(transfer.dropped)} dropped, "
        f"{len(transfer.adapted)} adapted"
    )
    logger.info(
        "recipe %s (%s); %s %s; batch %d = %d per device × %d processes × %d accumulation",
        *(recipe.name, recipe.source, type(model).__name__, start, settings["total_batch_size"]),
        *(settings["per_device_train_batch_size"], settings["world_size"], settings["gradient_accumulation_steps"]),
    )

    checkpoints = Path(options.output_dir) / "checkpoints"
    if options.overwrite and resume is None and checkpoints.is_dir() and int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(checkpoints)  # an earlier run's checkpoints would mix with this run's
    trainer = RecipeTrainer(
        model=RetrievalObjective(model) if options.task == "retrieval" else model,
        args=training_arguments(options, settings, eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=Collator(source.processor, options.task, model.config.num_labels, options.text_padding),
        processing_class=source.processor,
        compute_metrics=EvalMetric(options.task) if eval_set is not None and options.task != "retrieval" else None,
        architecture=source.architecture,
        lr_multipliers={"head": settings["lr_mult_head"], "cross_modal": settings["lr_mult_cross_modal"]},
    )
    result = trainer.train(resume_from_checkpoint=resume)
    eval_metrics = trainer.evaluate() if eval_set is not None else None
    losses = _losses(trainer.state.log_history)
    record = {
        "task": options.task,
        "recipe": recipe.as_dict(),
        "settings": {**settings, "seed": options.seed, "bf16": options.bf16, "fp16": options.fp16},
        "start": {**source.description, "new_head": head_is_new, "transfer": transfer.as_dict()},
        "data": fingerprints,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "final_loss": losses[-1][1] if losses else None,
        "mean_train_loss": result.training_loss,
        "losses": losses,
        "eval_metrics": eval_metrics,
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
        folder = save_model_folder(model.eval(), source.processor, Path(options.output_dir) / "model", record)
        record["folder"] = str(folder)
        if options.push_to_hub is not None:
            from towerzoo.hub_cards.push import push_folder

            record["pushed"] = push_folder(
                folder, options.push_to_hub, private=options.private, token=options.hub_token
            )
    return record
