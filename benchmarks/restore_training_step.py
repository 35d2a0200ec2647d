"""Training step time and peak memory of RESTORE's prompt learning against fine-tuning all of CLIP, same size, same
batch.

  RESTORE      towerzoo's `RestoreForImageClassification` as `towerzoo finetune restore` trains it: CLIP frozen; the
               prompts of both towers (n context tokens in the first J layers), their maps into the vision tower and
               the two surgery blocks train; loss = cross-entropy over the class prompts + λ × the feature-shift
               consistency (prompt_gram).
  CLIP (full)  transformers' `CLIPModel` with every parameter trainable; loss = cross-entropy of `logits_per_image`
               over the same class prompts (CLIP's zero-shot classifier, fine-tuned end to end).

Both start from the same random CLIP weights (seeded; RESTORE loads them through `load_clip_weights`), take the same
images (random pixels) and the same class prompts (random tokens between <|startoftext|> and <|endoftext|>, padded to
CLIP's 77 positions, as CLIP's tokenizer and RESTORE's class prompts are), and step the same optimizer (SGD, momentum
0.9, weight decay 5e-4: the official RESTORE recipe), so the difference is what trains. A step is forward, backward,
optimizer step and zeroing the gradients. `--size base` is OpenAI CLIP ViT-B/16 at 224 px with RESTORE's paper setting
(2 tokens, depth 9, surgery width 2048); `--size tiny` is a seconds-long smoke test.

Every step is warmed up, then the runs of both are interleaved (order reversed every round); the median is reported.
Memory: on CPU, the peak number of bytes held by torch's CPU allocator during one step above what was allocated before
it (weights, optimizer state and inputs), from `torch.profiler`'s allocation events; on CUDA, `max_memory_allocated`
during one step (peak) and the same minus what was allocated before it (delta). The step measured is the last warm-up.

    python benchmarks/restore_training_step.py --size tiny              # CPU smoke test
    python benchmarks/restore_training_step.py --device cuda --dtype bf16 --json restore_step.json
"""

import argparse
import sys

import torch
import transformers
from _bench_utils import (
    add_common_arguments,
    check_common_arguments,
    environment,
    format_mib,
    interleaved_medians,
    peak_memory,
    setup_torch,
    write_json,
)

from towerzoo.conversions.clip_source import clip_tower_fields
from towerzoo.models.restore import RestoreConfig, RestoreForImageClassification

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
# transformers.CLIPConfig keyword arguments and RESTORE's own settings; "base" is OpenAI CLIP ViT-B/16 and the paper's
RESTORE_SIZES = {
    "base": {
        "clip": {
            "text_config": {"vocab_size": 49408, "max_position_embeddings": 77},
            "vision_config": {
                "hidden_size": 768,
                "intermediate_size": 3072,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "image_size": 224,
                "patch_size": 16,
            },
            "projection_dim": 512,
        },
        "restore": {"num_prompt_tokens": 2, "prompt_depth": 9, "surgery_hidden_size": 2048},
    },
    "tiny": {
        "clip": {
            "text_config": {
                "vocab_size": 1000,
                "bos_token_id": 998,
                "eos_token_id": 999,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 3,
                "num_attention_heads": 4,
                "max_position_embeddings": 77,
            },
            "vision_config": {
                "hidden_size": 96,
                "intermediate_size": 192,
                "num_hidden_layers": 3,
                "num_attention_heads": 4,
                "image_size": 32,
                "patch_size": 8,
            },
            "projection_dim": 64,
        },
        "restore": {"num_prompt_tokens": 2, "prompt_depth": 3, "surgery_hidden_size": 256},
    },
}
RESTORE, CLIP = "RESTORE", "CLIP (full)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.set_defaults(runs=None, text_length=77)
    parser.add_argument("--num-classes", type=int, default=24, help="class prompts per step (24: DTD's base classes)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="fp32, or bf16 autocast (fp32 weights)"
    )
    parser.add_argument("--attn-implementation", default="sdpa", help="attention backend of both models")
    args = parser.parse_args(argv)
    # A base-size CPU run stays within minutes on two cores: two timed runs.
    if args.runs is None:
        args.runs = 2 if args.size == "base" and not args.device.startswith("cuda") else 5
    check_common_arguments(parser, args)
    if args.batch_size < 1 or args.num_classes < 2:
        parser.error("--batch-size must be at least 1 and --num-classes at least 2")
    return args


# --------------------------------------------------------------------------------------------------------------------
# Models, inputs, steps
# --------------------------------------------------------------------------------------------------------------------


def build_models(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """CLIP (seeded random weights, all trainable) and RESTORE on a copy of the same weights (CLIP frozen)."""
    spec = RESTORE_SIZES[args.size]
    torch.manual_seed(args.seed)
    clip = transformers.CLIPModel(transformers.CLIPConfig(**spec["clip"]))
    fields = clip_tower_fields(clip.config.to_dict())
    names = [f"class {i}" for i in range(args.num_classes)]
    config = RestoreConfig(**fields, classnames=names, prompt_init="random", **spec["restore"])
    restore = RestoreForImageClassification(config)
    restore.load_clip_weights(clip.state_dict())
    models = {RESTORE: restore, CLIP: clip}
    for model in models.values():
        model.set_attn_implementation(args.attn_implementation)
        model.to(args.device).train()
    return models


def make_batch(config: transformers.CLIPConfig, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Images, labels and the class prompts: <|startoftext|>, 4-12 random tokens, <|endoftext|>, padding to 77."""
    generator = torch.Generator().manual_seed(args.seed)
    text = config.text_config
    input_ids = torch.full((args.num_classes, args.text_length), text.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for row in range(args.num_classes):
        words = int(torch.randint(4, 13, (1,), generator=generator))
        input_ids[row, 1 : 1 + words] = torch.randint(3, text.vocab_size - 2, (words,), generator=generator)
        input_ids[row, 0], input_ids[row, 1 + words] = text.bos_token_id, text.eos_token_id
        attention_mask[row, : 2 + words] = 1
    size = config.vision_config.image_size
    batch = {
        "pixel_values": torch.randn(args.batch_size, 3, size, size, generator=generator),
        "labels": torch.randint(0, args.num_classes, (args.batch_size,), generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }
    return {name: tensor.to(args.device) for name, tensor in batch.items()}


def restore_loss(model: RestoreForImageClassification, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def clip_loss(model: transformers.CLIPModel, batch: dict) -> torch.Tensor:
    inputs = {name: tensor for name, tensor in batch.items() if name != "labels"}
    return torch.nn.functional.cross_entropy(model(**inputs).logits_per_image, batch["labels"])


def training_step(model: torch.nn.Module, loss_fn, batch: dict, device: str, dtype: str):
    """One step of `model` on `batch`: forward (autocast for bf16), backward, SGD step, gradients zeroed."""
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=1e-4, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        with torch.autocast(device.split(":")[0], dtype=DTYPES[dtype], enabled=DTYPES[dtype] is not None):
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }


def measure(models: dict, args: argparse.Namespace, sync) -> dict[str, dict]:
    """Warm-up steps (the last one measured for memory: it holds the optimizer state of a steady run), then the
    interleaved timed steps."""
    batch = make_batch(models[CLIP].config, args)
    steps = {
        RESTORE: training_step(models[RESTORE], restore_loss, batch, args.device, args.dtype),
        CLIP: training_step(models[CLIP], clip_loss, batch, args.device, args.dtype),
    }
    memory = {}
    for name, step in steps.items():
        for _ in range(max(args.warmup, 1)):
            step()
        memory[name] = peak_memory(step, args.device)
    timings = interleaved_medians(steps, args.runs, 0, sync)
    return {name: {**timings[name], **memory[name], "parameters": parameter_counts(models[name])} for name in steps}


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def _ratio(numerator, denominator) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def print_report(results: dict) -> None:
    setup, variants = results["setup"], results["variants"]
    print(
        f"training step, {setup['size']}: {setup['model']}; batch {setup['batch_size']} images x {setup['num_classes']} "
        f"class prompts of {setup['text_length']} tokens, {setup['dtype']}, {setup['attn_implementation']} attention, "
        f"{setup['device']}, {setup['threads']} threads"
    )
    print(
        f"torch {setup['torch']}, transformers {setup['transformers']}, python {setup['python']}; median of "
        f"{setup['runs']} interleaved steps after {setup['warmup']} warm-up step(s); SGD momentum 0.9 for both"
    )
    has_delta = "delta_mib" in variants[RESTORE]
    print()
    header = f"{'variant':<13}{'trainable':>13}{'total params':>15}{'median s':>10}{'min s':>9}{'peak MiB':>11}"
    print(header + (f"{'delta MiB':>11}" if has_delta else ""))
    for name, row in variants.items():
        counts = row["parameters"]
        line = (
            f"{name:<13}{counts['trainable']:>13,}{counts['total']:>15,}{row['median_s']:>10.4f}{row['min_s']:>9.4f}"
            f"{format_mib(row['peak_mib']):>11}"
        )
        print(line + (f"{format_mib(row['delta_mib']):>11}" if has_delta else ""))
    print()
    ratios = results["ratios"]
    print(f"RESTORE / CLIP (full) step time: {ratios['time']:.2f}")
    for key, label in (("peak_mib", "peak memory"), ("delta_mib", "memory above the weights")):
        if ratios.get(key) is not None:
            print(f"RESTORE / CLIP (full) {label}: {ratios[key]:.2f}")
    print(f"memory: {setup['memory_method']}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sync = setup_torch(args)
    models = build_models(args)
    variants = measure(models, args, sync)
    vision, text = models[CLIP].config.vision_config, models[CLIP].config.text_config
    restore, setup = models[RESTORE].config, environment(args)
    results = {
        "setup": {
            "size": args.size,
            "model": (
                f"CLIP text {text.num_hidden_layers}x{text.hidden_size}, ViT {vision.num_hidden_layers}x"
                f"{vision.hidden_size} patch {vision.patch_size} at {vision.image_size} px; RESTORE "
                f"{restore.num_prompt_tokens} tokens x depth {restore.prompt_depth}, surgery width "
                f"{restore.surgery_hidden_size}"
            ),
            "batch_size": args.batch_size,
            "num_classes": args.num_classes,
            "text_length": args.text_length,
            "dtype": args.dtype,
            "attn_implementation": args.attn_implementation,
            **setup,
            "memory_method": setup["memory_method"].replace("one forward", "one training step"),
        },
        "variants": variants,
        "ratios": {
            "time": variants[RESTORE]["median_s"] / variants[CLIP]["median_s"],
            **{
                key: _ratio(variants[RESTORE].get(key), variants[CLIP].get(key))
                for key in ("peak_mib", "delta_mib")
                if key in variants[RESTORE]
            },
        },
    }
    print_report(results)
    write_json(results, args.json_out)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
