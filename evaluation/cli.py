"""`towerzoo eval TASK …`: the command-line side of the harnesses (run under `accelerate launch` for several GPUs)."""

import argparse
import sys
from pathlib import Path


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="towerzoo Hub folder or repo id")
    parser.add_argument("--output", type=Path, default=Path("results.json"), help="results JSON (written atomically)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers that decode images")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast precision")
    parser.add_argument("--attn-implementation", help="eager, sdpa (default), flex_attention, flash_attention_2, …")
    parser.add_argument("--limit", type=int, help="only the first N examples (quick runs)")
    parser.add_argument(
        "--work-dir", type=Path, help="where finished batches are kept for resuming (default: OUTPUT.work/)"
    )
    parser.add_argument("--keep-work-dir", action="store_true", help="keep finished batches after success")


def _accelerator():
    import torch
    from accelerate import Accelerator

    # without a GPU, Accelerator() ignores torchrun's processes unless told to run on CPU (then it uses gloo)
    return Accelerator(cpu=not torch.cuda.is_available())


def _vqav2(args: argparse.Namespace) -> int:
    from towerzoo.evaluation.runner import EvaluationError
    from towerzoo.evaluation.vqa import VQAResultsError, format_report, score
    from towerzoo.evaluation.vqav2 import VQAv2Options, evaluate_vqav2

    try:
        if args.predictions is not None:
            if args.annotations is None or args.questions is None:
                raise EvaluationError("--predictions needs --questions and --annotations to score against.")
            print(format_report(score(args.predictions, args.questions, args.annotations)))
            return 0
        missing = [f"--{name}" for name in ("model", "questions", "images") if getattr(args, name) is None]
        if missing:
            raise EvaluationError(f"towerzoo eval vqav2 needs {', '.join(missing)} (or --predictions to score).")
        options = VQAv2Options(
            model=args.model,
            questions=args.questions,
            images=args.images,
            annotations=args.annotations,
            output=args.output,
            submission=args.submission,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            dtype=args.dtype,
            attn_implementation=args.attn_implementation,
            limit=args.limit,
            skip_missing_images=args.skip_missing_images,
            work_dir=args.work_dir,
            keep_work_dir=args.keep_work_dir,
        )
        results = evaluate_vqav2(options, _accelerator())
    except (EvaluationError, VQAResultsError) as error:
        print(f"towerzoo eval vqav2: error: {error}", file=sys.stderr)
        return 2
    if results is not None:
        if "metrics" in results:
            print(format_report(results["metrics"]))
        print(f"wrote {args.output}" + (f" and {results['submission']}" if "submission" in results else ""))
    return 0


def add_eval_parser(commands) -> None:
    """`towerzoo eval` and its tasks, on the main parser's subcommands."""
    evaluate = commands.add_parser("eval", help="score a model on a benchmark (VQAv2, image-text retrieval)")
    tasks = evaluate.add_subparsers(dest="task", required=True)
    vqav2 = tasks.add_parser(
        "vqav2",
        help="VQAv2 accuracy (official metric), or the submission file for test splits",
        description="Answer the official VQAv2 questions and score them with the official accuracy; without "
        "--annotations, write the submission file. With --predictions, score an existing results file.",
    )
    _add_run_options(vqav2)
    vqav2.add_argument("--questions", type=Path, help="official questions JSON (v2_OpenEnded_mscoco_*_questions.json)")
    vqav2.add_argument("--annotations", type=Path, help="official annotations JSON (absent for test splits)")
    vqav2.add_argument("--images", type=Path, help="folder of the split's COCO images")
    vqav2.add_argument("--submission", type=Path, help="also write the official results file here")
    vqav2.add_argument("--predictions", type=Path, help="score this official results file instead of running a model")
    vqav2.add_argument(
        "--skip-missing-images",
        action="store_true",
        help="drop questions whose image is missing (counted in the results; not the official score)",
    )
    vqav2.set_defaults(handler=_vqav2)
