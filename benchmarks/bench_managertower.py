"""ManagerTower against BridgeTower at the same size: forward time, peak memory and parameters, side by side in one
process. The ManagerTower paper (Xu et al., ACL 2023) says its managers add little cost over BridgeTower's bridges;
this measures how little.

Both models are towerzoo's, with random weights, at the papers' base size (RoBERTa-base text tower, CLIP ViT-B/16 at
288 px, 6 cross-modal layers of width 768; `--size` takes the same sizes as `bench_bridgetower.py`). ManagerTower uses
its defaults: adaptive (AAUE) managers over the top 6 layers of each tower, vector weights. Both run the same attention
backend and dtype; runs are interleaved (the order alternates every round) after warm-up, and the median is reported.

Memory: on CPU, the peak number of bytes held by torch's CPU allocator during one forward, above what was allocated
before it (weights and inputs), read from `torch.profiler`'s allocation events. On CUDA, `torch.cuda.max_memory_allocated`
(peak) and the same minus what was allocated before the forward (delta).

    python benchmarks/bench_managertower.py                     # fp32 CPU, batch 4, 40 text tokens, 5 runs
    python benchmarks/bench_managertower.py --device cuda --dtype bf16 --output managertower.json
    python benchmarks/bench_managertower.py --size tiny --repeats 2   # a seconds-long smoke test
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

from towerzoo.conversions.bridgetower_transformers import config_from_transformers
from towerzoo.models.bridgetower import BridgeTowerConfig, BridgeTowerModel
from towerzoo.models.managertower import Manager, ManagerTowerConfig, ManagerTowerModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The paper's base model: every manager reads the top 6 layers of its tower (fewer when a tower is shallower).
MANAGED_LAYERS = 6
# The cross-modal encoder's sizes, taken from the BridgeTower config so both models are built the same.
CROSS_MODAL_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and pixel values")
    parser.add_argument(
        "--attn-implementation",
        default="sdpa",
        help="attention backend of both models (eager, sdpa, flex_attention, …)",
    )
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    return args


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


def build_configs(size: str) -> tuple[BridgeTowerConfig, ManagerTowerConfig]:
    """BridgeTower at one of the shared sizes, and ManagerTower (default managers) with the same towers and
    cross-modal encoder."""
    bridge = config_from_transformers(transformers.BridgeTowerConfig(**copy.deepcopy(SIZES[size])).to_dict())
    manager = ManagerTowerConfig(
        text_config=bridge.text_config.to_dict(),
        vision_config=bridge.vision_config.to_dict(),
        **{name: getattr(bridge, name) for name in CROSS_MODAL_FIELDS},
        managed_layers_text=min(MANAGED_LAYERS, bridge.text_config.num_hidden_layers),
        managed_layers_image=min(MANAGED_LAYERS, bridge.vision_config.num_hidden_layers),
    )
    return bridge, manager


def build_models(size: str, seed: int, attn_implementation: str) -> dict[str, torch.nn.Module]:
    """Both bare models with random weights (same seed), in eval mode, on the chosen attention backend."""
    bridge_config, manager_config = build_configs(size)
    models = {}
    for name, model_class, config in (
        ("BridgeTower", BridgeTowerModel, bridge_config),
        ("ManagerTower", ManagerTowerModel, manager_config),
    ):
        torch.manual_seed(seed)
        model = model_class(config).eval()
        model.set_attn_implementation(attn_implementation)
        models[name] = model
    return models


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """All parameters, and those of the managers alone (0 for BridgeTower)."""
    managers = [module for module in model.modules() if isinstance(module, Manager)]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "manager_parameters": sum(p.numel() for manager in managers for p in manager.parameters()),
    }


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def measure(models: dict[str, torch.nn.Module], inputs: dict, args: argparse.Namespace, sync) -> dict[str, dict]:
    """Interleaved timings, then one forward per model for its peak memory."""
    fns = {name: (lambda model=model: model(**inputs)) for name, model in models.items()}
    timings = interleaved_medians(fns, args.runs, args.warmup, sync)
    return {name: {**timings[name], **peak_memory(fn, args.device)} for name, fn in fns.items()}


def ratios(rows: dict[str, dict]) -> dict[str, float | None]:
    """ManagerTower / BridgeTower for time (medians), peak memory (and its delta on CUDA) and parameters."""
    manager, bridge = rows["ManagerTower"], rows["BridgeTower"]
    result = {"time": manager["median_s"] / bridge["median_s"]}
    for key, name in (("peak_mib", "peak_memory"), ("delta_mib", "peak_memory_delta")):
        if key in bridge:
            result[name] = None if not bridge[key] or manager[key] is None else manager[key] / bridge[key]
    result["parameters"] = manager["parameters"] / bridge["parameters"]
    return result


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def print_report(results: dict) -> None:
    setup, rows, ratio = results["setup"], results["models"], results["ratios"]
    print(
        f"ManagerTower vs BridgeTower, {setup['size']}: batch {setup['batch_size']}, image {setup['image_size']}, "
        f"{setup['text_length']} text tokens (real lengths {setup['text_lengths']}), {setup['dtype']}, "
        f"{setup['attn_implementation']} attention, {setup['device']}, {setup['threads']} threads"
    )
    print(f"ManagerTower managers: {setup['managers']}")
    print(describe_runs(setup))
    has_delta = "delta_mib" in rows["BridgeTower"]
    print()
    header = f"{'model':<14}{'parameters':>14}{'managers':>12}{'median s':>10}{'min s':>9}{'peak MiB':>12}"
    print(header + (f"{'delta MiB':>12}" if has_delta else ""))
    for name, row in rows.items():
        line = (
            f"{name:<14}{row['parameters']:>14,}{row['manager_parameters']:>12,}{row['median_s']:>10.4f}"
            f"{row['min_s']:>9.4f}{format_mib(row['peak_mib']):>12}"
        )
        print(line + (f"{format_mib(row['delta_mib']):>12}" if has_delta else ""))
    extra = rows["ManagerTower"]["parameters"] - rows["BridgeTower"]["parameters"]
    print()
    print(f"ManagerTower / BridgeTower time (medians): {_ratio(ratio['time'])}")
    print(f"ManagerTower / BridgeTower peak memory: {_ratio(ratio['peak_memory'])}")
    if has_delta:
        print(
            f"ManagerTower / BridgeTower peak memory above the weights (delta): {_ratio(ratio['peak_memory_delta'])}"
        )
    print(f"ManagerTower / BridgeTower parameters: {_ratio(ratio['parameters'])} ({extra:+,})")
    print(f"memory: {setup['memory_method']}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sync = setup_torch(args)
    dtype = DTYPES[args.dtype]

    models = build_models(args.size, args.seed, args.attn_implementation)
    config = models["ManagerTower"].config
    counts = {name: parameter_counts(model) for name, model in models.items()}
    for model in models.values():
        model.to(args.device, dtype)
    cpu_inputs = make_inputs(config, args.batch_size, args.text_length, args.seed)
    inputs = to_device(cpu_inputs, args.device, dtype)

    rows = {name: {**counts[name], **row} for name, row in measure(models, inputs, args, sync).items()}
    results = {
        "setup": {
            "size": args.size,
            "batch_size": args.batch_size,
            "image_size": config.vision_config.image_size,
            "text_length": args.text_length,
            "text_lengths": cpu_inputs["attention_mask"].sum(-1).tolist(),
            "dtype": args.dtype,
            "attn_implementation": args.attn_implementation,
            "managers": (
                f"{config.manager_type}, {config.manager_weight_type} weights, top {config.managed_layers_text} text "
                f"and {config.managed_layers_image} image layers, {config.num_hidden_layers} cross-modal layers"
            ),
            **environment(args),
        },
        "models": rows,
        "ratios": ratios(rows),
    }
    print_report(results)
    write_json(results, args.json_out)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
