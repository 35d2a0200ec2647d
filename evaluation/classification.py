"""`towerzoo eval classification`: top-1 accuracy of a prompt-learning CLIP model (RESTORE) on a classification
dataset under CoOp's base-to-novel protocol.

The dataset split is read from its on-disk layout (`classification_data`), cut into its base or novel classes (CoOp's
`subsample_classes`: labels sorted, the first ceil(n/2) base, the rest novel relabelled 0..), and each subset is scored
among its own classes only: `model.set_classnames(subset classes, processor)` rebuilds the class prompts, then the
argmax of `model(pixel_values).logits` is the prediction. `--subset base-to-novel` scores both and reports base and
novel accuracy and their harmonic mean 2·B·N/(B+N) (of the rounded percentages, as the papers' tables do). Images
are decoded in DataLoader workers; batches are sharded over processes and resumable (`runner.ShardedRun`).
"""

import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from towerzoo.evaluation.classification_data import (
    ClassificationSplit,
    base_novel_labels,
    load_classification_dataset,
    open_rgb_image,
    subsample_classes,
)
from towerzoo.evaluation.metrics.classification_accuracy.accuracy import harmonic_mean
from towerzoo.evaluation.runner import (
    EvaluationError,
    RunOptions,
    ShardedRun,
    Timer,
    file_fingerprint,
    fingerprint,
    finish_run,
    load_model,
    model_identity,
    plan_batches,
)

logger = logging.getLogger(__name__)
SUBSET_CHOICES = ("base-to-novel", "base", "novel", "all")
SUBSET_RULE = (
    "labels sorted; base = the first ceil(n/2) classes, novel = the rest relabelled from 0 (CoOp's "
    "subsample_classes); each subset is scored among its own classes only"
)


@dataclass(kw_only=True)
class ClassificationOptions(RunOptions):
    """What `towerzoo eval classification` takes (see the CLI's help for each option)."""

    data: Path
    split: str = "test"
    subset: str = "base-to-novel"
    layout: str = "auto"
    classnames: Path | None = None
    image_dir: Path | None = None
    zero_shot: bool = False
    seed: int | None = None


def image_inputs(paths: list[str], processor, indices: list[int]) -> dict:
    """The processed images of some items (run in DataLoader workers)."""
    images = [open_rgb_image(paths[i]) for i in indices]
    return {"pixel_values": processor(images=images, return_tensors="pt")["pixel_values"]}


def _subsets(split: ClassificationSplit, subset: str, limit: int | None) -> dict[str, ClassificationSplit]:
    """The subsets to score ({"base", "novel"} for base-to-novel), each cut to its first `limit` items."""
    if subset not in SUBSET_CHOICES:
        raise EvaluationError(f"unknown --subset {subset!r}; choose one of {', '.join(SUBSET_CHOICES)}.")
    names = ("base", "novel") if subset == "base-to-novel" else (subset,)
    subsets = {}
    for name in names:
        part = subsample_classes(split, name)
        part = dataclasses.replace(part, items=part.items[:limit] if limit is not None else part.items)
        if not part.items:
            raise EvaluationError(f"the {name} classes of {split.dataset!r} have no images in this split.")
        subsets[name] = part
    return subsets


def _training_seed(model_path: str) -> int | None:
    """The seed a local model folder was trained with, from its `training.json` (None when not recorded)."""
    record = Path(model_path) / "training.json"
    if not record.is_file():
        return None
    return json.loads(record.read_text()).get("settings", {}).get("seed")


def _protocol(options: ClassificationOptions, split: ClassificationSplit, model) -> dict:
    """What the numbers mean, recorded in the results."""
    base, novel = base_novel_labels(len(split.classnames))
    protocol = {
        "name": "coop-base-to-novel" if options.subset == "base-to-novel" else f"coop-{options.subset}-classes",
        "subset": options.subset,
        "subset_rule": SUBSET_RULE,
        "num_classes": len(split.classnames),
        "num_base_classes": len(base),
        "num_novel_classes": len(novel),
        "classname_cleanup": "underscores become spaces (CoOp's prompt learners)",
        "prompt_template": getattr(model.config, "prompt_template", None),
        "zero_shot": options.zero_shot,
        "seed": options.seed if options.seed is not None else _training_seed(options.model),
        "layout": split.layout,
        "source": split.source,
    }
    if options.subset == "base-to-novel":
        protocol["harmonic_mean"] = "2·B·N/(B+N) of the rounded base and novel accuracies"
    return protocol


def evaluate_classification(options: ClassificationOptions, accelerator=None) -> dict | None:
    """Score the model on each requested subset of the split (sharded over `accelerator`'s processes, resumable) and
    write the results JSON; returns the results on the main process, None on the others."""
    import evaluate
    from transformers import AutoProcessor

    from towerzoo.evaluation.metrics import metric_path

    timer, started = Timer(), time.time()
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    with timer("loading"):
        split = load_classification_dataset(
            options.data, options.split, options.layout, options.classnames, options.image_dir
        )
        subsets = _subsets(split, options.subset, options.limit)
        model = load_model(options.model, "AutoModelForImageClassification", options.attn_implementation, device)
        if not hasattr(model, "set_classnames"):
            raise EvaluationError(
                f"{options.model} holds a {type(model).__name__}, which has no set_classnames: this task needs a "
                "prompt-learning CLIP classifier (RESTORE) whose classes can be changed."
            )
        processor = AutoProcessor.from_pretrained(options.model, trust_remote_code=True)
        held = list(getattr(model.config, "classnames", None) or [])
        base = [split.classnames[label] for label in base_novel_labels(len(split.classnames))[0]]
        if held and held not in (split.classnames, base):
            logger.warning(
                "the model holds other classes than this dataset's (%s…): is it the right dataset?", held[:3]
            )
    run_config = {
        "batch_size": options.batch_size,
        "dtype": options.dtype,
        "attn_implementation": model.config._attn_implementation,
        "limit": options.limit,
        "num_processes": accelerator.num_processes if accelerator is not None else 1,
    }
    key = fingerprint(
        "classification",
        model_identity(options.model, model),
        {role: file_fingerprint(path) for role, path in split.source.items() if Path(path).is_file()},
        [(str(path), label) for path, label in split.items],
        split.classnames,
        options.subset,
        options.zero_shot,
        {k: v for k, v in run_config.items() if k != "num_processes"},
    )
    work_dir = Path(options.work_dir or f"{options.output}.work") / key

    def step(pixel_values: torch.Tensor) -> list[int]:
        return model(pixel_values=pixel_values, zero_shot=options.zero_shot).logits.float().argmax(-1).tolist()

    predictions, stats = {}, {}
    with timer("inference"):
        for name, part in subsets.items():
            model.set_classnames(part.classnames, processor)
            batches = plan_batches(len(part), options.batch_size)
            run = ShardedRun(batches, work_dir / name, accelerator, description=f"{name} classes")
            make_inputs = functools.partial(image_inputs, [str(path) for path in part.paths], processor)
            predictions[name] = run.run_model(step, make_inputs, device, options.dtype, options.num_workers)
            stats[name] = {k: run.stats[k] for k in ("computed_batches", "resumed_batches")}
    if accelerator is not None and not accelerator.is_main_process:
        return None
    with timer("scoring"):
        metric = evaluate.load(metric_path("classification_accuracy"))
        breakdown = {
            name: {
                "num_examples": len(part),
                "num_classes": len(part.classnames),
                "metrics": metric.compute(predictions=predictions[name], references=part.labels, mean_per_class=True),
                "classnames": part.classnames,
                **stats[name],
            }
            for name, part in subsets.items()
        }
    if options.subset == "base-to-novel":
        base, novel = (breakdown[name]["metrics"]["accuracy"] for name in ("base", "novel"))
        metrics = {"base_accuracy": base, "novel_accuracy": novel, "harmonic_mean": harmonic_mean(base, novel)}
    else:
        metrics = dict(breakdown[options.subset]["metrics"])
    num_examples = sum(len(part) for part in subsets.values())
    results = {
        "model": options.model,
        "revision": getattr(model.config, "_commit_hash", None),
        "task": "classification",
        "dataset": split.dataset,
        "split": options.split,
        "num_examples": num_examples,
        "skipped": {},
        "protocol": _protocol(options, split, model),
        "metrics": metrics,
        "subsets": breakdown,
        "config": run_config,
        "resumed_batches": sum(s["resumed_batches"] for s in stats.values()),
        "timing": {
            **timer.seconds,
            "total": time.time() - started,
            "images_per_second": num_examples / max(timer.seconds["inference"], 1e-9),
        },
    }
    return finish_run(options, results, work_dir)
