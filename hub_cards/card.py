"""`towerzoo card MODEL_DIR [--results results.json …] [--entry NAME]`: write a Hub folder's model card (README.md).

The card is built with huggingface_hub's `ModelCardData` and `EvalResult`: YAML metadata (library, pipeline tag,
tags, license, base model, datasets, and `model-index` from the `towerzoo eval` results files: each task's scores, while
speed and duration figures such as RTFx go to the card's table only), then a usage snippet for the folder's own Auto
class with `trust_remote_code=True`, the measured numbers next to the paper's (from the zoo registry), what the
conversion checked (`verification.json`) and the citation. The zoo entry comes from
`--entry` or from the `towerzoo_entry` that `towerzoo convert --entry` records in `verification.json`.
"""

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from towerzoo.registry import Entry, RegistryError, get_dataset, get_entry


class CardError(ValueError):
    """A card cannot be written for this folder or these results; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class HarnessTask:
    """How one `towerzoo eval` task's results become model-index entries."""

    task_type: str  # model-index task type
    task_name: str
    default_dataset: str | None  # for results files without a `dataset` field (VQAv2's)
    # the `metrics` keys that become model-index entries (None: every number); the card's table shows the others too
    headline: tuple[str, ...] | None = None
    # numbers outside `metrics` that the card's table shows (never model-index): name -> path of keys in the results
    extras: tuple[tuple[str, tuple[str, ...]], ...] = ()


HARNESS_TASKS = {
    "vqav2": HarnessTask("visual-question-answering", "Visual Question Answering", "vqav2"),
    "retrieval": HarnessTask("image-text-retrieval", "Image-Text Retrieval", None),
    "video-retrieval": HarnessTask("video-text-retrieval", "Video-Text Retrieval", None),
    "classification": HarnessTask("image-classification", "Image Classification", None),
    "mllm-vqa": HarnessTask("visual-question-answering", "Visual Question Answering (generative)", None),
    # RTFx depends on the machine and the batch size: shown in the table, kept out of model-index
    "asr": HarnessTask("automatic-speech-recognition", "Automatic Speech Recognition", None, ("wer", "cer")),
    "tts": HarnessTask(
        "text-to-speech",
        "Text-to-Speech",
        None,
        ("wer", "cer"),
        (
            ("synthesized_seconds_mean", ("durations", "synthesized_seconds", "mean")),
            ("duration_ratio_mean", ("durations", "ratio_to_reference", "mean")),
        ),
    ),
}
# metric keys of the results files → readable names (directions and statistics compose)
DIRECTIONS = {
    "tr_": "image→text ",
    "ir_": "text→image ",
    "text_to_video_": "text→video ",
    "video_to_text_": "video→text ",
}
STATISTICS = {"r1": "R@1", "r5": "R@5", "r10": "R@10", "median_rank": "median rank", "mean_rank": "mean rank"}
SPECIAL_METRICS = {
    "accuracy": "accuracy",
    "r_mean": "mean of R@1/5/10 both ways",
    "mean_per_class_accuracy": "mean per-class accuracy",
    "base_accuracy": "base-class accuracy",
    "novel_accuracy": "novel-class accuracy",
    "harmonic_mean": "harmonic mean of base and novel accuracy",
    "wer": "WER",
    "cer": "CER",
    "rtfx": "RTFx (audio seconds per transcription second; machine-dependent)",
    "synthesized_seconds_mean": "mean synthesised duration (s)",
    "duration_ratio_mean": "mean duration ratio, synthesised / reference recording",
}
DUAL_SOFTMAX = "dual_softmax_"  # prefix of the transductive dual-softmax numbers of video retrieval
# class-name suffix (or whole name) → pipeline tag (others: feature-extraction)
PIPELINE_TAGS = {
    "ForVisualQuestionAnswering": "visual-question-answering",
    "ForContrastiveLearning": "zero-shot-image-classification",
    "ForMaskedLM": "fill-mask",
    "ForImageClassification": "image-classification",
    "ZipperForConditionalGeneration": "automatic-speech-recognition",  # it also speaks: ASR is its Hub task
}
# architecture → modality tag (others: vision-language)
MODALITY_TAGS = {"vidla": "video-text", "zipper": "speech-text"}
MISSING = "—"
RESTORE_ADAPTERS_FILE = "restore_adapters.safetensors"  # an adapters-only RESTORE folder's weights


@dataclasses.dataclass(frozen=True)
class Measured:
    """One results file, checked against the folder and the entry."""

    path: Path
    task: str
    dataset: str
    split: str | None
    metrics: dict[str, float]  # the model-index entries
    others: dict[str, float] = dataclasses.field(default_factory=dict)  # shown in the card's table only


def metric_name(key: str) -> str:
    """`ir_r1` → "text→image R@1", `dual_softmax_text_to_video_r1` → "text→video R@1 (dual softmax, transductive)"."""
    if key.startswith(DUAL_SOFTMAX):
        return f"{metric_name(key.removeprefix(DUAL_SOFTMAX))} (dual softmax, transductive)"
    if key in SPECIAL_METRICS:
        return SPECIAL_METRICS[key]
    for prefix, direction in DIRECTIONS.items():
        if key.startswith(prefix) and key.removeprefix(prefix) in STATISTICS:
            return direction + STATISTICS[key.removeprefix(prefix)]
    return key


# ---- the folder ------------------------------------------------------------------------------------------------------
def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise CardError(f"cannot read {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise CardError(f"{path} is not valid JSON ({error}); {what}") from None


def read_folder(folder: Path) -> tuple[dict, dict | None]:
    """The folder's config.json and verification.json (None when absent); errors for what is not a towerzoo folder."""
    if not folder.is_dir():
        raise CardError(f"{folder} is not a folder.")
    if not (folder / "config.json").is_file():
        raise CardError(
            f"{folder} has no config.json: not a model folder. `towerzoo card` takes a folder written by "
            "`towerzoo convert` (or a model's save_pretrained)."
        )
    config = _read_json(folder / "config.json", "the folder's config is corrupt")
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if not architectures:
        raise CardError(f"{folder}/config.json names no `architectures`: save the model with save_pretrained.")
    if _auto_class(config) is None:
        raise CardError(
            f"{folder}/config.json has no auto_map entry for {architectures[0]}: not a towerzoo folder with its own "
            "code (write it with `towerzoo convert`)."
        )
    verification = None
    if (folder / "verification.json").is_file():
        verification = _read_json(folder / "verification.json", "the conversion record is corrupt")
    return config, verification


def _auto_class(config: dict) -> str | None:
    """The Auto class that loads the folder's saved class (from `auto_map`): its task's, rather than `AutoModel`
    when both name it."""
    architecture = config["architectures"][0]
    auto_map = config.get("auto_map") or {}
    matches = [auto for auto, target in auto_map.items() if target.split(".")[-1] == architecture]
    return next((auto for auto in matches if auto != "AutoModel"), matches[0] if matches else None)


def _architecture(config: dict) -> str:
    return str(config.get("model_type", "")).removeprefix("towerzoo_")


def folder_entry(folder: Path) -> str | None:
    """The zoo entry a folder was converted for (`towerzoo_entry` in verification.json), if recorded."""
    path = Path(folder) / "verification.json"
    return _read_json(path, "the conversion record is corrupt").get("towerzoo_entry") if path.is_file() else None


def record_entry(folder: Path, name: str) -> None:
    """Record in the folder's verification.json (rewritten atomically) that it is the zoo entry `name`."""
    get_entry(name)
    path = Path(folder) / "verification.json"
    if not path.is_file():
        raise CardError(f"{folder} has no verification.json to record the zoo entry in: convert it with towerzoo.")
    record = {**_read_json(path, "the conversion record is corrupt"), "towerzoo_entry": name}
    _write_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    temporary.replace(path)


def _resolve_entry(folder: Path, config: dict, verification: dict | None, name: str | None) -> Entry | None:
    recorded = (verification or {}).get("towerzoo_entry")
    if name is not None and recorded is not None and name != recorded:
        raise CardError(
            f"{folder} was converted as zoo entry {recorded!r} (verification.json), not {name!r}; drop --entry or "
            "convert the right checkpoint."
        )
    name = name or recorded
    if name is None:
        return None
    entry = get_entry(name)
    if entry.architecture != _architecture(config):
        raise CardError(
            f"zoo entry {name!r} is a {entry.architecture} model, but {folder} holds {config.get('model_type')!r}."
        )
    return entry


# ---- results files ---------------------------------------------------------------------------------------------------
def _same_model(recorded: str, results_path: Path, folder: Path, entry: Entry | None) -> bool:
    """Whether a results file's `model` (a path as given to `towerzoo eval`, or a Hub repo id) is this folder."""
    folder = folder.resolve()
    path = Path(recorded).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, results_path.parent / path]
    if any(candidate.resolve() == folder for candidate in candidates):
        return True
    # a Hub repo id: this folder's repo when it carries the folder's or the entry's name
    is_repo_id = re.fullmatch(r"[\w.-]+/[\w.-]+", recorded) and not any(c.exists() for c in candidates)
    return bool(is_repo_id) and recorded.split("/")[1] in {folder.name, entry.name if entry else folder.name}


def read_results(path: Path, folder: Path, entry: Entry | None = None) -> Measured:
    """One `towerzoo eval` results file, checked: well formed, a known task, this folder's model, and (given an entry)
    a task and dataset the entry has."""
    path = Path(path)
    results = _read_json(path, "pass the results file `towerzoo eval --output` wrote")
    if not isinstance(results, dict):
        raise CardError(f"{path} holds a {type(results).__name__}, not a towerzoo eval results object.")
    missing = [key for key in ("task", "model") if not isinstance(results.get(key), str)]
    if missing:
        raise CardError(f"{path} is not a towerzoo eval results file: no {' or '.join(missing)} field.")
    task = results["task"]
    if task not in HARNESS_TASKS:
        raise CardError(f"{path}: task {task!r} is not a towerzoo eval task ({', '.join(HARNESS_TASKS)}).")
    if not _same_model(results["model"], path, folder, entry):
        raise CardError(
            f"{path} holds results for {results['model']!r}, not for {folder.resolve()}: evaluate this folder "
            f"(towerzoo eval {task} --model {folder} …) and pass those results."
        )
    metrics = results.get("metrics")
    if not isinstance(metrics, dict):
        hint = (
            " (a test split without annotations: score its submission file on EvalAI)"
            if "submission" in results
            else ""
        )
        raise CardError(f"{path} holds no metrics{hint}.")
    numbers = {**_numbers(metrics), **_numbers(results.get("dual_softmax_metrics") or {}, DUAL_SOFTMAX)}
    if not numbers:
        raise CardError(f"{path}: `metrics` holds no numbers.")
    harness = HARNESS_TASKS[task]
    headline = {key: numbers[key] for key in harness.headline or numbers if key in numbers}
    if not headline:
        raise CardError(f"{path}: `metrics` holds none of the {task} scores ({', '.join(harness.headline)}).")
    others = {key: value for key, value in numbers.items() if key not in headline}
    for name, keys in harness.extras:
        value = _lookup(results, keys)
        if value is not None:
            others[name] = value
    named = results.get("dataset")
    known = get_dataset(named) if isinstance(named, str) else None
    dataset = known.key if known else named or _default_dataset(task, entry)
    if dataset is None:
        raise CardError(f"{path}: no `dataset` field, and {task} results need one.")
    if entry is not None and entry.task(task, dataset) is None:
        tasks = ", ".join(f"{t.name} on {t.dataset.key}" for t in entry.tasks) or "none"
        raise CardError(
            f"{path} holds {task} results on {dataset}, a task zoo entry {entry.name!r} does not have (its tasks: "
            f"{tasks})."
        )
    split = results.get("split")
    return Measured(path, task, str(dataset), str(split) if split is not None else None, headline, others)


def _numbers(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The numeric entries of a metrics mapping (nested breakdowns and flags left out), keys prefixed."""
    return {
        prefix + k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _lookup(results: dict, keys: tuple[str, ...]) -> float | None:
    """The number at `keys` in a results file (None when a key is absent or the value is not a number)."""
    value = results
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _default_dataset(task: str, entry: Entry | None) -> str | None:
    """The dataset of a results file that names none: the entry's only dataset for that task, else the task's."""
    if entry is not None:
        datasets = {t.dataset.key for t in entry.tasks if t.name == task}
        if len(datasets) == 1:
            return datasets.pop()
    return HARNESS_TASKS[task].default_dataset


def _check_duplicates(runs: Sequence[Measured]) -> None:
    seen: dict[tuple, Path] = {}
    for run in runs:
        key = (run.task, run.dataset, run.split)
        if key in seen:
            raise CardError(
                f"{seen[key]} and {run.path} both hold {run.task} results on {run.dataset} ({run.split}); pass one."
            )
        seen[key] = run.path


# ---- metadata --------------------------------------------------------------------------------------------------------
def _dataset_name(key: str) -> tuple[str, str]:
    """(model-index dataset type, display name) of a dataset key: the registry's Hub id and name where known."""
    dataset = get_dataset(key)
    return (dataset.hub_id or key, dataset.name) if dataset else (key, key)


def eval_results(runs: Sequence[Measured]) -> list[EvalResult]:
    """The model-index entries of the measured numbers (values rounded to 2 decimals, as the card shows them)."""
    results = []
    for run in runs:
        harness = HARNESS_TASKS[run.task]
        dataset_type, dataset_name = _dataset_name(run.dataset)
        for key, value in run.metrics.items():
            results.append(
                EvalResult(
                    task_type=harness.task_type,
                    task_name=harness.task_name,
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_split=run.split,
                    metric_type=key,
                    metric_name=metric_name(key),
                    metric_value=round(value, 2),
                )
            )
    return results


def pipeline_tag(config: dict) -> str:
    """The Hub pipeline tag of the folder's saved class (a pre-training model's by its heads)."""
    architecture = config["architectures"][0]
    heads = (config.get("pretraining_heads") or []) if architecture.endswith("ForPreTraining") else []
    if "itc" in heads:
        return "zero-shot-image-classification"
    if "mlm" in heads:
        return "fill-mask"
    return next((tag for suffix, tag in PIPELINE_TAGS.items() if architecture.endswith(suffix)), "feature-extraction")


def card_data(config: dict, entry: Entry | None, runs: Sequence[Measured], name: str) -> ModelCardData:
    """The card's YAML metadata, model-index included."""
    architecture = _architecture(config)
    tags = ["towerzoo", architecture, "custom_code", MODALITY_TAGS.get(architecture, "vision-language")]
    if entry is not None and entry.paper is not None:
        tags.append(f"arxiv:{entry.paper.arxiv}")
    datasets = [d.hub_id for d in entry.training_data if d.hub_id] if entry else []
    return ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag(config),
        tags=tags,
        license=entry.license if entry else None,
        base_model=entry.base_model if entry else None,
        datasets=datasets or None,
        model_name=name if runs else None,  # model-index's name
        eval_results=eval_results(runs) or None,
    )


# ---- body ------------------------------------------------------------------------------------------------------------
SNIPPET_HEAD = """```python
{imports}
from transformers import {auto_class}, AutoProcessor

repo = "{repo}"  # this repo's id on the Hub (namespace/name), or a local copy of this folder
model = {auto_class}.from_pretrained(repo, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
"""
IMAGE_IMPORTS = "import torch\nfrom PIL import Image"
SPEECH_IMPORTS = "import soundfile  # reads and writes audio files (pip install soundfile)"
SNIPPETS = {
    "vqa": """
image = Image.open("photo.jpg")
inputs = processor(images=image, text="What color is the cat?")
with torch.no_grad():
    logits = model(**inputs).logits
print(model.config.id2label[logits.argmax(-1).item()])
""",
    "contrastive": """
image = Image.open("photo.jpg")
captions = ["a cat sits on the mat", "two dogs play in the park"]
with torch.no_grad():
    image_embeds = model.get_image_features(**processor(images=image))
    text_embeds = model.get_text_features(**processor(text=captions))
print(text_embeds @ image_embeds.T)  # cosine similarities (the embeddings are normalised)
""",
    "matching": """
image = Image.open("photo.jpg")
captions = ["a cat sits on the mat", "two dogs play in the park"]
inputs = processor(images=[image] * len(captions), text=captions)
with torch.no_grad():
    outputs = model(**inputs)
print(outputs.{logits}.softmax(-1)[:, 1])  # probability that the image and each caption match
""",
    "video": """
captions = ["a man is cooking", "a dog runs on the beach"]
with torch.no_grad():
    video_embeds = model.get_video_features(**processor(videos="clip.mp4"))
    text_embeds = model.get_text_features(**processor(text=captions))
video_embeds = video_embeds / video_embeds.norm(dim=-1, keepdim=True)
text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
print(text_embeds @ video_embeds.T)  # cosine similarities
""",
    "classification": """
image = Image.open("photo.jpg")
with torch.no_grad():
    probabilities = model(**processor(images=image)).logits.softmax(-1)[0]
print(model.config.classnames[probabilities.argmax().item()])  # among the classes the model holds

# other classes (a dataset's novel ones, say): new class prompts, the same learned weights
model.set_classnames(["golden retriever", "tabby cat", "red fox"], processor)
with torch.no_grad():
    probabilities = model(**processor(images=image)).logits.softmax(-1)[0]
print(dict(zip(model.config.classnames, probabilities.tolist())))
""",
    "speech": """
# speech recognition: a mono waveform (16 kHz is the speech tokenizer's rate; other rates are resampled)
wave, rate = soundfile.read("speech.wav", dtype="float32")
wave = wave.mean(axis=1) if wave.ndim == 2 else wave  # stereo to mono
inputs = processor(audio=[wave], sampling_rate=rate, task="asr")
ids = model.generate(**inputs, output_modality="text", max_new_tokens=448)
print(processor.batch_decode(ids, modality="text")[0])

# speech synthesis: text in, speech units out until the speech end token, decoded to a waveform
inputs = processor(text=["a cat sits on the mat"], task="tts")
ids = model.generate(**inputs, output_modality="speech", max_new_tokens=1500)
[speech] = processor.batch_decode(ids, modality="speech")
soundfile.write("synthesised.wav", speech, processor.sampling_rate)
""",
    "features": """
image = Image.open("photo.jpg")
inputs = processor(images=image, text="a cat sits on the mat")
with torch.no_grad():
    outputs = model(**inputs)
""",
}


def _snippet_kind(config: dict) -> tuple[str, dict]:
    architecture = config["architectures"][0]
    heads = config.get("pretraining_heads") or []
    if architecture.endswith("ForVisualQuestionAnswering"):
        return "vqa", {}
    if architecture.endswith("ForContrastiveLearning") or (architecture.endswith("ForPreTraining") and "itc" in heads):
        return "contrastive", {}
    if architecture.endswith("ForImageAndTextRetrieval"):
        return "matching", {"logits": "logits"}
    if architecture.endswith("ForPreTraining") and "itm" in heads:
        return "matching", {"logits": "itm_logits"}
    if _architecture(config) == "vidla":
        return "video", {}
    if _architecture(config) == "restore":
        return "classification", {}
    if _architecture(config) == "zipper":
        return "speech", {}
    return "features", {}


def usage_section(folder: Path, config: dict, repo: str, entry: Entry | None) -> str:
    kind, fields = _snippet_kind(config)
    imports = SPEECH_IMPORTS if kind == "speech" else IMAGE_IMPORTS
    head = SNIPPET_HEAD.format(imports=imports, auto_class=_auto_class(config), repo=repo)
    code = head + SNIPPETS[kind].format(**fields) + "```"
    lines = ["## Usage", "", code, ""]
    lines.append(
        "The folder carries its own modelling code, so `trust_remote_code=True` is needed and transformers and torch "
        "are all it takes (towerzoo itself is not)"
        + ("; the snippet reads and writes audio files with soundfile." if kind == "speech" else ".")
    )
    if (folder / RESTORE_ADAPTERS_FILE).is_file():
        base = config.get("base_model_name_or_path") or "the base CLIP"
        lines.append(
            f"This folder holds only RESTORE's own weights: loading it also loads its base CLIP (`{base}`, "
            "`config.base_model_name_or_path`), which must be reachable."
        )
    if not (folder / "processor_config.json").is_file():
        tokenizer = f" (`{entry.tokenizer}`)" if entry and entry.tokenizer else ""
        lines.append(
            f"This folder has no processor files: it was converted without `--tokenizer`{tokenizer}, so "
            "`AutoProcessor` will not load it; reconvert with the tokenizer folder to add them."
        )
    return "\n".join(lines)


def _format(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def evaluation_section(entry: Entry | None, runs: Sequence[Measured]) -> str:
    """The measured numbers next to the paper's (matched by task, dataset, split and metric), then the paper's other
    numbers."""
    reported = {(r.task, r.dataset.key, r.split, r.metric): r for r in (entry.reported if entry else ())}
    rows, used = [], set()
    for run in runs:
        for key, value in {**run.metrics, **run.others}.items():
            match = reported.get((run.task, run.dataset, run.split, key))
            used.add((run.task, run.dataset, run.split, key))
            paper = f"{match.value:.2f} ({match.table})" if match else MISSING
            rows.append(
                (
                    run.task,
                    _dataset_name(run.dataset)[1],
                    run.split or MISSING,
                    metric_name(key),
                    _format(value),
                    paper,
                )
            )
    for key, number in reported.items():
        if key not in used:
            harness = "" if entry.task(number.task, number.dataset.key).harness else " (no towerzoo harness yet)"
            rows.append(
                (
                    number.task + harness,
                    number.dataset.name,
                    number.split,
                    metric_name(number.metric),
                    MISSING,
                    f"{number.value:.2f} ({number.table})",
                )
            )
    lines = ["## Evaluation", ""]
    if not rows:
        lines.append(
            "No evaluation results yet. Run `towerzoo eval TASK --model THIS_FOLDER … --output results.json`, then "
            "`towerzoo card THIS_FOLDER --results results.json`."
        )
        return "\n".join(lines)
    lines += [
        "| Task | Dataset | Split | Metric | towerzoo | Paper |",
        "|---|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "towerzoo numbers come from `towerzoo eval` on this folder (also in the metadata's `model-index`"
        + (", except speed and duration figures" if any(run.others for run in runs) else "")
        + "); paper numbers from the table cited. Compare rows of the same split only"
        + (
            ": VQAv2 test-dev and test-std are scored by the EvalAI server."
            if any(r[0] == "vqav2" for r in rows)
            else "."
        ),
    ]
    return "\n".join(lines)


def verification_section(verification: dict | None, entry: Entry | None) -> str:
    lines = ["## Conversion check", ""]
    if verification is None:
        trained = entry is not None and entry.source.format is None
        lines.append(
            f"Not converted: {entry.source.checkpoint}." if trained else "This folder has no verification.json."
        )
        return "\n".join(lines)
    source = entry.source.checkpoint if entry else Path(str(verification.get("source", "?"))).name
    if source.startswith("http"):
        source = source.split("?")[0]  # download links carry a signature in the query string
    diffs = verification.get("max_abs_diff_per_output") or verification.get("diffs") or {}
    dropped = verification.get("dropped_keys") or {}
    lines += [
        f"- Source: `{source}` (format `{verification.get('source_format', '?')}`)",
        f"- Reference the outputs were compared with: {verification.get('reference', '?')}",
        f"- Largest absolute difference: {verification.get('max_abs_diff', float('nan')):.2e} "
        f"({verification.get('dtype', 'float32')}, {len(diffs)} outputs on random inputs)",
        f"- Source keys dropped: {len(dropped)}" + (" (reasons in verification.json)" if dropped else ""),
    ]
    if verification.get("new_parameters"):
        lines.append(f"- New parameters (initialised, not converted): {len(verification['new_parameters'])}")
    for note in verification.get("assumptions") or []:
        lines.append(f"- Assumed: {note}")
    if verification.get("towerzoo_version"):
        lines.append(f"- towerzoo {verification['towerzoo_version']}, {verification.get('date', '')}".rstrip(", "))
    if diffs:
        lines += ["", "| Output | max abs difference |", "|---|---|"]
        lines += [f"| {name} | {value:.2e} |" for name, value in diffs.items()]
    return "\n".join(lines)


def _header(folder: Path, config: dict, verification: dict | None, entry: Entry | None) -> str:
    title = entry.name if entry else folder.name
    model = config["architectures"][0]
    lines = [f"# {title}", ""]
    if entry is not None:
        lines += [entry.description, ""]
        if verification is not None and entry.source.format is not None:
            lines.append(f"Converted by towerzoo (`towerzoo convert --entry {entry.name}`) into `{model}`.")
        if entry.paper is not None:
            lines.append(f"Paper: [{entry.paper.title}]({entry.paper.url}).")
        if entry.license == "unknown":
            where = entry.paper.code if entry.paper and entry.paper.code else "the original release"
            lines.append(f"The original release's license could not be confirmed: check {where} before use.")
    else:
        lines.append(f"A `{model}` {'converted by' if verification is not None else 'in'} towerzoo's format.")
    return "\n".join(lines)


def build_card(folder: Path, results: Sequence[Path] = (), entry: str | None = None) -> ModelCard:
    """The card of a towerzoo folder (nothing written); errors as `CardError`/`RegistryError`."""
    folder = Path(folder)
    config, verification = read_folder(folder)
    zoo_entry = _resolve_entry(folder, config, verification, entry)
    runs = [read_results(path, folder, zoo_entry) for path in results]
    _check_duplicates(runs)
    name = zoo_entry.name if zoo_entry else folder.resolve().name
    sections = [
        _header(folder, config, verification, zoo_entry),
        usage_section(folder, config, name, zoo_entry),
        evaluation_section(zoo_entry, runs),
        verification_section(verification, zoo_entry),
    ]
    if zoo_entry is not None and zoo_entry.paper is not None:
        sections.append(f"## Citation\n\n```bibtex\n{zoo_entry.paper.bibtex}\n```")
    data = card_data(config, zoo_entry, runs, name)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def write_card(folder: Path, results: Sequence[Path] = (), entry: str | None = None) -> Path:
    """Write `folder/README.md` (temporary file, then rename) from the folder, the zoo entry (`entry`, or the one
    recorded at conversion) and `towerzoo eval` results files; returns its path."""
    card = build_card(folder, results, entry)
    path = Path(folder) / "README.md"
    _write_atomically(path, card.content)
    return path


def _card(args: argparse.Namespace) -> int:
    try:
        path = write_card(args.model_dir, args.results, args.entry)
    except (CardError, RegistryError) as error:
        print(f"towerzoo card: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({len(args.results)} results file{'s' if len(args.results) != 1 else ''})")
    return 0


def add_parsers(commands) -> None:
    """`towerzoo card`, on the main parser's subcommands."""
    parser = commands.add_parser(
        "card",
        help="write a Hub folder's model card (README.md) with model-index from towerzoo eval results",
        description="Write MODEL_DIR/README.md: metadata and model-index (from --results), usage, the measured "
        "numbers next to the paper's, the conversion check and the citation.",
    )
    parser.add_argument("model_dir", type=Path, help="a towerzoo Hub folder (towerzoo convert's output)")
    parser.add_argument(
        "--results",
        type=Path,
        nargs="+",
        default=[],
        metavar="RESULTS_JSON",
        help="results JSON files written by towerzoo eval on this folder",
    )
    parser.add_argument(
        "--entry", help="zoo entry (towerzoo list); default: the one recorded by towerzoo convert --entry"
    )
    parser.set_defaults(handler=_card)
