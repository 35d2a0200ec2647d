"""A procedural visual question answering and retrieval task: coloured shapes on a small canvas, written in the
official on-disk formats the evaluation harnesses read (VQAv2 questions/annotations JSON with COCO-named images; a
Karpathy-split JSON), so a small model can be trained and evaluated end to end offline.

A scene holds 2-5 shapes (circle, square, triangle; five colours; at most three of a kind of shape), each in its own
cell of a 4 x 4 grid (16-px cells on the default 64-px canvas, so a ViT with 16-px patches sees at most one object per
patch, which lets a small model learn the task in minutes on a CPU), and no two scenes of an evaluation split hold the
same objects, so every caption (which names every object) fits one image.
Each image gets one question of each type, with answers balanced within the type across the split:

- `color`  "what color is the circle?"         (a shape that occurs once)  → red, green, blue, yellow, purple
- `count`  "how many squares are there?"                                    → 0, 1, 2, 3
- `exists` "is there a red triangle?"          (absent pairs share a colour or a shape with a present object
                                                 where the scene allows)     → yes, no
- `shape`  "what shape is the blue object?"    (a colour that occurs once)  → circle, square, triangle

Everything is deterministic in `seed` and the split's name (train and test with the same seed differ).
"""

import json
import math
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (235, 235, 235)
MAX_PER_SHAPE = 3
GRID = 4  # objects sit in distinct cells of a GRID x GRID grid
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}


class QuestionType(NamedTuple):
    phrasings: tuple[str, ...]  # templates filled with the question's subject
    question_type: str  # the annotation's `question_type` (VQAv2 names types by their first words)
    answer_type: str  # the annotation's `answer_type`: "yes/no", "number" or "other"
    answers: tuple[str, ...]  # the closed answer set


QUESTION_TYPES = {
    "color": QuestionType(
        ("what color is the {}?", "which color is the {}?"), "what color is the", "other", tuple(COLORS)
    ),
    "count": QuestionType(
        ("how many {}s are there?", "how many {}s are in the picture?"), "how many", "number", ("0", "1", "2", "3")
    ),
    "exists": QuestionType(
        ("is there a {} {}?", "is there a {} {} in the picture?"), "is there a", "yes/no", ("yes", "no")
    ),
    "shape": QuestionType(
        ("what shape is the {} object?", "what is the shape of the {} object?"), "what shape is", "other", SHAPES
    ),
}
# the answer vocabulary of a VQA head for this task (id2label order)
ANSWERS = tuple(dict.fromkeys(answer for kind in QUESTION_TYPES.values() for answer in kind.answers))
CAPTION_TEMPLATES = (
    "{}",
    "there {} {}",
    "a picture of {}",
    "an image with {}",
    "{} on a gray background",
    "a canvas with {}",
    "{} drawn on a canvas",
)
CAPTIONS_PER_IMAGE = 5
MAX_DRAWS = 100_000  # random object sets tried for one image before giving up


@dataclass(frozen=True)
class Shape:
    """One object: its shape, colour name, centre (x, y) and the side of its bounding square, in pixels."""

    shape: str
    color: str
    x: int
    y: int
    size: int

    def box(self) -> tuple[int, int, int, int]:
        half = self.size // 2
        return self.x - half, self.y - half, self.x - half + self.size - 1, self.y - half + self.size - 1


@dataclass(frozen=True)
class Scene:
    objects: tuple[Shape, ...]
    canvas_size: int = 64

    def inventory(self) -> Counter:
        """How many objects of each (colour, shape) the scene holds."""
        return Counter((o.color, o.shape) for o in self.objects)


@dataclass(frozen=True)
class Question:
    question_type: str  # a key of QUESTION_TYPES
    subject: tuple[str, ...]  # ("circle",) for color/count, ("red",) for shape, ("red", "circle") for exists
    phrasing: int = 0

    @property
    def text(self) -> str:
        return QUESTION_TYPES[self.question_type].phrasings[self.phrasing].format(*self.subject)


@dataclass(frozen=True)
class Example:
    image_id: int
    scene: Scene
    questions: tuple[tuple[Question, str], ...]  # (question, answer)
    captions: tuple[str, ...]


def answer(scene: Scene, question: Question) -> str | None:
    """The answer to `question` about `scene`; None where the question has no single answer (the colour of a shape
    that occurs twice, the shape of a colour that occurs twice or not at all)."""
    return _answer(scene.inventory(), question)


def _answer(inventory: Counter, question: Question) -> str | None:
    kind, subject = question.question_type, question.subject
    if kind == "count":
        return str(sum(n for (_, shape), n in inventory.items() if shape == subject[0]))
    if kind == "exists":
        return "yes" if inventory[subject] else "no"
    position = 1 if kind == "color" else 0  # match the shape, answer the colour; or the reverse
    matches = [(pair, n) for pair, n in inventory.items() if pair[position] == subject[0]]
    if len(matches) != 1 or matches[0][1] != 1:
        return None
    return matches[0][0][1 - position]


def render(scene: Scene):
    """The scene as an RGB PIL image (flat colours, no anti-aliasing: the pixel at each centre has its exact colour)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (scene.canvas_size, scene.canvas_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        left, top, right, bottom = o.box()
        color = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse((left, top, right, bottom), fill=color)
        elif o.shape == "square":
            draw.rectangle((left, top, right, bottom), fill=color)
        else:
            draw.polygon([(left, bottom), (right, bottom), (o.x, top)], fill=color)
    return image


def _split_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


def _random_inventory(rng: np.random.Generator, min_objects: int = 2, max_objects: int = 5) -> list[tuple[str, str]]:
    colors = list(COLORS)
    while True:
        count = int(rng.integers(min_objects, max_objects + 1))
        color_ids, shape_ids = rng.integers(len(colors), size=count), rng.integers(len(SHAPES), size=count)
        if np.bincount(shape_ids).max() <= MAX_PER_SHAPE:
            return [(colors[c], SHAPES[s]) for c, s in zip(color_ids.tolist(), shape_ids.tolist())]


def _place(rng: np.random.Generator, objects: list[tuple[str, str]], canvas_size: int) -> Scene:
    """Each object in its own random cell of the grid, at a random size (60% of the cell to 2 px less than it) and
    offset, at least 1 px inside the cell."""
    cell = canvas_size // GRID
    placed = []
    for (color, shape), index in zip(objects, rng.permutation(GRID * GRID).tolist()):
        size = int(rng.integers(round(0.6 * cell), cell - 1))
        left = index % GRID * cell + int(rng.integers(1, cell - size))
        top = index // GRID * cell + int(rng.integers(1, cell - size))
        placed.append(Shape(shape, color, left + size // 2, top + size // 2, size))
    return Scene(tuple(placed), canvas_size)


def _subjects(inventory: Counter, kind: str, target: str) -> list[tuple[str, ...]]:
    """The subjects whose question of type `kind` has answer `target` for a scene holding `inventory` (for `no`, hard negatives first:
    absent pairs sharing a colour or a shape with a present object)."""
    if kind in ("color", "count"):
        subjects = [(shape,) for shape in SHAPES]
    elif kind == "shape":
        subjects = [(color,) for color in COLORS]
    else:
        subjects = [(color, shape) for color in COLORS for shape in SHAPES]
    found = [s for s in subjects if _answer(inventory, Question(kind, s)) == target]
    if kind == "exists" and target == "no":
        hard = [s for s in found if any(s[0] == color or s[1] == shape for color, shape in inventory)]
        found = hard or found
    return found


def _answerable(inventory: Counter, wanted: dict[str, str]) -> dict[str, list[tuple[str, ...]]] | None:
    """For each question type, the subjects whose answer is the wanted one; None if a type has none."""
    options = {}
    for kind, target in wanted.items():
        options[kind] = _subjects(inventory, kind, target)
        if not options[kind]:
            return None
    return options


def _object_phrase(color: str, shape: str, count: int) -> str:
    return f"{COUNT_WORDS[count]} {color} {shape}{'s' if count > 1 else ''}"


def captions(scene: Scene, rng: np.random.Generator, num: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """`num` different captions naming every object of the scene, each from another template, objects in random
    order ("two blue squares and a red circle", "a picture of a red circle and two blue squares", ...)."""
    groups = sorted(scene.inventory().items())
    templates = rng.permutation(len(CAPTION_TEMPLATES))[:num]
    result = []
    for template in templates:
        order = [groups[i] for i in rng.permutation(len(groups))]
        phrases = [_object_phrase(color, shape, count) for (color, shape), count in order]
        listing = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        if CAPTION_TEMPLATES[template].startswith("there"):
            verb = "is" if order[0][1] == 1 else "are"
            result.append(CAPTION_TEMPLATES[template].format(verb, listing))
        else:
            result.append(CAPTION_TEMPLATES[template].format(listing))
    return result


def _balanced_targets(rng: np.random.Generator, answers: tuple[str, ...], num: int) -> list[str]:
    """`num` answers, each answer `num // len(answers)` or one more times, in random order."""
    repeats = math.ceil(num / len(answers))
    cycle = [a for _ in range(repeats) for a in rng.permutation(answers).tolist()]
    return [str(a) for a in rng.permutation(cycle[:num])]


def generate_examples(
    num_images: int, seed: int = 0, split: str = "test", canvas_size: int = 64, distinct: bool = True
) -> list[Example]:
    """The split's scenes, questions (one per type, answers balanced per type) and captions (without images).

    `distinct`: no two scenes hold the same objects, so each caption fits one image (what retrieval evaluation
    needs). There are only 12,800 possible sets of objects, fewer for each combination of answers, so this is for
    evaluation splits (up to a few thousand images); training splits pass `distinct=False`."""
    rng = _split_rng(seed, split)
    targets = {kind: _balanced_targets(rng, spec.answers, num_images) for kind, spec in QUESTION_TYPES.items()}
    seen, examples = set(), []
    for index in range(num_images):
        wanted = {kind: answers[index] for kind, answers in targets.items()}
        for _ in range(MAX_DRAWS):
            objects = _random_inventory(rng)
            key = tuple(sorted(Counter(objects).items()))
            options = None if distinct and key in seen else _answerable(Counter(objects), wanted)
            if options is not None:
                break
        else:
            raise ValueError(
                f"found no new scene for image {index + 1} of {num_images} after {MAX_DRAWS} draws: that many "
                "distinct scenes do not exist; pass distinct=False (training splits)."
            )
        seen.add(key)
        scene = _place(rng, objects, canvas_size)
        questions = []
        for kind, subjects in options.items():
            subject = subjects[int(rng.integers(len(subjects)))]
            phrasing = int(rng.integers(len(QUESTION_TYPES[kind].phrasings)))
            questions.append((Question(kind, subject, phrasing), targets[kind][index]))
        examples.append(Example(index + 1, scene, tuple(questions), tuple(captions(scene, rng))))
    return examples


def image_name(split: str, image_id: int) -> str:
    """COCO's 2014 file name, which the VQAv2 harness looks up from `data_subtype` and the image id."""
    return f"COCO_{split}_{image_id:012d}.jpg"


def write_shapes_dataset(
    out_dir: Path, num_images: int, seed: int = 0, split: str = "test", canvas_size: int = 64, distinct: bool = True
) -> dict[str, Path]:
    """Generate a split and write it in the official formats under `out_dir`; several splits can share a folder.
    Returns the paths: `questions`, `annotations` and `vqa_images` (`towerzoo eval vqav2 --questions --annotations
    --images`), `karpathy` and `karpathy_images` (`towerzoo eval retrieval --karpathy --images --split`; the
    Karpathy JSON names its entries' split `split`, so use train/val/test for the retrieval harness).

    `distinct` as in `generate_examples`. Images are JPEGs (quality 95, no chroma subsampling) because the VQAv2 harness finds images by COCO's `.jpg`
    names; shape centres keep their colour within a few levels."""
    out_dir = Path(out_dir)
    examples = generate_examples(num_images, seed, split, canvas_size, distinct)
    images = out_dir / "images" / split
    images.mkdir(parents=True, exist_ok=True)
    questions, annotations, entries, sentence_id = [], [], [], 0
    for example in examples:
        name = image_name(split, example.image_id)
        render(example.scene).save(images / name, quality=95, subsampling=0)
        for k, (question, target) in enumerate(example.questions):
            question_id = example.image_id * 1000 + k
            kind = QUESTION_TYPES[question.question_type]
            questions.append({"image_id": example.image_id, "question": question.text, "question_id": question_id})
            annotations.append(
                {
                    "question_id": question_id,
                    "image_id": example.image_id,
                    "question_type": kind.question_type,
                    "answer_type": kind.answer_type,
                    "multiple_choice_answer": target,
                    "answers": [{"answer": target, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)],
                }
            )
        sentences = []
        for caption in example.captions:
            sentences.append(
                {"raw": caption, "tokens": caption.split(), "imgid": example.image_id - 1, "sentid": sentence_id}
            )
            sentence_id += 1
        entries.append(
            {
                "filepath": split,
                "filename": name,
                "imgid": example.image_id - 1,
                "split": split,
                "cocoid": example.image_id,
                "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
            }
        )
    info = {"description": f"towerzoo shapes, {num_images} images, seed {seed}", "version": "1.0"}
    header = {"info": info, "task_type": "Open-Ended", "data_type": "shapes", "data_subtype": split}
    paths = {
        "questions": out_dir / f"v2_OpenEnded_shapes_{split}_questions.json",
        "annotations": out_dir / f"v2_shapes_{split}_annotations.json",
        "vqa_images": images,
        "karpathy": out_dir / f"dataset_shapes_{split}.json",
        "karpathy_images": out_dir / "images",
    }
    paths["questions"].write_text(json.dumps({**header, "questions": questions}))
    paths["annotations"].write_text(json.dumps({**header, "annotations": annotations}))
    paths["karpathy"].write_text(json.dumps({"images": entries, "dataset": "shapes"}))
    return paths


def vqa_baselines(annotations: Path) -> dict[str, dict[str, float]]:
    """Accuracy in percent of two blind baselines that know each question's type, per question type
    (`what color is the`, ...), per answer type (as the VQAv2 harness reports) and overall: `chance` answers
    uniformly from the type's answers, `majority` gives the type's most common answer in these annotations."""
    rows = json.loads(Path(annotations).read_text())["annotations"]
    answer_sets = {kind.question_type: kind.answers for kind in QUESTION_TYPES.values()}
    by_type: dict[str, Counter] = {}
    for row in rows:
        by_type.setdefault(row["question_type"], Counter())[row["multiple_choice_answer"]] += 1
    per_question = {
        kind: (1 / len(answer_sets[kind]), counts.most_common(1)[0][1] / counts.total())
        for kind, counts in by_type.items()
    }
    groups = {"per_question_type": {}, "per_answer_type": {}, "overall": {}}
    for row in rows:
        scores = per_question[row["question_type"]]
        for group, key in (("per_question_type", row["question_type"]), ("per_answer_type", row["answer_type"])):
            groups[group].setdefault(key, []).append(scores)
        groups["overall"].setdefault("all", []).append(scores)

    def mean(scores: list[tuple[float, float]]) -> dict[str, float]:
        return {
            name: round(100 * float(np.mean([s[i] for s in scores])), 2)
            for i, name in enumerate(("chance", "majority"))
        }

    result = {group: {key: mean(scores) for key, scores in values.items()} for group, values in groups.items()}
    result["overall"] = result["overall"]["all"]
    return result


def retrieval_chance(num_images: int, captions_per_image: int = CAPTIONS_PER_IMAGE) -> dict[str, float]:
    """Expected recall in percent of a random ranking, in the retrieval harness's names: `ir_r{k}` (caption → image)
    is k/N; `tr_r{k}` (image → captions, found when any of its captions is in the top k) is
    1 - C(M - c, k) / C(M, k) for M captions, c per image; `r_mean` their mean."""
    num_captions = num_images * captions_per_image
    result = {}
    for k in (1, 5, 10):
        top = min(k, num_captions)
        result[f"tr_r{k}"] = 100 * (
            1 - math.comb(num_captions - captions_per_image, top) / math.comb(num_captions, top)
        )
    for k in (1, 5, 10):
        result[f"ir_r{k}"] = 100 * min(k, num_images) / num_images
    result["r_mean"] = sum(result.values()) / 6
    return {name: round(value, 2) for name, value in result.items()}


def tokenizer_corpus() -> list[str]:
    """Questions and captions covering the task's vocabulary, for training its tokenizer."""
    texts = []
    for example in generate_examples(200, seed=0, split="tokenizer"):
        texts += [question.text for question, _ in example.questions] + list(example.captions)
    return texts


def build_shapes_tokenizer(folder: Path) -> str:
    """A RoBERTa-style byte-level BPE trained on the task's texts (every word of the task one token); returns the
    folder."""
    from towerzoo.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer(folder, vocab_size=400, corpus=tokenizer_corpus())
