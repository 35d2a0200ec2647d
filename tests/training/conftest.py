"""Fixtures of the fine-tuning tests: tiny configs written as JSON, tiny datasets in the official formats (VQAv2 and
Karpathy from evaluation_fixtures; SNLI-VE and NLVR2 written here), and a runner of `towerzoo finetune`."""

import json
from pathlib import Path

import pytest
import torch
from evaluation_fixtures import write_images, write_karpathy, write_vqav2
from testing_utils import tiny_bridgetower_config, tiny_managertower_config

from towerzoo.cli import main

# one sentence per class, so the tiny models can learn the labels in a few dozen steps
SENTENCES = ["a cat sits on the mat", "two dogs play in the park", "how many dogs?"]


def write_snli_ve(folder: Path, num_examples: int = 16, num_images: int = 4, seed: int = 0) -> dict[str, Path]:
    """`snli_ve_train.jsonl` (the official fields, `sentence1` the Flickr30K caption, `sentence2` the hypothesis) and
    a folder of `<Flickr30K_ID>.jpg` images."""
    image_ids = [1000092795 + 7 * k for k in range(num_images)]
    lines = []
    for k in range(num_examples):
        image_id = image_ids[k % num_images]
        label = ("entailment", "neutral", "contradiction")[k % 3]
        lines.append(
            {
                "Flickr30K_ID": str(image_id),
                "gold_label": label,
                "pairID": f"{image_id}.jpg#0r{k}",
                "sentence1": "a picture",
                "sentence2": SENTENCES[k % 3],
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    annotations = folder / "snli_ve_train.jsonl"
    annotations.write_text("".join(json.dumps(line) + "\n" for line in lines))
    write_images(folder / "flickr30k-images", image_ids, name="{id}.jpg", seed=seed)
    return {"annotations": annotations, "images": folder / "flickr30k-images"}


def write_nlvr2(folder: Path, num_examples: int = 16, num_pairs: int = 4, seed: int = 0) -> dict[str, Path]:
    """NLVR2's `train.json` (json lines: `identifier` `train-<set>-<pair>-<sentence>`, `sentence`, `label`
    "True"/"False", `directory`, the urls) and `images/train/<directory>/train-<set>-<pair>-img0.png` / `-img1.png`."""
    lines = []
    for k in range(num_examples):
        pair = k % num_pairs
        lines.append(
            {
                "identifier": f"train-{100 + pair}-{pair % 2}-{k // num_pairs}",
                "sentence": SENTENCES[k % 2],
                "label": ("True", "False")[k % 2],
                "directory": str(pair % 3),
                "left_url": f"https://example.com/{pair}-0.jpg",
                "right_url": f"https://example.com/{pair}-1.jpg",
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    annotations = folder / "train.json"
    annotations.write_text("".join(json.dumps(line) + "\n" for line in lines))
    images = folder / "images"
    for pair in range(num_pairs):
        prefix = f"train-{100 + pair}-{pair % 2}"
        write_images(images / "train" / str(pair % 3), [0, 1], name=prefix + "-img{id}.png", seed=seed + pair)
    return {"annotations": annotations, "images": images}


def write_learnable_vqav2(folder: Path) -> dict[str, Path]:
    """`write_vqav2`'s files with three questions, each always answered the same by every annotator, so the answer
    follows from the question."""
    paths = write_vqav2(folder, num_questions=16, num_images=4)
    questions = json.loads(paths["questions"].read_text())
    annotations = json.loads(paths["annotations"].read_text())
    for k, (question, annotation) in enumerate(zip(questions["questions"], annotations["annotations"], strict=True)):
        question["question"] = ("what color is the cat?", "how many dogs?", "a cat sits on the mat?")[k % 3]
        annotation["multiple_choice_answer"] = ("red", "2", "yes")[k % 3]
        for entry in annotation["answers"]:
            entry["answer"] = annotation["multiple_choice_answer"]
    paths["questions"].write_text(json.dumps(questions))
    paths["annotations"].write_text(json.dumps(annotations))
    return paths


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test: on two shared cores that is several times faster for tiny models."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def training_data(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """One tiny dataset per task, in the official formats."""
    root = tmp_path_factory.mktemp("training-data")
    return {
        "vqav2": write_learnable_vqav2(root / "vqav2"),
        "retrieval": write_karpathy(root / "flickr", num_images=4, captions_per_image=3, dataset="flickr30k"),
        "snli-ve": write_snli_ve(root / "snli-ve"),
        "nlvr2": write_nlvr2(root / "nlvr2"),
    }


def data_arguments(task: str, data: dict[str, Path]) -> list[str]:
    """The `towerzoo finetune TASK` data options for a `training_data` entry."""
    if task == "vqav2":
        return [
            *("--questions", data["questions"], "--annotations", data["annotations"], "--images", data["images"]),
            *("--min-answer-count", "1"),
        ]
    if task == "retrieval":
        return ["--karpathy", data["karpathy"], "--images", data["images"], "--splits", "test"]
    return ["--annotations", data["annotations"], "--images", data["images"]]


@pytest.fixture(scope="session")
def config_files(tmp_path_factory) -> dict[str, Path]:
    """The tiny BridgeTower and ManagerTower configs as JSON files (what --init-config takes)."""
    root = tmp_path_factory.mktemp("configs")
    files = {}
    for name, config in (("bridgetower", tiny_bridgetower_config()), ("managertower", tiny_managertower_config())):
        files[name] = root / f"{name}.json"
        config.to_json_file(files[name])
    return files


# a short, fast run: small batches, no accumulation, no workers, every step logged, no checkpoints
QUICK = [
    *("--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "1", "--logging-steps", "1"),
    *("--dataloader-num-workers", "0", "--save-steps", "1000"),
]


@pytest.fixture(scope="session")
def finetune(training_data, tiny_tokenizer_dir):
    """Run `towerzoo finetune TASK …` in this process on the task's tiny data (one torch thread, also in module-scoped
    fixtures); returns the exit status. With `init_config`, from scratch with the tiny tokenizer."""

    def run(task: str, output_dir: Path, *extra, init_config: Path | None = None, data=None) -> int:
        start = ["--init-config", init_config, "--tokenizer", tiny_tokenizer_dir] if init_config else []
        data_options = data_arguments(task, training_data[task]) if data is None else data
        arguments = ["finetune", task, *start, "--output-dir", output_dir, *data_options, *QUICK, *extra]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return main([str(argument) for argument in arguments])
        finally:
            torch.set_num_threads(threads)

    return run
