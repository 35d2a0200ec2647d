"""What the evaluation harnesses cost, run end to end through their Python APIs on synthetic data in the official
formats (the test suite's fixture writers, `tests/evaluation_fixtures.py`) with random-weight towerzoo Hub folders.

(a) VQAv2 (`evaluate_vqav2`): questions per second of the inference phase (image decoding and processing in the
    DataLoader, the forward pass, the answers) at each `--batch-sizes`, the median of `--runs` runs after `--warmup`.
(b) Retrieval (`evaluate_retrieval`) on a gallery of `--images` images and `--captions` captions: wall time and peak
    memory of each phase (embedding, similarity, re-ranking, scoring), then two sweeps of the ITM re-ranking, over k
    on the whole gallery and over the gallery size N at a fixed k, with the time per candidate pair. Re-ranking scores
    about (images + captions) x k pairs, so its time should grow with N·k: the log-log slope of time against N is
    printed (1 for N·k, 2 would be N²). Embeddings are cached by the harness, so sweep runs after the first reuse them.

Memory: on CUDA, `torch.cuda.max_memory_allocated` during the phase minus what was allocated when it started; on CPU,
the process's anonymous resident memory (resident set minus file-backed pages: the heap, not the memory-mapped
weights) sampled every millisecond during the phase, minus its size when the phase started. DataLoader workers are
separate processes: run with `--num-workers 0`, the default on CPU, to count everything.

    python benchmarks/bench_eval.py                                     # both, tiny model, CPU: about two minutes
    python benchmarks/bench_eval.py --size base --device cuda --dtype bf16 --json eval.json
    python benchmarks/bench_eval.py --task retrieval --size base --device cuda --dtype bf16 --k 32 --k-sweep 8 16 32
"""

import argparse
import contextlib
import copy
import importlib
import logging
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
import transformers
from _bench_utils import MIB, SIZES, environment, format_mib, setup_torch, write_json

from towerzoo.conversions.bridgetower_folder import build_processor, exposed_classes
from towerzoo.conversions.bridgetower_transformers import config_from_transformers
from towerzoo.conversions.hub_folder import write_hub_folder
from towerzoo.evaluation import retrieval, runner
from towerzoo.evaluation.vqav2 import VQAv2Options, evaluate_vqav2
from towerzoo.models.bridgetower import BridgeTowerForPreTraining, BridgeTowerForVisualQuestionAnswering
from towerzoo.tiny import build_tiny_tokenizer

TESTS = Path(__file__).resolve().parents[1] / "tests"
VQA_ANSWERS = 3129  # the size of VQAv2's answer vocabulary in the papers' heads
PHASES = ("loading", "embedding", "similarity", "reranking", "scoring")
CPU_MEMORY_METHOD = (
    "peak anonymous resident memory (RSS minus file-backed pages) during the phase, sampled every ms, minus its size "
    "at the start"
)
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated during the phase minus memory_allocated at its start"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("all", "vqav2", "retrieval"), default="all")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="model size (random weights)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (a GPU picked with CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="the harnesses' autocast")
    parser.add_argument("--attn-implementation", default=None, help="eager, sdpa (default), flash_attention_2, …")
    parser.add_argument(
        "--num-workers", type=int, default=None, help="DataLoader workers (default: 0 on CPU, 4 on CUDA)"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed VQAv2 runs per batch size (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed VQAv2 runs per batch size first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", "--output", dest="json_out", help="also write the results to this JSON file")
    vqa = parser.add_argument_group("VQAv2")
    vqa.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 128])
    vqa.add_argument("--questions", type=int, default=512, help="questions per run")
    vqa.add_argument("--vqa-images", type=int, default=64, help="distinct images the questions are about")
    ret = parser.add_argument_group("retrieval")
    ret.add_argument("--images", type=int, default=1000, help="gallery images")
    ret.add_argument("--captions", type=int, default=5000, help="gallery captions (a multiple of --images)")
    ret.add_argument("--k", type=int, default=8, help="re-ranking candidates per query in the phase breakdown")
    ret.add_argument("--k-sweep", type=int, nargs="+", default=[1, 2, 4, 8], help="k values, on the whole gallery")
    ret.add_argument(
        "--n-sweep", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="gallery fractions, at --sweep-k"
    )
    ret.add_argument("--sweep-k", type=int, default=4, help="k of the gallery-size sweep")
    ret.add_argument("--embed-batch-size", type=int, default=128, help="images or captions per embedding batch")
    ret.add_argument("--rerank-batch-size", type=int, default=128, help="caption-image pairs per ITM batch")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.captions % args.images:
        parser.error("--captions must be a multiple of --images (every image gets the same number of captions)")
    if args.num_workers is None:
        args.num_workers = 4 if args.device.startswith("cuda") else 0
    return args


# --------------------------------------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------------------------------------


def model_folder(folder: Path, size: str, task: str, seed: int) -> Path:
    """A towerzoo Hub folder with random weights at one of the shared sizes: a VQA model with 3,129 answers, or
    a pre-training model with the ITM and ITC heads retrieval needs. The tokenizer is towerzoo's small offline one."""
    config = config_from_transformers(transformers.BridgeTowerConfig(**copy.deepcopy(SIZES[size])).to_dict())
    if task == "vqav2":
        answers = fixture_writers().ANSWERS  # the fixture's answers, then fillers
        answers = answers + [f"answer {i}" for i in range(len(answers), VQA_ANSWERS)]
        config.id2label = dict(enumerate(answers))
        config.label2id = {name: i for i, name in config.id2label.items()}
        model_class = BridgeTowerForVisualQuestionAnswering
    else:
        config.pretraining_heads = ["itm", "itc"]
        model_class = BridgeTowerForPreTraining
    torch.manual_seed(seed)
    model = model_class(config).eval()
    processor = build_processor(build_tiny_tokenizer(folder.parent / f"{folder.name}-tokenizer"), config)
    return write_hub_folder(model, folder, exposed=exposed_classes(model), processor=processor, overwrite=True)


def fixture_writers():
    """The test suite's writers of VQAv2 and Karpathy-split data in the official formats."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    return importlib.import_module("evaluation_fixtures")


def accelerator_for(device: str):
    from accelerate import Accelerator

    return Accelerator(cpu=not device.startswith("cuda"))


# --------------------------------------------------------------------------------------------------------------------
# Peak memory per harness phase
# --------------------------------------------------------------------------------------------------------------------


def _anonymous_resident() -> int:
    info = psutil.Process().memory_info()
    return info.rss - info.shared  # on Linux `shared` is the file-backed and shared-memory part of the RSS


class _ResidentPeak:
    """The process's largest anonymous resident memory while the block runs, sampled every millisecond by a thread."""

    def __enter__(self):
        self.start = self.peak = _anonymous_resident()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.001):
            self.peak = max(self.peak, _anonymous_resident())

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, _anonymous_resident())


class PhaseTimer(runner.Timer):
    """The harnesses' phase timer, also recording each phase's peak memory above its start (MiB). The retrieval module
    builds one per run; `PhaseTimer.last` is the latest."""

    device = "cpu"
    last: "PhaseTimer | None" = None

    def __init__(self):
        super().__init__()
        self.peak_mib: dict[str, float] = {}
        PhaseTimer.last = self

    @contextlib.contextmanager
    def __call__(self, name: str):
        with self._memory(name), super().__call__(name):
            yield

    @contextlib.contextmanager
    def _memory(self, name: str):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            yield
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            with _ResidentPeak() as resident:
                yield
            peak = resident.peak - resident.start
        self.peak_mib[name] = max(self.peak_mib.get(name, 0.0), peak / MIB)


# --------------------------------------------------------------------------------------------------------------------
# (a) VQAv2
# --------------------------------------------------------------------------------------------------------------------


def bench_vqav2(args: argparse.Namespace, root: Path, accelerator) -> dict:
    """Questions per second (inference phase) at each batch size; runs interleave the batch sizes."""
    model = model_folder(root / "vqa-model", args.size, "vqav2", args.seed)
    data = fixture_writers().write_vqav2(
        root / "vqav2", num_questions=args.questions, num_images=args.vqa_images, seed=args.seed
    )

    def run(batch_size: int) -> dict:
        options = VQAv2Options(
            model=str(model),
            questions=data["questions"],
            images=data["images"],
            annotations=data["annotations"],
            output=root / "vqav2-results.json",
            batch_size=batch_size,
            num_workers=args.num_workers,
            dtype=args.dtype,
            attn_implementation=args.attn_implementation,
        )
        return evaluate_vqav2(options, accelerator)["timing"]

    for _ in range(args.warmup):
        for batch_size in args.batch_sizes:
            run(batch_size)
    timings = {batch_size: [] for batch_size in args.batch_sizes}
    for repeat in range(args.runs):
        for batch_size in args.batch_sizes if repeat % 2 == 0 else reversed(args.batch_sizes):
            timings[batch_size].append(run(batch_size))
    rows = {}
    for batch_size, runs in timings.items():
        rows[batch_size] = {
            "questions_per_second": statistics.median(t["questions_per_second"] for t in runs),
            "inference_s": statistics.median(t["inference"] for t in runs),
            "total_s": statistics.median(t["total"] for t in runs),
            "runs": len(runs),
        }
    return {"questions": args.questions, "images": args.vqa_images, "batch_sizes": rows}


def print_vqav2(result: dict) -> None:
    print(f"\n(a) VQAv2 harness: {result['questions']} questions on {result['images']} images per run")
    print(f"{'batch':>6}{'questions/s':>14}{'inference s':>13}{'run total s':>13}")
    for batch_size, row in result["batch_sizes"].items():
        print(f"{batch_size:>6}{row['questions_per_second']:>14.1f}{row['inference_s']:>13.2f}{row['total_s']:>13.2f}")


# --------------------------------------------------------------------------------------------------------------------
# (b) Retrieval
# --------------------------------------------------------------------------------------------------------------------


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than two distinct x)."""
    if len(set(xs)) < 2:
        return None
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def bench_retrieval(args: argparse.Namespace, root: Path, accelerator) -> dict:
    """Phase times and peak memory of one run at `--k`, then the re-ranking sweeps over k and over N."""
    model = model_folder(root / "retrieval-model", args.size, "retrieval", args.seed)
    per_image = args.captions // args.images
    data = fixture_writers().write_karpathy(
        root / "karpathy", num_images=args.images, captions_per_image=per_image, other_splits=0, seed=args.seed
    )
    PhaseTimer.device = args.device

    done = {}

    def run(k: int, limit: int | None = None) -> dict:
        """One harness run (the same one is not repeated: rows of both sweeps may share it)."""
        limit = None if limit is None or limit >= args.images else limit
        if (k, limit) in done:
            return done[k, limit]
        options = retrieval.RetrievalOptions(
            model=str(model),
            karpathy=data["karpathy"],
            images=data["images"],
            output=root / "retrieval-results.json",
            k=k,
            batch_size=args.embed_batch_size,
            rerank_batch_size=args.rerank_batch_size,
            num_workers=args.num_workers,
            dtype=args.dtype,
            attn_implementation=args.attn_implementation,
            limit=limit,
            cache_dir=root / "embedding-cache",
        )
        results = retrieval.evaluate_retrieval(options, accelerator)
        counts, timing = results["counts"], results["timing"]
        done[k, limit] = {
            "images": counts["images"],
            "captions": counts["captions"],
            "n": counts["images"] + counts["captions"],
            "k": k,
            "pairs": counts["candidate_pairs"],
            "embeddings_reused": results["embedding_cache"]["reused"],
            "seconds": {phase: timing.get(phase, 0.0) for phase in PHASES},
            "peak_mib": dict(PhaseTimer.last.peak_mib),
            "reranking_us_per_pair": 1e6 * timing["reranking"] / counts["candidate_pairs"],
            "r_mean": results["metrics"]["r_mean"],
        }
        return done[k, limit]

    with _patched_timer():
        phases = run(args.k)
        k_sweep = [run(k) for k in args.k_sweep]
        n_sweep = [run(args.sweep_k, limit=max(1, round(fraction * args.images))) for fraction in args.n_sweep]

    def fit(rows: list[dict], x: str, phase: str = "reranking") -> float | None:
        return loglog_slope([row[x] for row in rows], [max(row["seconds"][phase], 1e-9) for row in rows])

    all_rows = list(done.values())
    seconds_per_pair = sum(r["seconds"]["reranking"] * r["pairs"] for r in all_rows) / sum(
        r["pairs"] ** 2 for r in all_rows
    )  # least squares of time = c x pairs through the origin
    return {
        "gallery": {"images": args.images, "captions": args.captions},
        "phases": phases,
        "k_sweep": k_sweep,
        "n_sweep": n_sweep,
        "fit": {
            "slope_vs_k": fit(k_sweep, "k"),
            "slope_vs_n": fit(n_sweep, "n"),
            "slope_vs_pairs": fit(all_rows, "pairs"),
            "similarity_slope_vs_n": fit(n_sweep, "n", "similarity"),
            "us_per_pair": 1e6 * seconds_per_pair,
            "pairs_per_n_k": [r["pairs"] / ((r["images"] + r["captions"]) * r["k"]) for r in all_rows],
        },
    }


@contextlib.contextmanager
def _patched_timer():
    """The retrieval harness times its phases with `PhaseTimer` (which also measures their memory) while inside."""
    original = retrieval.Timer
    retrieval.Timer = PhaseTimer
    try:
        yield
    finally:
        retrieval.Timer = original


def _format_slope(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def print_retrieval(result: dict) -> None:
    phases = result["phases"]
    print(
        f"\n(b) retrieval harness: {phases['images']} images x {phases['captions']} captions, k={phases['k']}, "
        f"{phases['pairs']:,} candidate pairs re-ranked"
    )
    print(f"{'phase':<12}{'wall s':>9}{'peak MiB':>11}")
    for phase in PHASES:
        print(f"{phase:<12}{phases['seconds'][phase]:>9.2f}{format_mib(phases['peak_mib'].get(phase)):>11}")
    print(f"{'total':<12}{sum(phases['seconds'].values()):>9.2f}")
    print(
        f"\n{'sweep':<7}{'images':>7}{'captions':>9}{'k':>5}{'pairs':>10}{'rerank s':>10}{'µs/pair':>9}{'similarity s':>14}"
    )
    for name in ("k_sweep", "n_sweep"):
        for row in result[name]:
            print(
                f"{name[0]:<7}{row['images']:>7}{row['captions']:>9}{row['k']:>5}{row['pairs']:>10,}"
                f"{row['seconds']['reranking']:>10.2f}{row['reranking_us_per_pair']:>9.1f}"
                f"{row['seconds']['similarity']:>14.3f}"
            )
    fit = result["fit"]
    ratios = fit["pairs_per_n_k"]
    print(
        f"\nfit: re-ranking time ∝ k^{_format_slope(fit['slope_vs_k'])} at fixed N, "
        f"∝ N^{_format_slope(fit['slope_vs_n'])} at fixed k (N = images + captions; N·k gives 1, N² would give 2), "
        f"∝ pairs^{_format_slope(fit['slope_vs_pairs'])}; {fit['us_per_pair']:.1f} µs per pair; "
        f"pairs / (N·k) = {min(ratios):.2f}–{max(ratios):.2f}"
    )
    print(
        f"similarity (the captions x images matrix, N² entries): time ∝ N^{_format_slope(fit['similarity_slope_vs_n'])}"
    )


# --------------------------------------------------------------------------------------------------------------------


def quiet() -> None:
    """No progress bars (the harnesses' and transformers'), no warnings: the report is the output."""
    tqdm = runner.tqdm

    def silent_tqdm(*args, **kwargs):
        return tqdm(*args, **{**kwargs, "disable": True})

    runner.tqdm = silent_tqdm
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("towerzoo").setLevel(logging.ERROR)  # e.g. the fixture's over-long caption being truncated


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_torch(args)
    quiet()
    accelerator = accelerator_for(args.device)
    results = {
        "setup": {
            "size": args.size,
            "dtype": args.dtype,
            "attn_implementation": args.attn_implementation or "sdpa",
            "num_workers": args.num_workers,
            **environment(args),
            "memory_method": CUDA_MEMORY_METHOD if args.device.startswith("cuda") else CPU_MEMORY_METHOD,
        }
    }
    setup = results["setup"]
    print(
        f"evaluation harnesses, {args.size} model (random weights), {args.dtype}, {setup['attn_implementation']}, "
        f"{setup['device']}, {setup['threads']} threads, {args.num_workers} DataLoader workers; torch {setup['torch']}"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="towerzoo-bench-eval-") as root:
        if args.task in ("all", "vqav2"):
            results["vqav2"] = bench_vqav2(args, Path(root), accelerator)
            print_vqav2(results["vqav2"])
        if args.task in ("all", "retrieval"):
            results["retrieval"] = bench_retrieval(args, Path(root), accelerator)
            print_retrieval(results["retrieval"])
    print(f"\n({time.perf_counter() - started:.0f} s)")
    write_json(results, args.json_out)
    return results


if __name__ == "__main__":
    main()
