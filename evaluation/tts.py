"""`towerzoo eval tts`: intelligibility of a towerzoo Zipper model's speech (text → speech), as the word error rate of
an ASR model's transcript of the synthesised audio against the input text, with duration statistics.

Texts are the transcripts of a LibriSpeech-style folder or an audiofolder (read as `towerzoo eval asr` reads them;
empty ones skipped and counted), and the reference recordings next to them give each utterance's reference
duration. Each batch of texts (sorted by length, longest first; sharded over processes and resumable with
`runner.ShardedRun`) is synthesised (`generate` in the speech modality until the speech eos, then the processor's
speech decoding to a waveform), written as 32-bit float WAV with `--save-audio`, and transcribed in the same step by
the ASR model: a towerzoo Zipper folder (`--asr-kind zipper`, greedy, every non-empty waveform transcribed, silent or
not) or any transformers ASR folder or repo through `pipeline("automatic-speech-recognition")` (`--asr-kind
pipeline`). Texts are tokenised in the main process (cheap; `--num-workers` does not apply); both models stay loaded.

A synthesis without audio (the speech eos at once, or a single unit: one frame spans no hop) is "empty", one whose
decoding fails is "failed"; both are counted and scored with an empty transcript (every reference word deleted), so a
model is not rewarded for staying silent. Scoring uses the `wer` metric module with Whisper's English normaliser.
Two choices change the number, and published TTS evaluations make them differently, so both are options recorded
with the results: `--average corpus` (total errors / total reference words, the default, as open_asr_leaderboard and
`towerzoo eval asr`) or `utterance` (the mean of per-utterance rates, as F5-TTS reports), and `--keep-apostrophes`
(seed-tts-eval keeps them; F5-TTS and Whisper's normaliser drop them); the results also give both averages.
"""

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from towerzoo.evaluation.asr import (
    AVERAGES,
    SpeechDataOptions,
    ZipperTranscriber,
    check_options,
    dataset_names,
    error_rates_metric,
    in_example_order,
    length_sorted_batches,
    load_corpus,
    load_zipper,
    new_tokens,
    probe_durations,
    scoring_protocol,
)
from towerzoo.evaluation.audio_io import SUPPORTED_EXTENSIONS
from towerzoo.evaluation.runner import (
    EvaluationError,
    RunOptions,
    ShardedRun,
    Timer,
    fingerprint,
    finish_run,
    model_identity,
)

ASR_KINDS = ("zipper", "pipeline")
SYNTHESIS_STATUSES = ("ok", "empty", "failed")


@dataclass(kw_only=True)
class TTSOptions(SpeechDataOptions, RunOptions):
    """What `towerzoo eval tts` takes (see the CLI's help for each option)."""

    asr_model: str
    asr_kind: str = "zipper"
    asr_max_new_tokens: int = 448
    batch_size: int = 8
    num_beams: int = 1
    max_new_tokens: int = 1500
    do_sample: bool = False
    seed: int = 0
    average: str = "corpus"
    keep_apostrophes: bool = False
    save_audio: Path | None = None


class PipelineTranscriber:
    """Speech → text with a transformers `pipeline("automatic-speech-recognition")` (Whisper, wav2vec 2.0, …)."""

    def __init__(self, model_path: str, device: torch.device):
        from transformers import pipeline

        try:
            self.pipe = pipeline(
                "automatic-speech-recognition", model=model_path, device=device, trust_remote_code=False
            )
        except (OSError, ValueError, KeyError) as error:
            reason = " ".join(str(error).split())
            raise EvaluationError(
                f"cannot load {model_path} as a transformers ASR pipeline ({reason}); for a towerzoo Zipper folder "
                "use --asr-kind zipper."
            ) from None
        self.pipe.model.eval()  # pipeline() leaves a freshly built model in training mode
        self.model = self.pipe.model

    def __call__(self, waveforms: list[np.ndarray], sampling_rate: int) -> list[str]:
        rate = self.pipe.feature_extractor.sampling_rate
        if rate != sampling_rate:
            waveforms = [soxr.resample(waveform, sampling_rate, rate, quality="HQ") for waveform in waveforms]
        outputs = self.pipe([{"raw": w, "sampling_rate": rate} for w in waveforms], batch_size=len(waveforms))
        return [output["text"] for output in outputs]


def load_transcriber(options: TTSOptions, device: torch.device):
    """The ASR model that listens to the synthesised audio."""
    if options.asr_kind == "pipeline":
        return PipelineTranscriber(options.asr_model, device)
    model, processor = load_zipper(options.asr_model, options.attn_implementation, device)
    return ZipperTranscriber(model, processor, strict=False, max_new_tokens=options.asr_max_new_tokens)


def audio_file_name(utterance_id: str) -> Path:
    """Where an utterance's synthesis goes under `--save-audio`: its id (an audiofolder's file name without its audio
    extension) + `.wav`."""
    name = Path(utterance_id)
    return name.with_suffix(".wav") if name.suffix.lower() in SUPPORTED_EXTENSIONS else Path(f"{utterance_id}.wav")


def duration_statistics(seconds: list[float]) -> dict:
    """Mean, median, min, max and total of some durations (None for each when there are none)."""
    if not seconds:
        return dict.fromkeys(("mean", "median", "min", "max", "total"))
    return {
        "mean": statistics.fmean(seconds),
        "median": statistics.median(seconds),
        "min": min(seconds),
        "max": max(seconds),
        "total": sum(seconds),
    }


def _durations(records: list[dict], reference: list[float | None]) -> dict:
    """Duration statistics of the syntheses with audio, their ratio to the reference recordings, and the counts of
    empty and failed syntheses."""
    made = [record["duration"] for record in records if record["status"] == "ok"]
    pairs = [(r["duration"], ref) for r, ref in zip(records, reference, strict=True) if r["status"] == "ok" and ref]
    ratios = [synthesised / ref for synthesised, ref in pairs]
    return {
        "synthesized_seconds": duration_statistics(made),
        "ratio_to_reference": {
            "mean": statistics.fmean(ratios) if ratios else None,
            "median": statistics.median(ratios) if ratios else None,
            "total": sum(s for s, _ in pairs) / sum(ref for _, ref in pairs) if pairs else None,
            "num_utterances": len(pairs),
        },
        "reference_seconds": duration_statistics([ref for ref in reference if ref]),
        "num_synthesized": len(made),
        "num_empty": sum(record["status"] == "empty" for record in records),
        "num_failed": sum(record["status"] == "failed" for record in records),
        "num_truncated": sum(record["truncated"] for record in records),
    }


def evaluate_tts(options: TTSOptions, accelerator=None) -> dict | None:
    """Synthesise every text, transcribe the audio with the ASR model (sharded over `accelerator`'s processes,
    resumable), score the transcripts against the texts and write the results JSON; returns the results on the main
    process, None on the others."""
    check_options(options.average, options.num_beams, options.max_new_tokens)
    if options.asr_kind not in ASR_KINDS:
        raise EvaluationError(f"unknown --asr-kind {options.asr_kind!r}; choose one of {', '.join(ASR_KINDS)}.")
    timer, started = Timer(), time.time()
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    with timer("loading"):
        corpus = load_corpus(options, options.limit)
        utterances = corpus.utterances
        names = [audio_file_name(u.utterance_id) for u in utterances]
        if len(set(names)) < len(names):
            raise EvaluationError("two utterance ids give the same WAV name; --save-audio cannot keep both apart.")
        model, processor = load_zipper(options.model, options.attn_implementation, device)
        transcriber = load_transcriber(options, device)
    generation = {
        "num_beams": options.num_beams,
        "max_new_tokens": options.max_new_tokens,
        "do_sample": options.do_sample,
    }
    run_config = {
        "batch_size": options.batch_size,
        "dtype": options.dtype,
        "attn_implementation": model.config._attn_implementation,
        "limit": options.limit,
        **generation,
        "seed": options.seed if options.do_sample else None,
        "asr_max_new_tokens": options.asr_max_new_tokens if options.asr_kind == "zipper" else None,
        "save_audio": str(options.save_audio) if options.save_audio else None,
        "num_processes": accelerator.num_processes if accelerator is not None else 1,
    }
    asr_identity = {"kind": options.asr_kind, **model_identity(options.asr_model, transcriber.model)}
    key = fingerprint(
        "tts",
        model_identity(options.model, model),
        asr_identity,
        [(u.utterance_id, u.transcript) for u in utterances],
        {k: v for k, v in run_config.items() if k != "num_processes"},
    )
    work_dir = Path(options.work_dir or f"{options.output}.work") / key
    batches = length_sorted_batches([len(u.transcript) for u in utterances], options.batch_size)
    run = ShardedRun(batches, work_dir, accelerator, description="TTS batches")
    eos = processor.speech_eos_token_id

    def text_batch(indices: list[int]) -> dict:
        inputs = processor(text=[utterances[i].transcript for i in indices], task="tts")
        return {**inputs, "index": torch.tensor(indices)}

    def step(index: torch.Tensor, **inputs) -> list[dict]:
        if options.do_sample:  # one seed per batch, whatever process runs it and whenever
            torch.manual_seed(options.seed + int(index[0]))
        ids = model.generate(**inputs, output_modality="speech", **generation)
        records, waveforms = [], []
        lengths = new_tokens(ids, inputs["input_ids"].shape[1], eos)
        for i, row, (units, cut) in zip(index.tolist(), ids, lengths, strict=True):
            record = {"status": "ok", "duration": 0.0, "num_units": units, "truncated": cut, "error": None}
            try:
                waveform = processor.decode(row, modality="speech")
            except ValueError as error:
                record.update(status="failed", error=str(error))
                records.append(record)
                continue
            if waveform.size == 0:
                record["status"] = "empty"
            else:
                record["duration"] = waveform.size / processor.sampling_rate
                waveforms.append(waveform)
                if options.save_audio is not None:
                    path = Path(options.save_audio) / names[i]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    soundfile.write(path, waveform, processor.sampling_rate, subtype="FLOAT")
            records.append(record)
        transcripts = iter(transcriber(waveforms, processor.sampling_rate) if waveforms else ())
        for record in records:
            record["transcript"] = next(transcripts) if record["status"] == "ok" else ""
        return records

    with timer("inference"):
        records = run.run_model(step, text_batch, device, options.dtype, num_workers=0)
    if records is None:
        return None
    records = in_example_order(records, batches)
    with timer("scoring"):
        texts = [u.transcript for u in utterances]
        transcripts = [record["transcript"] for record in records]
        scores = {
            average: error_rates_metric(
                transcripts, texts, normalize=True, average=average, keep_apostrophes=options.keep_apostrophes
            )
            for average in AVERAGES
        }
        chosen = scores[options.average]
        reference, _ = probe_durations(utterances, skip_bad_audio=True)  # None where the header is unreadable
    dataset, split = dataset_names(options)
    results = {
        "model": options.model,
        "revision": getattr(model.config, "_commit_hash", None),
        "task": "tts",
        "dataset": dataset,
        "split": split,
        "num_examples": len(utterances),
        "skipped": {
            "empty_transcripts": len(corpus.empty_transcripts),
            "empty_normalized_references": chosen["num_dropped_empty_references"],
        },
        "skipped_utterances": {"empty_transcripts": corpus.empty_transcripts},
        "protocol": {
            "name": "tts-intelligibility-asr-wer",
            "asr_model": options.asr_model,
            "asr_kind": options.asr_kind,
            "asr_revision": asr_identity["revision"],
            **scoring_protocol(chosen),
            "empty_or_failed_syntheses": "scored with an empty transcript",
            "layout": options.layout,
            "decoding": generation,
        },
        "metrics": {"wer": chosen["wer"], "cer": chosen["cer"]},
        "by_average": {average: {"wer": s["wer"], "cer": s["cer"]} for average, s in scores.items()},
        "durations": _durations(records, reference),
        "utterances": [
            {
                "utterance_id": u.utterance_id,
                "text": u.transcript,
                "transcript": record["transcript"],
                "status": record["status"],
                "duration": record["duration"],
                "reference_audio": str(u.audio_path),
                "reference_duration": ref,
                "num_units": record["num_units"],
                "truncated": record["truncated"],
                "audio": str(Path(options.save_audio) / name)
                if options.save_audio is not None and record["status"] == "ok"
                else None,
                "error": record["error"],
            }
            for u, name, record, ref in zip(utterances, names, records, reference, strict=True)
        ],
        "config": run_config,
        "resumed_batches": run.stats.get("resumed_batches", 0),
        "timing": {**timer.seconds, "total": time.time() - started},
    }
    return finish_run(options, results, work_dir)
