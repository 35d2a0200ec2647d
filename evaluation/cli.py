"""`towerzoo eval TASK …`: the command-line side of the harnesses (run under `accelerate launch` for several GPUs)."""

import argparse
import dataclasses
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


def _options(args: argparse.Namespace, options_class, required: tuple[str, ...], alternative: str = ""):
    """The task's options dataclass from the parsed arguments of the same names; names the missing required ones."""
    from towerzoo.evaluation.runner import EvaluationError

    missing = [f"--{name.replace('_', '-')}" for name in required if getattr(args, name) is None]
    if missing:
        raise EvaluationError(f"towerzoo eval {args.task} needs {', '.join(missing)}{alternative}.")
    names = {field.name for field in dataclasses.fields(options_class)}
    return options_class(**{name: value for name, value in vars(args).items() if name in names})


def _run_task(args: argparse.Namespace, run) -> int:
    """Run `run(args)` and print a task's bad-input errors as one line (exit status 2)."""
    from towerzoo.evaluation.runner import EvaluationError
    from towerzoo.evaluation.vqa import VQAResultsError

    try:
        return run(args)
    except (EvaluationError, VQAResultsError) as error:
        print(f"towerzoo eval {args.task}: error: {error}", file=sys.stderr)
        return 2


def _vqav2(args: argparse.Namespace) -> int:
    from towerzoo.evaluation.runner import EvaluationError
    from towerzoo.evaluation.vqa import format_report, score
    from towerzoo.evaluation.vqav2 import VQAv2Options, evaluate_vqav2

    if args.predictions is not None:
        if args.annotations is None or args.questions is None:
            raise EvaluationError("--predictions needs --questions and --annotations to score against.")
        print(format_report(score(args.predictions, args.questions, args.annotations)))
        return 0
    options = _options(args, VQAv2Options, ("model", "questions", "images"), " (or --predictions to score)")
    results = evaluate_vqav2(options, _accelerator())
    if results is not None:
        if "metrics" in results:
            print(format_report(results["metrics"]))
        print(f"wrote {args.output}" + (f" and {results['submission']}" if "submission" in results else ""))
    return 0


def _mllm_vqa(args: argparse.Namespace) -> int:
    from towerzoo.evaluation.mllm_vqa import MLLMVQAOptions, evaluate_mllm_vqa
    from towerzoo.evaluation.vqa import format_report

    results = evaluate_mllm_vqa(_options(args, MLLMVQAOptions, ("model", "questions", "images")), _accelerator())
    if results is not None:
        metrics = results.get("metrics")
        if metrics and results["format"] == "vqav2":
            print(format_report(metrics))
        elif metrics:
            print(f"accuracy {metrics['accuracy']:.2f} (no option letter in {metrics['no_letter']} answers)")
        print(f"wrote {args.output}" + (f" and {results['submission']}" if "submission" in results else ""))
    return 0


def _retrieval(args: argparse.Namespace) -> int:
    from towerzoo.evaluation.retrieval import RetrievalOptions, evaluate_retrieval

    options = _options(args, RetrievalOptions, ("model", "karpathy", "images"))
    results = evaluate_retrieval(options, _accelerator())
    if results is not None:
        print(" ".join(f"{name} {value:.2f}" for name, value in results["metrics"].items()))
        print(f"wrote {args.output}")
    return 0


def _video_retrieval(args: argparse.Namespace) -> int:
    from towerzoo.evaluation.video_retrieval import VideoRetrievalOptions, evaluate_video_retrieval

    options = _options(args, VideoRetrievalOptions, ("model", "dataset", "annotations", "videos"))
    results = evaluate_video_retrieval(options, _accelerator())
    if results is not None:
        print(" ".join(f"{name} {value:.2f}" for name, value in results["metrics"].items()))
        if "dual_softmax_metrics" in results:
            dual = {k: v for k, v in results["dual_softmax_metrics"].items() if k != "transductive"}
            print("dual softmax (transductive): " + " ".join(f"{name} {value:.2f}" for name, value in dual.items()))
        print(f"wrote {args.output}")
    return 0


def _classification(args: argparse.Namespace) -> int:
    from towerzoo.evaluation.classification import ClassificationOptions, evaluate_classification

    options = _options(args, ClassificationOptions, ("model", "data"))
    results = evaluate_classification(options, _accelerator())
    if results is not None:
        print(" ".join(f"{name} {value:.2f}" for name, value in results["metrics"].items()))
        print(f"wrote {args.output}")
    return 0


def _speech(args: argparse.Namespace) -> int:
    """`asr` and `tts`: run the harness and print its error rates (and RTFx)."""
    if args.task == "asr":
        from towerzoo.evaluation.asr import ASROptions as options_class
        from towerzoo.evaluation.asr import evaluate_asr as evaluate

        required = ("model", "data")
    else:
        from towerzoo.evaluation.tts import TTSOptions as options_class
        from towerzoo.evaluation.tts import evaluate_tts as evaluate

        required = ("model", "data", "asr_model")
    results = evaluate(_options(args, options_class, required), _accelerator())
    if results is not None:
        print(" ".join(f"{name} {value:.2f}" for name, value in results["metrics"].items()))
        print(f"wrote {args.output}")
    return 0


def _add_speech_options(parser: argparse.ArgumentParser, max_new_tokens: int, output: str) -> None:
    """The data and decoding options `asr` and `tts` share."""
    parser.add_argument(
        "--data", type=Path, help="LibriSpeech-style folder (<speaker>/<chapter>/*.trans.txt) or audiofolder"
    )
    parser.add_argument("--layout", choices=("librispeech", "audiofolder"), default="librispeech")
    parser.add_argument(
        "--split", help="subfolder of --data to read (LibriSpeech: e.g. test-clean; audiofolder: e.g. test)"
    )
    parser.add_argument("--num-beams", type=int, default=1, help="beam search width (1: greedy)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=max_new_tokens, help=f"most {output} tokens generated per utterance"
    )
    parser.add_argument(
        "--average",
        choices=("corpus", "utterance"),
        default="corpus",
        help="corpus WER (total errors / total words, default) or the mean of per-utterance WERs",
    )


def add_parsers(commands) -> None:
    """`towerzoo eval` and its tasks, on the main parser's subcommands."""
    evaluate = commands.add_parser(
        "eval",
        help="score a model on a benchmark (VQAv2, MLLM VQA, image-text retrieval, video-text retrieval, "
        "classification, ASR, TTS)",
    )
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
    vqav2.set_defaults(handler=lambda args: _run_task(args, _vqav2))

    mllm_vqa = tasks.add_parser(
        "mllm-vqa",
        help="short-answer (VQAv2 accuracy) or multiple-choice VQA with a generative MLLM (LLaVA-OneVision's prompts)",
        description="Answer each question with an image-text-to-text model (LLaVA-OV-Manager, LLaVA-OneVision, ...) "
        "prompted as LLaVA-OneVision's evaluation does (Qwen2 ChatML, the format's post-prompt) and decoded greedily "
        "with left padding. vqav2: the official questions/annotations/images, scored with the official VQAv2 accuracy "
        "(or the submission file without annotations). multiple-choice: JSONL or a JSON list of {question, image, "
        "choices, answer}, scored by the option letter found in each answer. --limit counts questions.",
    )
    _add_run_options(mllm_vqa)
    mllm_vqa.set_defaults(batch_size=8)
    mllm_vqa.add_argument(
        "--questions", type=Path, help="VQAv2 questions JSON, or the multiple-choice questions (JSONL or JSON list)"
    )
    mllm_vqa.add_argument("--annotations", type=Path, help="VQAv2 annotations JSON (absent for test splits)")
    mllm_vqa.add_argument("--images", type=Path, help="image folder (multiple choice: the items' paths are under it)")
    mllm_vqa.add_argument("--format", choices=("vqav2", "multiple-choice"), default="vqav2")
    mllm_vqa.add_argument(
        "--prompt-template",
        help="prompt with {image}, {question} and {post_prompt} fields (default: LLaVA-OneVision's Qwen2 ChatML)",
    )
    mllm_vqa.add_argument(
        "--post-prompt",
        help="text after the question (default: LLaVA-OneVision's for the format, e.g. '\\nAnswer the question "
        "using a single word or phrase.'); bash passes \\n as two characters, $'\\n…' as a newline",
    )
    mllm_vqa.add_argument("--max-new-tokens", type=int, default=16, help="most tokens generated per answer")
    mllm_vqa.add_argument(
        "--answer-processing",
        choices=("official", "none"),
        default="official",
        help="vqav2: put each generation through the official answer normalisation before scoring (default) or not",
    )
    mllm_vqa.add_argument("--submission", type=Path, help="vqav2: also write the official results file here")
    mllm_vqa.add_argument(
        "--dataset", help="the dataset's name in the results (default: vqav2, or the questions file's name)"
    )
    mllm_vqa.add_argument("--split", help="the split's name in the results (default: the questions' data_subtype)")
    mllm_vqa.add_argument(
        "--skip-missing-images",
        action="store_true",
        help="drop questions whose image is missing (counted in the results; not the official score)",
    )
    mllm_vqa.set_defaults(handler=lambda args: _run_task(args, _mllm_vqa))

    retrieval = tasks.add_parser(
        "retrieval",
        help="image-text retrieval recall (Flickr30K/COCO Karpathy splits), ITC ranking + ITM re-ranking",
        description="Rank the split's images and captions by ITC similarity, re-rank each query's top-k candidates "
        "with the ITM head as the BridgeTower original does, and report R@1/5/10 both ways. Needs a model with ITC "
        "and ITM heads (…ForPreTraining). --limit counts images.",
    )
    _add_run_options(retrieval)
    retrieval.add_argument(
        "--karpathy", type=Path, help="Karpathy split JSON (dataset_coco.json, dataset_flickr30k.json)"
    )
    retrieval.add_argument("--images", type=Path, help="image folder (COCO: holds val2014/…; Flickr30K: the images)")
    retrieval.add_argument("--split", choices=("test", "val", "train", "restval"), default="test")
    retrieval.add_argument(
        "--k", type=int, default=128, help="ITM re-ranks each query's top-k (original: 128 Flickr, 256 COCO)"
    )
    retrieval.add_argument(
        "--no-rerank", dest="rerank", action="store_false", help="ITC similarities only (no ITM re-ranking)"
    )
    retrieval.add_argument("--rerank-batch-size", type=int, default=128, help="caption-image pairs per ITM batch")
    retrieval.add_argument(
        "--text-padding",
        choices=("max_length", "longest"),
        default="max_length",
        help="pad captions to the processor's max_text_length as the original does (ManagerTower depends on it), "
        "or to the longest in the batch (faster)",
    )
    retrieval.add_argument(
        "--cache-dir", type=Path, help="where embeddings are cached (default: ~/.cache/towerzoo/retrieval)"
    )
    retrieval.add_argument("--save-scores", type=Path, help="also save the score matrices here (safetensors)")
    retrieval.add_argument(
        "--skip-missing-images",
        action="store_true",
        help="drop images missing from --images and their captions (counted in the results; not the official score)",
    )
    retrieval.set_defaults(handler=lambda args: _run_task(args, _retrieval))

    video_retrieval = tasks.add_parser(
        "video-retrieval",
        help="text-video retrieval (MSR-VTT 1k-A, DiDeMo, ActivityNet Captions): R@1/5/10, median and mean rank",
        description="Embed every video and text query with a video-text model (VidLA), rank by cosine similarity and "
        "report R@1/5/10, median and mean rank in both directions; --dual-softmax adds CAMoE's transductive "
        "dual-softmax numbers, labelled. --limit counts videos.",
    )
    _add_run_options(video_retrieval)
    video_retrieval.set_defaults(batch_size=16)
    video_retrieval.add_argument("--dataset", choices=("msrvtt", "didemo", "activitynet"), help="annotation layout")
    video_retrieval.add_argument(
        "--annotations",
        type=Path,
        help="MSRVTT_JSFUSION_test.csv (MSR-VTT 1k-A), test_data.json (DiDeMo) or val_1.json (ActivityNet)",
    )
    video_retrieval.add_argument("--videos", type=Path, help="folder of <video id>.mp4 (or .webm, .mkv, .avi, …)")
    video_retrieval.add_argument("--num-frames", type=int, help="frames per video (default: the processor's)")
    video_retrieval.add_argument(
        "--dual-softmax",
        action="store_true",
        help="also report dual-softmax inference (CAMoE; transductive: uses the whole query set), labelled",
    )
    video_retrieval.add_argument(
        "--dual-softmax-temperature",
        type=float,
        default=0.01,
        help="T of sim * softmax(sim / T) on cosine similarities (0.01 = CAMoE's 1 on logits scaled by 100)",
    )
    video_retrieval.add_argument(
        "--cache-dir", type=Path, help="where embeddings are cached (default: ~/.cache/towerzoo/video-retrieval)"
    )
    video_retrieval.add_argument("--save-scores", type=Path, help="also save the score matrices here (safetensors)")
    video_retrieval.add_argument(
        "--skip-missing-videos",
        action="store_true",
        help="drop videos missing from --videos and their queries (counted; not the official score)",
    )
    video_retrieval.add_argument(
        "--skip-bad-videos",
        action="store_true",
        help="drop unreadable or zero-length videos and their queries (counted; not the official score)",
    )
    video_retrieval.set_defaults(handler=lambda args: _run_task(args, _video_retrieval))

    classification = tasks.add_parser(
        "classification",
        help="few-shot image classification accuracy (CoOp base-to-novel: base, novel, harmonic mean)",
        description="Score a prompt-learning CLIP classifier (RESTORE) on a dataset split under CoOp's base-to-novel "
        "protocol: the classes are cut into base (first half of the sorted labels) and novel (the rest), each "
        "subset is scored among its own classes, and base-to-novel reports both accuracies and their harmonic mean. "
        "--limit counts images per subset.",
    )
    _add_run_options(classification)
    classification.add_argument(
        "--data",
        type=Path,
        help="dataset folder: CoOp's (split_zhou_<Name>.json), <split>.csv files, FGVCAircraft's, or image folders",
    )
    classification.add_argument("--split", default="test", help="train, val or test (default: test)")
    classification.add_argument(
        "--subset",
        choices=("base-to-novel", "base", "novel", "all"),
        default="base-to-novel",
        help="which classes to score (default: base-to-novel, both halves and their harmonic mean)",
    )
    classification.add_argument(
        "--layout",
        choices=("auto", "coop", "csv", "fgvc-aircraft", "imagefolder"),
        default="auto",
        help="on-disk layout of --data (default: detected)",
    )
    classification.add_argument(
        "--classnames", type=Path, help="class names, one per line or a JSON list (labels index it)"
    )
    classification.add_argument(
        "--image-dir", type=Path, help="coop layout: the folder the split file's paths are relative to"
    )
    classification.add_argument(
        "--zero-shot", action="store_true", help="plain CLIP on the template prompts (no learned prompts, no surgery)"
    )
    classification.add_argument(
        "--seed", type=int, help="the model's training seed, recorded (default: from its training.json)"
    )
    classification.set_defaults(handler=lambda args: _run_task(args, _classification))

    asr = tasks.add_parser(
        "asr",
        help="speech recognition WER/CER and RTFx of a Zipper model (open_asr_leaderboard protocol)",
        description="Transcribe a LibriSpeech-style folder or an audiofolder with a Zipper model (speech -> text) and "
        "report WER and CER after Whisper's English normaliser (empty normalised references dropped, round(100 * "
        "wer, 2)) and RTFx; every utterance's prediction goes into the results. --limit counts utterances.",
    )
    _add_run_options(asr)
    asr.set_defaults(batch_size=16)
    _add_speech_options(asr, max_new_tokens=448, output="text")
    asr.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="apply Whisper's English normaliser to references and predictions (default: on)",
    )
    asr.add_argument(
        "--skip-bad-audio",
        action="store_true",
        help="skip unreadable, silent and clipped audio (counted in the results; not the official score)",
    )
    asr.set_defaults(handler=lambda args: _run_task(args, _speech))

    tts = tasks.add_parser(
        "tts",
        help="speech synthesis intelligibility of a Zipper model: WER of an ASR model on the synthesised audio",
        description="Synthesise the transcripts of a LibriSpeech-style folder or an audiofolder with a Zipper model "
        "(text -> speech), transcribe the audio with an ASR model (a Zipper folder, or any transformers ASR "
        "pipeline), and report WER/CER against the input texts with duration statistics. --limit counts utterances.",
    )
    _add_run_options(tts)
    tts.set_defaults(batch_size=8)
    _add_speech_options(tts, max_new_tokens=1500, output="speech")
    tts.add_argument("--asr-model", help="the ASR model that listens: a Zipper folder or a transformers ASR model")
    tts.add_argument(
        "--asr-kind",
        choices=("zipper", "pipeline"),
        default="zipper",
        help="zipper (a towerzoo Zipper folder) or pipeline (transformers' automatic-speech-recognition pipeline)",
    )
    tts.add_argument("--asr-max-new-tokens", type=int, default=448, help="most text tokens the Zipper ASR generates")
    tts.add_argument(
        "--keep-apostrophes",
        action="store_true",
        help="keep apostrophes inside words when normalising (seed-tts-eval); default: dropped (Whisper, F5-TTS)",
    )
    tts.add_argument("--do-sample", action="store_true", help="sample the speech units (default: greedy/beam)")
    tts.add_argument(
        "--seed",
        type=int,
        default=0,
        help="with --do-sample: each batch is seeded with SEED + the index of its first utterance",
    )
    tts.add_argument("--save-audio", type=Path, help="write each synthesis here as <utterance id>.wav")
    tts.set_defaults(handler=lambda args: _run_task(args, _speech))
