"""Frames per second of VidLA's video tower, and how its cost grows with the number of frames: the blocked attention
layout against the dense one and against CLIP run frame by frame.

VidLA (Rizve et al., CVPR 2024) runs CLIP's ViT on every frame, adds a spatially-local temporal attention in every
block and U·V multi-scale temporal ([MST]) tokens that attend across frames. This times `VidLAModel.get_video_features`
(towerzoo's, random weights, eval mode, torch.no_grad) on clips of `--frames` frames, at `--size base` (the paper's
B/16 tower: CLIP ViT-B/16 at 224 px, U = 3 levels of V = 4 [MST] tokens, r = 2, temporal attention on) or
`--size tiny` (a seconds-long smoke test). Three variants, all timed on the same inputs:

  VidLA blocked   the paper's tower, `attention_layout="blocked"` (the default): each frame's patches attend to their
                  frame and the [CLS]/[MST] tokens, all frames batched without a mask; the 1 + U·V [CLS]/[MST] rows
                  attend to their allowed keys. Linear in T apart from the temporal attention's T^2 per position.
  VidLA dense     the same weights, `attention_layout="dense"`: one attention over all 1 + U·V + T·N tokens under the
                  VidLA mask, O((T·N)^2) (not run on flash backends, which take no such mask).
  per-frame CLIP  the same CLIP weights without the temporal attention and [MST] tokens, on each frame alone (the T
                  frames of a clip as a batch of one-frame clips, no mask, the pooled states averaged over frames):
                  plain CLIP's cost, linear in T.

Every (variant, frames) pair is warmed up, then the runs of all pairs are interleaved (order reversed every round);
the median is reported. Growth with frames: the time per frame at the most frames over that at the fewest (1 when the
cost is linear in T), and the exponent a of a least-squares fit time ∝ T^a over all frame counts (1 linear, 2
quadratic). After the timings, blocked and dense video features at the fewest frames are compared (they compute the
same function; the largest difference relative to the features' scale is printed).

Memory: on CPU, the peak number of bytes held by torch's CPU allocator during one forward, above what was allocated
before it (weights and inputs), read from `torch.profiler`'s allocation events. On CUDA, `torch.cuda.max_memory_allocated`
(peak) and the same minus what was allocated before the forward (delta). The forward measured is the last warm-up.

    python benchmarks/bench_vidla.py                        # base, fp32 CPU, batch 1, 8/12/32 frames, 2 runs
    python benchmarks/bench_vidla.py --device cuda --dtype bf16 --json vidla.json
    python benchmarks/bench_vidla.py --size tiny             # a seconds-long smoke test
"""

import argparse
import math
import sys

import torch
from _bench_utils import (
    add_common_arguments,
    check_common_arguments,
    describe_runs,
    environment,
    format_mib,
    interleaved_medians,
    peak_memory,
    setup_torch,
    write_json,
)

from towerzoo.models.vidla import VidLAConfig, VidLAModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# VidLAConfig keyword arguments; "base" is the paper's B/16 model (VidLAConfig's defaults).
VIDLA_SIZES = {
    "base": {"text_config": {}, "vision_config": {}},
    "tiny": {
        "text_config": {
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "bos_token_id": 97,
            "eos_token_id": 98,
        },
        "vision_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        "projection_dim": 32,
    },
}
BLOCKED, DENSE, PER_FRAME = "VidLA blocked", "VidLA dense", "per-frame CLIP"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.set_defaults(runs=None, batch_size=None)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 12, 32], help="frames per clip to time")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and pixel values")
    parser.add_argument(
        "--attn-implementation",
        default="sdpa",
        help="attention backend (sdpa, eager, flex_attention, flash_attention_2/3/4; flash skips the dense layout)",
    )
    args = parser.parse_args(argv)
    cpu_base = args.size == "base" and not args.device.startswith("cuda")
    # A base-size CPU run stays within a few minutes on two cores: batch 1, two timed runs.
    if args.runs is None:
        args.runs = 2 if cpu_base else 5
    if args.batch_size is None:
        args.batch_size = 1 if cpu_base else 4
    check_common_arguments(parser, args)
    if args.batch_size < 1 or min(args.frames) < 1:
        parser.error("--batch-size and --frames must be at least 1")
    args.frames = sorted(set(args.frames))
    return args


# --------------------------------------------------------------------------------------------------------------------
# Models and inputs
# --------------------------------------------------------------------------------------------------------------------


def build_config(size: str, max_frames: int, **vision_overrides) -> VidLAConfig:
    spec = VIDLA_SIZES[size]
    vision = {**spec["vision_config"], "num_frames": max_frames, **vision_overrides}
    extra = {k: v for k, v in spec.items() if k not in ("text_config", "vision_config")}
    return VidLAConfig(text_config=dict(spec["text_config"]), vision_config=vision, **extra)


def build_models(args: argparse.Namespace) -> dict[str, VidLAModel]:
    """VidLA in both attention layouts (the same weights) and CLIP without the temporal parts (random weights, same
    seed), eval, on the device. The dense layout is left out on flash backends, which cannot take its mask."""
    max_frames = max(args.frames)
    configs = {
        BLOCKED: build_config(args.size, max_frames),
        DENSE: build_config(args.size, max_frames, attention_layout="dense"),
        PER_FRAME: build_config(args.size, max_frames, temporal_attention=False, mst_num_levels=0),
    }
    if "flash" in args.attn_implementation:
        del configs[DENSE]
    models = {}
    for name, config in configs.items():
        torch.manual_seed(args.seed)
        model = VidLAModel(config).eval()
        model.set_attn_implementation(args.attn_implementation)
        models[name] = model.to(args.device, DTYPES[args.dtype])
    return models


def video_parameters(model: VidLAModel) -> int:
    """Parameters of the video tower and its projection (what a forward here runs)."""
    modules = (model.video_model, model.visual_projection)
    return sum(p.numel() for module in modules for p in module.parameters())


def make_clips(config: VidLAConfig, batch_size: int, frames: int, seed: int) -> torch.Tensor:
    vision = config.vision_config
    generator = torch.Generator().manual_seed(seed + frames)
    size = vision.image_size
    return torch.randn(batch_size, frames, vision.num_channels, size, size, generator=generator)


def per_frame_clip(model: VidLAModel, clips: torch.Tensor) -> torch.Tensor:
    """CLIP on every frame alone (a batch of one-frame clips, so no mask), projected, averaged over the frames."""
    batch_size, frames = clips.shape[:2]
    features = model.get_video_features(clips.flatten(0, 1).unsqueeze(1))
    return features.unflatten(0, (batch_size, frames)).mean(1)


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------


def growth(frames: list[int], seconds: list[float]) -> dict[str, float | None]:
    """Time per frame at the most frames over that at the fewest, and a in a least-squares fit time ∝ T^a."""
    if len(frames) < 2:
        return {"per_frame_ratio": None, "exponent": None}
    xs, ys = [math.log(t) for t in frames], [math.log(s) for s in seconds]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    per_frame = (seconds[-1] / frames[-1]) / (seconds[0] / frames[0])
    return {"per_frame_ratio": per_frame, "exponent": slope}


@torch.no_grad()
def measure(models: dict[str, VidLAModel], args: argparse.Namespace, sync) -> dict[str, dict]:
    """Interleaved timings of every (variant, frames) pair, then one forward of each for its peak memory."""
    config = models[BLOCKED].config
    dtype = DTYPES[args.dtype]
    clips = {t: make_clips(config, args.batch_size, t, args.seed).to(args.device, dtype) for t in args.frames}
    calls = {
        name: (lambda clip, model=model: model.get_video_features(clip))
        for name, model in models.items()
        if name != PER_FRAME
    }
    calls[PER_FRAME] = lambda clip: per_frame_clip(models[PER_FRAME], clip)
    fns = {
        (name, t): (lambda call=call, clip=clips[t]: call(clip)) for name, call in calls.items() for t in args.frames
    }
    # The last warm-up forward of each pair is the one whose peak memory is read (a base-size CPU forward takes
    # seconds to a minute, so no forward is spent on memory alone); with no warm-up, one forward after the timings.
    memory = {}
    if args.warmup:
        for key, fn in fns.items():
            for _ in range(args.warmup - 1):
                fn()
            memory[key] = peak_memory(fn, args.device)
    timings = interleaved_medians(fns, args.runs, 0, sync)
    results = {}
    for name in calls:
        rows = {}
        for t in args.frames:
            key = (name, t)
            row = {**timings[key], **(memory[key] if key in memory else peak_memory(fns[key], args.device))}
            row["frames_per_s"] = args.batch_size * t / row["median_s"]
            rows[str(t)] = row
        medians = [rows[str(t)]["median_s"] for t in args.frames]
        results[name] = {"frames": rows, "growth": growth(args.frames, medians)}
    return results


@torch.no_grad()
def layouts_agree(models: dict[str, VidLAModel], args: argparse.Namespace) -> float | None:
    """max |blocked - dense| over the video features at the fewest frames, relative to the features' largest value."""
    if DENSE not in models:
        return None
    clip = make_clips(models[BLOCKED].config, args.batch_size, args.frames[0], args.seed)
    clip = clip.to(args.device, DTYPES[args.dtype])
    blocked, dense = (models[name].get_video_features(clip).float() for name in (BLOCKED, DENSE))
    return ((blocked - dense).abs().max() / dense.abs().max()).item()


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_report(results: dict) -> None:
    setup, variants = results["setup"], results["variants"]
    print(
        f"VidLA video tower, {setup['size']}: {setup['tower']}; batch {setup['batch_size']}, {setup['dtype']}, "
        f"{setup['attn_implementation']} attention, {setup['device']}, {setup['threads']} threads"
    )
    print(f"parameters (video tower + projection): {setup['parameters']}")
    print(describe_runs(setup))
    frames = setup["frames"]
    has_delta = "delta_mib" in variants[BLOCKED]["frames"][str(frames[0])]
    print()
    header = f"{'variant':<16}{'frames':>7}{'tokens':>8}{'median s':>10}{'min s':>9}{'frames/s':>10}{'peak MiB':>12}"
    print(header + (f"{'delta MiB':>12}" if has_delta else ""))
    for name, variant in variants.items():
        for t in frames:
            row = variant["frames"][str(t)]
            line = (
                f"{name:<16}{t:>7}{setup['tokens'][name][str(t)]:>8,}{row['median_s']:>10.4f}{row['min_s']:>9.4f}"
                f"{row['frames_per_s']:>10.1f}{format_mib(row['peak_mib']):>12}"
            )
            print(line + (f"{format_mib(row['delta_mib']):>12}" if has_delta else ""))
    if len(frames) > 1:
        lo, hi = frames[0], frames[-1]
        print()
        print(f"growth with frames (time per frame at {hi} / at {lo} frames; a in time ∝ T^a over {frames}):")
        for name, variant in variants.items():
            g = variant["growth"]
            print(f"  {name:<16}per-frame ratio {_fmt(g['per_frame_ratio'])}   exponent a {_fmt(g['exponent'])}")
    print()
    for label, rows in results["ratios"].items():
        print(f"{label + ' time:':<38}" + ", ".join(f"{t} frames {_fmt(r)}" for t, r in rows))
    if results["layouts_max_rel_diff"] is not None:
        print(
            f"blocked vs dense video features at {frames[0]} frames: max |diff| {results['layouts_max_rel_diff']:.2g} of scale"
        )
    print(f"memory: {setup['memory_method']}")


def tokens_per_clip(config: VidLAConfig, frames: int, per_frame: bool = False) -> int:
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return 1 + patches if per_frame else 1 + vision.num_mst_tokens + frames * patches


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sync = setup_torch(args)
    models = build_models(args)
    vision = models[BLOCKED].config.vision_config
    variants = measure(models, args, sync)

    def ratio(name: str, over: str) -> list[tuple[int, float]]:
        return [
            (t, variants[name]["frames"][str(t)]["median_s"] / variants[over]["frames"][str(t)]["median_s"])
            for t in args.frames
        ]

    ratios = {"VidLA blocked / per-frame CLIP": ratio(BLOCKED, PER_FRAME)}
    if DENSE in variants:
        ratios["VidLA dense / per-frame CLIP"] = ratio(DENSE, PER_FRAME)
        ratios["VidLA dense / VidLA blocked"] = ratio(DENSE, BLOCKED)
    results = {
        "setup": {
            "size": args.size,
            "tower": (
                f"ViT {vision.num_hidden_layers} layers of width {vision.hidden_size}, patch {vision.patch_size} at "
                f"{vision.image_size} px; U={vision.mst_num_levels} levels x V={vision.mst_tokens_per_level} [MST] "
                f"tokens, r={vision.mst_temporal_scale}, temporal attention "
                f"{'on' if vision.temporal_attention else 'off'}"
            ),
            "batch_size": args.batch_size,
            "frames": args.frames,
            "dtype": args.dtype,
            "attn_implementation": args.attn_implementation,
            "parameters": {name: video_parameters(model) for name, model in models.items()},
            "tokens": {
                name: {str(t): tokens_per_clip(model.config, t, name == PER_FRAME) for t in args.frames}
                for name, model in models.items()
            },
            **environment(args),
        },
        "variants": variants,
        "ratios": ratios,
        "layouts_max_rel_diff": layouts_agree(models, args),
    }
    print_report(results)
    write_json(results, args.json_out)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
