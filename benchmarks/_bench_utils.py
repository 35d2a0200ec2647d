"""What the benchmark scripts share: model sizes, common command-line options, inputs, timing, peak memory and the
machine description. Imported by the scripts next to it (`python benchmarks/bench_*.py` puts this folder on sys.path).
"""

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import transformers

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


# --------------------------------------------------------------------------------------------------------------------
# Command line and torch setup
# --------------------------------------------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes: runs, warm-up, input shape, threads, device, size, seed, JSON output."""
    parser.add_argument(
        "--runs", "--repeats", type=int, default=5, help="timed runs per model (the median is reported)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per model first (default 1; 2 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--text-length", type=int, default=40, help="padded text length (row 0 full, each later row 7 tokens shorter)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="base", help="'tiny' is a smoke test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", "--output", dest="json_out", help="also write the results to this JSON file")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")


def setup_torch(args: argparse.Namespace) -> Callable[[], None]:
    """Apply --threads, turn TF32 off on CUDA, fill in the default warm-up; returns the device's synchronizer."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:
        # fp32 means fp32: no TF32 in matmuls or convolutions (cudnn allows it by default)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.warmup is None:
        args.warmup = 2 if cuda else 1
    return synchronizer(args.device)


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------


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
    """`peak_mib` (and on CUDA `delta_mib`, the peak above what was allocated before) of one call of `fn`."""
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


def environment(args: argparse.Namespace) -> dict:
    """The machine, library versions and run counts a result was measured with (for the report and the JSON)."""
    cuda = args.device.startswith("cuda")
    return {
        "device": torch.cuda.get_device_name(args.device) if cuda else f"cpu ({cpu_name()})",
        "threads": torch.get_num_threads(),
        "runs": args.runs,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "memory_method": CUDA_MEMORY_METHOD if cuda else CPU_MEMORY_METHOD,
    }


def describe_runs(setup: dict) -> str:
    """One report line: library versions and how the times were taken."""
    return (
        f"torch {setup['torch']}, transformers {setup['transformers']}, python {setup['python']}; "
        f"median of {setup['runs']} interleaved runs after {setup['warmup']} warm-up run(s), torch.no_grad, eval mode"
    )


def format_mib(value) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def write_json(results: dict, path: str | None) -> None:
    """Write the results to `path` as JSON (nothing when it is None) and say so."""
    if path:
        with open(path, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"\nwrote {path}")
