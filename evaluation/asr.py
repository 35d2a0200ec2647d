"""`towerzoo eval asr`: word and character error rates of a towerzoo Zipper model transcribing speech (speech → text),
under open_asr_leaderboard's protocol.

Data: a LibriSpeech-style folder (`<speaker>/<chapter>/*.trans.txt` and the audio next to them; `--split` names a
subfolder such as `test-clean`) or a Hugging Face audiofolder (`metadata.csv`/`metadata.jsonl`, `--split` its
subfolder), read by `audio_io`. Utterances with an empty transcript are skipped and counted; a transcript whose audio
file is missing is an error.

Run: utterances are sorted by duration (longest first, from the files' headers) and batched, so a batch pads little;
batches are sharded over processes and resumable (`runner.ShardedRun`), and the results list the utterances in corpus
order. DataLoader workers decode each file (soundfile, soxr to the speech tokenizer's rate), apply the speech
tokenizer's input checks with silence and clipping as errors, and run the processor; the model generates the text
until its end-of-sentence token (`--num-beams`, `--max-new-tokens`). Audio that cannot be used (unreadable, an
unsupported format, silent, clipped) is an error naming the file, or with `--skip-bad-audio` skipped and counted.

Scoring: the `wer` metric module (`metrics/wer`): both sides through Whisper's English normaliser, references empty
after normalisation dropped and counted, corpus WER and CER as round(100 · rate, 2). RTFx = audio seconds /
transcription seconds, where a batch's transcription time is the speech tokenizer's time on it plus generation and
detokenisation (decoding the files is left out, as open_asr_leaderboard leaves out the dataset's decoding), summed over
batches and kept with them, so a resumed run reports the time of every batch, the resumed ones included.
"""

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from towerzoo.evaluation.audio_io import SpeechCorpus, Utterance, load_audio, read_audiofolder, read_librispeech
from towerzoo.evaluation.metrics.wer.error_rates import AVERAGES
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
    plan_batches,
)

LAYOUTS = ("librispeech", "audiofolder")
# a batch example's audio: usable, or why it was skipped (the codes travel as a tensor from the loader workers)
AUDIO_STATUSES = ("ok", "silent", "clipped", "unreadable")
# the speech tokenizer's exceptions by class name: the Hub folder's remote code defines its own copies of the classes
_BAD_AUDIO_KINDS = {"SilentAudioError": "silent", "ClippedAudioError": "clipped"}
ZIPPER_MODEL_TYPE = "towerzoo_zipper"


@dataclass(kw_only=True)
class SpeechDataOptions:
    """Where the utterances come from (shared by `towerzoo eval asr` and `towerzoo eval tts`)."""

    data: Path
    layout: str = "librispeech"
    split: str | None = None


@dataclass(kw_only=True)
class ASROptions(SpeechDataOptions, RunOptions):
    """What `towerzoo eval asr` takes (see the CLI's help for each option)."""

    batch_size: int = 16
    num_beams: int = 1
    max_new_tokens: int = 448
    normalize: bool = True
    average: str = "corpus"
    skip_bad_audio: bool = False


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def load_corpus(options: SpeechDataOptions, limit: int | None = None) -> SpeechCorpus:
    """The utterances of `options.data` in its layout (the first `limit` of them); reader errors become
    `EvaluationError`s."""
    if options.layout not in LAYOUTS:
        raise EvaluationError(f"unknown --layout {options.layout!r}; choose one of {', '.join(LAYOUTS)}.")
    try:
        if options.layout == "librispeech":
            root = Path(options.data) / options.split if options.split else Path(options.data)
            corpus = read_librispeech(root)
        else:
            corpus = read_audiofolder(options.data, options.split)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{error}.") from None
    utterances = corpus.utterances[:limit] if limit is not None else corpus.utterances
    if not utterances:
        raise EvaluationError(f"{options.data} holds no utterance with a transcript to evaluate.")
    return SpeechCorpus(utterances, corpus.empty_transcripts)


def dataset_names(options: SpeechDataOptions) -> tuple[str, str]:
    """(dataset, split) for the results: LibriSpeech layouts are "librispeech", audiofolders their folder's name; the
    split is `--split`, else the data folder's name (e.g. test-clean)."""
    dataset = "librispeech" if options.layout == "librispeech" else Path(options.data).resolve().name
    return dataset, options.split or Path(options.data).resolve().name


def audio_duration(path: Path) -> float:
    """Seconds of audio in a file, from its header."""
    info = soundfile.info(str(path))
    return info.frames / info.samplerate


def probe_durations(utterances: Sequence[Utterance], skip_bad_audio: bool) -> tuple[list[float | None], list[str]]:
    """Each utterance's duration (None for a file whose header cannot be read) and the ids of those unreadable ones;
    without `skip_bad_audio` an unreadable file is an error naming it."""
    durations, unreadable = [], []
    for utterance in utterances:
        try:
            durations.append(audio_duration(utterance.audio_path))
        except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
            if not skip_bad_audio:
                raise EvaluationError(_bad_audio_message(utterance.audio_path, error)) from None
            durations.append(None)
            unreadable.append(utterance.utterance_id)
    return durations, unreadable


def _bad_audio_message(path: Path, error: Exception) -> str:
    reason = str(error) if str(path) in str(error) else f"{path}: {error}"
    return (
        f"cannot use audio {reason}; fix or remove the file, or pass --skip-bad-audio to count and skip it (the "
        "score is then not the official one)."
    )


def length_sorted_batches(lengths: Sequence[float], batch_size: int) -> list[list[int]]:
    """Batches of example indices by decreasing length (ties in index order): each batch pads to its longest
    example, so similar lengths waste little, and the longest batch runs first (memory errors show at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [[order[j] for j in batch] for batch in plan_batches(len(order), batch_size)]


def in_example_order(records: list, batches: list[list[int]]) -> list:
    """`ShardedRun` records (in batch order) put back in example order."""
    ordered = [None] * len(records)
    for index, record in zip((i for batch in batches for i in batch), records, strict=True):
        ordered[index] = record
    return ordered


# --------------------------------------------------------------------------------------------------------------------
# Zipper transcription
# --------------------------------------------------------------------------------------------------------------------


def load_zipper(model_path: str, attn_implementation: str | None, device: torch.device):
    """A towerzoo Zipper Hub folder or repo and its processor (speech tokenizer + text tokenizer)."""
    from transformers import AutoProcessor

    model = load_model(model_path, "AutoModelForSpeechSeq2Seq", attn_implementation, device)
    if model.config.model_type != ZIPPER_MODEL_TYPE:
        raise EvaluationError(
            f"{model_path} holds a {type(model).__name__} ({model.config.model_type}), not a towerzoo Zipper; "
            "this task runs Zipper folders."
        )
    try:
        processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{model_path} has no loadable Zipper processor ({error}).") from None
    if not hasattr(processor, "speech_tokenizer"):
        raise EvaluationError(
            f"{model_path} holds a {type(processor).__name__}, not a Zipper processor (speech tokenizer + text "
            "tokenizer): convert the model with both tokenizers."
        )
    return model, processor


def new_tokens(ids: torch.Tensor, prompt_length: int, eos_token_id: int) -> list[tuple[int, bool]]:
    """For each generated row: how many new tokens precede its first eos (all of them without one), and whether it
    has none (generation stopped at `max_new_tokens`)."""
    rows = ids[:, prompt_length:].tolist()
    return [(row.index(eos_token_id), False) if eos_token_id in row else (len(row), True) for row in rows]


class ZipperSpeechInputs:
    """Waveforms → a Zipper processor's ASR inputs; picklable (the processor only), so it runs in DataLoader
    workers. `strict` makes silent and clipped audio errors (the speech tokenizer's thresholds); otherwise every
    non-empty waveform is transcribed."""

    def __init__(self, processor, strict: bool):
        self.processor = processor
        checks = "error" if strict else "ignore"
        processor.feature_extractor.on_silence = checks
        processor.feature_extractor.on_clipping = checks

    @property
    def sampling_rate(self) -> int:
        return self.processor.sampling_rate

    def check(self, waveform: np.ndarray) -> None:
        """Raise the speech tokenizer's `SpeechInputError` for audio it would refuse."""
        self.processor.feature_extractor.check_waveform(waveform, self.sampling_rate)

    def __call__(self, waveforms: list[np.ndarray], sampling_rate: int | None = None) -> dict[str, torch.Tensor]:
        inputs = self.processor(audio=waveforms, sampling_rate=sampling_rate or self.sampling_rate, task="asr")
        return dict(inputs)


class ZipperTranscriber:
    """Speech → text with a Zipper model: the processor's speech units, `generate` in the text modality until the
    text eos (beam search or greedy), the text tokenizer's decoding."""

    def __init__(self, model, processor, *, strict: bool, num_beams: int = 1, max_new_tokens: int = 448):
        self.model, self.processor = model, processor
        self.inputs = ZipperSpeechInputs(processor, strict)
        self.generation = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "do_sample": False}

    def generate(self, **inputs: torch.Tensor) -> list[dict]:
        """{"prediction", "truncated"} per row of processed inputs on the model's device."""
        ids = self.model.generate(**inputs, output_modality="text", **self.generation)
        texts = self.processor.batch_decode(ids, modality="text")
        lengths = new_tokens(ids, inputs["input_ids"].shape[1], self.processor.tokenizer.eos_token_id)
        return [{"prediction": text, "truncated": cut} for text, (_, cut) in zip(texts, lengths, strict=True)]

    def __call__(self, waveforms: list[np.ndarray], sampling_rate: int) -> list[str]:
        inputs = self.inputs(waveforms, sampling_rate)
        inputs = {key: value.to(self.model.device) for key, value in inputs.items()}
        return [record["prediction"] for record in self.generate(**inputs)]


def speech_batch(paths: list[Path], inputs: ZipperSpeechInputs, skip_bad_audio: bool, indices: list[int]) -> dict:
    """The processed audio of some utterances (run in DataLoader workers), with each one's `status` code
    (`AUDIO_STATUSES`) and the processor's time (`prepare_seconds`, part of the transcription time)."""
    status, waveforms = [], []
    for i in indices:
        try:
            waveform = load_audio(paths[i], inputs.sampling_rate)
            inputs.check(waveform)
        except (OSError, ValueError) as error:
            if not skip_bad_audio:
                raise EvaluationError(_bad_audio_message(paths[i], error)) from None
            status.append(AUDIO_STATUSES.index(_BAD_AUDIO_KINDS.get(type(error).__name__, "unreadable")))
            continue
        status.append(0)
        waveforms.append(waveform)
    started = time.perf_counter()
    batch = inputs(waveforms) if waveforms else {}
    seconds = time.perf_counter() - started
    return {**batch, "status": torch.tensor(status), "prepare_seconds": torch.tensor(seconds, dtype=torch.float64)}


def transcription_step(transcriber: ZipperTranscriber):
    """`step(status, prepare_seconds, **inputs)` for `ShardedRun.run_model`: one record per utterance of the batch
    ({"status", "prediction", "truncated", "seconds"}: its share of the batch's transcription time)."""

    def step(status: torch.Tensor, prepare_seconds: torch.Tensor, **inputs) -> list[dict]:
        started = time.perf_counter()
        outputs = iter(transcriber.generate(**inputs) if inputs else ())
        seconds = (float(prepare_seconds) + time.perf_counter() - started) / len(status)
        skipped = {"prediction": None, "truncated": False}
        return [
            {"status": AUDIO_STATUSES[code], **(next(outputs) if code == 0 else skipped), "seconds": seconds}
            for code in status.tolist()
        ]

    return step


# --------------------------------------------------------------------------------------------------------------------
# Scoring and the harness
# --------------------------------------------------------------------------------------------------------------------


def error_rates_metric(predictions: list[str], references: list[str], **options) -> dict:
    """WER and CER (and the protocol's counts and choices) from the `wer` evaluate module."""
    import evaluate

    from towerzoo.evaluation.metrics import metric_path

    return evaluate.load(metric_path("wer")).compute(predictions=predictions, references=references, **options)


def scoring_protocol(scores: dict) -> dict:
    """What the error rates mean, from the metric's output (its options and the normaliser's spelling table)."""
    return {
        "normalizer": "whisper-english" if scores["normalize"] else None,
        "normalize": scores["normalize"],
        "keep_apostrophes": scores["keep_apostrophes"],
        "spelling_mapping": scores["spelling_mapping"],
        "average": scores["average"],
        "empty_references": "dropped after normalisation and counted",
        "rounding": "round(100 * rate, 2)",
    }


def check_options(average: str, num_beams: int, max_new_tokens: int) -> None:
    """The scoring and decoding options the speech harnesses share, checked before anything loads."""
    if average not in AVERAGES:
        raise EvaluationError(f"unknown --average {average!r}; choose one of {', '.join(AVERAGES)}.")
    if num_beams < 1 or max_new_tokens < 1:
        raise EvaluationError(f"--num-beams and --max-new-tokens must be >= 1, got {num_beams}, {max_new_tokens}.")


def evaluate_asr(options: ASROptions, accelerator=None) -> dict | None:
    """Transcribe the corpus (sharded over `accelerator`'s processes, resumable), score it and write the results JSON
    with every utterance's prediction; returns the results on the main process, None on the others."""
    check_options(options.average, options.num_beams, options.max_new_tokens)
    timer, started = Timer(), time.time()
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    with timer("loading"):
        corpus = load_corpus(options, options.limit)
        durations, unreadable = probe_durations(corpus.utterances, options.skip_bad_audio)
        model, processor = load_zipper(options.model, options.attn_implementation, device)
        transcriber = ZipperTranscriber(
            model, processor, strict=True, num_beams=options.num_beams, max_new_tokens=options.max_new_tokens
        )
    kept = [i for i, duration in enumerate(durations) if duration is not None]
    utterances = [corpus.utterances[i] for i in kept]
    if not utterances:
        raise EvaluationError(f"no readable audio among the {len(corpus.utterances)} utterances of {options.data}.")
    run_config = {
        "batch_size": options.batch_size,
        "dtype": options.dtype,
        "attn_implementation": model.config._attn_implementation,
        "limit": options.limit,
        "num_beams": options.num_beams,
        "max_new_tokens": options.max_new_tokens,
        "skip_bad_audio": options.skip_bad_audio,
        "num_processes": accelerator.num_processes if accelerator is not None else 1,
    }
    key = fingerprint(
        "asr",
        model_identity(options.model, model),
        [(u.utterance_id, u.transcript, file_fingerprint(u.audio_path)) for u in utterances],
        {k: v for k, v in run_config.items() if k != "num_processes"},
    )
    work_dir = Path(options.work_dir or f"{options.output}.work") / key
    batches = length_sorted_batches([durations[i] for i in kept], options.batch_size)
    run = ShardedRun(batches, work_dir, accelerator, description="ASR batches")
    with timer("inference"):
        make_inputs = functools.partial(
            speech_batch, [u.audio_path for u in utterances], transcriber.inputs, options.skip_bad_audio
        )
        records = run.run_model(
            transcription_step(transcriber), make_inputs, device, options.dtype, options.num_workers
        )
    if records is None:
        return None
    records = in_example_order(records, batches)
    scored = [(u, durations[i], r) for u, i, r in zip(utterances, kept, records, strict=True) if r["status"] == "ok"]
    if not scored:
        raise EvaluationError("every utterance's audio was skipped: there is nothing to score.")
    with timer("scoring"):
        scores = error_rates_metric(
            [r["prediction"] for _, _, r in scored],
            [u.transcript for u, _, _ in scored],
            normalize=options.normalize,
            average=options.average,
        )
    bad_audio = {
        kind: [u.utterance_id for u, r in zip(utterances, records, strict=True) if r["status"] == kind]
        for kind in AUDIO_STATUSES[1:]
    }
    bad_audio["unreadable"] = unreadable + bad_audio["unreadable"]
    skipped_ids = {"empty_transcripts": corpus.empty_transcripts, **{f"{k}_audio": v for k, v in bad_audio.items()}}
    audio_seconds = sum(duration for _, duration, _ in scored)
    transcription_seconds = sum(record["seconds"] for record in records)
    dataset, split = dataset_names(options)
    results = {
        "model": options.model,
        "revision": getattr(model.config, "_commit_hash", None),
        "task": "asr",
        "dataset": dataset,
        "split": split,
        "num_examples": len(scored),
        "skipped": {
            **{kind: len(ids) for kind, ids in skipped_ids.items()},
            "empty_normalized_references": scores["num_dropped_empty_references"],
        },
        "skipped_utterances": skipped_ids,
        "protocol": {
            "name": "open-asr-leaderboard",
            **scoring_protocol(scores),
            "rtfx": "audio seconds / transcription seconds (speech tokenizer + generation + detokenisation, summed "
            "over batches; file decoding left out)",
            "layout": options.layout,
            "decoding": transcriber.generation,
            "bad_audio": "skipped and counted" if options.skip_bad_audio else "error",
        },
        "metrics": {
            "wer": scores["wer"],
            "cer": scores["cer"],
            "rtfx": round(audio_seconds / max(transcription_seconds, 1e-9), 2),
        },
        "counts": {
            "audio_seconds": audio_seconds,
            "transcription_seconds": transcription_seconds,
            "truncated": sum(r["truncated"] for _, _, r in scored),
        },
        "predictions": [
            {
                "utterance_id": u.utterance_id,
                "audio": str(u.audio_path),
                "duration": duration,
                "reference": u.transcript,
                "prediction": r["prediction"],
                "truncated": r["truncated"],
            }
            for u, duration, r in scored
        ],
        "config": run_config,
        "resumed_batches": run.stats.get("resumed_batches", 0),
        "timing": {**timer.seconds, "total": time.time() - started},
    }
    return finish_run(options, results, work_dir)
