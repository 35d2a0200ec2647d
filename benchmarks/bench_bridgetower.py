"""towerzoo BridgeTower (sdpa) against transformers' built-in `BridgeTowerModel` (eager, the only backend it has),
with the same weights, side by side in one process.

Both models are built at the paper's base size (RoBERTa-base text tower, CLIP ViT-B/16 at 288 px, 6 cross-modal
layers of width 768) from one random init of transformers' model; its state dict is converted with towerzoo's key map.
Runs are interleaved (the order alternates every round) after warm-up, and the median is reported.

Memory: on CPU, the peak number of bytes held by torch's CPU allocator during one forward, above what was allocated
before it (weights and inputs), read from the allocation events that `torch.profiler` records with
`profile_memory=True` (each event carries the allocator's running total). On CUDA, `torch.cuda.max_memory_allocated`.

    python benchmarks/bench_bridgetower.py                      # fp32 CPU, batch 4, 40 text tokens, 5 runs
    python benchmarks/bench_bridgetower.py --device cuda --json bench.json   # + bf16 sdpa/eager/flex(/flash) runs
    python benchmarks/bench_bridgetower.py --size tiny --runs 2  # a seconds-long smoke test
"""

import argparse
import copy
import sys

import torch
import transformers
from _bench_utils import (
    SIZES,
    add_common_arguments,
    check_common_arguments,
    describe_runs,
    environment,
    format_mib,
    interleaved_medians,
    make_inputs,
    peak_memory,
    setup_torch,
    to_device,
    write_json,
)

from towerzoo.conversions.bridgetower_keys import to_towerzoo
from towerzoo.conversions.bridgetower_transformers import config_from_transformers
from towerzoo.models.bridgetower import BridgeTowerModel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 backend runs (default: on CUDA only)"
    )
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    return args


# --------------------------------------------------------------------------------------------------------------------
# Models and inputs
# --------------------------------------------------------------------------------------------------------------------


def build_models(size: str, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """transformers' BridgeTowerModel (random init) and towerzoo's BridgeTowerModel holding a copy of its weights."""
    torch.manual_seed(seed)
    reference = transformers.BridgeTowerModel(transformers.BridgeTowerConfig(**copy.deepcopy(SIZES[size]))).eval()
    config = config_from_transformers(reference.config.to_dict())
    source = {k.removeprefix("bridgetower."): v for k, v in reference.state_dict().items()}
    converted, dropped = to_towerzoo(source, config.task_head_layers)
    unexpected_drops = set(dropped) - {"text_model.pooler.dense.weight", "text_model.pooler.dense.bias"}
    if unexpected_drops:
        raise RuntimeError(f"the key map dropped weights the benchmark needs: {sorted(unexpected_drops)}")
    state_dict = {k.removeprefix("bridgetower."): v.detach().clone() for k, v in converted.items()}
    with torch.device("meta"):  # skip a second random init; every tensor comes from the state dict
        model = BridgeTowerModel(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.set_attn_implementation("sdpa")
    return model.eval(), reference


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# --------------------------------------------------------------------------------------------------------------------
# The two benchmarks
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def fp32_side_by_side(towerzoo_model, reference, inputs, args, sync) -> dict:
    fns = {
        "towerzoo": lambda: towerzoo_model(**inputs),
        "transformers": lambda: reference(**inputs),
    }
    timings = interleaved_medians(fns, args.runs, args.warmup, sync)
    memory = {name: peak_memory(fn, args.device) for name, fn in fns.items()}
    ours, theirs = towerzoo_model(**inputs), reference(**inputs)
    real = inputs["attention_mask"].bool()
    diffs = {
        "pooler_output": max_abs_diff(ours.pooler_output, theirs.pooler_output),
        "text_features (real tokens)": max_abs_diff(ours.text_features[real], theirs.text_features[real]),
        "image_features": max_abs_diff(ours.image_features, theirs.image_features),
    }
    return {
        "towerzoo": {"attn_implementation": "sdpa", **timings["towerzoo"], **memory["towerzoo"]},
        "transformers": {"attn_implementation": "eager", **timings["transformers"], **memory["transformers"]},
        "time_ratio_towerzoo_over_transformers": timings["towerzoo"]["median_s"] / timings["transformers"]["median_s"],
        "max_abs_diff": diffs,
    }


def bf16_backends() -> list[str]:
    backends = ["eager", "sdpa", "flex_attention"]
    from transformers.utils import import_utils

    for name, check in (
        ("flash_attention_2", "is_flash_attn_2_available"),
        ("flash_attention_3", "is_flash_attn_3_available"),
    ):
        if getattr(import_utils, check, lambda: False)():
            backends.append(name)
    return backends


@torch.no_grad()
def bf16_runs(towerzoo_model, inputs, args, sync) -> dict:
    """towerzoo in bf16 with every available backend: time, throughput, memory, and pooler_output differences
    against bf16 eager and against towerzoo's fp32 eager."""
    towerzoo_model.set_attn_implementation("eager")
    fp32_eager = towerzoo_model(**inputs).pooler_output
    towerzoo_model.set_attn_implementation("sdpa")
    model = copy.deepcopy(towerzoo_model).to(torch.bfloat16)
    bf16_inputs = to_device(inputs, args.device, torch.bfloat16)
    results, outputs = {}, {}
    for backend in bf16_backends():
        try:
            model.set_attn_implementation(backend)

            def forward():
                return model(**bf16_inputs)

            timing = interleaved_medians({backend: forward}, args.runs, args.warmup, sync)[backend]
            memory = peak_memory(forward, args.device)
            outputs[backend] = forward().pooler_output
        except Exception as error:  # a backend this machine cannot run: report it, keep going
            results[backend] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
            continue
        results[backend] = {
            **timing,
            **memory,
            "samples_per_s": args.batch_size / timing["median_s"],
            "max_abs_diff_vs_fp32_eager": max_abs_diff(outputs[backend], fp32_eager),
        }
    for backend, output in outputs.items():
        if "eager" in outputs:
            results[backend]["max_abs_diff_vs_bf16_eager"] = max_abs_diff(output, outputs["eager"])
    return results


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def print_report(results: dict) -> None:
    setup = results["setup"]
    print(
        f"BridgeTower {setup['size']} ({setup['parameters'] / 1e6:.1f}M parameters): batch {setup['batch_size']}, "
        f"image {setup['image_size']}, {setup['text_length']} text tokens (real lengths {setup['text_lengths']}), "
        f"fp32, {setup['device']}, {setup['threads']} threads"
    )
    print(describe_runs(setup))
    fp32 = results["fp32"]
    rows = [("towerzoo BridgeTowerModel", fp32["towerzoo"]), ("transformers BridgeTowerModel", fp32["transformers"])]
    has_delta = "delta_mib" in fp32["towerzoo"]
    print()
    header = f"{'model':<31}{'attention':<11}{'median s':>10}{'min s':>9}{'peak MiB':>12}"
    print(header + (f"{'delta MiB':>12}" if has_delta else ""))
    for name, row in rows:
        line = (
            f"{name:<31}{row['attn_implementation']:<11}{row['median_s']:>10.3f}{row['min_s']:>9.3f}"
            f"{format_mib(row['peak_mib']):>12}"
        )
        print(line + (f"{format_mib(row['delta_mib']):>12}" if has_delta else ""))
    print()
    print(f"time ratio towerzoo/transformers (medians): {fp32['time_ratio_towerzoo_over_transformers']:.3f}")
    for name, diff in fp32["max_abs_diff"].items():
        print(f"max |towerzoo - transformers| {name}: {diff:.3e}")
    print(f"memory: {setup['memory_method']}")
    if "bf16" in results:
        print()
        print(f"towerzoo bf16 on {setup['device']} (pooler_output differences)")
        print(
            f"{'attention':<19}{'median s':>10}{'samples/s':>11}{'peak MiB':>12}{'delta MiB':>12}"
            f"{'vs bf16 eager':>15}{'vs fp32 eager':>15}"
        )
        for backend, row in results["bf16"].items():
            if "error" in row:
                print(f"{backend:<19}  unavailable: {row['error']}")
                continue
            print(
                f"{backend:<19}{row['median_s']:>10.4f}{row['samples_per_s']:>11.1f}{format_mib(row['peak_mib']):>12}"
                f"{format_mib(row.get('delta_mib')):>12}{row.get('max_abs_diff_vs_bf16_eager', float('nan')):>15.3e}"
                f"{row['max_abs_diff_vs_fp32_eager']:>15.3e}"
            )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sync = setup_torch(args)
    cuda = args.device.startswith("cuda")

    towerzoo_model, reference = build_models(args.size, args.seed)
    towerzoo_model.to(args.device)
    reference.to(args.device)
    cpu_inputs = make_inputs(towerzoo_model.config, args.batch_size, args.text_length, args.seed)
    inputs = to_device(cpu_inputs, args.device)

    results = {
        "setup": {
            "size": args.size,
            "parameters": sum(p.numel() for p in towerzoo_model.parameters()),
            "batch_size": args.batch_size,
            "image_size": towerzoo_model.config.vision_config.image_size,
            "text_length": args.text_length,
            "text_lengths": cpu_inputs["attention_mask"].sum(-1).tolist(),
            **environment(args),
        },
        "fp32": fp32_side_by_side(towerzoo_model, reference, inputs, args, sync),
    }
    if args.bf16 if args.bf16 is not None else cuda:
        del reference
        results["bf16"] = bf16_runs(towerzoo_model, inputs, args, sync)
    print_report(results)
    write_json(results, args.json_out)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
