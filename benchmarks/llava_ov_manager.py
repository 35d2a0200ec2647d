"""Latency and peak memory of LLaVA-OV-Manager against transformers' LLaVA-OneVision at the same size and weights:
what the managers cost at inference.

Both models hold the same weights (LLaVA-OV-Manager adds the managers, drawn N(0, 0.1²) so they act, and the layer
embeddings). Each answers one prompt: one image of `--image-height` x `--image-width` pixels (default 384 x 768: the
base view and two AnyRes tiles of 384 px, 2,214 image tokens with the row newlines), between random text tokens. The
managers' cost is in the prefill (the vision tower keeps the managed layers' hidden states, the shared projector runs
once more per managed layer, the managers add their weighted experts before their language-model layers); decode steps
run the plain language model on the KV cache.

Timed, greedily (`min_new_tokens = max_new_tokens`, so both produce the same number of tokens):
- prefill: `generate(max_new_tokens=1)`: vision tower, projector, managers and the language model over the prompt;
- generation: `generate(max_new_tokens=--new-tokens)`; decode per token = (generation - prefill) / (new tokens - 1).
Peak memory: one generation call (see `_bench_utils.peak_memory` for how it is measured on CPU and CUDA).

Model: `--size small` (default) is SigLIP-like (12 layers, 384 wide, 6 heads, MLP 1536, 14-px patches of 384-px views)
with a Qwen2-like language model (12 layers, 512 wide, 8 heads, 2 key-value heads, MLP 2048, Qwen2's 151,936-token
vocabulary); managers in the released layout scaled to these depths (`manager_layers`: vision hidden states 6 … 11,
managers before language-model layers 0, 4 and 8). `--size tiny` is a seconds-long smoke test. Random weights, eval
mode, torch.no_grad; CPU fp32 by default, bf16 weights on CUDA unless `--dtype` says otherwise.

    python benchmarks/llava_ov_manager.py                       # CPU, fp32 (--threads 1 on a busy shared CPU)
    python benchmarks/llava_ov_manager.py --device cuda --json llava_ov_manager.json
    python benchmarks/llava_ov_manager.py --size tiny --runs 1  # smoke test
"""

import argparse

import torch
import transformers
from _bench_utils import (
    check_common_arguments,
    describe_runs,
    environment,
    format_mib,
    interleaved_medians,
    peak_memory,
    setup_torch,
    write_json,
)

from towerzoo.conversions.llava_ov_manager_from_llava_ov import manager_layers
from towerzoo.models.llava_ov_manager import LlavaOnevisionManagerConfig, LlavaOnevisionManagerForConditionalGeneration

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (vision: layers, width, heads, image size; language model: layers, width, heads, key-value heads, vocabulary)
MODEL_SIZES = {"small": ((12, 384, 6, 384), (12, 512, 8, 2, 151936)), "tiny": ((3, 32, 4, 28), (4, 32, 4, 2, 100))}
PATCH_SIZE = 14
TEXT_BEFORE, TEXT_AFTER = 14, 24  # prompt tokens around the image (ChatML system + user turn, question + post-prompt)
MODELS = ("LLaVA-OneVision", "LLaVA-OV-Manager")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(MODEL_SIZES), default="small")
    parser.add_argument("--image-height", type=int, help="pixels (default: one view)")
    parser.add_argument("--image-width", type=int, help="pixels (default: two views)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per answer")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per generate call (the same prompt)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per model and phase (the median is reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 1; 2 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="weights (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--attn-implementation", default="sdpa", help="sdpa, eager, flex_attention, …")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    view = MODEL_SIZES[args.size][0][3]
    args.image_height = args.image_height or view
    args.image_width = args.image_width or 2 * view
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if min(args.image_height, args.image_width, args.batch_size, args.runs) < 1 or args.new_tokens < 2:
        parser.error("sizes, batch size and runs must be at least 1, --new-tokens at least 2")
    return args


def build_models(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """LLaVA-OneVision and LLaVA-OV-Manager with the same weights (managers N(0, 0.1²)), on the device."""
    (vision_layers, vision_width, vision_heads, view), (layers, width, heads, kv_heads, vocab) = MODEL_SIZES[args.size]
    fields = {
        "text_config": {
            "model_type": "qwen2",
            "hidden_size": width,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "intermediate_size": 4 * width,
            "vocab_size": vocab,
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": vision_width,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": vision_heads,
            "intermediate_size": 4 * vision_width,
            "image_size": view,
            "patch_size": PATCH_SIZE,
        },
        "image_token_index": vocab - 1,
        "image_grid_pinpoints": [[view * h, view * w] for h in (1, 2) for w in (1, 2)],
    }
    torch.manual_seed(args.seed)
    managed = LlavaOnevisionManagerForConditionalGeneration(
        LlavaOnevisionManagerConfig(**fields, **manager_layers(vision_layers, layers))
    ).eval()
    with torch.no_grad():
        for manager in managed.model.managers.values():
            manager.scores.normal_(0, 0.1)
    plain = transformers.LlavaOnevisionForConditionalGeneration(transformers.LlavaOnevisionConfig(**fields)).eval()
    plain.load_state_dict(managed.state_dict(), strict=False)
    models = dict(zip(MODELS, (plain, managed), strict=True))
    for model in models.values():
        model.set_attn_implementation(args.attn_implementation)
        model.to(args.device, DTYPES[args.dtype])
    return models


def prompt(model, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """One random image (AnyRes views of random pixels) between random text tokens, as the processor lays it out."""
    config = model.config
    generator = torch.Generator().manual_seed(args.seed)
    view = config.vision_config.image_size
    image_sizes = torch.tensor([[args.image_height, args.image_width]])
    best = transformers.image_processing_utils.select_best_resolution(
        (args.image_height, args.image_width), config.image_grid_pinpoints
    )
    views = 1 + (best[0] // view) * (best[1] // view)
    pixel_values = torch.randn(1, views, 3, view, view, generator=generator)
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values, image_sizes).pooler_output
    image = torch.full((1, sum(f.shape[0] for f in features)), config.image_token_id)
    text = torch.randint(0, config.image_token_id, (1, TEXT_BEFORE + TEXT_AFTER), generator=generator)
    input_ids = torch.cat([text[:, :TEXT_BEFORE], image, text[:, TEXT_BEFORE:]], dim=1)
    inputs = {"input_ids": input_ids, "pixel_values": pixel_values, "image_sizes": image_sizes}
    dtype = DTYPES[args.dtype]
    return {
        name: value.repeat(args.batch_size, *[1] * (value.ndim - 1)).to(
            args.device, dtype if value.is_floating_point() else None
        )
        for name, value in inputs.items()
    }


@torch.no_grad()
def measure(models: dict, args: argparse.Namespace, sync) -> dict:
    inputs = prompt(models[MODELS[0]], args)

    def generate(model, new_tokens: int):
        return lambda: model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    calls = {}
    for name, model in models.items():
        calls[f"{name} prefill"] = generate(model, 1)
        calls[f"{name} generation"] = generate(model, args.new_tokens)
    timings = interleaved_medians(calls, args.runs, args.warmup, sync)
    results = {"prompt_tokens": inputs["input_ids"].shape[1], "image_tokens": None, "models": {}}
    results["image_tokens"] = int((inputs["input_ids"][0] == models[MODELS[0]].config.image_token_id).sum())
    for name, model in models.items():
        prefill, total = timings[f"{name} prefill"]["median_s"], timings[f"{name} generation"]["median_s"]
        results["models"][name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "prefill_s": prefill,
            "generation_s": total,
            "decode_ms_per_token": 1000 * (total - prefill) / (args.new_tokens - 1),
            "memory": peak_memory(calls[f"{name} generation"], args.device),
            "timings": {phase: timings[f"{name} {phase}"] for phase in ("prefill", "generation")},
        }
    plain, managed = (results["models"][name] for name in MODELS)
    results["manager_parameters"] = sum(p.numel() for n, p in models[MODELS[1]].named_parameters() if "manager" in n)
    results["ratios"] = {
        "prefill": managed["prefill_s"] / plain["prefill_s"],
        "generation": managed["generation_s"] / plain["generation_s"],
        "decode_per_token": managed["decode_ms_per_token"] / plain["decode_ms_per_token"],
        "peak_memory": None
        if plain["memory"]["peak_mib"] is None or managed["memory"]["peak_mib"] is None
        else managed["memory"]["peak_mib"] / plain["memory"]["peak_mib"],
    }
    return results


def print_report(results: dict, args: argparse.Namespace) -> None:
    setup = results["setup"]
    (vision_layers, vision_width, _, view), (layers, width, _, _, vocab) = MODEL_SIZES[args.size]
    plain = results["models"][MODELS[0]]
    print(
        f"LLaVA-OV-Manager vs LLaVA-OneVision, {args.size}: vision {vision_layers} layers x {vision_width} "
        f"({view}-px views), language model {layers} layers x {width} (vocabulary {vocab:,}); "
        f"{plain['parameters'] / 1e6:.1f}M parameters + {results['manager_parameters']:,} manager parameters "
        f"({100 * results['manager_parameters'] / plain['parameters']:.3f}%)"
    )
    print(
        f"one {args.image_height}x{args.image_width} image: {results['image_tokens']:,} image tokens in a "
        f"{results['prompt_tokens']:,}-token prompt; batch {args.batch_size}; {args.new_tokens} new tokens; "
        f"{args.dtype}, {args.attn_implementation} attention, {setup['device']}, {setup['threads']} threads"
    )
    print(describe_runs(setup).replace("torch.no_grad, eval mode", "greedy generate, torch.no_grad"))
    print()
    print(f"{'model':<18}{'prefill s':>11}{'generation s':>14}{'decode ms/token':>17}{'peak MiB':>11}")
    for name, row in results["models"].items():
        print(
            f"{name:<18}{row['prefill_s']:>11.3f}{row['generation_s']:>14.3f}{row['decode_ms_per_token']:>17.1f}"
            f"{format_mib(row['memory']['peak_mib']):>11}"
        )
    ratios = results["ratios"]
    memory = "n/a" if ratios["peak_memory"] is None else f"{ratios['peak_memory']:.3f}x"
    print(
        f"{'manager / plain':<18}{ratios['prefill']:>10.3f}x{ratios['generation']:>13.3f}x"
        f"{ratios['decode_per_token']:>16.3f}x{memory:>11}"
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sync = setup_torch(args)
    models = build_models(args)
    results = {"setup": environment(args), **measure(models, args, sync)}
    results["setup"].update(
        {key: getattr(args, key) for key in ("size", "batch_size", "new_tokens", "dtype", "attn_implementation")}
    )
    results["setup"]["image_size"] = [args.image_height, args.image_width]
    print_report(results, args)
    write_json(results, args.json_out)
    return results


if __name__ == "__main__":
    main()
