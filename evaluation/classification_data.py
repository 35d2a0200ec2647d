"""Few-shot image classification data as the CoOp family (CoOp, CoCoOp, MaPLe, RESTORE) reads it: a split of
(image path, label) items with its class names, K-shot sampling, and the base-to-novel class split.

Layouts (`load_classification_dataset(root, split, layout)`; "auto" picks the first that fits, in this order):
- "coop": CoOp's `split_zhou_<Name>.json` in `root` (keys "train", "val", "test", each a list of
  [image path, label, class name]); the paths are relative to the dataset's image folder, which is found as CoOp's
  loaders name it (`101_ObjectCategories`, `images`, `jpg`, `SUN397`, `2750`, `UCF-101-midframes`, or `root` itself
  for StanfordCars), else `root` or any of its sub-folders holding the images. Class names come from the entries (one
  name per label, labels 0..n-1 across the three splits).
- "csv": `root/<split>.csv` with a `path` column (relative to `root`, or absolute) and `label` and/or `classname`.
  Names come from `classnames_file` (labels index it), else from the entries (label -> name), else are the sorted
  distinct `classname` values.
- "fgvc-aircraft": FGVCAircraft's own files as CoOp reads them: `variants.txt` (the class names, label = line) and
  `images_variant_<split>.txt` (lines "<image id> <variant>", images in `images/<image id>.jpg`).
- "imagefolder": `root/<split>/<class>/*` (also `root/images/<split>/<class>/*`, CoOp's ImageNet), or `root/<class>/*`
  when `root` has no split folders. Labels follow the sorted folder names; names are the folder names, or come from
  `classnames_file` (default `root/classnames.txt` when present): either one name per folder in sorted-folder order,
  or CoOp's ImageNet form "<folder> <class name>" per line (also for ImageNet-A/R, whose folders are a subset).
Every layout cleans class names as CoOp's prompt learners do before building prompts: underscores become spaces
("american_bulldog" -> "american bulldog"); nothing else is changed.
"""

import csv
import dataclasses
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from towerzoo.evaluation.runner import EvaluationError, open_image

LAYOUTS = ("auto", "coop", "csv", "fgvc-aircraft", "imagefolder")
SUBSETS = ("base", "novel", "all")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
SPLIT_FOLDERS = ("train", "val", "test")
# the image folder of each CoOp split file, as CoOp's dataset loaders name it ("" = the dataset folder itself)
COOP_IMAGE_DIRS = {
    "Caltech101": "101_ObjectCategories",
    "OxfordPets": "images",
    "StanfordCars": "",
    "OxfordFlowers": "jpg",
    "Food101": "images",
    "SUN397": "SUN397",
    "DescribableTextures": "images",
    "EuroSAT": "2750",
    "UCF101": "UCF-101-midframes",
}
# PIL modes that `.convert("RGB")` maps faithfully (RGBA/LA/PA drop alpha, as the originals' `.convert("RGB")` does)
RGB_CONVERTIBLE_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}


class ClassificationDataError(EvaluationError):
    """Bad classification data (layout, class names, images, few-shot request); the message names the fix."""


@dataclass
class ClassificationSplit:
    """One split: `items` are (image path, label), labels indexing `classnames`; `dataset`, `layout` and `source`
    (role -> file or folder read) say where it came from."""

    classnames: list[str]
    items: list[tuple[Path, int]]
    dataset: str = ""
    layout: str = ""
    source: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def paths(self) -> list[Path]:
        return [path for path, _ in self.items]

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def class_counts(self) -> list[int]:
        """Number of items of each class, in label order."""
        counts = [0] * len(self.classnames)
        for label in self.labels:
            counts[label] += 1
        return counts


def clean_classname(name: str) -> str:
    """CoOp's clean-up before a name goes into a prompt: underscores become spaces."""
    return name.replace("_", " ")


# --------------------------------------------------------------------------------------------------------------------
# Class names
# --------------------------------------------------------------------------------------------------------------------


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of a class-names file: a JSON list of strings, or one name per line (trailing
    blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ClassificationDataError(f"class-names file {path} does not exist.") from None
    except UnicodeDecodeError as error:
        raise ClassificationDataError(f"class-names file {path} is not UTF-8 text ({error}).") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as error:
            raise ClassificationDataError(f"class-names file {path} is not a valid JSON list ({error}).") from None
        if not all(isinstance(name, str) for name in names):
            raise ClassificationDataError(f"class-names file {path}: the JSON list must hold only strings.")
        return [(number, name.strip()) for number, name in enumerate(names, 1)]
    return [(number, line.strip()) for number, line in enumerate(text.rstrip().splitlines(), 1)]


def _check_unique(numbered: Iterable[tuple[int, str]], where: str, what: str = "line") -> None:
    """Empty or repeated names are errors naming the lines (entries)."""
    seen: dict[str, int] = {}
    for number, name in numbered:
        if not name:
            raise ClassificationDataError(f"{where}: {what} {number} is empty; every class needs a name.")
        if name in seen:
            raise ClassificationDataError(
                f"{where}: {what} {number} repeats the class name {name!r} of {what} {seen[name]}; class names must "
                "be distinct (the model could not tell the classes apart)."
            )
        seen[name] = number


def read_classnames(path: Path) -> list[str]:
    """The class names of a file, label = position: one name per line (stripped) or a JSON list of strings. Empty and
    repeated names are errors naming the line."""
    numbered = _numbered_lines(path)
    if not numbered:
        raise ClassificationDataError(f"class-names file {path} is empty.")
    _check_unique(numbered, str(path))
    return [name for _, name in numbered]


def _cleaned(names: list[str], where: str) -> list[str]:
    """The names after `clean_classname`; two names that become equal (e.g. "a_b" and "a b") are an error."""
    cleaned = [clean_classname(name) for name in names]
    _check_unique(enumerate(cleaned, 1), f"{where} after turning underscores into spaces", "class")
    return cleaned


def _classnames_by_label(entries: Iterable[tuple[int, str]], where: str) -> list[str]:
    """Names indexed by label from (label, name) entries: one name per label, labels 0..n-1."""
    names: dict[int, str] = {}
    for label, name in entries:
        if names.setdefault(label, name) != name:
            raise ClassificationDataError(
                f"{where}: label {label} is named both {names[label]!r} and {name!r}; a label needs one class name."
            )
    missing = sorted(set(range(len(names))) - set(names))
    if missing or any(label < 0 for label in names):
        raise ClassificationDataError(
            f"{where}: labels must be 0..n-1 (got {len(names)} labels, from {min(names)} to {max(names)}); "
            "pass a class-names file to name every label."
        )
    return [names[label] for label in range(len(names))]


# --------------------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------------------


def _check_images_exist(items: list[tuple[Path, int]], where: str) -> None:
    missing = [path for path, _ in items if not path.is_file()]
    if missing:
        raise ClassificationDataError(
            f"{len(missing)} images listed in {where} are missing (e.g. {missing[0]}); check the dataset folder."
        )


def _coop_image_dir(root: Path, name: str, relative_paths: list[str], image_dir: Path | None) -> Path:
    """The folder CoOp's split paths are relative to: `image_dir` when given, else the first of CoOp's folder for the
    dataset, `root` and `root`'s sub-folders that holds the split's first images."""
    if image_dir is not None:
        return Path(image_dir)
    candidates = [root / COOP_IMAGE_DIRS[name]] if name in COOP_IMAGE_DIRS else []
    candidates += [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    probe = relative_paths[:5]
    for candidate in candidates:
        if all((candidate / path).is_file() for path in probe):
            return candidate
    raise ClassificationDataError(
        f"cannot find the image folder of {root}: no folder among {[str(c) for c in candidates[:4]]}… holds "
        f"{probe[0]!r}; extract the images as CoOp's DATASETS.md describes, or pass the image folder explicitly."
    )


def _coop_entries(data, split_file: Path, key: str) -> list[tuple[str, int, str]]:
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ClassificationDataError(f"{split_file} has no {key!r} list: is it a CoOp split_zhou_*.json file?")
    for number, entry in enumerate(entries):
        ok = isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[2], str)
        if not ok or not isinstance(entry[1], int) or isinstance(entry[1], bool):
            raise ClassificationDataError(
                f"{split_file}: {key}[{number}] is {entry!r}, not [image path, label, class name]."
            )
    return [tuple(entry) for entry in entries]


def _load_coop(root: Path, split: str, classnames_file: Path | None, image_dir: Path | None) -> ClassificationSplit:
    split_files = sorted(root.glob("split_zhou_*.json"))
    if len(split_files) != 1:
        found = f"several ({', '.join(p.name for p in split_files)})" if split_files else "none"
        raise ClassificationDataError(f"--layout coop needs one split_zhou_<Name>.json in {root}; found {found}.")
    split_file = split_files[0]
    try:
        data = json.loads(split_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ClassificationDataError(f"{split_file} is not valid JSON ({error}); re-download it.") from None
    if split not in ("train", "val", "test"):
        raise ClassificationDataError(f"{split_file} holds the splits train, val and test, not {split!r}.")
    entries = {key: _coop_entries(data, split_file, key) for key in ("train", "val", "test")}
    if classnames_file is not None:
        classnames = read_classnames(classnames_file)
    else:
        every = [(label, name) for key in entries for _, label, name in entries[key]]
        classnames = _classnames_by_label(every, str(split_file))
    name = split_file.stem.removeprefix("split_zhou_")
    for number, (_, label, _) in enumerate(entries[split]):
        if not 0 <= label < len(classnames):
            raise ClassificationDataError(
                f"{split_file}: {split}[{number}] has label {label}, not in 0..{len(classnames) - 1}."
            )
    if not entries[split]:
        raise ClassificationDataError(f"{split_file} has no {split} images.")
    folder = _coop_image_dir(root, name, [path for path, _, _ in entries[split]], image_dir)
    items = [(folder / path, label) for path, label, _ in entries[split]]
    _check_images_exist(items, f"{split_file} ({split}, relative to {folder})")
    source = {"split_file": str(split_file), "image_dir": str(folder)}
    if classnames_file is not None:
        source["classnames_file"] = str(classnames_file)
    return ClassificationSplit(_cleaned(classnames, str(split_file)), items, name, "coop", source)


def _load_csv(root: Path, split: str, classnames_file: Path | None) -> ClassificationSplit:
    path = root / f"{split}.csv"
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise ClassificationDataError(f"--layout csv needs {path} (columns path,label or path,classname).") from None
    except UnicodeDecodeError as error:
        raise ClassificationDataError(f"{path} is not a UTF-8 CSV file ({error}).") from None
    if "path" not in columns or not {"label", "classname"} & set(columns):
        raise ClassificationDataError(f"{path} has columns {columns}; it needs `path` and `label` and/or `classname`.")
    if not rows:
        raise ClassificationDataError(f"{path} lists no images.")
    entries = []  # (line, path, label or None, class name or None)
    for line, row in rows:
        if not (row["path"] or "").strip():
            raise ClassificationDataError(f"{path}, line {line}: empty path.")
        label = None
        if "label" in columns:
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                raise ClassificationDataError(
                    f"{path}, line {line}: label {row['label']!r} is not an integer."
                ) from None
        name = row["classname"].strip() if "classname" in columns and row["classname"] else None
        entries.append((line, row["path"].strip(), label, name))
    if classnames_file is not None:
        classnames = read_classnames(classnames_file)
    elif "label" in columns and "classname" in columns:
        classnames = _classnames_by_label(((label, name) for _, _, label, name in entries), str(path))
    elif "classname" in columns:
        classnames = sorted({name for _, _, _, name in entries if name})
    else:
        raise ClassificationDataError(f"{path} has labels but no class names; pass a class-names file (--classnames).")
    index = {name: label for label, name in enumerate(classnames)}
    items = []
    for line, image, label, name in entries:
        if label is None:
            if name not in index:
                raise ClassificationDataError(f"{path}, line {line}: class {name!r} is not among the class names.")
            label = index[name]
        if not 0 <= label < len(classnames):
            raise ClassificationDataError(f"{path}, line {line}: label {label} is not in 0..{len(classnames) - 1}.")
        items.append((root / image, label))  # an absolute path stays absolute
    _check_images_exist(items, str(path))
    source = {"csv": str(path), **({"classnames_file": str(classnames_file)} if classnames_file else {})}
    return ClassificationSplit(_cleaned(classnames, str(path)), items, root.name, "csv", source)


def _load_fgvc_aircraft(root: Path, split: str, classnames_file: Path | None) -> ClassificationSplit:
    variants = Path(classnames_file or root / "variants.txt")
    classnames = read_classnames(variants)
    index = {name: label for label, name in enumerate(classnames)}
    split_file = root / f"images_variant_{split}.txt"
    if not split_file.is_file():
        raise ClassificationDataError(f"{split_file} does not exist (FGVCAircraft has train, val, test and trainval).")
    items = []
    for number, line in _numbered_lines(split_file):
        image, _, variant = line.partition(" ")
        if variant not in index:
            raise ClassificationDataError(f"{split_file}, line {number}: variant {variant!r} is not in {variants}.")
        items.append((root / "images" / f"{image}.jpg", index[variant]))
    _check_images_exist(items, str(split_file))
    source = {"split_file": str(split_file), "classnames_file": str(variants)}
    return ClassificationSplit(_cleaned(classnames, str(variants)), items, root.name, "fgvc-aircraft", source)


def _imagefolder_split_dir(root: Path, split: str) -> Path:
    """`root/<split>` or `root/images/<split>`; `root` itself when it has no split folders (class folders only)."""
    for base in (root, root / "images"):
        if (base / split).is_dir():
            return base / split
    present = [str(base / s) for base in (root, root / "images") for s in SPLIT_FOLDERS if (base / s).is_dir()]
    if present:
        raise ClassificationDataError(
            f"no {split!r} folder in {root}; it has {', '.join(present)} (CoOp evaluates ImageNet on its val folder)."
        )
    return root


def _folder_classnames(classnames_file: Path, folders: list[str]) -> list[str]:
    """Names for the sorted class folders from a class-names file: "<folder> <name>" lines (CoOp's ImageNet
    classnames.txt) when every folder has such a line, else one name per folder in sorted-folder order."""
    lines = read_classnames(classnames_file)
    pairs = [line.split(maxsplit=1) for line in lines]
    by_folder = {pair[0]: pair[1] for pair in pairs if len(pair) == 2}
    if len(by_folder) == len(pairs) and set(folders) <= set(by_folder):
        names = [by_folder[folder] for folder in folders]
        _check_unique(enumerate(names, 1), f"{classnames_file} (the names of the {len(folders)} folders)", "class")
        return names
    if len(lines) != len(folders):
        raise ClassificationDataError(
            f"{classnames_file} has {len(lines)} names for {len(folders)} class folders; give one name per folder "
            '(in sorted folder order) or "<folder> <class name>" lines.'
        )
    return lines


def _load_imagefolder(root: Path, split: str, classnames_file: Path | None) -> ClassificationSplit:
    split_dir = _imagefolder_split_dir(root, split)
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if split_dir == root:
        folders = [name for name in folders if name != "images"]
    if not folders:
        raise ClassificationDataError(f"{split_dir} has no class folders (expected {split_dir}/<class>/<image>).")
    if classnames_file is None and (root / "classnames.txt").is_file():
        classnames_file = root / "classnames.txt"
    classnames = _folder_classnames(classnames_file, folders) if classnames_file else folders
    items = [
        (image, label)
        for label, folder in enumerate(folders)
        for image in sorted((split_dir / folder).iterdir())
        if image.suffix.lower() in IMAGE_SUFFIXES and not image.name.startswith(".")
    ]
    if not items:
        raise ClassificationDataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {split_dir}.")
    source = {"image_dir": str(split_dir), **({"classnames_file": str(classnames_file)} if classnames_file else {})}
    return ClassificationSplit(_cleaned(classnames, str(split_dir)), items, root.name, "imagefolder", source)


def detect_layout(root: Path, split: str) -> str:
    """The layout "auto" picks: a CoOp split file, then `<split>.csv`, then FGVCAircraft's files, else image folders."""
    if any(root.glob("split_zhou_*.json")):
        return "coop"
    if (root / f"{split}.csv").is_file():
        return "csv"
    if (root / "variants.txt").is_file() and (root / f"images_variant_{split}.txt").is_file():
        return "fgvc-aircraft"
    return "imagefolder"


def load_classification_dataset(
    root: Path,
    split: str,
    layout: str = "auto",
    classnames_file: Path | None = None,
    image_dir: Path | None = None,
) -> ClassificationSplit:
    """One split of a classification dataset from its on-disk layout (see the module docstring); `image_dir`
    overrides where a CoOp split file's paths point."""
    root = Path(root)
    if not root.is_dir():
        raise ClassificationDataError(f"dataset folder {root} does not exist.")
    if layout not in LAYOUTS:
        raise ClassificationDataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}.")
    if layout == "auto":
        layout = detect_layout(root, split)
    if layout == "coop":
        return _load_coop(root, split, classnames_file, image_dir)
    if image_dir is not None:
        raise ClassificationDataError(f"an image folder can only be given for the coop layout, not {layout}.")
    loaders = {"csv": _load_csv, "fgvc-aircraft": _load_fgvc_aircraft, "imagefolder": _load_imagefolder}
    return loaders[layout](root, split, classnames_file)


# --------------------------------------------------------------------------------------------------------------------
# Few-shot sampling and base/novel classes
# --------------------------------------------------------------------------------------------------------------------


def few_shot(split: ClassificationSplit, num_shots: int, seed: int, repeat: bool = False) -> ClassificationSplit:
    """K = `num_shots` items per class, drawn as CoOp's `generate_fewshot_dataset` does (classes in order of first
    appearance, `sample(items, K)` each, `choices(items, k=K)` with `repeat`) from a `random.Random(seed)`, so the
    draw depends on the seed alone (CoOp draws from the global generator seeded once per run). A class with fewer
    than K items (CoOp then silently keeps them all) or none at all is an error unless `repeat`."""
    if num_shots < 1:
        raise ClassificationDataError(f"the number of shots must be at least 1, got {num_shots}.")
    by_label: dict[int, list[tuple[Path, int]]] = {}
    for item in split.items:
        by_label.setdefault(item[1], []).append(item)
    absent = [name for label, name in enumerate(split.classnames) if label not in by_label]
    if absent:
        raise ClassificationDataError(
            f"{len(absent)} classes have no images in this split (e.g. {absent[0]!r}); a {num_shots}-shot set needs "
            "every class."
        )
    rng = random.Random(seed)
    items = []
    for label, members in by_label.items():
        if len(members) >= num_shots:
            items += rng.sample(members, num_shots)
        elif repeat:
            items += rng.choices(members, k=num_shots)
        else:
            raise ClassificationDataError(
                f"class {split.classnames[label]!r} (label {label}) has {len(members)} images, fewer than "
                f"{num_shots} shots; use at most {min(len(m) for m in by_label.values())} shots, or repeat=True to "
                "draw with replacement."
            )
    return dataclasses.replace(split, items=items)


def base_novel_labels(num_classes: int) -> tuple[list[int], list[int]]:
    """CoOp's `subsample_classes` halves: the first ceil(n/2) labels are base, the rest novel."""
    half = math.ceil(num_classes / 2)
    return list(range(half)), list(range(half, num_classes))


def subsample_classes(split: ClassificationSplit, subset: str) -> ClassificationSplit:
    """The "base" or "novel" classes' items, relabelled 0.. in label order, or "all" unchanged. The halves come from
    the class list (CoOp takes the labels of its training split, which holds every class)."""
    if subset not in SUBSETS:
        raise ClassificationDataError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}.")
    if subset == "all":
        return split
    if len(split.classnames) < 2:
        raise ClassificationDataError(f"a base/novel split needs at least 2 classes, got {len(split.classnames)}.")
    base, novel = base_novel_labels(len(split.classnames))
    kept = base if subset == "base" else novel
    relabel = {label: new for new, label in enumerate(kept)}
    items = [(path, relabel[label]) for path, label in split.items if label in relabel]
    return dataclasses.replace(split, classnames=[split.classnames[label] for label in kept], items=items)


# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------


def _image_mode(path: Path) -> str | None:
    """The mode in an image's header, or None when it cannot be read (`open_image` then names the problem)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.mode
    except (UnidentifiedImageError, OSError, SyntaxError):
        return None


def open_rgb_image(path: Path):
    """An image as 8-bit RGB via `runner.open_image` (`.convert("RGB")`, alpha dropped, corrupt files an error
    naming the file); modes without a faithful conversion (16-bit, 32-bit integer, float) are refused first."""
    mode = _image_mode(path)
    if mode is not None and mode not in RGB_CONVERTIBLE_MODES:
        raise ClassificationDataError(
            f"image {path} has PIL mode {mode!r} (16-bit, 32-bit integer or float pixels, or a colour space without "
            "an RGB conversion), which cannot become 8-bit RGB without choosing a scaling; convert it to 8-bit RGB "
            "(e.g. `magick in.png -depth 8 out.png`) first."
        )
    return open_image(str(path))
