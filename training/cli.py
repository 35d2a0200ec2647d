"""`towerzoo finetune TASK …`: the command-line side of `trainer.finetune` (run under `accelerate launch` or `torchrun`
for several GPUs)."""

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from towerzoo.training.recipes import RECIPES

TASK_HELP = {
    "vqav2": "VQAv2: BCE on the original's soft answer scores",
    "retrieval": "image-text retrieval (Karpathy splits): ITC + ITM with hard negatives, as the original's irtr_itm_itc",
    "snli-ve": "SNLI-VE: 3-way visual entailment",
    "nlvr2": "NLVR2: is the sentence true of the image pair",
    "restore": "RESTORE few-shot prompt learning on the base classes (CoOp base-to-novel), the official recipe per "
    "dataset; score it with `towerzoo eval classification`",
}


def _add_model_options(parser: argparse.ArgumentParser, task: str) -> None:
    restore = task == "restore"
    title = (
        "a RESTORE folder or repo: towerzoo convert restore-from-clip"
        if restore
        else "--model, or --init-config with --tokenizer"
    )
    group = parser.add_argument_group(f"model ({title}) and output")
    group.add_argument("--model", help="towerzoo Hub folder or repo id to start from (loaded with its own code)")
    if restore:
        group.add_argument(
            "--adapters-only",
            action="store_true",
            help="write only RESTORE's own weights; the folder loads its base CLIP from base_model_name_or_path",
        )
    else:
        group.add_argument(
            "--init-config", type=Path, help="config.json of a towerzoo architecture: start from scratch"
        )
        group.add_argument(
            "--tokenizer",
            type=Path,
            help="tokenizer folder for the processor (with --init-config, or a folder without one)",
        )
    group.add_argument("--attn-implementation", help="eager, sdpa (default), flex_attention, flash_attention_2, …")
    group.add_argument("--output-dir", type=Path, required=True, help="gets checkpoints/ and the Hub folder model/")
    group.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR/model and earlier checkpoints")


def _add_recipe_options(parser: argparse.ArgumentParser, task: str) -> None:
    names = sorted(name for name, recipe in RECIPES.items() if recipe.task == task)
    group = parser.add_argument_group("recipe (defaults: the original run's; each option overrides one value)")
    group.add_argument(
        "--recipe", choices=names, help="default: the model architecture's recipe for the task (and the dataset)"
    )
    for name, kind, text in (
        ("learning-rate", float, "base learning rate (towers)"),
        ("lr-mult-head", float, "learning-rate multiplier of the task heads"),
        ("lr-mult-cross-modal", float, "learning-rate multiplier of the cross-modal layers"),
        ("weight-decay", float, "AdamW weight decay (not on biases and the original's exempt LayerNorms)"),
        ("warmup-ratio", float, "fraction of the steps with linear warm-up"),
        ("num-train-epochs", float, "epochs"),
        ("total-batch-size", int, "examples per optimizer step (gradient accumulation fills it)"),
        ("per-device-train-batch-size", int, "examples per device per forward pass"),
        ("gradient-accumulation-steps", int, "default: total batch / (per-device batch × processes)"),
        ("image-size", int, "image resolution (ViT positions interpolated); from scratch: the config's"),
        ("max-text-length", int, "tokens per text (longer texts are truncated)"),
        ("task-head-layers", int, "layers of a new classifier head (1 or 2)"),
        ("head-hidden-scale", float, "width of a new 2-layer classifier: 2·hidden·scale"),
        ("lr-scheduler-type", str, "transformers scheduler (the original: linear decay to 0)"),
        ("adam-beta1", float, "AdamW beta1"),
        ("adam-beta2", float, "AdamW beta2 (the original: 0.98)"),
        ("adam-epsilon", float, "AdamW epsilon"),
    ):
        group.add_argument(f"--{name}", type=kind, help=text)


def _add_trainer_options(parser: argparse.ArgumentParser, task: str) -> None:
    group = parser.add_argument_group("training run (transformers' TrainingArguments)")
    group.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps")
    group.add_argument("--seed", type=int, default=0, help="seeds the new weights, data order and sampling")
    precision = group.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    precision.add_argument("--fp16", action="store_true", help="fp16 mixed precision")
    group.add_argument("--logging-steps", type=int, default=50)
    group.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps")
    group.add_argument("--save-total-limit", type=int, help="keep at most N checkpoints")
    if task not in ("restore", "zipper"):  # scored afterwards, by `towerzoo eval classification|asr|tts`
        group.add_argument("--eval-steps", type=int, help="evaluate every N steps (default: every epoch)")
        group.add_argument("--per-device-eval-batch-size", type=int)
    group.add_argument("--dataloader-num-workers", type=int, default=2, help="workers decoding images")
    group.add_argument("--deepspeed", help="DeepSpeed config JSON")
    group.add_argument("--fsdp", help='FSDP options, e.g. "full_shard auto_wrap"')
    group.add_argument("--report-to", default="none", help="wandb, tensorboard, … (default: none)")
    group.add_argument(
        "--resume-from-checkpoint", help="a checkpoint folder, or 'last' (the newest in OUTPUT_DIR/checkpoints)"
    )
    if task not in ("restore", "zipper"):
        group.add_argument(
            "--text-padding",
            choices=("max_length", "longest"),
            default="max_length",
            help="pad texts to --max-text-length as the original does (ManagerTower depends on it), or to the longest",
        )
    hub = parser.add_argument_group("Hub")
    hub.add_argument("--push-to-hub", metavar="REPO", help="upload OUTPUT_DIR/model to this model repo")
    hub.add_argument("--private", action="store_true", help="create the repo private")
    hub.add_argument("--hub-token", help="default: HF_TOKEN or the stored login")


def _add_data_options(parser: argparse.ArgumentParser, task: str) -> None:
    group = parser.add_argument_group("data (official formats)")
    if task == "vqav2":
        group.add_argument(
            "--questions", type=Path, nargs="+", help="questions JSON, one per split (e.g. train2014 val2014)"
        )
        group.add_argument("--annotations", type=Path, nargs="+", help="annotations JSON, one per --questions")
        group.add_argument("--images", type=Path, nargs="+", help="COCO image folder, one per --questions")
        group.add_argument("--eval-questions", type=Path, nargs="+", default=[])
        group.add_argument("--eval-annotations", type=Path, nargs="+", default=[])
        group.add_argument("--eval-images", type=Path, nargs="+", default=[])
        group.add_argument(
            "--min-answer-count",
            type=int,
            default=9,
            help="a new answer vocabulary keeps the most common answers of at least N questions (the original: 9)",
        )
    elif task == "retrieval":
        group.add_argument(
            "--karpathy", type=Path, help="Karpathy split JSON (dataset_coco.json, dataset_flickr30k.json)"
        )
        group.add_argument("--images", type=Path, help="image folder (COCO: holds train2014/…; Flickr30K: the images)")
        group.add_argument(
            "--splits", nargs="+", choices=("train", "restval", "val", "test"), help="default: train (+ restval)"
        )
        group.add_argument("--eval-split", choices=("val", "test", "train", "restval"), help="also report its loss")
    else:
        what = "snli_ve_train.jsonl" if task == "snli-ve" else "train.json (json lines)"
        images = "Flickr30K images (<Flickr30K_ID>.jpg)" if task == "snli-ve" else "NLVR2 images (*-img0.png, …)"
        group.add_argument("--annotations", type=Path, help=what)
        group.add_argument("--images", type=Path, help=f"folder of the {images}")
        group.add_argument("--eval-annotations", type=Path, help="e.g. the dev file")
        group.add_argument("--eval-images", type=Path, help="its image folder")
    group.add_argument("--skip-missing-images", action="store_true", help="drop examples whose images are missing")


def _add_restore_options(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (what `towerzoo eval classification --data` reads)")
    data.add_argument(
        "--data",
        type=Path,
        help="dataset folder: CoOp's (split_zhou_<Name>.json), <split>.csv files, FGVCAircraft's, or image folders",
    )
    data.add_argument("--split", default="train", help="the split the shots are drawn from (default: train)")
    data.add_argument(
        "--layout",
        choices=("auto", "coop", "csv", "fgvc-aircraft", "imagefolder"),
        default="auto",
        help="on-disk layout of --data (default: detected)",
    )
    data.add_argument("--classnames", type=Path, help="class names, one per line or a JSON list (labels index it)")
    data.add_argument("--image-dir", type=Path, help="coop layout: the folder the split file's paths are relative to")
    data.add_argument(
        "--subset",
        choices=("base", "all"),
        default="base",
        help="train on the base half of the classes (CoOp's base-to-novel, the default) or on all of them",
    )
    recipe = parser.add_argument_group("recipe (defaults: the official run on the dataset; each option overrides one)")
    recipe.add_argument(
        "--dataset-recipe",
        metavar="NAME",
        help="the dataset whose official setting to train with (e.g. oxford_pets, dtd, imagenet; a wrong name lists "
        "them all)",
    )
    for name, kind, text in (
        ("num-shots", int, "K images per class, drawn with --seed (16)"),
        ("learning-rate", float, "SGD learning rate after the warm-up (0.0035)"),
        ("momentum", float, "SGD momentum (0.9)"),
        ("weight-decay", float, "SGD weight decay, on every trained parameter (5e-4)"),
        ("num-train-epochs", int, "epochs (10); the schedule and the surgery ratio raise are per epoch"),
        ("per-device-train-batch-size", int, "images per device per forward pass (4)"),
        ("gradient-accumulation-steps", int, "forward passes per optimizer step (1)"),
        ("warmup-epochs", int, "epochs at the constant warm-up learning rate (1)"),
        ("warmup-learning-rate", float, "the warm-up learning rate (1e-5)"),
        ("surgery-ratio-text", float, "initial ratio of the text surgery block (per dataset)"),
        ("surgery-ratio-vision", float, "initial ratio of the vision surgery block (per dataset)"),
        ("feature-shift-loss-weight", float, "weight of the feature-shift consistency loss (per dataset)"),
    ):
        recipe.add_argument(f"--{name}", type=kind, help=text)


def _listed(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _options(args: argparse.Namespace):
    from towerzoo.training.restore import RestoreOptions
    from towerzoo.training.trainer import FinetuneOptions

    options_class = RestoreOptions if args.task == "restore" else FinetuneOptions
    values = vars(args)
    for name in ("questions", "annotations", "images", "eval_questions", "eval_annotations", "eval_images"):
        values[name] = _listed(values.get(name))
    names = {field.name for field in dataclasses.fields(options_class)}
    return options_class(**{name: value for name, value in values.items() if name in names})


def _finetune(args: argparse.Namespace) -> int:
    from towerzoo.conversions.common import ConversionError
    from towerzoo.evaluation.runner import EvaluationError
    from towerzoo.hub_cards.push import PushError
    from towerzoo.training import TrainingError
    from towerzoo.training.restore import finetune_restore
    from towerzoo.training.trainer import finetune

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        record = (finetune_restore if args.task == "restore" else finetune)(_options(args))
    except (TrainingError, EvaluationError, ConversionError, PushError) as error:
        print(f"towerzoo finetune: error: {error}", file=sys.stderr)
        return 2
    if "folder" in record:
        last = "" if record["final_loss"] is None else f", last logged {record['final_loss']:.4f}"
        print(
            f"trained {record['steps']} steps (mean loss {record['mean_train_loss']:.4f}{last}); wrote {record['folder']}"
        )
    if "pushed" in record:
        print(f"pushed to {record['pushed']}")
    return 0


def add_parsers(commands) -> None:
    """`towerzoo finetune` and its tasks, on the main parser's subcommands."""
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a model on a task with the original recipe (transformers Trainer), save a Hub folder",
        description="Fine-tune a towerzoo model (or one from scratch) with transformers' Trainer, the original "
        "fine-tuning recipe as defaults, and write OUTPUT_DIR/model as a Hub folder (code, weights, processor, "
        "training.json, card). Run under `accelerate launch`/`torchrun` for several GPUs.",
    )
    tasks = finetune.add_subparsers(dest="task", required=True)
    for task, text in TASK_HELP.items():
        parser = tasks.add_parser(task, help=text, description=text)
        _add_model_options(parser, task)
        if task == "restore":
            _add_restore_options(parser)
        else:
            _add_data_options(parser, task)
            _add_recipe_options(parser, task)
        _add_trainer_options(parser, task)
        parser.set_defaults(handler=_finetune)
    from towerzoo.training.zipper import add_parser as add_zipper_parser

    add_zipper_parser(tasks)
