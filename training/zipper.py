"""`towerzoo finetune zipper`: Zipper fine-tuned for ASR, TTS or both on (audio, transcript) pairs with
`transformers.Trainer`, saved as a Hub folder (model, processor, `training.json`, card).

Data: a LibriSpeech-style folder or a Hugging Face audiofolder (read by `evaluation.asr.load_corpus`). Each
utterance becomes an ASR example (speech units in, text out), a TTS example (text in, speech units out), or both
(`--task both`). ASR and TTS run different output towers, so every batch holds one task: `TaskBlockSampler` orders
the examples in single-task blocks of one batch, shuffled per epoch, and the collator runs the processor with the
batch's task. The loss is the output tower's next-token cross-entropy (the model's own).

Processor: the model folder's, with parts replaced on request. The text tokenizer is `--tokenizer` or the folder's;
the speech tokenizer is `--speech-tokenizer` (a saved speech tokenizer folder), else the folder's, else (or with
`--num-units`) a `KMeansSpeechTokenizer` whose codebook is fitted on the training audio with the run's seed
(`fit_speech_tokenizer`). The speech specials are the speech tower's bos/eos/pad ids; both towers' vocabularies and
special ids must agree with the processor's.

Defaults (`ZIPPER_DEFAULTS`) are this project's choice: the paper's fine-tuning hyper-parameters are not known.

The CLI imports this module to build its parser, so only the standard library is imported at the top; torch,
transformers and the harnesses are imported where they are used (`zipper_trainer_class` makes the `Trainer` subclass
on first use).
"""

import argparse
import dataclasses
import datetime
import functools
import logging
import math
import os
import random
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from towerzoo.training import TrainingError

logger = logging.getLogger(__name__)

ZIPPER_MODEL_TYPE = "towerzoo_zipper"
SPEECH_TASKS = {"asr": ("asr",), "tts": ("tts",), "both": ("asr", "tts")}
OUTPUT_MODALITY = {"asr": "text", "tts": "speech"}
ZIPPER_DEFAULTS = {
    "learning_rate": 1e-4,
    "weight_decay": 0.01,
    "warmup_ratio": 0.05,
    "num_train_epochs": 3.0,
    "per_device_train_batch_size": 8,
    "lr_scheduler_type": "linear",
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
}


@dataclass(kw_only=True)
class ZipperOptions:
    """What `towerzoo finetune zipper` takes besides the common run options (`trainer.FinetuneOptions`)."""

    data: Path
    layout: str = "librispeech"
    split: str | None = None
    speech_task: str = "both"
    lowercase: bool = False
    speech_tokenizer: Path | None = None
    num_units: int | None = None
    codebook_utterances: int = 1000
    freeze_text_tower: bool | None = None
    freeze_speech_tower: bool | None = None


def zipper_settings(options) -> dict:
    """`ZIPPER_DEFAULTS` with the values of the run options (`FinetuneOptions`) that are set, and the batch they
    make."""
    settings = {name: getattr(options, name) for name in ZIPPER_DEFAULTS}
    settings.update({name: value for name, value in ZIPPER_DEFAULTS.items() if settings[name] is None})
    settings["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    settings["gradient_accumulation_steps"] = options.gradient_accumulation_steps or 1
    settings["total_batch_size"] = (
        settings["per_device_train_batch_size"] * settings["world_size"] * settings["gradient_accumulation_steps"]
    )
    return settings


# --------------------------------------------------------------------------------------------------------------------
# Speech tokenizer and processor
# --------------------------------------------------------------------------------------------------------------------


def fit_speech_tokenizer(
    audio_paths: Sequence[Path], num_units: int, seed: int, max_utterances: int = 1000, sampling_rate: int = 16000
):
    """A `KMeansSpeechTokenizer` of `num_units` units fitted on the log-mel frames of at most `max_utterances` of the
    files (drawn with `seed`; k-means++ seeded with it too). Memory grows as frames × units (float64)."""
    from towerzoo.evaluation.audio_io import load_audio
    from towerzoo.models.zipper import KMeansSpeechTokenizer

    if max_utterances < 1:
        raise TrainingError(f"--codebook-utterances must be at least 1, got {max_utterances}.")
    paths = sorted(str(path) for path in audio_paths)
    if len(paths) > max_utterances:
        paths = sorted(random.Random(seed).sample(paths, max_utterances))
    waveforms = [load_audio(path, sampling_rate) for path in paths]
    try:
        return KMeansSpeechTokenizer.fit(waveforms, sampling_rate, num_units, seed=seed)
    except ValueError as error:
        raise TrainingError(f"cannot fit a {num_units}-unit codebook on {len(paths)} utterances: {error}") from None


def _speech_specials(model) -> dict[str, int | None]:
    config = model.config.speech_config
    return {f"speech_{name}_token_id": getattr(config, f"{name}_token_id") for name in ("bos", "eos", "pad")}


def check_vocabularies(model, processor) -> None:
    """The towers' vocabularies hold the processor's ids, and their special ids are the processor's (generation
    stops at the tower's eos)."""
    text, speech = model.config.text_config, model.config.speech_config
    tokenizer = processor.tokenizer
    problems = []
    if len(tokenizer) > text.vocab_size:
        problems.append(f"the text tokenizer has {len(tokenizer)} tokens, the text tower embeds {text.vocab_size}")
    if processor.speech_vocab_size > speech.vocab_size:
        problems.append(
            f"the speech tokenizer and specials need {processor.speech_vocab_size} ids, the speech tower embeds "
            f"{speech.vocab_size} (use fewer --num-units)"
        )
    for name in ("bos", "eos"):
        tower_id, tokenizer_id = getattr(text, f"{name}_token_id"), getattr(tokenizer, f"{name}_token_id")
        if tower_id != tokenizer_id:
            problems.append(f"the text tower's {name} id is {tower_id}, the tokenizer's {tokenizer_id}")
    for name, tower_id in _speech_specials(model).items():
        if tower_id is not None and tower_id != getattr(processor, name):
            problems.append(f"the speech tower's {name} is {tower_id}, the processor's {getattr(processor, name)}")
    if problems:
        raise TrainingError("the processor does not fit the model: " + "; ".join(problems) + ".")


def zipper_processor(model, folder_processor, run, options: ZipperOptions, audio_paths: Sequence[Path]) -> tuple:
    """The processor (see the module docstring) and what `training.json` records about its speech tokenizer; `run`
    holds the common options (`--tokenizer`, `--model`, `--seed`)."""
    from transformers import AutoTokenizer

    from towerzoo.models.zipper import SpeechTokenizer, ZipperProcessor

    replaced = (run.tokenizer, options.speech_tokenizer, options.num_units)
    if folder_processor is not None and all(value is None for value in replaced):
        check_vocabularies(model, folder_processor)
        return folder_processor, "the model folder's"
    if run.tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(run.tokenizer))
    elif folder_processor is not None:
        tokenizer = folder_processor.tokenizer
    else:
        raise TrainingError(f"{run.model} has no processor: pass --tokenizer DIR (the text tower's tokenizer).")
    specials = {name: value for name, value in _speech_specials(model).items() if value is not None}
    if options.speech_tokenizer is not None:
        speech, record = SpeechTokenizer.from_pretrained(str(options.speech_tokenizer)), str(options.speech_tokenizer)
    elif folder_processor is not None and options.num_units is None:
        speech, record = folder_processor.speech_tokenizer, "the model folder's"
    else:
        num_units = options.num_units or min(specials.values(), default=model.config.speech_config.vocab_size - 3)
        if num_units > min(specials.values(), default=num_units):
            raise TrainingError(
                f"--num-units {num_units}: the speech tower's special ids {tuple(specials.values())} must lie above "
                f"the unit ids; use at most {min(specials.values())} units."
            )
        utterances = min(len(audio_paths), options.codebook_utterances)
        logger.info("fitting a %d-unit k-means codebook on %d utterances", num_units, utterances)
        speech = fit_speech_tokenizer(audio_paths, num_units, run.seed, options.codebook_utterances)
        record = {"fitted": "k-means", "num_units": num_units, "utterances": utterances, "seed": run.seed}
    try:
        processor = ZipperProcessor(speech, tokenizer, **specials)
    except (TypeError, ValueError) as error:
        raise TrainingError(f"cannot build the Zipper processor: {error}.") from None
    check_vocabularies(model, processor)
    return processor, record


def load_zipper_start(model_path: str, attn_implementation: str | None) -> tuple:
    """The Zipper folder or repo (fp32, its own code) and its processor (None when it has none)."""
    from transformers import AutoProcessor

    from towerzoo.evaluation.runner import load_model

    try:
        model = load_model(model_path, "AutoModelForSpeechSeq2Seq", attn_implementation, "cpu")
    except OSError as error:
        raise TrainingError(f"cannot load a model from {model_path} ({error}).") from None
    if model.config.model_type != ZIPPER_MODEL_TYPE:
        raise TrainingError(f"{model_path} holds a {model.config.model_type} model, not a towerzoo Zipper.")
    try:
        processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
    except (OSError, ValueError, TypeError):
        processor = None
    return model, processor


def freeze_towers(model, options: ZipperOptions) -> dict[str, bool]:
    """Apply `--(no-)freeze-{text,speech}-tower` (unset: the folder's config) to the config and the weights."""
    frozen = {}
    for modality in ("text", "speech"):
        name = f"freeze_{modality}_tower"
        if getattr(options, name) is not None:
            setattr(model.config, name, getattr(options, name))
        frozen[modality] = bool(getattr(model.config, name))
        model.tower(modality).requires_grad_(not frozen[modality])
    return frozen


# --------------------------------------------------------------------------------------------------------------------
# Data: task rows, single-task batches, the collator
# --------------------------------------------------------------------------------------------------------------------


def task_rows(utterances, speech_task: str, lowercase: bool):
    """A `datasets.Dataset` of one row (`audio` path, `text`, `task`) per utterance and task."""
    import datasets

    rows = {"audio": [], "text": [], "task": []}
    for task in SPEECH_TASKS[speech_task]:
        for utterance in utterances:
            rows["audio"].append(str(utterance.audio_path))
            rows["text"].append(utterance.transcript.lower() if lowercase else utterance.transcript)
            rows["task"].append(task)
    return datasets.Dataset.from_dict(rows)


class TaskBlockSampler:
    """Row indices (a DataLoader `sampler`) in blocks of `batch_size` rows of one task, so every batch the DataLoader
    cuts holds one task: each task's rows shuffled, its last block filled from its own start, the blocks shuffled. A
    new order each epoch (`set_epoch`, which Trainer calls), fixed by the seed, so a resumed run sees the same
    batches."""

    def __init__(self, tasks: Sequence[str], batch_size: int, seed: int):
        self.groups = [[i for i, t in enumerate(tasks) if t == task] for task in dict.fromkeys(tasks)]
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _padded(self, count: int) -> int:
        return math.ceil(count / self.batch_size) * self.batch_size

    def __len__(self) -> int:
        return sum(self._padded(len(rows)) for rows in self.groups)

    def __iter__(self):
        generator = random.Random(f"{self.seed}-{self.epoch}")
        blocks = []
        for rows in self.groups:
            order = generator.sample(rows, len(rows))
            order = (order * math.ceil(self._padded(len(order)) / len(order)))[: self._padded(len(order))]
            blocks += [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        generator.shuffle(blocks)
        for block in blocks:
            yield from block


@dataclass
class ZipperCollator:
    """Rows of one task → the processor's training inputs for that task (audio decoded at the speech tokenizer's rate)
    and the output modality."""

    processor: object

    def __call__(self, rows: list[dict]) -> dict:
        from towerzoo.evaluation.audio_io import load_audio

        tasks = {row["task"] for row in rows}
        if len(tasks) != 1:
            raise ValueError(f"a Zipper batch holds one task, got {sorted(tasks)} (use TaskBlockSampler)")
        task = tasks.pop()
        rate = self.processor.sampling_rate
        audio = [load_audio(row["audio"], rate) for row in rows]
        batch = self.processor(audio=audio, text=[row["text"] for row in rows], task=task, sampling_rate=rate)
        return {**batch, "output_modality": OUTPUT_MODALITY[task]}


@functools.cache
def zipper_trainer_class() -> type:
    """`ZipperTrainer`: `transformers.Trainer` whose training batches each hold one task (`TaskBlockSampler`)."""
    from transformers import Trainer

    class ZipperTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None) -> TaskBlockSampler:
            dataset = self.train_dataset if train_dataset is None else train_dataset
            return TaskBlockSampler(dataset["task"], self._train_batch_size, self.args.seed)

    return ZipperTrainer


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------


def _transcript_files(options: ZipperOptions) -> list[Path]:
    root = Path(options.data) / options.split if options.split else Path(options.data)
    patterns = ("*.trans.txt",) if options.layout == "librispeech" else ("metadata.csv", "metadata.jsonl")
    return sorted(path for pattern in patterns for path in root.rglob(pattern))


def finetune_zipper(run, options: ZipperOptions) -> dict:
    """Fine-tune a Zipper folder for ASR/TTS and write `OUTPUT_DIR/model/` (on the main process); returns the training
    record. `run` is a `trainer.FinetuneOptions` with `task="zipper"` (model, output, optimiser, Trainer options)."""
    import torch
    import transformers

    import towerzoo
    from towerzoo.evaluation.asr import SpeechDataOptions, load_corpus
    from towerzoo.training.data import data_fingerprint
    from towerzoo.training.trainer import (
        _check_options,
        _losses,
        _resume_path,
        save_model_folder,
        trained_model,
        training_arguments,
    )

    if options.speech_task not in SPEECH_TASKS:
        raise TrainingError(f"unknown --task {options.speech_task!r}; choose one of {', '.join(SPEECH_TASKS)}.")
    _check_options(run)
    resume = _resume_path(run)
    settings = zipper_settings(run)
    corpus = load_corpus(SpeechDataOptions(data=options.data, layout=options.layout, split=options.split))
    model, folder_processor = load_zipper_start(run.model, run.attn_implementation)
    processor, speech_tokenizer = zipper_processor(
        model, folder_processor, run, options, [utterance.audio_path for utterance in corpus.utterances]
    )
    frozen = freeze_towers(model, options)
    train_set = task_rows(corpus.utterances, options.speech_task, options.lowercase)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "%s on %d utterances (%d rows); frozen towers %s; %d trainable parameters; batch %d",
        *(options.speech_task, len(corpus.utterances), len(train_set), frozen, trainable),
        settings["total_batch_size"],
    )

    args = training_arguments(run, settings, has_eval=False)
    args.ddp_find_unused_parameters = True  # a batch trains one output tower
    checkpoints = Path(run.output_dir) / "checkpoints"
    if run.overwrite and resume is None and checkpoints.is_dir() and int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(checkpoints)
    trainer = zipper_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_set,
        data_collator=ZipperCollator(processor),
        processing_class=processor,
    )
    result = trainer.train(resume_from_checkpoint=resume)
    losses = _losses(trainer.state.log_history)
    record = {
        "task": "zipper",
        "defaults": {"values": ZIPPER_DEFAULTS, "source": "towerzoo's choice; the paper's are not known"},
        "settings": {
            **settings,
            "speech_task": options.speech_task,
            "lowercase": options.lowercase,
            "seed": run.seed,
            "bf16": run.bf16,
            "fp16": run.fp16,
        },
        "start": {"model": run.model, "frozen_towers": frozen, "trainable_parameters": trainable},
        "speech_tokenizer": speech_tokenizer,
        "data": {
            "train": data_fingerprint(
                _transcript_files(options),
                len(corpus.utterances),
                layout=options.layout,
                split=options.split,
                rows=len(train_set),
                empty_transcripts=len(corpus.empty_transcripts),
            )
        },
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "final_loss": losses[-1][1] if losses else None,
        "mean_train_loss": result.training_loss,
        "losses": losses,
        "resumed_from": resume,
        "versions": {
            "towerzoo": towerzoo.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    model = trained_model(trainer, model)
    if trainer.is_world_process_zero():
        folder = save_model_folder(model.eval(), processor, Path(run.output_dir) / "model", record)
        record["folder"] = str(folder)
        if run.push_to_hub is not None:
            from towerzoo.hub_cards.push import push_folder

            record["pushed"] = push_folder(folder, run.push_to_hub, private=run.private, token=run.hub_token)
    return record


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def _finetune_zipper(args: argparse.Namespace) -> int:
    from towerzoo.conversions.common import ConversionError
    from towerzoo.evaluation.runner import EvaluationError
    from towerzoo.hub_cards.push import PushError
    from towerzoo.training.trainer import FinetuneOptions

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    values = vars(args)

    def fill(options_class):
        return options_class(**{f.name: values[f.name] for f in dataclasses.fields(options_class) if f.name in values})

    run, options = fill(FinetuneOptions), fill(ZipperOptions)
    try:
        record = finetune_zipper(run, options)
    except (TrainingError, EvaluationError, ConversionError, PushError) as error:
        print(f"towerzoo finetune: error: {error}", file=sys.stderr)
        return 2
    if "folder" in record:
        print(f"trained {record['steps']} steps (mean loss {record['mean_train_loss']:.4f}); wrote {record['folder']}")
    if "pushed" in record:
        print(f"pushed to {record['pushed']}")
    return 0


def add_parser(tasks) -> None:
    """`towerzoo finetune zipper`, on `towerzoo finetune`'s task subcommands."""
    from towerzoo.training.cli import _add_trainer_options

    text = "Zipper ASR/TTS on (audio, transcript) pairs; score it with `towerzoo eval asr`"
    parser = tasks.add_parser("zipper", help=text, description=text)
    model = parser.add_argument_group("model (towerzoo convert zipper-from-decoders) and output")
    model.add_argument("--model", required=True, help="Zipper Hub folder or repo id (loaded with its own code)")
    model.add_argument("--tokenizer", type=Path, help="text tokenizer folder (default: the folder's processor's)")
    model.add_argument(
        "--speech-tokenizer", type=Path, help="speech tokenizer folder (preprocessor_config.json), e.g. k-means units"
    )
    model.add_argument(
        "--num-units",
        type=int,
        help="fit a k-means codebook of N units on the training audio (default when the folder has no speech "
        "tokenizer: the speech tower's lowest special id)",
    )
    model.add_argument(
        "--codebook-utterances", type=int, default=1000, help="utterances the codebook is fitted on (drawn by seed)"
    )
    model.add_argument("--attn-implementation", help="eager, sdpa (default), flex_attention, flash_attention_2, …")
    model.add_argument("--output-dir", type=Path, required=True, help="gets checkpoints/ and the Hub folder model/")
    model.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR/model and earlier checkpoints")
    data = parser.add_argument_group("data (what `towerzoo eval asr --data` reads)")
    data.add_argument("--data", type=Path, required=True, help="LibriSpeech-style folder or audiofolder")
    data.add_argument("--layout", choices=("librispeech", "audiofolder"), default="librispeech")
    data.add_argument("--split", help="a subfolder of --data (e.g. train-clean-100)")
    data.add_argument(
        "--task",
        dest="speech_task",
        choices=sorted(SPEECH_TASKS),
        default="both",
        help="what to train (both: each utterance is an ASR and a TTS example)",
    )
    data.add_argument("--lowercase", action="store_true", help="lower-case the transcripts (LibriSpeech's are upper)")
    recipe = parser.add_argument_group("training (defaults: towerzoo's; the paper's are not known)")
    for name, kind in (("freeze-text-tower", "text"), ("freeze-speech-tower", "speech")):
        recipe.add_argument(
            f"--{name}",
            action=argparse.BooleanOptionalAction,
            help=f"keep the {kind} tower's own weights fixed (default: the folder's config)",
        )
    for name, value_type in (
        ("learning-rate", float),
        ("weight-decay", float),
        ("warmup-ratio", float),
        ("num-train-epochs", float),
        ("per-device-train-batch-size", int),
        ("gradient-accumulation-steps", int),
        ("lr-scheduler-type", str),
        ("adam-beta1", float),
        ("adam-beta2", float),
        ("adam-epsilon", float),
    ):
        default = ZIPPER_DEFAULTS.get(name.replace("-", "_"), 1)
        recipe.add_argument(f"--{name}", type=value_type, help=f"default {default}")
    _add_trainer_options(parser, "zipper")
    parser.set_defaults(handler=_finetune_zipper)
