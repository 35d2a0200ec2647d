"""Tiny few-shot classification fixtures: a CoOp-layout dataset of coloured images and a RESTORE Hub folder built from
the tiny CLIP of `clip_fixtures` (what the classification harness, RESTORE fine-tuning and the feature-shift notebook
run on)."""

import json
from pathlib import Path

from clip_fixtures import tiny_clip_folder
from PIL import Image, ImageDraw

# five classes (an odd count): base = the first three labels, novel = the last two
CLASSNAMES = ["red_fox", "green", "blue_jay", "yellow", "cyan"]
COLOURS = [(220, 40, 30), (30, 200, 60), (40, 60, 220), (230, 220, 40), (40, 220, 220)]
IMAGES_PER_CLASS = 3


def write_coop_dataset(root: Path, images_per_split: dict[str, int] | None = None) -> Path:
    """CoOp's layout: `split_zhou_Toy.json` and `images/<class>/<split>_<k>.png` (16-px and larger, each class its
    colour with a dark shape whose place and size vary). Images per class and split: `images_per_split` (default one
    in train and val, `IMAGES_PER_CLASS` in test)."""
    counts = {"train": 1, "val": 1, "test": IMAGES_PER_CLASS, **(images_per_split or {})}
    split = {key: [] for key in counts}
    for label, name in enumerate(CLASSNAMES):
        for key, count in counts.items():
            for k in range(count):
                relative = f"{name}/{key}_{k}.png"
                size = 16 + 8 * k
                image = Image.new("RGB", (size, size + 4 * (label % 2)), COLOURS[label])
                ImageDraw.Draw(image).ellipse((k, 2 * k, size // 2 + label, size // 2 + k), fill=(20, 20, 20))
                (root / "images" / name).mkdir(parents=True, exist_ok=True)
                image.save(root / "images" / relative)
                split[key].append([relative, label, name])
    (root / "split_zhou_Toy.json").write_text(json.dumps(split))
    return root


def restore_folder(root: Path, classnames: list[str], layers: int = 3, **overrides) -> Path:
    """`root/restore`: a RESTORE Hub folder (untrained prompts and surgery) built by `build_from_clip` from the tiny
    CLIP saved in `root/clip` (32 px, 8-px patches, widths 32/48), prompts in the first `layers` layers."""
    from towerzoo.conversions.hub_folder import write_hub_folder
    from towerzoo.conversions.restore_from_clip import build_from_clip
    from towerzoo.models.restore import AUTO_CLASSES

    clip = tiny_clip_folder(root, layers=layers)
    settings = {"prompt_depth": layers, "surgery_hidden_size": 48, **overrides}
    model, processor, _ = build_from_clip(clip, classnames, **settings)
    return write_hub_folder(model, root / "restore", exposed=AUTO_CLASSES, processor=processor)
