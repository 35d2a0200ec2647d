"""Tokens per second of Zipper's generation, ASR (speech units in, text out) and TTS (text in, speech units out), with
and without the KV cache.

With the cache (`use_cache=True`, what `generate` does by default) the input tower runs once, the cross-attention keys
and values are computed at the first step and kept, and the output tower attends to its own cached keys and values, so
each new token costs one position. Without it (`use_cache=False`) every step re-runs the input tower and the whole
output sequence so far. Both decode greedily with `min_new_tokens = max_new_tokens` (random weights would otherwise
stop at a random end-of-sentence token), so they produce the same number of tokens; the report says whether they
produced the same tokens (they must in fp32; bf16 rounding may let them drift apart).

Model: `--size small` (default) is two 4-layer Llama towers 256 wide (8 heads, MLP 1024; text vocabulary 1,000, speech
1,024 units + 3 specials) with cross-attention after every block: tiny next to the paper's, but big enough that the
attention and MLPs, not Python, set the time. `--size tiny` is a seconds-long smoke test. Random weights, gates at 0.8
(so the cross-attention's output matters), eval mode, torch.no_grad. Inputs: a batch of random speech (ASR,
`--speech-length` units, about 10 s at 40 units per second) or text (TTS, `--text-length` tokens), unpadded.

tokens/s = batch × new tokens / median seconds of one `generate` call; speed-up = cached tokens/s over uncached.
CPU by default in fp32; on CUDA bf16 weights unless `--dtype` says otherwise.

    python benchmarks/zipper_generation.py                         # CPU, fp32 (--threads 1 on a busy shared CPU)
    python benchmarks/zipper_generation.py --device cuda --json zipper_generation.json
    python benchmarks/zipper_generation.py --size tiny --runs 1    # smoke test
"""

import argparse

import torch
from _bench_utils import (
    check_common_arguments,
    describe_runs,
    environment,
    interleaved_medians,
    setup_torch,
    write_json,
)

from towerzoo.models.zipper import ZipperConfig, ZipperForConditionalGeneration

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TEXT_VOCAB, SPEECH_UNITS = 1000, 1024
# (width, layers, heads) of both towers
ZIPPER_SIZES = {"small": (256, 4, 8), "tiny": (64, 2, 4)}
TASKS = {"ASR": ("text", "speech"), "TTS": ("speech", "text")}  # task -> (output modality, input modality)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(ZIPPER_SIZES), default="small")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--speech-length", type=int, default=400, help="ASR input: speech units per example")
    parser.add_argument("--text-length", type=int, default=64, help="TTS input: text tokens per example")
    parser.add_argument("--asr-tokens", type=int, default=64, help="text tokens generated per example")
    parser.add_argument("--tts-tokens", type=int, default=256, help="speech units generated per example")
    parser.add_argument(
        "--runs", type=int, default=3, help="timed generate calls per variant (the median is reported)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed calls per variant first (default 1; 2 on CUDA)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="weights (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--attn-implementation", default="sdpa", help="sdpa, eager, flex_attention, …")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if args.dtype is None:
        args.dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    if min(args.batch_size, args.speech_length, args.text_length, args.asr_tokens, args.tts_tokens) < 1:
        parser.error("batch size, lengths and token counts must be at least 1")
    return args


def build_model(args: argparse.Namespace) -> ZipperForConditionalGeneration:
    width, layers, heads = ZIPPER_SIZES[args.size]

    def tower(vocab_size: int, bos: int, eos: int, pad: int) -> dict:
        return {
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "max_position_embeddings": 2048,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
        }

    config = ZipperConfig(
        text_config=tower(TEXT_VOCAB, 1, 2, 0),
        speech_config=tower(SPEECH_UNITS + 3, SPEECH_UNITS, SPEECH_UNITS + 1, SPEECH_UNITS + 2),
    )
    torch.manual_seed(args.seed)
    model = ZipperForConditionalGeneration(config).eval()
    model.set_attn_implementation(args.attn_implementation)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 0:  # the cross-attention and input-projection gates
                parameter.fill_(0.8)
    return model.to(args.device, DTYPES[args.dtype])


def generation_inputs(model, task: str, args: argparse.Namespace) -> dict:
    """The output tower's bos and a random, unpadded input of the other modality."""
    output, source = TASKS[task]
    generator = torch.Generator().manual_seed(args.seed)
    length = args.speech_length if source == "speech" else args.text_length
    high = SPEECH_UNITS if source == "speech" else TEXT_VOCAB
    source_ids = torch.randint(3, high, (args.batch_size, length), generator=generator)
    bos = model.tower(output).config.bos_token_id
    inputs = {
        "input_ids": torch.full((args.batch_size, 1), bos),
        "source_input_ids": source_ids,
        "source_attention_mask": torch.ones_like(source_ids),
    }
    return {name: value.to(args.device) for name, value in inputs.items()}


@torch.no_grad()
def measure(model, args: argparse.Namespace, sync) -> dict[str, dict]:
    results = {}
    for task, (output, _) in TASKS.items():
        inputs = generation_inputs(model, task, args)
        new_tokens = args.asr_tokens if task == "ASR" else args.tts_tokens

        def generate(use_cache: bool, inputs=inputs, output=output, new_tokens=new_tokens) -> torch.Tensor:
            return model.generate(
                **inputs,
                output_modality=output,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=use_cache,
            )

        same = torch.equal(generate(True), generate(False))
        timings = interleaved_medians(
            {"cache": lambda: generate(True), "no cache": lambda: generate(False)}, args.runs, args.warmup, sync
        )
        rates = {name: args.batch_size * new_tokens / row["median_s"] for name, row in timings.items()}
        results[task] = {
            "new_tokens": new_tokens,
            "timings": timings,
            "tokens_per_s": rates,
            "cache_speedup": rates["cache"] / rates["no cache"],
            "same_tokens": same,
        }
    return results


def print_report(results: dict) -> None:
    setup = results["setup"]
    width, layers, heads = ZIPPER_SIZES[setup["size"]]
    print(
        f"Zipper generation, {setup['size']}: two {layers}-layer towers {width} wide ({heads} heads), "
        f"{setup['parameters'] / 1e6:.1f}M parameters; batch {setup['batch_size']}, {setup['dtype']}, "
        f"{setup['attn_implementation']} attention, {setup['device']}, {setup['threads']} threads"
    )
    print(describe_runs(setup).replace("torch.no_grad, eval mode", "greedy generate, torch.no_grad"))
    print(f"ASR: {setup['speech_length']} speech units in; TTS: {setup['text_length']} text tokens in")
    print()
    print(f"{'task':<6}{'new tokens':>12}{'cache tok/s':>14}{'no-cache tok/s':>17}{'speed-up':>10}{'same tokens':>13}")
    for task, row in results["tasks"].items():
        rates = row["tokens_per_s"]
        print(
            f"{task:<6}{row['new_tokens']:>12}{rates['cache']:>14.1f}{rates['no cache']:>17.1f}"
            f"{row['cache_speedup']:>9.2f}x{'yes' if row['same_tokens'] else 'no':>13}"
        )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sync = setup_torch(args)
    model = build_model(args)
    setup = {
        **{key: value for key, value in environment(args).items() if key != "memory_method"},
        **{key: getattr(args, key) for key in ("size", "batch_size", "dtype", "attn_implementation")},
        **{key: getattr(args, key) for key in ("speech_length", "text_length")},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    results = {"setup": setup, "tasks": measure(model, args, sync)}
    print_report(results)
    write_json(results, args.json_out)
    return results


if __name__ == "__main__":
    main()
