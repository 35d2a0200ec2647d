"""Train the two small BridgeTowers of `towerzoo demo` from scratch on the procedural shapes task (`towerzoo.shapes`),
with the commands a user runs, and score them on a held-out generated split:

1. data: a training split (8,000 scenes; 32,000 questions; 40,000 captions) and a held-out test split (100 scenes of
   distinct objects) in the official VQAv2 and Karpathy formats, and a tokenizer for the task's words;
2. `towerzoo finetune retrieval` (ITC + ITM with hard negatives) from a random model (`--init-config`);
3. `towerzoo finetune vqav2` from the retrieval model's encoder (new VQA head);
4. `towerzoo eval vqav2` and `towerzoo eval retrieval` on the test split, printed next to the blind baselines.

    python scripts/train_demo_models.py OUTPUT_DIR [--seed 0]

Writes OUTPUT_DIR/data, tokenizer/, init_config/, retrieval/model/ and vqa/model/ (Hub folders), results/. Everything
is seeded; on two otherwise idle CPU cores it takes about 8 minutes (retrieval 4, VQA 2, data and evaluation 2).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from transformers import AutoTokenizer

import towerzoo.models.bridgetower as bt
from towerzoo import demo, shapes

# a BridgeTower of about 0.6 M parameters (2.4 MB in fp32): 64 wide, 16-px patches on 64-px images (one patch per grid
# cell of the scenes), 2 text / 3 vision / 2 cross-modal layers, no dropout. Weights start at N(0, 0.1) instead of
# the original's N(0, 0.02), which suits 768-wide layers: at width 64 the attention would start flat and stay there
# for thousands of steps.
DEMO_CONFIG = {
    "text_config": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 256,
        "max_position_embeddings": 40,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.1,
    },
    "vision_config": {
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 256,
        "image_size": 64,
        "patch_size": 16,
        "initializer_range": 0.1,
    },
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "contrastive_hidden_size": 64,
    "contrastive_image_features": "uni_modal",
    "contrastive_cross_modal_head": False,
    "pretraining_heads": ["itm", "itc"],
    "head_hidden_scale": 1,
    "initializer_range": 0.1,
}
TRAIN_IMAGES, TEST_IMAGES = 8000, 100
# options shared by both runs: plain AdamW with linear warm-up and decay, texts padded per batch
COMMON = [
    *("--image-size", "64", "--max-text-length", "32", "--text-padding", "longest"),
    *("--weight-decay", "0.01", "--warmup-ratio", "0.05", "--adam-beta2", "0.999", "--lr-mult-cross-modal", "1"),
    *("--logging-steps", "100", "--save-steps", "100000", "--dataloader-num-workers", "1", "--overwrite"),
]
RETRIEVAL = [
    *("--learning-rate", "1e-3", "--lr-mult-head", "1", "--max-steps", "1500"),
    *("--total-batch-size", "64", "--per-device-train-batch-size", "64"),
]
VQA = [
    *("--learning-rate", "5e-4", "--lr-mult-head", "5", "--max-steps", "2000", "--min-answer-count", "1"),
    *("--total-batch-size", "32", "--per-device-train-batch-size", "32"),
]


def towerzoo(*arguments) -> None:
    """Run one `towerzoo` command (shown as it runs); stop if it fails."""
    command = [sys.executable, "-m", "towerzoo.cli", *map(str, arguments)]
    print("+ towerzoo " + " ".join(map(str, arguments)), flush=True)
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="seeds the data, the initial weights and the training")
    parser.add_argument(
        "--export-assets", type=Path, help="also store both models as the demo's embedded assets (e.g. core/assets)"
    )
    args = parser.parse_args(argv)
    out, seed = args.output_dir, str(args.seed)

    train = shapes.write_shapes_dataset(out / "data", TRAIN_IMAGES, args.seed, "train", distinct=False)
    test = shapes.write_shapes_dataset(out / "data", TEST_IMAGES, args.seed, "test")
    tokenizer = shapes.build_shapes_tokenizer(out / "tokenizer")
    vocab_size = len(AutoTokenizer.from_pretrained(tokenizer))
    config = bt.BridgeTowerConfig(
        **{**DEMO_CONFIG, "text_config": {**DEMO_CONFIG["text_config"], "vocab_size": vocab_size}}
    )
    config.save_pretrained(out / "init_config")

    towerzoo(
        *("finetune", "retrieval", "--init-config", out / "init_config" / "config.json", "--tokenizer", tokenizer),
        *("--karpathy", train["karpathy"], "--images", train["karpathy_images"], "--splits", "train"),
        *("--output-dir", out / "retrieval", "--seed", seed, *COMMON, *RETRIEVAL),
    )
    towerzoo(
        *("finetune", "vqav2", "--model", out / "retrieval" / "model"),
        *("--questions", train["questions"], "--annotations", train["annotations"], "--images", train["vqa_images"]),
        *("--output-dir", out / "vqa", "--seed", seed, *COMMON, *VQA),
    )
    results = out / "results"
    towerzoo(
        *("eval", "vqav2", "--model", out / "vqa" / "model", "--questions", test["questions"]),
        *("--annotations", test["annotations"], "--images", test["vqa_images"], "--output", results / "vqav2.json"),
    )
    towerzoo(
        *("eval", "retrieval", "--model", out / "retrieval" / "model", "--karpathy", test["karpathy"]),
        *("--images", test["karpathy_images"], "--split", "test", "--k", "16", "--text-padding", "longest"),
        *("--output", results / "retrieval.json", "--cache-dir", results / "cache"),
    )
    print_summary(results, test["annotations"])
    if args.export_assets is not None:
        for task, name in demo.MODELS.items():
            folder = demo.export_asset(out / ("vqa" if task == "vqav2" else task) / "model", args.export_assets / name)
            print(f"stored {folder}")


def print_summary(results: Path, annotations: Path) -> None:
    """The held-out scores next to the blind baselines."""
    vqa = json.loads((results / "vqav2.json").read_text())["metrics"]
    retrieval = json.loads((results / "retrieval.json").read_text())["metrics"]
    baselines = shapes.vqa_baselines(annotations)
    chance = shapes.retrieval_chance(TEST_IMAGES)
    print(f"\n{'VQA (held-out)':<24}{'model':>8}{'chance':>8}{'majority':>10}")
    rows = [("overall", vqa["accuracy"], baselines["overall"])]
    rows += [
        (kind, vqa["per_answer_type"][kind], baselines["per_answer_type"][kind])
        for kind in sorted(baselines["per_answer_type"])
    ]
    for name, score, base in rows:
        print(f"{name:<24}{score:>8.2f}{base['chance']:>8.2f}{base['majority']:>10.2f}")
    print(f"\n{'retrieval (held-out)':<24}{'model':>8}{'chance':>8}")
    for name, score in retrieval.items():
        print(f"{name:<24}{score:>8.2f}{chance[name]:>8.2f}")


if __name__ == "__main__":
    main()
