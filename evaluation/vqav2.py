"""`towerzoo eval vqav2`: answer the official VQAv2 questions with a towerzoo VQA model and score the answers with the
official accuracy (`metrics/vqa_accuracy`), or write the official submission file for test-dev/test-std.

Data in the official formats: the questions JSON (`{"data_subtype": "val2014", "questions": [{"image_id", "question",
"question_id"}]}`), the annotations JSON when the split has them, and a folder of COCO images named
`COCO_<data_subtype>_<image_id:012d>.jpg` (2014/2015 names) or `<image_id:012d>.jpg` (2017 names).
"""

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from towerzoo.evaluation.runner import (
    EvaluationError,
    RunOptions,
    ShardedRun,
    Timer,
    file_fingerprint,
    fingerprint,
    finish_run,
    load_model,
    open_image,
    plan_batches,
    read_json,
    write_json_atomically,
)

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _image_index(images: Path) -> dict[str, Path]:
    if not Path(images).is_dir():
        raise EvaluationError(f"image folder {images} does not exist.")
    return {p.name: p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}


def _image_path(index: dict[str, Path], subtype: str | None, image_id: int) -> Path | None:
    for name in (f"COCO_{subtype}_{image_id:012d}.jpg", f"{image_id:012d}.jpg", f"{image_id}.jpg"):
        if name in index:
            return index[name]
    return None


def load_vqav2(
    questions: Path,
    images: Path,
    annotations: Path | None = None,
    limit: int | None = None,
    skip_missing_images: bool = False,
) -> tuple[datasets.Dataset, dict]:
    """The questions (with their ten answers and answer type when annotated) as a `datasets.Dataset`, plus counts of
    what was skipped. Questions without annotations, or annotations for unknown questions, are errors."""
    question_file = read_json(questions, "questions")
    if "questions" not in question_file:
        raise EvaluationError(f"{questions} has no 'questions' list: is it the official VQAv2 questions JSON?")
    subtype = question_file.get("data_subtype")
    rows = [
        {"question_id": int(q["question_id"]), "image_id": int(q["image_id"]), "question": q["question"]}
        for q in question_file["questions"]
    ]
    rows.sort(key=lambda row: row["question_id"])
    if limit is not None:
        rows = rows[:limit]
    if annotations is not None:
        annotation_file = read_json(annotations, "annotations")
        by_id = {int(a["question_id"]): a for a in annotation_file.get("annotations", [])}
        unannotated = [row["question_id"] for row in rows if row["question_id"] not in by_id]
        if unannotated:
            raise EvaluationError(
                f"{len(unannotated)} questions have no annotation in {annotations} (e.g. question_id "
                f"{unannotated[:5]}); check that both files are the same split, or omit --annotations for a "
                "test split to write the submission file."
            )
        for row in rows:
            annotation = by_id[row["question_id"]]
            row["answers"] = [a["answer"] for a in annotation["answers"]]
            row["answer_type"] = annotation["answer_type"]
            row["majority_answer"] = annotation.get("multiple_choice_answer", "")
    for row in rows:
        if not row["question"].strip():
            raise EvaluationError(f"question_id {row['question_id']} has an empty question in {questions}.")
    index = _image_index(images)
    missing = []
    for row in rows:
        path = _image_path(index, subtype, row["image_id"])
        row["image"] = str(path) if path else None
        if path is None:
            missing.append(row["image_id"])
    skipped = {}
    if missing:
        expected = f"COCO_{subtype}_{missing[0]:012d}.jpg"
        if not skip_missing_images:
            raise EvaluationError(
                f"{len(missing)} questions refer to images missing from {images} (e.g. {expected}); add the images "
                "or pass --skip-missing-images to score the rest (the score is then not the official one)."
            )
        rows = [row for row in rows if row["image"] is not None]
        skipped["missing_image_questions"] = len(missing)
        logger.warning("skipping %d questions whose images are missing from %s", len(missing), images)
    if not rows:
        raise EvaluationError("no questions to evaluate.")
    return datasets.Dataset.from_list(rows), skipped


def dataset_split(questions: Path) -> str | None:
    """The split named in the questions file (`data_subtype`, e.g. val2014, test-dev2015)."""
    return read_json(questions, "questions").get("data_subtype")


def question_inputs(dataset: datasets.Dataset, processor, indices: list[int]):
    """The processed images and questions of some rows (run in DataLoader workers)."""
    rows = dataset[indices]
    images = [open_image(path) for path in rows["image"]]
    return processor(images=images, text=rows["question"], return_tensors="pt")


def check_answer_vocabulary(model, dataset: datasets.Dataset) -> dict[int, str]:
    """The model's answers. A default `LABEL_i` vocabulary (the conversion did not get the answer list) is an error,
    and so is one that contains none of the annotators' most common answers (a label file of another model or
    task); low coverage is a warning (VQAv2's 3129 answers cover about 90% of the validation questions)."""
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    if len(id2label) != model.config.num_labels or all(v == f"LABEL_{k}" for k, v in id2label.items()):
        raise EvaluationError(
            "the model's id2label does not name its answers (default LABEL_i labels); convert the checkpoint with "
            "--labels answer2label.json so predictions can be scored."
        )
    if "majority_answer" in dataset.column_names:
        vocabulary = set(id2label.values())
        covered = sum(answer in vocabulary for answer in dataset["majority_answer"]) / len(dataset)
        if covered == 0:
            raise EvaluationError(
                f"none of the questions' most common answers is among the model's {len(id2label)} answers "
                f"(e.g. {list(id2label.values())[:5]}): the model's answer vocabulary does not match VQAv2; check the "
                "--labels file used in the conversion."
            )
        if covered < 0.5:
            logger.warning(
                "only %.0f%% of the questions' most common answers are among the model's answers; check that its "
                "answer vocabulary is VQAv2's",
                100 * covered,
            )
    return id2label


@dataclass(kw_only=True)
class VQAv2Options(RunOptions):
    """What `towerzoo eval vqav2` takes (see the CLI's help for each option)."""

    questions: Path
    images: Path
    annotations: Path | None = None
    submission: Path | None = None
    split: str | None = None
    skip_missing_images: bool = False


def evaluate_vqav2(options: VQAv2Options, accelerator=None) -> dict | None:
    """Run the model over the questions (sharded over `accelerator`'s processes, resumable) and write the results
    JSON (and the submission file); returns the results on the main process."""
    import evaluate
    from transformers import AutoProcessor

    from towerzoo.evaluation.metrics import metric_path

    timer, started = Timer(), time.time()
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    with timer("loading"):
        dataset, skipped = load_vqav2(
            options.questions, options.images, options.annotations, options.limit, options.skip_missing_images
        )
        model = load_model(options.model, "AutoModelForVisualQuestionAnswering", options.attn_implementation, device)
        id2label = check_answer_vocabulary(model, dataset)
        processor = AutoProcessor.from_pretrained(options.model, trust_remote_code=True)
    run_config = {
        "batch_size": options.batch_size,
        "dtype": options.dtype,
        "attn_implementation": model.config._attn_implementation,
        "limit": options.limit,
        "skip_missing_images": options.skip_missing_images,
        "num_processes": accelerator.num_processes if accelerator is not None else 1,
    }
    key = fingerprint(
        "vqav2",
        options.model,
        getattr(model.config, "_commit_hash", None),
        file_fingerprint(options.questions),
        file_fingerprint(options.annotations) if options.annotations else None,
        str(Path(options.images).resolve()),
        {k: v for k, v in run_config.items() if k != "num_processes"},
    )
    work_dir = Path(options.work_dir or f"{options.output}.work") / key
    batches = plan_batches(len(dataset), options.batch_size)
    run = ShardedRun(batches, work_dir, accelerator, description="VQAv2 batches")

    def step(**inputs) -> list[str]:
        return [id2label[i] for i in model(**inputs).logits.float().argmax(-1).tolist()]

    with timer("inference"):
        make_inputs = functools.partial(question_inputs, dataset, processor)
        answers = run.run_model(step, make_inputs, device, options.dtype, options.num_workers)
    if answers is None:
        return None
    predictions = [{"question_id": qid, "answer": a} for qid, a in zip(dataset["question_id"], answers, strict=True)]
    results = {
        "model": options.model,
        "revision": getattr(model.config, "_commit_hash", None),
        "task": "vqav2",
        "split": options.split or dataset_split(options.questions),
        "num_examples": len(dataset),
        "skipped": skipped,
        "config": run_config,
        "resumed_batches": run.stats.get("resumed_batches", 0),
    }
    if options.annotations is not None:
        with timer("scoring"):
            results["metrics"] = evaluate.load(metric_path("vqa_accuracy")).compute(
                predictions=answers, references=dataset["answers"], answer_types=dataset["answer_type"]
            )
    submission = options.submission or (
        None if options.annotations else Path(options.output).with_suffix(".answers.json")
    )
    if submission is not None:
        write_json_atomically(submission, predictions)
        results["submission"] = str(submission)
    results["timing"] = {
        **timer.seconds,
        "total": time.time() - started,
        "questions_per_second": len(dataset) / max(timer.seconds["inference"], 1e-9),
    }
    return finish_run(options, results, work_dir)
