"""Training data in the official on-disk formats, as `datasets.Dataset`s of paths, texts and targets, and the collator
that decodes the images and runs the model's processor (in DataLoader workers).

- VQAv2: the questions and annotations JSON with a COCO image folder (read by `evaluation/vqav2.load_vqav2`); the
  targets are the original's soft scores (`src/utils/write_vqa.py`): an answer given by 0/1/2/3/≥4 of the ten
  annotators scores 0/0.3/0.6/0.9/1, answers normalised as the official evaluation normalises them; questions with no
  answer in the vocabulary are left out, as the original leaves them out.
- Retrieval: a Karpathy-split JSON and its images (read by `evaluation/retrieval.load_karpathy`, repeated captions of
  an image kept once, as the original): one example per caption, with its image's index so captions of the same image
  are positives of one another.
- SNLI-VE: `snli_ve_*.jsonl` (`Flickr30K_ID`, `sentence2` — the hypothesis, the only text the original reads —,
  `gold_label`) with the Flickr30K image folder (`<Flickr30K_ID>.jpg`).
- NLVR2: the json-lines files (`identifier`, `sentence`, `label`) with the image folder; the pair of an identifier
  `split-set-pair-sentence` is `split-set-pair-img0.png` / `-img1.png`, found anywhere under the folder (the train
  images sit in numbered subfolders).
"""

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from towerzoo.evaluation.metrics.vqa_accuracy.vqa_official import clean_whitespace, normalize_answer
from towerzoo.evaluation.retrieval import SPLITS, load_karpathy
from towerzoo.evaluation.runner import open_image, read_json
from towerzoo.evaluation.vqav2 import load_vqav2
from towerzoo.training import TrainingError

logger = logging.getLogger(__name__)

# the original's class indices (src/utils/write_snli.py, src/datasets/nlvr2_dataset.py)
SNLI_VE_LABELS = ("contradiction", "neutral", "entailment")
NLVR2_LABELS = ("False", "True")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(files: list[Path], examples: int, **extra) -> dict:
    """What `training.json` records about a split: each annotation file's path and SHA-256, and the example count."""
    return {
        "files": [{"path": str(Path(f).resolve()), "sha256": file_sha256(f)} for f in files],
        "examples": examples,
        **extra,
    }


# --- VQAv2 -----------------------------------------------------------------------------------------------------------


def vqa_score(count: int) -> float:
    """The original's soft score of an answer given by `count` of the ten annotators (`get_score`)."""
    return (0.0, 0.3, 0.6, 0.9)[count] if count < 4 else 1.0


def normalize_vqa_answer(answer: str) -> str:
    return normalize_answer(clean_whitespace(answer))


def answer_vocabulary(majority_answers: list[str], min_count: int) -> list[str]:
    """The original's answer list: the normalised most common answer of each question, kept when at least
    `min_count` questions have it (9 in the original, over train + val), in order of first appearance."""
    counts = Counter(normalize_vqa_answer(answer) for answer in majority_answers)
    return [answer for answer, count in counts.items() if count >= min_count]


def vqa_targets(answers: list[str], label2id: dict[str, int]) -> tuple[list[int], list[float]]:
    """(label indices, soft scores) of one question's annotator answers, for the answers in the vocabulary."""
    counts = Counter(normalize_vqa_answer(answer) for answer in answers)
    known = [answer for answer in counts if answer in label2id]
    return [label2id[answer] for answer in known], [vqa_score(counts[answer]) for answer in known]


def load_vqav2_split(
    questions: list[Path],
    annotations: list[Path],
    images: list[Path],
    label2id: dict[str, int] | None = None,
    min_answer_count: int = 9,
    skip_missing_images: bool = False,
) -> tuple[datasets.Dataset, dict[str, int], dict]:
    """VQAv2 questions (one or more question/annotation/image-folder triples, e.g. train2014 and val2014) with their
    soft targets; the vocabulary is `label2id` when given, else built from the majority answers. Returns the dataset
    (`image`, `question`, `label_ids`, `label_scores`), the vocabulary and the split's fingerprint."""
    if not (len(questions) == len(annotations) == len(images)):
        raise TrainingError(
            f"give as many --annotations and --images as --questions (got {len(questions)} questions, "
            f"{len(annotations)} annotations, {len(images)} image folders): one of each per split."
        )
    parts, skipped = [], 0
    for question_file, annotation_file, image_folder in zip(questions, annotations, images, strict=True):
        part, counts = load_vqav2(
            question_file, image_folder, annotation_file, skip_missing_images=skip_missing_images
        )
        parts.append(part)
        skipped += counts.get("missing_image_questions", 0)
    rows = datasets.concatenate_datasets(parts)
    if label2id is None:
        vocabulary = answer_vocabulary(rows["majority_answer"], min_answer_count)
        if not vocabulary:
            raise TrainingError(
                f"no answer is the most common answer of at least {min_answer_count} questions, so the answer "
                "vocabulary is empty; lower --min-answer-count (the original uses 9 over VQAv2 train + val)."
            )
        label2id = {answer: index for index, answer in enumerate(vocabulary)}
    targets = [vqa_targets(answers, label2id) for answers in rows["answers"]]
    keep = [index for index, (ids, _) in enumerate(targets) if ids]
    if not keep:
        raise TrainingError(
            f"none of the {len(rows)} questions has an annotator answer in the model's {len(label2id)} answers "
            f"(e.g. {list(label2id)[:5]}): the answer vocabulary does not fit this data."
        )
    dataset = datasets.Dataset.from_dict(
        {
            "image": [rows["image"][i] for i in keep],
            "question": [rows["question"][i] for i in keep],
            "label_ids": [targets[i][0] for i in keep],
            "label_scores": [targets[i][1] for i in keep],
        }
    )
    if len(keep) < len(rows):
        logger.info("left out %d questions without an answer in the vocabulary", len(rows) - len(keep))
    fingerprint = data_fingerprint(
        [*questions, *annotations],
        len(dataset),
        questions_without_known_answer=len(rows) - len(keep),
        missing_image_questions=skipped,
        vocabulary_size=len(label2id),
    )
    return dataset, label2id, fingerprint


# --- Image-text retrieval --------------------------------------------------------------------------------------------


def karpathy_splits_present(karpathy: Path) -> tuple[str, list[str]]:
    """The Karpathy file's `dataset` name and the splits it holds."""
    data = read_json(karpathy, "Karpathy split")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise TrainingError(f"{karpathy} has no 'images' list: is it a Karpathy split JSON (dataset_coco.json)?")
    present = {entry.get("split") for entry in data["images"]}
    return data.get("dataset"), [split for split in SPLITS if split in present]


def load_retrieval_split(
    karpathy: Path, images: Path, splits: list[str], skip_missing_images: bool = False
) -> tuple[datasets.Dataset, dict]:
    """One example per caption of the splits' images (`image`, `text`, `image_id`: the image's index over all the
    splits loaded)."""
    image_paths, texts, image_ids, counts = [], [], [], {}
    for split in splits:
        split_images, captions, info = load_karpathy(karpathy, images, split, skip_missing_images=skip_missing_images)
        offset = len(image_paths)
        image_paths.extend(split_images["path"])
        texts.extend(captions["text"])
        image_ids.extend(offset + index for index in captions["image_index"])
        counts[split] = {"images": len(split_images), "captions": len(captions), "skipped": info["skipped"]}
    dataset = datasets.Dataset.from_dict(
        {"image": [image_paths[i] for i in image_ids], "text": texts, "image_id": image_ids}
    )
    return dataset, data_fingerprint([karpathy], len(dataset), splits=counts)


# --- SNLI-VE and NLVR2 -----------------------------------------------------------------------------------------------


def _json_lines(path: Path, required: tuple[str, ...], what: str) -> list[dict]:
    """The records of a json-lines file, each holding the `required` fields."""
    if not Path(path).is_file():
        raise TrainingError(f"{what} file {path} does not exist.")
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TrainingError(
                f"{path} line {number} is not JSON ({error}); is it the {what} json-lines file?"
            ) from None
        missing = [name for name in required if name not in record]
        if missing:
            raise TrainingError(
                f"{path} line {number} has no {', '.join(missing)} (fields: {', '.join(sorted(record))}); "
                f"the {what} file needs {', '.join(required)}."
            )
        records.append(record)
    if not records:
        raise TrainingError(f"{path} holds no examples.")
    return records


def named_labels(id2label: dict | None) -> bool:
    """Whether a classifier's labels are names (not transformers' `LABEL_i` defaults)."""
    return bool(id2label) and not all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def class_label2id(model_id2label: dict | None, default_labels: tuple[str, ...], data_labels: set[str]) -> dict:
    """The classifier's label → index: the model's named labels, or the original's order when the model has none.
    Every label in the data must be one of them."""
    label2id = (
        {str(label): int(index) for index, label in model_id2label.items()}
        if named_labels(model_id2label)
        else {label: index for index, label in enumerate(default_labels)}
    )
    outside = sorted(data_labels - set(label2id))
    if outside:
        raise TrainingError(
            f"the data has labels {outside} that the classifier's labels {sorted(label2id)} do not include; train "
            "a model whose head has these labels, or one without a head for this task."
        )
    return label2id


def _missing_images(missing: list[str], folder: Path, skip: bool, what: str) -> None:
    if missing and not skip:
        raise TrainingError(
            f"{len(missing)} {what} refer to images missing from {folder} (e.g. {missing[0]}); add them or pass "
            "--skip-missing-images."
        )
    if missing:
        logger.warning("skipping %d %s whose images are missing from %s", len(missing), what, folder)


def load_snli_ve_split(
    annotations: Path, images: Path, label2id: dict[str, int], skip_missing_images: bool = False
) -> tuple[datasets.Dataset, dict]:
    """SNLI-VE pairs (`image`, `text`: the hypothesis `sentence2`, `label`: class index)."""
    records = _json_lines(annotations, ("Flickr30K_ID", "sentence2", "gold_label"), "SNLI-VE")
    class_label2id({v: k for k, v in label2id.items()}, SNLI_VE_LABELS, {r["gold_label"] for r in records})
    if not Path(images).is_dir():
        raise TrainingError(f"image folder {images} does not exist.")
    rows, missing = {"image": [], "text": [], "label": []}, []
    for record in records:
        path = Path(images) / f"{record['Flickr30K_ID']}.jpg"
        if not path.is_file():
            missing.append(path.name)
            continue
        rows["image"].append(str(path))
        rows["text"].append(record["sentence2"].strip())
        rows["label"].append(label2id[record["gold_label"]])
    _missing_images(missing, images, skip_missing_images, "sentences")
    dataset = datasets.Dataset.from_dict(rows)
    return dataset, data_fingerprint([annotations], len(dataset), missing_image_examples=len(missing))


def nlvr2_label(value) -> str:
    """NLVR2 labels are the strings "True"/"False" (booleans in some copies)."""
    return str(value) if isinstance(value, bool) else value


def load_nlvr2_split(
    annotations: Path, images: Path, label2id: dict[str, int], skip_missing_images: bool = False
) -> tuple[datasets.Dataset, dict]:
    """NLVR2 examples (`images`: the pair's two paths, `text`, `label`: class index)."""
    records = _json_lines(annotations, ("identifier", "sentence", "label"), "NLVR2")
    class_label2id({v: k for k, v in label2id.items()}, NLVR2_LABELS, {nlvr2_label(r["label"]) for r in records})
    if not Path(images).is_dir():
        raise TrainingError(f"image folder {images} does not exist.")
    index = {path.name: path for path in Path(images).rglob("*.png")}
    rows, missing = {"images": [], "text": [], "label": []}, []
    for record in records:
        pair = record["identifier"].rsplit("-", 1)[0]
        names = [f"{pair}-img0.png", f"{pair}-img1.png"]
        absent = [name for name in names if name not in index]
        if absent:
            missing.append(absent[0])
            continue
        rows["images"].append([str(index[name]) for name in names])
        rows["text"].append(record["sentence"])
        rows["label"].append(label2id[nlvr2_label(record["label"])])
    _missing_images(missing, images, skip_missing_images, "sentences")
    dataset = datasets.Dataset.from_dict(rows)
    return dataset, data_fingerprint([annotations], len(dataset), missing_images=len(missing))


# --- Batches ---------------------------------------------------------------------------------------------------------


@dataclass
class Collator:
    """Rows → model inputs: opens the images, runs the processor (texts padded to its `max_text_length` as the
    original pads them, or to the longest), adds the task's targets."""

    processor: object
    task: str
    num_labels: int = 0
    text_padding: str = "max_length"

    def _process(self, images: list, texts: list[str]) -> dict:
        opened = [open_image(path) for path in images]
        return dict(self.processor(images=opened, text=texts, padding=self.text_padding, return_tensors="pt"))

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.task == "nlvr2":
            batch = self._process([path for row in rows for path in row["images"]], [row["text"] for row in rows])
            pixels = batch["pixel_values"]
            batch["pixel_values"] = pixels.view(len(rows), 2, *pixels.shape[1:])
        else:
            texts = [row["question" if self.task == "vqav2" else "text"] for row in rows]
            batch = self._process([row["image"] for row in rows], texts)
        if self.task == "vqav2":
            labels = torch.zeros(len(rows), self.num_labels)
            for i, row in enumerate(rows):
                labels[i, row["label_ids"]] = torch.tensor(row["label_scores"])
            batch["labels"] = labels
        elif self.task == "retrieval":
            batch["image_ids"] = torch.tensor([row["image_id"] for row in rows])
        else:
            batch["labels"] = torch.tensor([row["label"] for row in rows])
        batch.pop("pixel_mask", None)
        return batch
