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
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import transformers

from towerzoo.conversions.bridgetower_keys import to_towerzoo
from towerzoo.conversions.bridgetower_transformers import config_from_transformers
from towerzoo.models.bridgetower import BridgeTowerModel

# transformers.BridgeTowerConfig keyword arguments; "base" is the paper's model (and transformers' defaults).
SIZES = {
    "base": {
        "text_config": {
            "vocab_size": 50265,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 514,
        },
        "vision_config": {"hidden_size": 768, "num_hidden_layers": 12, "image_size": 288, "patch_size": 16},
        "hidden_size": 768,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
    },
    "tiny": {
        "text_config": {
            "vocab_size": 297,
            "hidden_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "intermediate_size": 96,
            "max_position_embeddings": 64,
        },
        "vision_config": {"hidden_size": 64, "num_hidden_layers": 3, "image_size": 32, "patch_size": 8},
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
}
MIB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per model (the median is reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per model first (default 1; 2 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--text-length", type=int, default=40, help="padded text length (row 0 full, each later row 7 tokens shorter)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="base", help="'tiny' is a smoke test")
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 backend runs (default: on CUDA only)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
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


def make_inputs(config, batch_size: int, text_length: int, seed: int) -> dict[str, torch.Tensor]:
    """<s> + random tokens; row 0 is full, later rows are right-padded by 7 more tokens each (at least 2 kept)."""
    generator = torch.Generator().manual_seed(seed)
    text = config.text_config
    input_ids = torch.randint(5, text.vocab_size, (batch_size, text_length), generator=generator)
    input_ids[:, 0] = text.bos_token_id
    attention_mask = torch.ones_like(input_ids)
    for row in range(batch_size):
        keep = max(2, text_length - 7 * row)
        input_ids[row, keep - 1] = text.eos_token_id
        input_ids[row, keep:] = text.pad_token_id
        attention_mask[row, keep:] = 0
    size = config.vision_config.image_size
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def to_device(inputs: dict[str, torch.Tensor], device: str, dtype: torch.dtype | None = None) -> dict:
    return {
        k: v.to(device, dtype) if (dtype is not None and v.is_floating_point()) else v.to(device)
        for k, v in inputs.items()
    }


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------


def synchronizer(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def timed(fn: Callable, sync: Callable) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


CPU_MEMORY_METHOD = (
    "peak bytes held by torch's CPU allocator during one forward, above what was allocated before it "
    "(torch.profiler profile_memory allocation events, running allocator total)"
)
CUDA_MEMORY_METHOD = (
    "torch.cuda.max_memory_allocated during one forward (abs), and the same minus memory_allocated before it (delta)"
)


def _allocation_events(profiler) -> list:
    from torch._C._profiler import _EventType

    stack, found = list(profiler.profiler.kineto_results.experimental_event_tree()), []
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            found.append(event)
        stack.extend(event.children)
    return found


def cpu_peak_bytes(fn: Callable) -> int | None:
    """Peak of the CPU allocator's running total during `fn`, relative to its start (None if torch hides it)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        fn()
    try:
        events = [e for e in _allocation_events(profiler) if e.extra_fields.device.type == "cpu"]
    except (AttributeError, ImportError, RuntimeError):  # private profiler API moved
        return None
    events.sort(key=lambda e: e.start_time_ns)
    return max((e.extra_fields.total_allocated for e in events), default=0)


def cuda_peak_bytes(fn: Callable, device: str) -> tuple[int, int]:
    """(torch.cuda.max_memory_allocated during `fn`, the same minus what was allocated before `fn`)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak, peak - before


def peak_memory(fn: Callable, device: str) -> dict:
    if device.startswith("cuda"):
        peak, delta = cuda_peak_bytes(fn, device)
        return {"peak_mib": peak / MIB, "delta_mib": delta / MIB}
    peak = cpu_peak_bytes(fn)
    return {"peak_mib": None if peak is None else peak / MIB}


def interleaved_medians(fns: dict[str, Callable], runs: int, warmup: int, sync: Callable) -> dict[str, dict]:
    """Warm every fn up, then time them round-robin (order reversed every other round); median and min per fn."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    order = list(fns)
    for run in range(runs):
        for name in order if run % 2 == 0 else reversed(order):
            times[name].append(timed(fns[name], sync))
    return {
        name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t, "runs": len(t)}
        for name, t in times.items()
    }


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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mib(value) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def print_report(results: dict) -> None:
    setup = results["setup"]
    print(
        f"BridgeTower {setup['size']} ({setup['parameters'] / 1e6:.1f}M parameters): batch {setup['batch_size']}, "
        f"image {setup['image_size']}, {setup['text_length']} text tokens (real lengths {setup['text_lengths']}), "
        f"fp32, {setup['device']}, {setup['threads']} threads"
    )
    print(
        f"torch {setup['torch']}, transformers {setup['transformers']}, python {setup['python']}; "
        f"median of {setup['runs']} interleaved runs after {setup['warmup']} warm-up run(s), torch.no_grad, eval mode"
    )
    fp32 = results["fp32"]
    rows = [("towerzoo BridgeTowerModel", fp32["towerzoo"]), ("transformers BridgeTowerModel", fp32["transformers"])]
    has_delta = "delta_mib" in fp32["towerzoo"]
    print()
    header = f"{'model':<31}{'attention':<11}{'median s':>10}{'min s':>9}{'peak MiB':>12}"
    print(header + (f"{'delta MiB':>12}" if has_delta else ""))
    for name, row in rows:
        line = (
            f"{name:<31}{row['attn_implementation']:<11}{row['median_s']:>10.3f}{row['min_s']:>9.3f}"
            f"{_mib(row['peak_mib']):>12}"
        )
        print(line + (f"{_mib(row['delta_mib']):>12}" if has_delta else ""))
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
                f"{backend:<19}{row['median_s']:>10.4f}{row['samples_per_s']:>11.1f}{_mib(row['peak_mib']):>12}"
                f"{_mib(row.get('delta_mib')):>12}{row.get('max_abs_diff_vs_bf16_eager', float('nan')):>15.3e}"
                f"{row['max_abs_diff_vs_fp32_eager']:>15.3e}"
            )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:
        # fp32 means fp32: no TF32 in matmuls or convolutions (cudnn allows it by default)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.warmup is None:
        args.warmup = 2 if cuda else 1
    sync = synchronizer(args.device)

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
            "device": torch.cuda.get_device_name(args.device) if cuda else f"cpu ({cpu_name()})",
            "threads": torch.get_num_threads(),
            "runs": args.runs,
            "warmup": args.warmup,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "memory_method": CUDA_MEMORY_METHOD if cuda else CPU_MEMORY_METHOD,
        },
        "fp32": fp32_side_by_side(towerzoo_model, reference, inputs, args, sync),
    }
    if args.bf16 if args.bf16 is not None else cuda:
        del reference
        results["bf16"] = bf16_runs(towerzoo_model, inputs, args, sync)
    print_report(results)
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"\nwrote {args.json_out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
