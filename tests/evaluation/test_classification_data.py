"""Few-shot classification data: each on-disk layout on tiny generated datasets, class-name files, K-shot sampling
(hand-checked draws), CoOp's base/novel split on odd class counts, and image decoding with its refusals."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from towerzoo.evaluation.classification_data import (
    ClassificationDataError,
    ClassificationSplit,
    clean_classname,
    detect_layout,
    few_shot,
    load_classification_dataset,
    open_rgb_image,
    read_classnames,
    subsample_classes,
)
from towerzoo.evaluation.runner import EvaluationError

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def _image(path: Path, colour=(128, 64, 32), size: int = 16) -> Path:
    """A solid-colour image (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def _coop(root: Path, name: str = "Toy", image_dir: str = "images") -> Path:
    """A CoOp split file for 3 classes (one name with underscores) and its images under `root/image_dir`."""
    classnames = ["red_fox", "green", "blue"]
    split = {}
    for key, per_class in (("train", 2), ("val", 1), ("test", 2)):
        split[key] = [
            [f"{classnames[label]}/{key}_{k}.jpg", label, classnames[label]]
            for label in range(3)
            for k in range(per_class)
        ]
        for relative, label, _ in split[key]:
            _image(root / image_dir / relative, COLOURS[label])
    (root / f"split_zhou_{name}.json").write_text(json.dumps(split))
    return root


def _split(counts: list[int]) -> ClassificationSplit:
    """A split whose class c has counts[c] items named c-0, c-1, …"""
    items = [(Path(f"{label}-{k}"), label) for label, count in enumerate(counts) for k in range(count)]
    return ClassificationSplit([f"class {label}" for label in range(len(counts))], items)


# --------------------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------------------


def test_coop_split_file(tmp_path):
    root = _coop(tmp_path / "toy")
    split = load_classification_dataset(root, "test")
    assert split.layout == "coop" and split.dataset == "Toy"
    assert split.classnames == ["red fox", "green", "blue"]  # underscores become spaces, as CoOp's prompt learner
    assert [(p.relative_to(root / "images").as_posix(), y) for p, y in split.items] == [
        ("red_fox/test_0.jpg", 0),
        ("red_fox/test_1.jpg", 0),
        ("green/test_0.jpg", 1),
        ("green/test_1.jpg", 1),
        ("blue/test_0.jpg", 2),
        ("blue/test_1.jpg", 2),
    ]
    assert split.class_counts() == [2, 2, 2] and len(split) == 6
    assert split.source["image_dir"] == str(root / "images")
    assert len(load_classification_dataset(root, "val")) == 3


def test_coop_image_folder_named_as_coop_names_it(tmp_path):
    root = _coop(tmp_path / "eurosat", name="EuroSAT", image_dir="2750")
    (root / "images").mkdir()  # an empty decoy: EuroSAT's images live in 2750/
    split = load_classification_dataset(root, "train", layout="coop")
    assert split.source["image_dir"] == str(root / "2750") and split.dataset == "EuroSAT"
    elsewhere = load_classification_dataset(root, "train", image_dir=root / "2750")
    assert elsewhere.items == split.items


def test_coop_bad_files(tmp_path):
    root = _coop(tmp_path / "toy")
    split_file = root / "split_zhou_Toy.json"
    data = json.loads(split_file.read_text())
    data["val"][0][2] = "crimson"
    split_file.write_text(json.dumps(data))
    with pytest.raises(ClassificationDataError, match="label 0 is named both 'red_fox' and 'crimson'"):
        load_classification_dataset(root, "test")
    data["val"][0][2] = "red_fox"
    data["test"][0][1] = 7
    split_file.write_text(json.dumps(data))
    with pytest.raises(ClassificationDataError, match="labels must be 0..n-1"):
        load_classification_dataset(root, "test")
    data["test"][0] = ["red_fox/test_0.jpg", "0", "red_fox"]
    split_file.write_text(json.dumps(data))
    with pytest.raises(ClassificationDataError, match=r"test\[0\] is .* not \[image path, label, class name\]"):
        load_classification_dataset(root, "test")
    data["test"][0] = ["red_fox/test_0.jpg", 0, "red_fox"]
    split_file.write_text(json.dumps(data))
    (root / "images" / "blue" / "test_1.jpg").unlink()
    with pytest.raises(ClassificationDataError, match=r"1 images listed .* are missing \(e.g. .*blue/test_1.jpg"):
        load_classification_dataset(root, "test")
    with pytest.raises(ClassificationDataError, match="splits train, val and test, not 'dev'"):
        load_classification_dataset(root, "dev")


def test_image_folders_with_split_folders(tmp_path):
    for split, per_class in (("train", 3), ("test", 2)):
        for label, name in enumerate(["dog", "cat", "sea_lion"]):
            for k in range(per_class):
                _image(tmp_path / split / name / f"{k}.png", COLOURS[label])
    (tmp_path / "test" / "cat" / "notes.txt").write_text("not an image")
    split = load_classification_dataset(tmp_path, "test")
    assert split.layout == "imagefolder"
    assert split.classnames == ["cat", "dog", "sea lion"]  # sorted folder names
    assert [(p.parent.name, p.name, y) for p, y in split.items][:3] == [
        ("cat", "0.png", 0),
        ("cat", "1.png", 0),
        ("dog", "0.png", 1),
    ]
    assert split.class_counts() == [2, 2, 2]
    with pytest.raises(ClassificationDataError, match="no 'val' folder .* it has .*train, .*test"):
        load_classification_dataset(tmp_path, "val")


def test_image_folders_without_split_folders(tmp_path):
    for label, name in enumerate(["b", "a"]):
        _image(tmp_path / name / "x.jpg", COLOURS[label])
    split = load_classification_dataset(tmp_path, "test", layout="imagefolder")
    assert split.classnames == ["a", "b"] and split.labels == [0, 1] and split.source["image_dir"] == str(tmp_path)


def test_imagenet_layout_with_coop_classnames_file(tmp_path):
    """CoOp's ImageNet: images/<split>/<wnid>/, classnames.txt of "<wnid> <name>" lines (here with an extra class, as
    ImageNet-A/R use the 1000-line file for their 200 folders)."""
    for label, wnid in enumerate(["n02", "n01"]):
        _image(tmp_path / "images" / "val" / wnid / f"{wnid}_0.JPEG", COLOURS[label])
    (tmp_path / "classnames.txt").write_text("n01 tench\nn02 goldfish\nn03 great white shark\n")
    split = load_classification_dataset(tmp_path, "val")
    assert split.classnames == ["tench", "goldfish"] and split.labels == [0, 1]
    assert split.source["classnames_file"] == str(tmp_path / "classnames.txt")


def test_image_folders_with_a_positional_classnames_file(tmp_path):
    for name in ("c0", "c1"):
        _image(tmp_path / "test" / name / "0.jpg")
    names = tmp_path / "names.txt"
    names.write_text("golden retriever\nsea_lion\n")
    split = load_classification_dataset(tmp_path, "test", classnames_file=names)
    assert split.classnames == ["golden retriever", "sea lion"]
    names.write_text("one\ntwo\nthree\n")
    with pytest.raises(ClassificationDataError, match="3 names for 2 class folders"):
        load_classification_dataset(tmp_path, "test", classnames_file=names)


def test_csv_layouts(tmp_path):
    for k in range(4):
        _image(tmp_path / "img" / f"{k}.jpg", COLOURS[k])
    (tmp_path / "test.csv").write_text("path,classname\nimg/0.jpg,zebra\nimg/1.jpg,ant\nimg/2.jpg,zebra\n")
    split = load_classification_dataset(tmp_path, "test")
    assert split.layout == "csv" and split.classnames == ["ant", "zebra"] and split.labels == [1, 0, 1]
    assert split.paths[0] == tmp_path / "img" / "0.jpg"

    (tmp_path / "test.csv").write_text(f"path,label\nimg/3.jpg,2\n{tmp_path / 'img' / '0.jpg'},0\n")
    with pytest.raises(ClassificationDataError, match="has labels but no class names; pass a class-names file"):
        load_classification_dataset(tmp_path, "test")
    names = tmp_path / "classnames.txt"
    names.write_text("a\nb\nc_d\n")
    split = load_classification_dataset(tmp_path, "test", classnames_file=names)
    assert split.classnames == ["a", "b", "c d"] and split.labels == [2, 0]
    assert split.paths[1] == tmp_path / "img" / "0.jpg"  # an absolute path stays as it is

    (tmp_path / "test.csv").write_text("path,label\nimg/0.jpg,0\nimg/1.jpg,three\n")
    with pytest.raises(ClassificationDataError, match=r"test.csv, line 3: label 'three' is not an integer"):
        load_classification_dataset(tmp_path, "test", classnames_file=names)
    (tmp_path / "test.csv").write_text("path,label\nimg/0.jpg,3\n")
    with pytest.raises(ClassificationDataError, match=r"line 2: label 3 is not in 0..2"):
        load_classification_dataset(tmp_path, "test", classnames_file=names)
    (tmp_path / "test.csv").write_text("file,label\nimg/0.jpg,0\n")
    with pytest.raises(ClassificationDataError, match="needs `path` and `label` and/or `classname`"):
        load_classification_dataset(tmp_path, "test", classnames_file=names)


def test_fgvc_aircraft_files(tmp_path):
    (tmp_path / "variants.txt").write_text("707-320\nA300B4\nF/A-18\n")
    (tmp_path / "images_variant_test.txt").write_text("0001 F/A-18\n0002 707-320\n")
    for image_id in ("0001", "0002"):
        _image(tmp_path / "images" / f"{image_id}.jpg")
    split = load_classification_dataset(tmp_path, "test")
    assert split.layout == "fgvc-aircraft" and split.classnames == ["707-320", "A300B4", "F/A-18"]
    assert split.items == [(tmp_path / "images" / "0001.jpg", 2), (tmp_path / "images" / "0002.jpg", 0)]
    (tmp_path / "images_variant_test.txt").write_text("0001 Spitfire\n")
    with pytest.raises(ClassificationDataError, match="line 1: variant 'Spitfire' is not in"):
        load_classification_dataset(tmp_path, "test")


def test_layout_detection_and_bad_roots(tmp_path):
    assert detect_layout(tmp_path, "test") == "imagefolder"
    (tmp_path / "test.csv").write_text("path,classname\n")
    assert detect_layout(tmp_path, "test") == "csv" and detect_layout(tmp_path, "train") == "imagefolder"
    (tmp_path / "split_zhou_X.json").write_text("{}")
    assert detect_layout(tmp_path, "test") == "coop"
    with pytest.raises(ClassificationDataError, match="does not exist"):
        load_classification_dataset(tmp_path / "missing", "test")
    with pytest.raises(ClassificationDataError, match="unknown layout 'tfrecord'"):
        load_classification_dataset(tmp_path, "test", layout="tfrecord")
    with pytest.raises(ClassificationDataError, match="has no 'train' list"):
        load_classification_dataset(tmp_path, "test")
    with pytest.raises(ClassificationDataError, match="no class folders"):
        load_classification_dataset(tmp_path, "test", layout="imagefolder")


# --------------------------------------------------------------------------------------------------------------------
# Class names
# --------------------------------------------------------------------------------------------------------------------


def test_read_classnames(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("  apple pie \nbaby_back_ribs\n\n")  # stripped; trailing blank lines ignored
    assert read_classnames(path) == ["apple pie", "baby_back_ribs"]
    path.write_text(json.dumps(["a", "b"]))
    assert read_classnames(path) == ["a", "b"]
    path.write_text("a\n\nb\n")
    with pytest.raises(ClassificationDataError, match="line 2 is empty"):
        read_classnames(path)
    path.write_text("a\nb\na\n")
    with pytest.raises(ClassificationDataError, match="line 3 repeats the class name 'a' of line 1"):
        read_classnames(path)
    path.write_text("")
    with pytest.raises(ClassificationDataError, match="is empty"):
        read_classnames(path)
    with pytest.raises(ClassificationDataError, match="does not exist"):
        read_classnames(tmp_path / "missing.txt")


def test_names_equal_after_clean_up_are_an_error(tmp_path):
    assert clean_classname("Black_footed_Albatross") == "Black footed Albatross"
    for name in ("sea_lion", "sea lion"):
        _image(tmp_path / "test" / name / "0.jpg")
    with pytest.raises(ClassificationDataError, match="class 2 repeats the class name 'sea lion' of class 1"):
        load_classification_dataset(tmp_path, "test")


# --------------------------------------------------------------------------------------------------------------------
# Few-shot sampling and base/novel classes
# --------------------------------------------------------------------------------------------------------------------


def test_few_shot_draw_is_the_seeds():
    split = _split([4, 3, 5])
    drawn = few_shot(split, num_shots=2, seed=1)
    # by hand: one random.Random(1) drawing sample(class items, 2) for class 0, then 1, then 2
    rng = random.Random(1)
    expected = rng.sample(split.items[:4], 2) + rng.sample(split.items[4:7], 2) + rng.sample(split.items[7:], 2)
    assert drawn.items == expected
    assert [p.name for p in drawn.paths] == ["0-1", "0-2", "1-0", "1-1", "2-0", "2-3"]  # pinned: seed 1's draw
    assert few_shot(split, 2, seed=1) == drawn and few_shot(split, 2, seed=2) != drawn
    assert drawn.classnames == split.classnames and drawn.class_counts() == [2, 2, 2]


def test_few_shot_refusals_and_repeat():
    split = _split([4, 1, 5])
    with pytest.raises(ClassificationDataError, match=r"class 'class 1' \(label 1\) has 1 images, fewer than 2 shots"):
        few_shot(split, 2, seed=0)
    repeated = few_shot(split, 2, seed=0, repeat=True)
    assert repeated.class_counts() == [2, 2, 2] and repeated.paths[2:4] == [Path("1-0"), Path("1-0")]
    with pytest.raises(ClassificationDataError, match="at least 1, got 0"):
        few_shot(split, 0, seed=0)
    absent = ClassificationSplit(["a", "b"], [(Path("x"), 0)])
    with pytest.raises(ClassificationDataError, match="1 classes have no images in this split \\(e.g. 'b'\\)"):
        few_shot(absent, 1, seed=0)


def test_base_and_novel_classes_of_an_odd_count():
    split = _split([1, 2, 1, 1, 2])  # 5 classes: base = 0, 1, 2 (ceil(5/2) = 3), novel = 3, 4
    base, novel = subsample_classes(split, "base"), subsample_classes(split, "novel")
    assert base.classnames == ["class 0", "class 1", "class 2"] and base.labels == [0, 1, 1, 2]
    assert novel.classnames == ["class 3", "class 4"] and novel.labels == [0, 1, 1]  # relabelled from 0
    assert [p.name for p in novel.paths] == ["3-0", "4-0", "4-1"]
    assert subsample_classes(split, "all") == split
    even = _split([1] * 4)
    assert len(subsample_classes(even, "base").classnames) == len(subsample_classes(even, "novel").classnames) == 2
    with pytest.raises(ClassificationDataError, match="unknown subset 'new'"):
        subsample_classes(split, "new")
    with pytest.raises(ClassificationDataError, match="at least 2 classes"):
        subsample_classes(_split([3]), "novel")


# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "1"])
def test_images_are_converted_to_rgb(tmp_path, mode):
    source = Image.new("RGBA", (16, 16), (200, 100, 50, 0))
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    (source if mode in ("RGBA", "LA") else source.convert("RGB")).convert(mode).save(path)
    image = open_rgb_image(path)
    assert image.mode == "RGB" and image.size == (16, 16)
    if mode == "RGBA":
        assert image.getpixel((0, 0)) == (200, 100, 50)  # alpha dropped, colour kept (the originals' .convert("RGB"))


def test_high_bit_depth_and_corrupt_images_are_refused(tmp_path):
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(deep)
    with pytest.raises(ClassificationDataError, match=r"deep.png has PIL mode 'I;16'.*convert it to 8-bit RGB"):
        open_rgb_image(deep)
    floating = tmp_path / "float.tiff"
    Image.fromarray(np.zeros((16, 16), dtype=np.float32)).save(floating)
    with pytest.raises(ClassificationDataError, match="mode 'F'"):
        open_rgb_image(floating)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg")
    with pytest.raises(EvaluationError, match=r"cannot read image .*corrupt.jpg"):
        open_rgb_image(corrupt)
