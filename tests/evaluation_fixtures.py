"""Tiny evaluation fixtures in the official on-disk formats: VQAv2 questions/annotations JSON with a COCO-named image
folder, a Karpathy-split JSON, and tiny towerzoo Hub folders (random weights) to run the harnesses on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from testing_utils import build_tiny_tokenizer, tiny_bridgetower_config

import towerzoo.models.bridgetower as bt
from towerzoo.conversions.bridgetower_folder import build_processor, exposed_classes
from towerzoo.conversions.hub_folder import write_hub_folder

ANSWERS = ["yes", "no", "2", "red", "cat", "table", "blue"]
SUBTYPE = "val2014"


def write_images(folder: Path, image_ids, name: str = "COCO_{subtype}_{id:012d}.jpg", seed: int = 0) -> list[Path]:
    """Small JPEGs of different sizes (cycling every 32 images, so large galleries stay small) and content (a gradient
    plus noise), named as COCO names them."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k, image_id in enumerate(image_ids):
        height, width = 40 + 7 * (k % 32), 48 + 5 * (k % 3)
        ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
        pixels = np.clip(ramp * (0.3 + 0.2 * (k % 4)) + rng.normal(0, 40, (height, width, 3)), 0, 255)
        path = folder / name.format(subtype=SUBTYPE, id=image_id)
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def write_vqav2(folder: Path, num_questions: int = 10, num_images: int = 4, seed: int = 0) -> dict[str, Path]:
    """Official-format questions + annotations (ten answers each, three answer types) and the image folder."""
    rng = np.random.default_rng(seed)
    image_ids = [9 + 100 * i for i in range(num_images)]
    questions, annotations = [], []
    for q in range(num_questions):
        image_id = image_ids[q % num_images]
        question_id = image_id * 1000 + q
        answer_type = ("yes/no", "number", "other")[q % 3]
        answers = [ANSWERS[int(i)] for i in rng.integers(0, len(ANSWERS), 10)]
        questions.append({"image_id": image_id, "question": f"what is thing number {q}?", "question_id": question_id})
        annotations.append(
            {
                "question_id": question_id,
                "image_id": image_id,
                "question_type": "what is",
                "answer_type": answer_type,
                "multiple_choice_answer": answers[0],
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
                ],
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "questions": folder / "v2_OpenEnded_mscoco_val2014_questions.json",
        "annotations": folder / "v2_mscoco_val2014_annotations.json",
        "images": folder / "val2014",
    }
    paths["questions"].write_text(json.dumps({"data_subtype": SUBTYPE, "questions": questions}))
    paths["annotations"].write_text(json.dumps({"data_subtype": SUBTYPE, "annotations": annotations}))
    write_images(paths["images"], image_ids)
    return paths


# words the tiny tokenizer knows (towerzoo.tiny.CORPUS), so captions stay short; an image's captions always differ
# (they repeat across images after 80 captions)
CAPTION_WORDS = (
    ["a cat", "two dogs", "the cat", "a dog", "many dogs"],
    ["sits on", "play in", "sits in", "play on"],
    ["the mat", "the park", "a park", "a mat"],
)
LONG_CAPTION = " ".join(["a very long caption that goes on and on about the picture"] * 8)


def write_karpathy(
    folder: Path,
    num_images: int = 6,
    captions_per_image: int = 5,
    dataset: str = "coco",
    other_splits: int = 3,
    seed: int = 0,
) -> dict[str, Path]:
    """A Karpathy-split JSON (`dataset_coco.json` / `dataset_flickr30k.json` layout) with `num_images` test images of
    `captions_per_image` captions each (the first caption of the first image longer than any text model takes), plus
    `other_splits` train/val/restval images, and its image folder: COCO's `images/val2014/<filename>` or Flickr's
    `images/<filename>`."""
    splits = ["test"] * num_images + [("train", "val", "restval")[k % 3] for k in range(other_splits)]
    images_root = folder / "images"
    coco_name = "COCO_{subtype}_{id:012d}.jpg"
    image_ids = [391 + 1000 * k for k in range(len(splits))]
    subjects, actions, places = CAPTION_WORDS
    entries, sentence_id = [], 0
    for k, (split, image_id) in enumerate(zip(splits, image_ids, strict=True)):
        sentences = []
        for c in range(captions_per_image):
            n = k * captions_per_image + c
            subject, action, place = subjects[n % 5], actions[n // 5 % 4], places[n // 20 % 4]
            raw = LONG_CAPTION if k == 0 and c == 0 else f"{subject} {action} {place}."
            sentences.append({"raw": raw, "tokens": raw.rstrip(".").split(), "imgid": k, "sentid": sentence_id})
            sentence_id += 1
        entry = {"split": split, "imgid": k, "sentences": sentences, "sentids": [s["sentid"] for s in sentences]}
        if dataset == "coco":
            entry.update(filepath=SUBTYPE, filename=coco_name.format(subtype=SUBTYPE, id=image_id), cocoid=image_id)
        else:
            entry["filename"] = f"{image_id}.jpg"
        entries.append(entry)
    if dataset == "coco":
        write_images(images_root / SUBTYPE, image_ids, name=coco_name, seed=seed)
    else:
        write_images(images_root, image_ids, name="{id}.jpg", seed=seed)
    karpathy = folder / f"dataset_{dataset}.json"
    karpathy.write_text(json.dumps({"images": entries, "dataset": dataset}))
    return {"karpathy": karpathy, "images": images_root}


def tiny_model_folder(folder: Path, model_class=bt.BridgeTowerForVisualQuestionAnswering, seed: int = 0, **config):
    """A tiny towerzoo Hub folder with its processor (random weights; VQA answers from `ANSWERS`)."""
    if model_class is bt.BridgeTowerForVisualQuestionAnswering and "num_labels" not in config:
        config.setdefault("id2label", dict(enumerate(ANSWERS)))
    torch.manual_seed(seed)
    model = model_class(tiny_bridgetower_config(**config)).eval()
    processor = build_processor(build_tiny_tokenizer(folder.parent / f"{folder.name}-tokenizer"), model.config)
    return write_hub_folder(model, folder, exposed=exposed_classes(model), processor=processor, overwrite=True)


def run_eval_in_processes(arguments: list[str], processes: int = 2) -> None:
    """`towerzoo eval …` with `processes` CPU processes under torch.distributed.run (what `accelerate launch` and
    `torchrun` do on a GPU machine); fails the test if the run fails."""
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)),
        *("-m", "towerzoo.cli", "eval", *map(str, arguments)),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
