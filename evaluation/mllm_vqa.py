"""`towerzoo eval mllm-vqa`: short-answer and multiple-choice VQA with a generative multimodal LLM (any
`AutoModelForImageTextToText` folder: LLaVA-OV-Manager, transformers' LLaVA-OneVision, …), prompted and decoded as
LLaVA-OneVision's evaluation (the authors' lmms-eval fork) does.

Data (`--format`):
- `vqav2`: the official VQAv2 questions JSON, annotations JSON and image folder, read by `vqav2.load_vqav2` (other
  short-answer sets, e.g. OK-VQA, in that format too). Scored with the official VQAv2 accuracy (`metrics/vqa_accuracy`);
  without annotations the official submission file is written.
- `multiple-choice`: JSONL or a JSON list of `{"question", "image", "choices": [...], "answer"}` (`answer`: the letter or
  the 0-based index of the right choice; optional `question_id`, default the item's position), image paths relative
  to `--images`. Scored by exact match of the letter `extract_letter` finds in the generation (`LETTER_EXTRACTION`).

Prompt: `LLAVA_OV_PROMPT_TEMPLATE` (Qwen2's ChatML with LLaVA-OneVision's system prompt) with the processor's image token,
the question (multiple choice: followed by one "A. choice" line per choice) and the format's post-prompt
(`SHORT_ANSWER_POST_PROMPT`, `MULTIPLE_CHOICE_POST_PROMPT`); the processor expands the image token to the image's
(AnyRes) token count. Decoding: greedy (no sampling, one beam), at most `--max-new-tokens` (16) tokens, batched with
left padding. Batches are sharded over processes and resumable (`runner.ShardedRun`); a batch's records are each
question's generated text (special tokens dropped, stripped) and whether it stopped at `--max-new-tokens`.

VQAv2 answers: by default the generation goes through the official answer normalisation (`ANSWER_PROCESSING`) before it
is scored and written to the submission file, as LLaVA's and lmms-eval's VQAv2 scripts process generations (they use
EvalAI's regex version of the same rules); `--answer-processing none` scores the raw text.
"""

import functools
import inspect
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from towerzoo.evaluation.metrics.classification_accuracy.accuracy import accuracy
from towerzoo.evaluation.metrics.vqa_accuracy.vqa_official import clean_whitespace, normalize_answer
from towerzoo.evaluation.runner import (
    EvaluationError,
    RunOptions,
    ShardedRun,
    Timer,
    file_fingerprint,
    fingerprint,
    finish_run,
    load_model,
    model_identity,
    open_image,
    plan_batches,
    read_json,
    write_json_atomically,
)
from towerzoo.evaluation.vqav2 import dataset_split, load_vqav2

FORMATS = ("vqav2", "multiple-choice")
LLAVA_OV_PROMPT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{image}\n{question}{post_prompt}<|im_end|>\n<|im_start|>assistant\n"
)
SHORT_ANSWER_POST_PROMPT = "\nAnswer the question using a single word or phrase."
MULTIPLE_CHOICE_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
DEFAULT_POST_PROMPTS = {"vqav2": SHORT_ANSWER_POST_PROMPT, "multiple-choice": MULTIPLE_CHOICE_POST_PROMPT}
ANSWER_PROCESSING = {
    "official": "the official VQAv2 answer normalisation (newlines/tabs to spaces, strip, punctuation rule, lower "
    "case, number words to digits, articles dropped, contractions) applied to every generation",
    "none": "the generation as it is (the official accuracy normalises it only where the ten answers differ)",
}
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LETTER_EXTRACTION = (
    "the first option letter (A, B, ... up to the number of choices) standing alone in the generation: the whole "
    "generation being one letter of either case with only punctuation or spaces around it ('b', 'B.', '(d)'), else "
    "reading left to right the first capital letter not joined to another letter or digit ('The answer is C', "
    "'C. cat') or letter of either case in parentheses ('(b)'); a letter outside the choices is passed over; no "
    "letter counts as wrong"
)
_LONE_LETTER = re.compile(r"[\W_]*([A-Za-z])[\W_]*")
_LETTER = re.compile(r"\(([A-Za-z])\)|(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")
_PROMPT_FIELD = re.compile(r"\{(image|question|post_prompt)\}")


@dataclass(kw_only=True)
class MLLMVQAOptions(RunOptions):
    """What `towerzoo eval mllm-vqa` takes (see the CLI's help for each option)."""

    questions: Path
    images: Path
    annotations: Path | None = None
    format: str = "vqav2"
    prompt_template: str | None = None  # None: LLAVA_OV_PROMPT_TEMPLATE
    post_prompt: str | None = None  # None: the format's DEFAULT_POST_PROMPTS entry
    max_new_tokens: int = 16
    answer_processing: str = "official"
    submission: Path | None = None
    dataset: str | None = None  # None: "vqav2" for that format, else the questions file's name without suffix
    split: str | None = None
    skip_missing_images: bool = False
    batch_size: int = 8


# --------------------------------------------------------------------------------------------------------------------
# Prompts and answers
# --------------------------------------------------------------------------------------------------------------------


def build_prompt(template: str, image_token: str, question: str, post_prompt: str) -> str:
    """`template` with its `{image}`, `{question}` and `{post_prompt}` fields filled (one pass: text in the question
    is never read as a field)."""
    fields = {"image": image_token, "question": question, "post_prompt": post_prompt}
    return _PROMPT_FIELD.sub(lambda match: fields[match.group(1)], template)


def check_template(template: str) -> None:
    """A prompt template has one `{image}` and one `{question}` field."""
    found = _PROMPT_FIELD.findall(template)
    if found.count("image") != 1 or found.count("question") != 1:
        raise EvaluationError(
            "--prompt-template needs one {image} and one {question} field (and may have one {post_prompt}), e.g. "
            f"{LLAVA_OV_PROMPT_TEMPLATE!r}."
        )


def multiple_choice_question(question: str, choices: list[str]) -> str:
    """The question followed by one "A. choice" line per choice, as lmms-eval's AI2D and ScienceQA tasks write it."""
    return "\n".join([question, *(f"{OPTION_LETTERS[i]}. {choice}" for i, choice in enumerate(choices))])


def extract_letter(generation: str, num_choices: int) -> str | None:
    """The option letter a generation gives, by `LETTER_EXTRACTION`; None when there is none."""
    letters = OPTION_LETTERS[:num_choices]
    lone = _LONE_LETTER.fullmatch(generation)
    if lone and lone.group(1).upper() in letters:
        return lone.group(1).upper()
    for match in _LETTER.finditer(generation):
        letter = (match.group(1) or match.group(2)).upper()
        if letter in letters:
            return letter
    return None


def process_answer(generation: str, answer_processing: str) -> str:
    """A generated short answer as it is scored (`ANSWER_PROCESSING`)."""
    return normalize_answer(clean_whitespace(generation)) if answer_processing == "official" else generation


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def check_vqav2_questions(questions: Path) -> None:
    """Every question of a VQAv2 questions file has a question id, an image id and a question (named when not)."""
    question_file = read_json(questions, "questions")
    for index, question in enumerate(question_file.get("questions", [])):
        missing = [key for key in ("question_id", "image_id", "question") if question.get(key) is None]
        if missing:
            raise EvaluationError(
                f"question {index} of {questions} (question_id {question.get('question_id')}) has no "
                f"{', '.join(missing)}: every question needs its id, its image's id and its text."
            )


def _read_items(path: Path) -> list:
    """A JSON list, or JSON Lines (one object per non-empty line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvaluationError(f"questions file {path} does not exist.") from None
    try:
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise EvaluationError(f"questions file {path} is neither a JSON list nor JSON Lines ({error}).") from None


def _answer_letter(answer, num_choices: int, where: str) -> str:
    """A multiple-choice item's answer (a letter of either case, or a 0-based index) as its capital letter."""
    letters = OPTION_LETTERS[:num_choices]
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < num_choices:
        return letters[answer]
    if isinstance(answer, str) and answer.strip().upper() in letters and len(answer.strip()) == 1:
        return answer.strip().upper()
    raise EvaluationError(
        f"{where}: 'answer' must be one of the letters {', '.join(letters)} or an index 0 … {num_choices - 1} of its "
        f"{num_choices} choices, got {answer!r}."
    )


def load_multiple_choice(path: Path, images: Path, limit: int | None = None) -> list[dict]:
    """The multiple-choice items as rows (question_id, question, choices, answer letter, image path or None when the
    file is missing), in file order; malformed items are errors naming the item."""
    items = _read_items(path)
    if not isinstance(items, list) or not items:
        raise EvaluationError(f"{path} holds no multiple-choice questions (a JSON list or JSON Lines of objects).")
    rows = []
    for index, item in enumerate(items[:limit] if limit is not None else items):
        where = f"item {index} of {path}"
        if not isinstance(item, dict):
            raise EvaluationError(f"{where} is not an object.")
        question, image, choices = item.get("question"), item.get("image"), item.get("choices")
        if not isinstance(question, str) or not question.strip():
            raise EvaluationError(f"{where} has no question text ('question').")
        if not isinstance(image, str) or not image:
            raise EvaluationError(f"{where} has no image path ('image', relative to --images, or absolute).")
        if (
            not isinstance(choices, list)
            or not 2 <= len(choices) <= 26
            or not all(isinstance(c, str) for c in choices)
        ):
            raise EvaluationError(f"{where} needs 'choices': a list of 2 to 26 strings.")
        path_of_image = Path(images) / image
        rows.append(
            {
                "question_id": item.get("question_id", index),
                "question": question,
                "choices": choices,
                "answer": _answer_letter(item.get("answer"), len(choices), where),
                "image": str(path_of_image) if path_of_image.is_file() else None,
                "image_name": image,
            }
        )
    ids = [row["question_id"] for row in rows]
    if len({type(qid) for qid in ids}) != 1 or not isinstance(ids[0], int | str) or len(set(ids)) != len(ids):
        raise EvaluationError(
            f"the question_id of the items in {path} must be unique and all integers or all strings."
        )
    return rows


def drop_missing_images(rows: list[dict], images: Path, skip: bool) -> tuple[list[dict], dict]:
    """Rows whose image exists; a missing one is an error unless `skip` (then counted)."""
    missing = [row for row in rows if row["image"] is None]
    if not missing:
        return rows, {}
    if not skip:
        raise EvaluationError(
            f"{len(missing)} questions refer to images missing from {images} (e.g. {missing[0]['image_name']}); add "
            "the images or pass --skip-missing-images to score the rest (the score is then not the official one)."
        )
    return [row for row in rows if row["image"] is not None], {"missing_image_questions": len(missing)}


def load_questions(options: MLLMVQAOptions) -> tuple[datasets.Dataset, dict]:
    """The questions of `options.format` as a `datasets.Dataset` (with `question_text`: what the prompt asks), plus
    counts of what was skipped."""
    if not Path(options.images).is_dir():
        raise EvaluationError(f"image folder {options.images} does not exist.")
    if options.format == "vqav2":
        check_vqav2_questions(options.questions)
        dataset, skipped = load_vqav2(
            options.questions, options.images, options.annotations, options.limit, options.skip_missing_images
        )
        return dataset.add_column("question_text", dataset["question"]), skipped
    rows = load_multiple_choice(options.questions, options.images, options.limit)
    rows, skipped = drop_missing_images(rows, options.images, options.skip_missing_images)
    if not rows:
        raise EvaluationError("no questions to evaluate.")
    for row in rows:
        row["question_text"] = multiple_choice_question(row["question"], row["choices"])
    return datasets.Dataset.from_list(rows), skipped


# --------------------------------------------------------------------------------------------------------------------
# The processor and generation
# --------------------------------------------------------------------------------------------------------------------


def build_processor(processor_class, **parts):
    """`processor_class(**parts)` without transformers' class check of the video processor: without torchvision
    transformers (5.24) cannot even look that class up, so no LLaVA-OneVision processor can be built. This builds one
    with `video_processor=None` (images only) or, given a video processor instance, a complete one to save."""
    processor = processor_class.__new__(processor_class)
    check = processor_class.check_argument_for_proper_class
    processor.check_argument_for_proper_class = lambda name, part: (
        None if name == "video_processor" else check(processor, name, part)
    )
    try:
        processor_class.__init__(processor, **parts)
    finally:
        del processor.check_argument_for_proper_class
    return processor


def processor_without_video(model_path: str):
    """The folder's (transformers) processor class built from its image processor and tokenizer with no video
    processor: `AutoProcessor` loads every sub-processor, and LLaVA-OneVision's video processor needs torchvision even
    when only images are processed (transformers issue #48558)."""
    import transformers

    processor_dict, _ = transformers.ProcessorMixin.get_processor_dict(model_path, trust_remote_code=True)
    processor_class = getattr(transformers, str(processor_dict.get("processor_class")), None)
    parts = set(processor_class.get_attributes()) if processor_class is not None else set()
    if parts != {"image_processor", "tokenizer", "video_processor"}:
        raise EvaluationError(f"{model_path}'s processor cannot be loaded without torchvision: install torchvision.")
    parameters = set(inspect.signature(processor_class.__init__).parameters) - parts
    options = {key: value for key, value in processor_dict.items() if key in parameters}
    return build_processor(
        processor_class,
        image_processor=transformers.AutoImageProcessor.from_pretrained(model_path, trust_remote_code=True),
        tokenizer=transformers.AutoTokenizer.from_pretrained(model_path, trust_remote_code=True),
        video_processor=None,
        **options,
    )


def check_image_text_to_text(model_path: str) -> None:
    """The folder's model has an image-text-to-text (generative) class: its own in `auto_map`, or a transformers one."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(model_path, trust_remote_code=True)
    except (OSError, ValueError) as error:
        raise EvaluationError(
            f"{model_path} is not a model folder or repo ({' '.join(str(error).split())})."
        ) from None
    remote = "AutoModelForImageTextToText" in (getattr(config, "auto_map", None) or {})
    if not remote and type(config) not in transformers.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        raise EvaluationError(
            f"{model_path} holds a {config.model_type} model without an image-text-to-text class "
            "(AutoModelForImageTextToText): this task needs a generative model such as LLaVA-OneVision or "
            "LLaVA-OV-Manager."
        )


def load_processor(model_path: str):
    """The folder's processor (images and text, with an image token), its tokenizer padding on the left as batched
    generation needs."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    try:
        processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
    except ImportError:
        if is_torchvision_available():
            raise
        processor = processor_without_video(model_path)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{model_path} has no loadable processor ({' '.join(str(error).split())}).") from None
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise EvaluationError(
            f"{model_path} holds a {type(processor).__name__}, not a processor of images and text; save the model's "
            "processor (image processor + tokenizer) in the folder."
        )
    if not getattr(processor, "image_token", None):
        raise EvaluationError(f"{model_path}'s {type(processor).__name__} has no image token to put in the prompt.")
    processor.tokenizer.padding_side = "left"
    return processor


def prompt_inputs(dataset: datasets.Dataset, processor, indices: list[int]):
    """The processed images and prompts of some rows (run in DataLoader workers), left-padded to the longest."""
    rows = dataset[indices]
    images = [open_image(path) for path in rows["image"]]
    return processor(images=images, text=rows["prompt"], padding=True, return_tensors="pt")


def generation_step(model, processor, max_new_tokens: int):
    """`step(**inputs)` for `ShardedRun.run_model`: greedy generation, one record per row: {"generation": the new
    tokens decoded without special tokens and stripped, "truncated": stopped at max_new_tokens without an eos}."""
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    pad = processor.tokenizer.pad_token_id
    decoding = {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens}
    if pad is not None:
        decoding["pad_token_id"] = pad

    def step(**inputs) -> list[dict]:
        new = model.generate(**inputs, **decoding)[:, inputs["input_ids"].shape[1] :]
        texts = processor.batch_decode(new, skip_special_tokens=True)
        return [
            {"generation": text.strip(), "truncated": not eos_ids.intersection(row)}
            for text, row in zip(texts, new.tolist(), strict=True)
        ]

    return step


# --------------------------------------------------------------------------------------------------------------------
# Scoring and the harness
# --------------------------------------------------------------------------------------------------------------------


def score_short_answers(dataset: datasets.Dataset, records: list[dict], answer_processing: str) -> tuple[dict, list]:
    """The official VQAv2 accuracy (when annotated) and each question's prediction."""
    import evaluate

    from towerzoo.evaluation.metrics import metric_path

    answers = [process_answer(record["generation"], answer_processing) for record in records]
    predictions = [
        {key: row[key] for key in ("question_id", "image_id", "image", "question")} | {"answer": answer, **record}
        for row, answer, record in zip(dataset, answers, records, strict=True)
    ]
    if "answers" not in dataset.column_names:
        return {}, predictions
    metrics = evaluate.load(metric_path("vqa_accuracy")).compute(
        predictions=answers,
        references=dataset["answers"],
        answer_types=dataset["answer_type"],
        return_per_question=True,
    )
    for prediction, row, question_accuracy in zip(predictions, dataset, metrics.pop("per_question"), strict=True):
        prediction.update(answer_type=row["answer_type"], ground_truth=row["answers"], accuracy=question_accuracy)
    return metrics, predictions


def score_multiple_choice(dataset: datasets.Dataset, records: list[dict]) -> tuple[dict, list]:
    """Exact letter-match accuracy (no letter found counts wrong) and each question's prediction."""
    predictions = []
    for row, record in zip(dataset, records, strict=True):
        letter = extract_letter(record["generation"], len(row["choices"]))
        predictions.append(
            {
                "question_id": row["question_id"],
                "question": row["question"],
                "image": row["image"],
                "choices": row["choices"],
                "answer": row["answer"],
                "letter": letter,
                "correct": letter == row["answer"],
                **record,
            }
        )
    chosen = [OPTION_LETTERS.find(p["letter"]) if p["letter"] else -1 for p in predictions]
    metrics = {
        "accuracy": accuracy(chosen, [OPTION_LETTERS.index(p["answer"]) for p in predictions]),
        "no_letter": sum(p["letter"] is None for p in predictions),
    }
    return metrics, predictions


def check_options(options: MLLMVQAOptions) -> None:
    """The options checked before anything loads."""
    if options.format not in FORMATS:
        raise EvaluationError(f"unknown --format {options.format!r}; choose one of {', '.join(FORMATS)}.")
    if options.answer_processing not in ANSWER_PROCESSING:
        raise EvaluationError(f"unknown --answer-processing {options.answer_processing!r}; choose official or none.")
    if options.max_new_tokens < 1:
        raise EvaluationError(f"--max-new-tokens must be at least 1, got {options.max_new_tokens}.")
    if options.format == "multiple-choice" and (options.annotations or options.submission):
        raise EvaluationError("--annotations and --submission are for --format vqav2 (multiple choice has answers).")
    check_template(options.prompt_template or LLAVA_OV_PROMPT_TEMPLATE)


def evaluate_mllm_vqa(options: MLLMVQAOptions, accelerator=None) -> dict | None:
    """Generate an answer to every question (sharded over `accelerator`'s processes, resumable), score them and write
    the results JSON with every question's prediction (and, for VQAv2, the submission file); returns the results on
    the main process, None on the others."""
    check_options(options)
    timer, started = Timer(), time.time()
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    template = options.prompt_template or LLAVA_OV_PROMPT_TEMPLATE
    post_prompt = DEFAULT_POST_PROMPTS[options.format] if options.post_prompt is None else options.post_prompt
    with timer("loading"):
        dataset, skipped = load_questions(options)
        check_image_text_to_text(options.model)
        model = load_model(options.model, "AutoModelForImageTextToText", options.attn_implementation, device)
        processor = load_processor(options.model)
    prompts = [build_prompt(template, processor.image_token, q, post_prompt) for q in dataset["question_text"]]
    dataset = dataset.add_column("prompt", prompts)
    run_config = {
        "format": options.format,
        "batch_size": options.batch_size,
        "dtype": options.dtype,
        "attn_implementation": model.config._attn_implementation,
        "limit": options.limit,
        "max_new_tokens": options.max_new_tokens,
        "skip_missing_images": options.skip_missing_images,
        "num_processes": accelerator.num_processes if accelerator is not None else 1,
    }
    key = fingerprint(
        "mllm-vqa",
        model_identity(options.model, model),
        file_fingerprint(options.questions),
        file_fingerprint(options.annotations) if options.annotations else None,
        str(Path(options.images).resolve()),
        {"prompt_template": template, "post_prompt": post_prompt},
        {k: v for k, v in run_config.items() if k != "num_processes"},
    )
    work_dir = Path(options.work_dir or f"{options.output}.work") / key
    batches = plan_batches(len(dataset), options.batch_size)
    run = ShardedRun(batches, work_dir, accelerator, description="MLLM VQA batches")
    with timer("inference"):
        make_inputs = functools.partial(prompt_inputs, dataset, processor)
        step = generation_step(model, processor, options.max_new_tokens)
        records = run.run_model(step, make_inputs, device, options.dtype, options.num_workers)
    if records is None:
        return None
    protocol = {
        "name": "llava-onevision-lmms-eval",
        "prompt_template": template,
        "post_prompt": post_prompt,
        "example_prompt": prompts[0],
        "decoding": {"do_sample": False, "num_beams": 1, "max_new_tokens": options.max_new_tokens},
        "padding_side": "left",
    }
    with timer("scoring"):
        if options.format == "vqav2":
            metrics, predictions = score_short_answers(dataset, records, options.answer_processing)
            protocol["answer_processing"] = ANSWER_PROCESSING[options.answer_processing]
        else:
            metrics, predictions = score_multiple_choice(dataset, records)
            protocol["letter_extraction"] = LETTER_EXTRACTION
    results = {
        "model": options.model,
        "revision": getattr(model.config, "_commit_hash", None),
        "task": "mllm-vqa",
        "format": options.format,
        "dataset": options.dataset or ("vqav2" if options.format == "vqav2" else Path(options.questions).stem),
        "split": options.split or (dataset_split(options.questions) if options.format == "vqav2" else None),
        "num_examples": len(dataset),
        "skipped": skipped,
        "protocol": protocol,
        **({"metrics": metrics} if metrics else {}),
        "counts": {"truncated": sum(record["truncated"] for record in records)},
        "predictions": predictions,
        "config": run_config,
        "resumed_batches": run.stats.get("resumed_batches", 0),
    }
    if options.format == "vqav2" and (options.submission or not metrics):
        submission = options.submission or Path(options.output).with_suffix(".answers.json")
        write_json_atomically(
            submission, [{"question_id": p["question_id"], "answer": p["answer"]} for p in predictions]
        )
        results["submission"] = str(submission)
    results["timing"] = {
        **timer.seconds,
        "total": time.time() - started,
        "questions_per_second": len(dataset) / max(timer.seconds["inference"], 1e-9),
    }
    return finish_run(options, results, work_dir)
