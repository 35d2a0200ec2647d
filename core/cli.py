"""The `towerzoo` command line: `convert`, `eval`, `list`, `card`, `push`, `finetune`, `demo`."""

import argparse
import importlib
import json
import sys
from pathlib import Path

# conversion source → module in towerzoo.conversions exposing
# `run(input_path, output_dir, tokenizer=, overwrite=, max_shard_size=, labels=)`
CONVERTERS = {
    "bridgetower-transformers": "bridgetower_transformers",
    "bridgetower-original": "bridgetower_original",
    "managertower-original": "managertower_original",
    "vidla-from-clip": "vidla_from_clip",
}


def _convert(args: argparse.Namespace) -> int:
    from towerzoo.conversions.common import ConversionError

    module = importlib.import_module(f"towerzoo.conversions.{CONVERTERS[args.source]}")
    try:
        output = module.run(
            Path(args.input),
            Path(args.output_dir),
            tokenizer=args.tokenizer,
            overwrite=args.overwrite,
            max_shard_size=args.max_shard_size,
            labels=args.labels,
        )
    except ConversionError as error:
        print(f"towerzoo convert: error: {error}", file=sys.stderr)
        return 2
    verification = json.loads((output / "verification.json").read_text())
    for note in verification.get("assumptions", []):
        print(f"note: assumed {note}")
    print(f"wrote {output} (max |difference| vs the reference: {verification['max_abs_diff']:.2e})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from towerzoo.demo import main as demo_main

    return demo_main(["--output-dir", str(args.output_dir)] if args.output_dir else [])


# modules that add their own subcommands: each exposes `add_parsers(commands)` (argparse subparsers) and sets a
# `handler(args) -> int` default on every parser it adds
SUBCOMMAND_MODULES = ("towerzoo.evaluation.cli",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="towerzoo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert a checkpoint into a verified towerzoo Hub folder")
    convert.add_argument("source", choices=sorted(CONVERTERS), help="the input checkpoint's format")
    convert.add_argument("input", help="checkpoint file or folder")
    convert.add_argument("output_dir", help="where to write the Hub folder (written atomically)")
    convert.add_argument("--tokenizer", type=Path, help="tokenizer folder; adds processor files to the output")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    convert.add_argument(
        "--labels",
        type=Path,
        help="JSON with the classifier's labels (list, {label: index} as VQAv2's answer2label, or id2label)",
    )
    convert.add_argument(
        "--max-shard-size", default="5GB", help="split model.safetensors into shards of at most this size"
    )
    convert.set_defaults(handler=_convert)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parsers(commands)
    demo = commands.add_parser("demo", help="convert a small model and load it as a Hub user would (offline)")
    demo.add_argument("--output-dir", type=Path, help="keep the work here (default: a temporary folder)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
