"""`towerzoo demo`: the zoo's whole loop on an embedded model, offline, in about 20 seconds on two CPU cores.

The repository carries a small BridgeTower that this project trained from scratch on its procedurally generated
shapes task (`towerzoo.shapes`; the training script is `scripts/train_demo_models.py`): one folder with the VQA head,
one with the ITM and ITC heads. The demo

1. writes each as a Hub folder — code, config with `auto_map`, weights, processor — and loads it the way a Hub user
   does, in a fresh process that cannot import towerzoo (`trust_remote_code=True`, offline);
2. generates a held-out test set in the official formats (VQAv2 questions/annotations JSON, a Karpathy split);
3. scores the folders with the VQAv2 and the image-text retrieval harnesses (`towerzoo eval vqav2|retrieval`);
4. prints the scores next to blind and random baselines, and writes each folder's model card with the results as
   `model-index`.
"""

import argparse
import json
import shutil
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
ENTRY = "towerzoo-shapes-bridgetower"
# the embedded models' folders under towerzoo/assets/ (weights, config, processor files; no code: it comes from
# models/ when the Hub folder is written) and the training facts that travel with them
MODELS = {"vqav2": "shapes-bridgetower-vqa", "retrieval": "shapes-bridgetower-retrieval"}
TRAINING_FILES = ("training.json",)
# the held-out set: the training script uses split "train"; the generator draws another split's scenes independently
TEST_SPLIT = "test"


def export_asset(hub_folder: Path, asset: Path) -> Path:
    """Store a trained Hub folder (`towerzoo finetune`'s output) as an embedded asset: every file but the code and
    the card, and no `auto_map` (the folder's code is written again from models/ when the demo runs)."""
    from towerzoo.conversions.common import write_folder_atomically

    def fill(tmp: Path) -> None:
        for path in sorted(Path(hub_folder).iterdir()):
            if path.suffix == ".py" or path.name == "README.md" or not path.is_file():
                continue
            if path.name in ("config.json", "processor_config.json"):
                content = json.loads(path.read_text())
                content.pop("auto_map", None)
                if isinstance(content.get("image_processor"), dict):
                    content["image_processor"].pop("auto_map", None)
                (tmp / path.name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
            else:
                shutil.copy2(path, tmp / path.name)

    return write_folder_atomically(Path(asset), fill, overwrite=True)


def write_hub_folder_from_asset(asset: Path, output_dir: Path) -> Path:
    """The embedded model as a Hub folder: loaded with towerzoo's class, saved with the code it needs."""
    from towerzoo.conversions.bridgetower_folder import exposed_classes
    from towerzoo.conversions.hub_folder import write_hub_folder
    from towerzoo.models import bridgetower
    from towerzoo.models.bridgetower.processing_bridgetower import BridgeTowerProcessor

    config = json.loads((asset / "config.json").read_text())
    model = getattr(bridgetower, config["architectures"][0]).from_pretrained(asset).eval()
    processor = BridgeTowerProcessor.from_pretrained(asset)
    folder = write_hub_folder(model, output_dir, exposed=exposed_classes(model), processor=processor, overwrite=True)
    for name in TRAINING_FILES:
        if (asset / name).is_file():
            shutil.copy2(asset / name, folder / name)
    return folder


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def score_table(vqa: dict, retrieval: dict, vqa_baselines: dict, retrieval_chance: dict) -> str:
    """The demo's results next to what a blind or random model would score (percent)."""
    rows = [("task", "metric", "towerzoo-shapes", "chance", "blind majority")]
    metrics = vqa["metrics"]
    rows.append(("VQA (VQAv2 format)", "accuracy", f"{metrics['accuracy']:.2f}", *_baseline(vqa_baselines["overall"])))
    for answer_type, value in sorted(metrics["per_answer_type"].items()):
        baseline = vqa_baselines["per_answer_type"].get(answer_type, {})
        rows.append(("", f"  answer type {answer_type!r}", f"{value:.2f}", *_baseline(baseline)))
    names = {"ir_r1": "image R@1 (caption → image)", "ir_r5": "image R@5", "tr_r1": "text R@1 (image → caption)"}
    names["tr_r5"] = "text R@5"
    for key, label in names.items():
        rows.append(
            (
                "Retrieval (Karpathy format)",
                label,
                f"{retrieval['metrics'][key]:.2f}",
                f"{retrieval_chance[key]:.2f}",
                "-",
            )
        )
    return _table(rows)


def _baseline(baseline: dict) -> tuple[str, str]:
    return tuple(f"{baseline[name]:.2f}" if name in baseline else "-" for name in ("chance", "majority"))


def run_demo(work_dir: Path, num_images: int = 200, seed: int = 0, batch_size: int = 50) -> int:
    from tqdm.auto import tqdm

    from towerzoo.conversions.hub_folder import check_folder_loads
    from towerzoo.evaluation.retrieval import RetrievalOptions, evaluate_retrieval
    from towerzoo.evaluation.vqav2 import VQAv2Options, evaluate_vqav2
    from towerzoo.hub_cards.card import write_card
    from towerzoo.shapes import retrieval_chance, vqa_baselines, write_shapes_dataset

    started = time.time()
    print(f"1. the embedded models as Hub folders, each loaded in a fresh process without towerzoo ({ASSETS})")
    folders = {}
    for task, name in tqdm(MODELS.items(), desc="hub folders", unit="folder"):
        folders[task] = write_hub_folder_from_asset(ASSETS / name, work_dir / name)
        check_folder_loads(folders[task])
    for folder in folders.values():
        print(f"   {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")

    print(f"2. a held-out shapes test set: {num_images} images, {4 * num_images} questions, {5 * num_images} captions")
    data = write_shapes_dataset(work_dir / "data", num_images, seed=seed, split=TEST_SPLIT)

    print("3. towerzoo eval vqav2 and towerzoo eval retrieval on it")
    results_dir = work_dir / "results"
    common = {"batch_size": batch_size, "num_workers": 0, "work_dir": work_dir / "eval-work"}
    vqa = evaluate_vqav2(
        VQAv2Options(
            model=str(folders["vqav2"]),
            questions=data["questions"],
            annotations=data["annotations"],
            images=data["vqa_images"],
            output=results_dir / "vqav2.json",
            **common,
        )
    )
    retrieval = evaluate_retrieval(
        RetrievalOptions(
            model=str(folders["retrieval"]),
            karpathy=data["karpathy"],
            images=data["karpathy_images"],
            split=TEST_SPLIT,
            k=8,
            cache_dir=work_dir / "embedding-cache",
            output=results_dir / "retrieval.json",
            **common,
        )
    )

    print("4. results (percent), and the model cards")
    print(_table_indent(score_table(vqa, retrieval, vqa_baselines(data["annotations"]), retrieval_chance(num_images))))
    for task, folder in folders.items():
        card = write_card(folder, results=[results_dir / f"{task}.json"], entry=ENTRY)
        print(f"   wrote {card}")
    print(f"done in {time.time() - started:.0f} s; push a folder with `towerzoo push FOLDER org/name`")
    return 0


def _table_indent(text: str) -> str:
    return "\n".join(f"   {line}" for line in text.splitlines())


def _demo(args: argparse.Namespace) -> int:
    if args.num_images < 10:
        raise SystemExit(f"towerzoo demo: error: --num-images must be at least 10, got {args.num_images}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    return run_demo(args.output_dir, args.num_images, args.seed)


def add_parsers(commands) -> None:
    demo = commands.add_parser("demo", help="load, evaluate and card the embedded shapes model (offline, ~20 s)")
    demo.add_argument(
        "--output-dir",
        type=Path,
        default=Path("towerzoo-demo"),
        help="where the Hub folders (with their cards), the test set and the results go (default: ./towerzoo-demo)",
    )
    demo.add_argument("--num-images", type=int, default=200, help="held-out test images to generate")
    demo.add_argument("--seed", type=int, default=0, help="the test set's seed")
    demo.set_defaults(handler=_demo)
