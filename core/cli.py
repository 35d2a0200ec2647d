"""The `towerzoo` command line: `convert`, `eval`, `list`, `card`, `push`, `finetune`, `demo`."""

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

# conversion source → module in towerzoo.conversions exposing
# `run(input_path, output_dir, tokenizer=, overwrite=, max_shard_size=, labels=)`
CONVERTERS = {
    "bridgetower-transformers": "bridgetower_transformers",
    "bridgetower-original": "bridgetower_original",
    "managertower-original": "managertower_original",
    "vidla-from-clip": "vidla_from_clip",
    "restore-from-clip": "restore_from_clip",
    "zipper-from-decoders": "zipper_from_decoders",
    "llava-ov-manager-from-llava-ov": "llava_ov_manager_from_llava_ov",
    "llava-ov-manager-original": "llava_ov_manager_original",
}
# options only some converters take: option → the converters that take it
CONVERTER_OPTIONS = {"classnames": ("restore-from-clip",), "adapters_only": ("restore-from-clip",)}
# converters that take a second input before OUTPUT_DIR: source → (the keyword argument it goes to, usage)
SECOND_INPUT = {"zipper-from-decoders": ("speech_lm", "TEXT_LM_DIR SPEECH_LM_DIR OUTPUT_DIR")}


def _convert_options(args: argparse.Namespace, scratch: Path) -> tuple[str, Path | None]:
    """The source format and labels file of a conversion: from SOURCE and --labels, or from the --entry's registry
    record (a label set the registry holds is written into `scratch` when --labels is not given)."""
    from towerzoo.conversions.common import ConversionError
    from towerzoo.registry import get_entry

    if args.entry is None:
        if args.source is None:
            raise ConversionError("give the SOURCE format or --entry NAME (towerzoo list shows the entries).")
        return args.source, args.labels
    entry = get_entry(args.entry)
    if entry.source.format is None:
        raise ConversionError(
            f"zoo entry {entry.name!r} is not converted from a checkpoint ({entry.source.checkpoint})."
        )
    if args.source is not None and args.source != entry.source.format:
        raise ConversionError(
            f"zoo entry {entry.name!r} is a {entry.source.format} checkpoint, not {args.source}; drop SOURCE."
        )
    labels = args.labels
    if labels is None and entry.labels is not None:
        if entry.labels.names is None:
            raise ConversionError(
                f"zoo entry {entry.name!r} has a classifier of {entry.labels.size} outputs: pass --labels with "
                f"{entry.labels.source}."
            )
        labels = scratch / "labels.json"
        labels.write_text(json.dumps(list(entry.labels.names)))
    if args.tokenizer is None and entry.tokenizer is not None:
        print(f"note: no --tokenizer: the folder gets no processor files (this entry's tokenizer: {entry.tokenizer})")
    return entry.source.format, labels


def _convert(args: argparse.Namespace) -> int:
    from towerzoo.conversions.common import ConversionError
    from towerzoo.hub_cards.card import CardError, record_entry, write_card
    from towerzoo.registry import RegistryError

    try:
        with tempfile.TemporaryDirectory(prefix="towerzoo-convert-") as scratch:
            source, labels = _convert_options(args, Path(scratch))
            extra = {name: getattr(args, name) for name in CONVERTER_OPTIONS if getattr(args, name)}
            for name in extra:
                if source not in CONVERTER_OPTIONS[name]:
                    option = "--" + name.replace("_", "-")
                    raise ConversionError(f"{option} is for {', '.join(CONVERTER_OPTIONS[name])}, not {source}.")
            output_dir = args.output_dir
            if args.last is not None or source in SECOND_INPUT:
                if source not in SECOND_INPUT or args.last is None:
                    takes = SECOND_INPUT[source][1] if source in SECOND_INPUT else "INPUT OUTPUT_DIR"
                    raise ConversionError(f"{source} takes {takes}.")
                extra[SECOND_INPUT[source][0]], output_dir = Path(args.output_dir), args.last
            module = importlib.import_module(f"towerzoo.conversions.{CONVERTERS[source]}")
            output = module.run(
                Path(args.input),
                Path(output_dir),
                tokenizer=args.tokenizer,
                overwrite=args.overwrite,
                max_shard_size=args.max_shard_size,
                labels=labels,
                **extra,
            )
        if args.entry is not None:
            record_entry(output, args.entry)
        write_card(output)
    except (ConversionError, RegistryError, CardError) as error:
        print(f"towerzoo convert: error: {error}", file=sys.stderr)
        return 2
    verification = json.loads((output / "verification.json").read_text())
    for note in verification.get("assumptions", []):
        print(f"note: assumed {note}")
    print(f"wrote {output} (max |difference| vs the reference: {verification['max_abs_diff']:.2e})")
    return 0


# modules that add their own subcommands: each exposes `add_parsers(commands)` (argparse subparsers) and sets a
# `handler(args) -> int` default on every parser it adds
SUBCOMMAND_MODULES = (
    "towerzoo.evaluation.cli",
    "towerzoo.hub_cards.push",
    "towerzoo.registry",
    "towerzoo.hub_cards.card",
    "towerzoo.training.cli",
    "towerzoo.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="towerzoo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert a checkpoint into a verified towerzoo Hub folder")
    convert.add_argument(
        "source", nargs="?", choices=sorted(CONVERTERS), help="the input checkpoint's format (or give --entry)"
    )
    convert.add_argument("input", help="checkpoint file or folder")
    convert.add_argument("output_dir", help="where to write the Hub folder (written atomically)")
    convert.add_argument(
        "last", nargs="?", metavar="OUTPUT_DIR", help="converters with two inputs (zipper-from-decoders): the output"
    )
    convert.add_argument("--tokenizer", type=Path, help="tokenizer folder; adds processor files to the output")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    convert.add_argument(
        "--entry", help="zoo entry being converted (towerzoo list): gives the format and labels, and names the card"
    )
    convert.add_argument(
        "--labels",
        type=Path,
        help="JSON with the classifier's labels (list, {label: index} as VQAv2's answer2label, or id2label)",
    )
    convert.add_argument(
        "--max-shard-size", default="5GB", help="split model.safetensors into shards of at most this size"
    )
    convert.add_argument(
        "--classnames", type=Path, help="restore-from-clip: class names, one per line, in label order"
    )
    convert.add_argument(
        "--adapters-only",
        action="store_true",
        help="restore-from-clip: store only RESTORE's own weights and a pointer to the base CLIP (loaded from it)",
    )
    convert.set_defaults(handler=_convert)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
