"""`towerzoo.shapes`: the generated task is deterministic, answers and captions are right for a scene built by hand,
answers are balanced, the files load through the real harnesses, and the baselines are what they claim."""

import filecmp
import itertools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from evaluation_fixtures import tiny_model_folder
from PIL import Image
from transformers import AutoTokenizer

import towerzoo.models.bridgetower as bt
from towerzoo import shapes
from towerzoo.evaluation.retrieval import RetrievalOptions, evaluate_retrieval, load_karpathy
from towerzoo.evaluation.vqav2 import VQAv2Options, evaluate_vqav2, load_vqav2
from towerzoo.tiny import CORPUS, build_tiny_tokenizer

NUM_IMAGES = 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    return shapes.write_shapes_dataset(tmp_path_factory.mktemp("shapes"), NUM_IMAGES, seed=3, split="test")


def _files(folder: Path) -> list[Path]:
    return sorted(path.relative_to(folder) for path in folder.rglob("*") if path.is_file())


def test_same_seed_writes_identical_files_and_other_seeds_or_splits_differ(tmp_path):
    first = shapes.write_shapes_dataset(tmp_path / "a", 6, seed=1, split="val")
    shapes.write_shapes_dataset(tmp_path / "b", 6, seed=1, split="val")
    files = _files(tmp_path / "a")
    assert files == _files(tmp_path / "b") and len(files) == 3 + 6
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", [str(f) for f in files], shallow=False)
    assert mismatch == errors == []
    scenes = [e.scene for e in shapes.generate_examples(6, seed=1, split="val")]
    assert scenes != [e.scene for e in shapes.generate_examples(6, seed=2, split="val")]
    assert scenes != [e.scene for e in shapes.generate_examples(6, seed=1, split="test")]
    assert first["vqa_images"] == tmp_path / "a" / "images" / "val"


HAND_BUILT = shapes.Scene(
    (
        shapes.Shape("circle", "red", 12, 12, 12),
        shapes.Shape("square", "blue", 40, 12, 10),
        shapes.Shape("square", "blue", 12, 44, 14),
        shapes.Shape("triangle", "green", 44, 44, 15),
    )
)


@pytest.mark.parametrize(
    ("kind", "subject", "expected"),
    [
        ("color", ("circle",), "red"),
        ("color", ("triangle",), "green"),
        ("color", ("square",), None),  # two squares: no single answer
        ("count", ("square",), "2"),
        ("count", ("circle",), "1"),
        ("exists", ("blue", "square"), "yes"),
        ("exists", ("red", "square"), "no"),
        ("exists", ("yellow", "circle"), "no"),
        ("shape", ("red",), "circle"),
        ("shape", ("green",), "triangle"),
        ("shape", ("blue",), None),  # two blue objects
        ("shape", ("yellow",), None),  # none
    ],
)
def test_answers_of_a_hand_built_scene(kind, subject, expected):
    assert shapes.answer(HAND_BUILT, shapes.Question(kind, subject)) == expected


def test_count_of_an_absent_shape_is_zero():
    scene = shapes.Scene(HAND_BUILT.objects[:2])
    assert shapes.answer(scene, shapes.Question("count", ("triangle",))) == "0"


def test_rendered_shapes_have_their_colour_at_the_centre_and_do_not_cover_the_background():
    pixels = np.asarray(shapes.render(HAND_BUILT))
    assert pixels.shape == (64, 64, 3)
    for shape in HAND_BUILT.objects:
        assert tuple(pixels[shape.y, shape.x]) == shapes.COLORS[shape.color]
    assert tuple(pixels[0, 0]) == tuple(pixels[28, 28]) == shapes.BACKGROUND
    # a circle leaves its bounding square's corners empty, a square fills them
    assert tuple(pixels[7, 7]) == shapes.BACKGROUND
    assert tuple(pixels[8, 36]) == shapes.COLORS["blue"]


def test_captions_name_every_object_in_five_different_ways():
    captions = shapes.captions(HAND_BUILT, np.random.default_rng(0))
    assert len(set(captions)) == shapes.CAPTIONS_PER_IMAGE
    for caption in captions:
        for phrase in ("a red circle", "two blue squares", "a green triangle"):
            assert caption.count(phrase) == 1, caption


def test_written_answers_are_right_and_balanced_and_scenes_are_distinct(dataset):
    examples = shapes.generate_examples(NUM_IMAGES, seed=3, split="test")
    annotations = json.loads(dataset["annotations"].read_text())["annotations"]
    questions = json.loads(dataset["questions"].read_text())["questions"]
    assert len(annotations) == len(questions) == NUM_IMAGES * len(shapes.QUESTION_TYPES)
    written = {a["question_id"]: a for a in annotations}
    per_type = Counter()
    for example in examples:
        assert len(example.scene.objects) <= 5
        for k, (question, target) in enumerate(example.questions):
            row = written[example.image_id * 1000 + k]
            assert shapes.answer(example.scene, question) == target == row["multiple_choice_answer"]
            assert [a["answer"] for a in row["answers"]] == [target] * 10
            per_type[question.question_type, target] += 1
    for kind, spec in shapes.QUESTION_TYPES.items():
        counts = [per_type[kind, answer] for answer in spec.answers]
        assert max(counts) - min(counts) <= 1 and sum(counts) == NUM_IMAGES, (kind, counts)
    inventories = [tuple(sorted(e.scene.inventory().items())) for e in examples]
    assert len(set(inventories)) == NUM_IMAGES


def test_images_on_disk_keep_each_shape_colour(dataset):
    """JPEG changes flat colours by a few levels; the centre stays closest to its own colour."""
    for example in shapes.generate_examples(NUM_IMAGES, seed=3, split="test")[:6]:
        pixels = np.asarray(Image.open(dataset["vqa_images"] / shapes.image_name("test", example.image_id)))
        for shape in example.scene.objects:
            pixel = pixels[shape.y, shape.x].astype(int)
            nearest = min(shapes.COLORS, key=lambda name: np.abs(pixel - shapes.COLORS[name]).sum())
            assert nearest == shape.color and np.abs(pixel - shapes.COLORS[shape.color]).max() <= 24, (shape, pixel)


def test_files_load_through_the_harness_loaders(dataset):
    questions, skipped = load_vqav2(dataset["questions"], dataset["vqa_images"], dataset["annotations"])
    assert skipped == {} and len(questions) == NUM_IMAGES * 4
    assert set(questions["answer_type"]) == {"yes/no", "number", "other"}
    assert set(questions["majority_answer"]) <= set(shapes.ANSWERS)
    images, captions, info = load_karpathy(dataset["karpathy"], dataset["karpathy_images"], split="test")
    assert len(images) == NUM_IMAGES and len(captions) == NUM_IMAGES * 5
    assert info == {"dataset": "shapes", "skipped": {}, "duplicate_captions": 0}
    entry = json.loads(dataset["karpathy"].read_text())["images"][0]
    assert [s["tokens"] for s in entry["sentences"]] == [s["raw"].split() for s in entry["sentences"]]


def test_the_harnesses_run_on_the_generated_set(dataset, tmp_path):
    labels = dict(enumerate(shapes.ANSWERS))
    vqa_model = tiny_model_folder(tmp_path / "vqa", id2label=labels)
    results = evaluate_vqav2(
        VQAv2Options(
            model=str(vqa_model),
            questions=dataset["questions"],
            annotations=dataset["annotations"],
            images=dataset["vqa_images"],
            output=tmp_path / "vqa.json",
            batch_size=32,
            num_workers=0,
        )
    )
    assert results["split"] == "test" and results["num_examples"] == NUM_IMAGES * 4
    assert set(results["metrics"]["per_answer_type"]) == {"yes/no", "number", "other"}
    retrieval_model = tiny_model_folder(
        tmp_path / "retrieval", model_class=bt.BridgeTowerForPreTraining, pretraining_heads=["itm", "itc"]
    )
    results = evaluate_retrieval(
        RetrievalOptions(
            model=str(retrieval_model),
            karpathy=dataset["karpathy"],
            images=dataset["karpathy_images"],
            output=tmp_path / "retrieval.json",
            cache_dir=tmp_path / "cache",
            k=4,
            batch_size=32,
            num_workers=0,
        )
    )
    assert results["counts"]["images"] == NUM_IMAGES and results["counts"]["captions"] == NUM_IMAGES * 5
    assert set(shapes.retrieval_chance(NUM_IMAGES)) == set(results["metrics"])


def test_vqa_baselines_are_the_blind_guessers_accuracies(dataset):
    baselines = shapes.vqa_baselines(dataset["annotations"])
    chance = {
        kind: baselines["per_question_type"][spec.question_type]["chance"]
        for kind, spec in shapes.QUESTION_TYPES.items()
    }
    assert chance == {"color": 20.0, "count": 25.0, "exists": 50.0, "shape": 33.33}
    # balanced answers: the majority guess is chance, up to the remainder of NUM_IMAGES / number of answers
    for kind, spec in shapes.QUESTION_TYPES.items():
        majority = baselines["per_question_type"][spec.question_type]["majority"]
        expected = 100 * -(-NUM_IMAGES // len(spec.answers)) / NUM_IMAGES
        assert majority == pytest.approx(expected, abs=0.01), kind
    assert baselines["per_answer_type"]["other"]["chance"] == pytest.approx((20 + 100 / 3) / 2, abs=0.01)
    assert baselines["overall"]["chance"] == pytest.approx((20 + 25 + 50 + 100 / 3) / 4, abs=0.01)


def test_retrieval_chance_matches_counting_every_ranking():
    num_images, per_image = 3, 2
    chance = shapes.retrieval_chance(num_images, per_image)
    captions = range(num_images * per_image)
    for k in (1, 5, 10):
        tops = list(itertools.combinations(captions, min(k, len(captions))))
        found = sum(any(c < per_image for c in top) for top in tops) / len(tops)  # image 0 owns captions 0, 1
        assert chance[f"tr_r{k}"] == pytest.approx(100 * found, abs=0.01)
        assert chance[f"ir_r{k}"] == pytest.approx(100 * min(k, num_images) / num_images, abs=0.01)
    assert shapes.retrieval_chance(100)["ir_r1"] == 1.0 and shapes.retrieval_chance(100)["tr_r1"] == 1.0


def test_default_tiny_tokenizer_is_unchanged_by_the_corpus_option(tmp_path):
    default = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path / "default"))
    explicit = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path / "explicit", corpus=CORPUS))
    assert len(default) == 297 and default.get_vocab() == explicit.get_vocab()


def test_shapes_tokenizer_has_one_token_per_word(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(shapes.build_shapes_tokenizer(tmp_path / "tokenizer"))
    texts = shapes.tokenizer_corpus()
    assert {*shapes.COLORS, *shapes.SHAPES, "two", "three"} <= {w.strip(",?") for t in texts for w in t.split()}
    for text in texts:
        assert len(tokenizer.tokenize(text)) == len(re.findall(r"\w+|[,?]", text)), text


def test_too_many_distinct_scenes_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shapes, "MAX_DRAWS", 1)
    with pytest.raises(ValueError, match="distinct=False"):
        shapes.generate_examples(50, seed=0)


def test_each_object_sits_inside_its_own_grid_cell():
    for example in shapes.generate_examples(40, seed=5, split="val"):
        cells = []
        for shape in example.scene.objects:
            left, top, right, bottom = shape.box()
            cell = 64 // shapes.GRID
            assert left // cell == right // cell and top // cell == bottom // cell, shape
            assert left % cell >= 1 and top % cell >= 1
            cells.append((left // cell, top // cell))
        assert len(set(cells)) == len(cells)
