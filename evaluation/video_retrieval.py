"""`towerzoo eval video-retrieval`: text-video retrieval with a towerzoo video-text model (VidLA) on MSR-VTT 1k-A,
DiDeMo (paragraph-to-video) or ActivityNet Captions (paragraph-to-video).

1. Embeddings: `get_video_features` of every video (frames sampled and preprocessed by the folder's processor, in
   DataLoader workers) and `get_text_features` of every query, sharded over processes, resumable, and cached on disk
   keyed by the model, the data and the options, so a rerun does not compute them again.
2. Similarity: cosine similarities of the L2-normalised embeddings, queries x videos.
3. Metrics from `metrics/retrieval_recall` with rank statistics: R@1/5/10, median and mean rank (1-based), both
   directions (text->video: each query's video; video->text: the best-ranked of the video's queries). With
   `--dual-softmax`, also the same metrics after CAMoE's dual-softmax inference, labelled as transductive: it uses
   the whole query set at once (`sim * softmax(sim / T, dim=0) * N`, the softmax over the queries of each video for
   text->video and over the videos of each query for video->text).

Data (CLIP4Clip's layouts): MSR-VTT's `MSRVTT_JSFUSION_test.csv` (columns key, vid_key, video_id, sentence; one
caption per video); DiDeMo's `test_data.json` (a list of moments with `video` and `description`; a video's
descriptions joined in file order into one paragraph); ActivityNet Captions' `val_1.json` (`{video id: {sentences:
[...]}}`; the sentences joined into one paragraph). Videos are `<videos>/<video id>.<ext>` (mp4, webm, mkv, avi, mov,
m4v; ActivityNet ids with or without their `v_` prefix; DiDeMo names as given, or their stem with those extensions).
"""

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from towerzoo.evaluation.metrics.retrieval_recall.recall import retrieval_recall
from towerzoo.evaluation.runner import (
    EvaluationError,
    RunOptions,
    ShardedRun,
    Timer,
    count_truncated,
    default_cache_dir,
    file_fingerprint,
    fingerprint,
    finish_run,
    load_model,
    model_identity,
    plan_batches,
    read_json,
    save_tensors_atomically,
)

logger = logging.getLogger(__name__)
DATASETS = ("msrvtt", "didemo", "activitynet")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
MSRVTT_COLUMNS = ("key", "vid_key", "video_id", "sentence")
DEFAULT_DUAL_SOFTMAX_TEMPERATURE = 0.01  # on cosine similarities: CAMoE's temperature 1 on logits scaled by 100
SHARDED_STEPS = ("video-embeddings", "text-embeddings")
# the metric's names → this task's
METRIC_NAMES = {
    **{f"text_to_image_{s}": f"text_to_video_{s}" for s in ("r1", "r5", "r10", "median_rank", "mean_rank")},
    **{f"image_to_text_{s}": f"video_to_text_{s}" for s in ("r1", "r5", "r10", "median_rank", "mean_rank")},
    "r_mean": "r_mean",
}


# --------------------------------------------------------------------------------------------------------------------
# Annotations
# --------------------------------------------------------------------------------------------------------------------


def _read_msrvtt(path: Path) -> list[tuple[str, str]]:
    """(video id, caption) rows of CLIP4Clip's MSR-VTT test CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in ("video_id", "sentence") if column not in (reader.fieldnames or [])]
            if missing:
                raise EvaluationError(
                    f"{path} has columns {reader.fieldnames}, without {missing}: MSR-VTT needs CLIP4Clip's "
                    f"MSRVTT_JSFUSION_test.csv layout ({', '.join(MSRVTT_COLUMNS)})."
                )
            return [(row["video_id"].strip(), row["sentence"] or "") for row in reader]
    except FileNotFoundError:
        raise EvaluationError(f"annotations file {path} does not exist.") from None
    except UnicodeDecodeError as error:
        raise EvaluationError(f"{path} is not a UTF-8 CSV file ({error}).") from None


def _read_didemo(path: Path) -> list[tuple[str, str]]:
    """(video, paragraph) per video of a DiDeMo JSON: its moments' descriptions joined in file order."""
    data = read_json(path, "DiDeMo annotations")
    if not isinstance(data, list) or not all(isinstance(m, dict) and "video" in m for m in data):
        raise EvaluationError(
            f"{path} is not a DiDeMo annotations file: expected a list of moments with 'video' and 'description' "
            "(CLIP4Clip's test_data.json)."
        )
    paragraphs: dict[str, list[str]] = {}
    for moment in data:
        paragraphs.setdefault(str(moment["video"]), []).append(str(moment.get("description") or "").strip())
    return [(video, " ".join(s for s in sentences if s)) for video, sentences in paragraphs.items()]


def _read_activitynet(path: Path) -> list[tuple[str, str]]:
    """(video id, paragraph) per video of an ActivityNet Captions JSON: its sentences stripped and joined."""
    data = read_json(path, "ActivityNet Captions annotations")
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "sentences" in v for v in data.values()):
        raise EvaluationError(
            f"{path} is not an ActivityNet Captions file: expected {{video id: {{'sentences': [...], ...}}}} "
            "(val_1.json)."
        )
    return [(video, " ".join(s.strip() for s in entry["sentences"] if s.strip())) for video, entry in data.items()]


READERS = {"msrvtt": _read_msrvtt, "didemo": _read_didemo, "activitynet": _read_activitynet}


def _video_file(root: Path, video_id: str) -> Path | None:
    """`<root>/<id>` as given if it is a file, else `<root>/<id or its stem><ext>`, also without ActivityNet's `v_`."""
    if (root / video_id).is_file():
        return root / video_id
    stems = [video_id, Path(video_id).stem]
    stems += [stem[2:] for stem in stems if stem.startswith("v_")] + [f"v_{video_id}"]
    for stem in dict.fromkeys(stems):
        for extension in VIDEO_EXTENSIONS:
            if (root / f"{stem}{extension}").is_file():
                return root / f"{stem}{extension}"
    return None


def load_video_text(
    dataset: str, annotations: Path, videos: Path, limit: int | None = None, skip_missing_videos: bool = False
) -> tuple[list[dict], list[dict], dict]:
    """The videos (`video_id`, `path`) and the text queries (`text`, `video_index`), each video once in first-seen
    order, plus `{"skipped": {...}}`. `limit` keeps the first N videos."""
    if dataset not in DATASETS:
        raise EvaluationError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}.")
    rows = READERS[dataset](Path(annotations))
    if not rows:
        raise EvaluationError(f"{annotations} holds no video-text pairs.")
    root = Path(videos)
    if not root.is_dir():
        raise EvaluationError(f"video folder {videos} does not exist.")
    empty = [video for video, text in rows if not text.strip()]
    if empty:
        raise EvaluationError(
            f"video {empty[0]} has an empty {'caption' if dataset == 'msrvtt' else 'paragraph'} in "
            f"{annotations}; every query needs text."
        )
    video_rows, text_rows, index_of, missing = [], [], {}, []
    for video_id, text in rows:
        if video_id not in index_of:
            if limit is not None and len(video_rows) >= limit:
                continue
            path = _video_file(root, video_id)
            if path is None:
                missing.append(video_id)
                index_of[video_id] = None
                continue
            index_of[video_id] = len(video_rows)
            video_rows.append({"video_id": video_id, "path": str(path)})
        if index_of[video_id] is not None:
            text_rows.append({"text": text, "video_index": index_of[video_id]})
    skipped = {}
    if missing:
        if not skip_missing_videos:
            raise EvaluationError(
                f"{len(missing)} videos of {annotations} are missing from {videos} (e.g. {missing[0]}, looked for "
                f"{root / missing[0]}[{'|'.join(VIDEO_EXTENSIONS)}]); add them, or pass --skip-missing-videos to "
                "score the rest (the metrics are then not the official ones)."
            )
        skipped["missing_videos"] = len(missing)
        logger.warning("skipping %d videos missing from %s (and their queries)", len(missing), videos)
    if not video_rows:
        raise EvaluationError("no videos to evaluate.")
    return video_rows, text_rows, {"skipped": skipped}


# --------------------------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------------------------


def dual_softmax(similarity: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CAMoE's dual-softmax scores of a queries x videos matrix for each direction: text->video `sim * softmax(sim /
    T, dim=0) * N` (a prior over the queries of each video), and video->text the same on the transpose (a prior over
    the videos of each query), returned queries x videos."""
    sim = similarity.double()
    text_to_video = sim * torch.softmax(sim / temperature, dim=0) * sim.shape[0]
    video_to_text = (sim.t() * torch.softmax(sim.t() / temperature, dim=0) * sim.shape[1]).t()
    return text_to_video.float(), video_to_text.float()


def video_text_metrics(
    text_to_video_scores: torch.Tensor, text_to_video: list[int], video_to_text_scores: torch.Tensor | None = None
) -> dict[str, float]:
    """R@1/5/10, median and mean rank, both directions, from `metrics/retrieval_recall` (called directly), in this
    task's names; `video_to_text_scores` (default: the same matrix) gives the video->text side."""
    computed = retrieval_recall(text_to_video_scores.numpy(), text_to_video, rank_statistics=True)
    if video_to_text_scores is not None:
        other = retrieval_recall(video_to_text_scores.numpy(), text_to_video, rank_statistics=True)
        computed.update({k: v for k, v in other.items() if k.startswith("image_to_text")})
        computed["r_mean"] = sum(computed[f"{d}_r{k}"] for d in ("text_to_image", "image_to_text") for k in (1, 5, 10))
        computed["r_mean"] /= 6
    return {name: computed[metric_name] for metric_name, name in METRIC_NAMES.items()}


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _VideoInputs:
    """Model inputs from example indices; runs in DataLoader workers (decoding, frame sampling, tokenising)."""

    processor: object
    video_paths: list[str]
    texts: list[str]
    num_frames: int
    skip_bad_videos: bool

    def text_batch(self, indices) -> dict:
        return self.processor(text=[self.texts[i] for i in indices], padding="max_length", return_tensors="pt")

    def video_batch(self, indices) -> dict:
        """The batch's readable videos (`pixel_values_videos`, `video_mask` if the processor pads), and per video
        `ok` (readable) and `short` (fewer frames than `num_frames`: repeated or padded)."""
        processed, ok, short = [], [], []
        for i in indices:
            path = self.video_paths[i]
            try:
                out = self.processor.video_processor(
                    path, num_frames=self.num_frames, return_frame_indices=True, return_tensors="pt"
                )
            except (ValueError, OSError, RuntimeError) as error:
                if not self.skip_bad_videos:
                    raise EvaluationError(
                        f"cannot read video {path} ({error}); replace the file, or pass --skip-bad-videos to score "
                        "the rest (the metrics are then not the official ones)."
                    ) from None
                logger.warning("skipping unreadable video %s (%s)", path, error)
                ok.append(False)
                short.append(False)
                continue
            frames = out.pop("frame_indices")[0]
            ok.append(True)
            short.append(bool((frames < 0).any()) or len(set(frames.tolist())) < self.num_frames)
            processed.append(out)
        batch = {"ok": torch.tensor(ok), "short": torch.tensor(short)}
        if processed:
            for key in processed[0]:
                batch[key] = torch.cat([out[key] for out in processed])
        return batch


@dataclass(kw_only=True)
class VideoRetrievalOptions(RunOptions):
    """What `towerzoo eval video-retrieval` takes (see the CLI's help for each option)."""

    dataset: str
    annotations: Path
    videos: Path
    num_frames: int | None = None
    batch_size: int = 16
    dual_softmax: bool = False
    dual_softmax_temperature: float = DEFAULT_DUAL_SOFTMAX_TEMPERATURE
    skip_missing_videos: bool = False
    skip_bad_videos: bool = False
    cache_dir: Path | None = None
    save_scores: Path | None = None


class _VideoRetrieval:
    """One run's model, data and folders."""

    def __init__(self, options: VideoRetrievalOptions, accelerator):
        from transformers import AutoProcessor

        if options.batch_size < 1:
            raise EvaluationError(f"--batch-size must be at least 1, got {options.batch_size}.")
        if options.num_frames is not None and options.num_frames < 1:
            raise EvaluationError(f"--num-frames must be at least 1, got {options.num_frames}.")
        if not options.dual_softmax_temperature > 0:
            raise EvaluationError(
                f"--dual-softmax-temperature must be positive, got {options.dual_softmax_temperature}."
            )
        if options.attn_implementation is not None and "flash" in options.attn_implementation:
            raise EvaluationError(
                f"--attn-implementation {options.attn_implementation}: VidLA's video tower needs its attention mask "
                "(frames, [MST] levels), which flash kernels cannot take; use sdpa (default), flex_attention or eager."
            )
        self.options, self.accelerator = options, accelerator
        self.device = accelerator.device if accelerator is not None else torch.device("cpu")
        self.is_main = accelerator is None or accelerator.is_main_process
        self.videos, self.queries, self.info = load_video_text(
            options.dataset, options.annotations, options.videos, options.limit, options.skip_missing_videos
        )
        self.model = load_model(options.model, "AutoModel", options.attn_implementation, self.device)
        if not hasattr(self.model, "get_video_features"):
            raise EvaluationError(
                f"{options.model} holds a {type(self.model).__name__}, which has no get_video_features: video "
                "retrieval needs a video-text model (VidLA)."
            )
        self.processor = AutoProcessor.from_pretrained(options.model, trust_remote_code=True)
        video_processor = getattr(self.processor, "video_processor", None)
        if video_processor is None or not hasattr(video_processor, "frame_indices"):
            raise EvaluationError(f"{options.model}'s processor has no VidLA video processor.")
        self.num_frames = options.num_frames or video_processor.num_frames
        self.video_paths = [row["path"] for row in self.videos]
        self.texts = [row["text"] for row in self.queries]
        self.text_to_video = [row["video_index"] for row in self.queries]
        self.truncated = count_truncated(self.processor, self.texts)
        if self.truncated:
            logger.warning(
                "%d of %d queries are longer than %d tokens and are truncated",
                *(self.truncated, len(self.texts), self.processor.max_text_length),
            )
        self.inputs = _VideoInputs(
            self.processor, self.video_paths, self.texts, self.num_frames, options.skip_bad_videos
        )
        self.config = {
            "num_frames": self.num_frames,
            "frame_sampling": video_processor.sampling,
            "pad_short_clips": video_processor.pad_short_clips,
            "frame_size": video_processor.size,
            "batch_size": options.batch_size,
            "dtype": options.dtype,
            "attn_implementation": self.model.config._attn_implementation,
            "max_text_length": self.processor.max_text_length,
            "limit": options.limit,
            "dual_softmax": options.dual_softmax,
            "dual_softmax_temperature": options.dual_softmax_temperature if options.dual_softmax else None,
            "skip_missing_videos": options.skip_missing_videos,
            "skip_bad_videos": options.skip_bad_videos,
            "num_processes": accelerator.num_processes if accelerator is not None else 1,
        }
        embedding_key = fingerprint(
            "video-retrieval-embeddings",
            model_identity(options.model, self.model),
            options.dataset,
            file_fingerprint(options.annotations),
            self.texts,
            [file_fingerprint(path) for path in self.video_paths],
            {k: self.config[k] for k in ("num_frames", "frame_sampling", "pad_short_clips", "frame_size")},
            {k: self.config[k] for k in ("batch_size", "dtype", "attn_implementation", "max_text_length")},
        )
        self.cache_file = (
            Path(options.cache_dir or default_cache_dir("video-retrieval")) / f"{embedding_key}.safetensors"
        )
        run_key = fingerprint("video-retrieval", embedding_key, options.skip_bad_videos)
        self.work_dir = Path(options.work_dir or f"{options.output}.work") / run_key
        self.stats = {"embedding_cache": {"path": str(self.cache_file), "reused": False}}

    def _sharded(self, num_examples: int, name: str, description: str, step, make_inputs):
        """Run `step` over the examples in fixed batches, sharded and resumable; the tensor on the main process."""
        batches = plan_batches(num_examples, self.options.batch_size)
        run = ShardedRun(batches, self.work_dir / name, self.accelerator, description, tensor_records=True)
        result = run.run_model(step, make_inputs, self.device, self.options.dtype, self.options.num_workers)
        self.stats[name] = {k: run.stats[k] for k in ("computed_batches", "resumed_batches")}
        return result

    def _video_step(self, ok, short, pixel_values_videos=None, video_mask=None) -> torch.Tensor:
        """Rows of [features, readable, short]; features NaN for unreadable videos."""
        width = self.model.config.projection_dim
        rows = torch.full((len(ok), width + 2), float("nan"), device=ok.device)
        if pixel_values_videos is not None:
            rows[ok, :width] = self.model.get_video_features(pixel_values_videos, video_mask).float()
        rows[:, width] = ok.float()
        rows[:, width + 1] = short.float()
        return rows

    def embeddings(self) -> dict[str, torch.Tensor] | None:
        """`video_embeds` (NaN rows for unreadable videos), `video_ok`, `video_short`, `text_embeds`: from the cache,
        or computed (sharded) and cached by the main process (None on the others)."""
        from safetensors.torch import load_file

        cached = load_file(self.cache_file) if self.cache_file.is_file() else {}
        if len(cached.get("video_embeds", ())) == len(self.videos) and len(cached.get("text_embeds", ())) == len(
            self.texts
        ):
            self.stats["embedding_cache"]["reused"] = True
            return cached
        video_rows = self._sharded(
            len(self.videos), "video-embeddings", "video embeddings", self._video_step, self.inputs.video_batch
        )
        text_embeds = self._sharded(
            len(self.texts), "text-embeddings", "text embeddings", self.model.get_text_features, self.inputs.text_batch
        )
        if not self.is_main:
            return None
        width = self.model.config.projection_dim
        embeddings = {
            "video_embeds": video_rows[:, :width].contiguous(),
            "video_ok": video_rows[:, width].bool(),
            "video_short": video_rows[:, width + 1].bool(),
            "text_embeds": text_embeds,
        }
        save_tensors_atomically(embeddings, self.cache_file)
        return embeddings


def _normalize(embeds: torch.Tensor) -> torch.Tensor:
    return embeds / embeds.norm(p=2, dim=-1, keepdim=True)


def evaluate_video_retrieval(options: VideoRetrievalOptions, accelerator=None) -> dict | None:
    """Embed every video and query (sharded over `accelerator`'s processes, resumable, cached), rank, score, and write
    the results JSON; returns the results on the main process, None on the others."""
    timer, started = Timer(), time.time()
    with timer("loading"):
        run = _VideoRetrieval(options, accelerator)
    with timer("embedding"):
        embeddings = run.embeddings()
    if not run.is_main:
        return None
    with timer("scoring"):
        ok = embeddings["video_ok"]
        if not ok.all() and not options.skip_bad_videos:  # cached by a --skip-bad-videos run
            bad = run.video_paths[int((~ok).nonzero()[0])]
            raise EvaluationError(f"cannot read video {bad}; replace the file, or pass --skip-bad-videos.")
        if not ok.any():
            raise EvaluationError("no video could be read.")
        new_index = torch.cumsum(ok.long(), 0) - 1
        kept_texts = [t for t, v in enumerate(run.text_to_video) if ok[v]]
        text_to_video = [int(new_index[run.text_to_video[t]]) for t in kept_texts]
        video_embeds = _normalize(embeddings["video_embeds"][ok])
        text_embeds = _normalize(embeddings["text_embeds"][kept_texts])
        similarity = (text_embeds @ video_embeds.t()).float()
        metrics = video_text_metrics(similarity, text_to_video)
        dual = None
        if options.dual_softmax:
            dual = dual_softmax(similarity, options.dual_softmax_temperature)
            dual_metrics = video_text_metrics(dual[0], text_to_video, dual[1])
    if options.save_scores is not None:
        tensors = {"similarity": similarity, "text_to_video": torch.tensor(text_to_video)}
        if dual is not None:
            tensors.update(dual_softmax_text_to_video=dual[0], dual_softmax_video_to_text=dual[1])
        save_tensors_atomically(tensors, Path(options.save_scores))
    batches = {name: run.stats[name] for name in SHARDED_STEPS if name in run.stats}
    unreadable = int((~ok).sum())
    results = {
        "model": options.model,
        "revision": getattr(run.model.config, "_commit_hash", None),
        "task": "video-retrieval",
        "dataset": options.dataset,
        "split": "1k-A test" if options.dataset == "msrvtt" else "test",
        "num_examples": int(ok.sum()),
        "counts": {
            "videos": int(ok.sum()),
            "texts": len(kept_texts),
            "truncated_texts": run.truncated,
            "short_videos": int((embeddings["video_short"] & ok).sum()),
        },
        "skipped": {**run.info["skipped"], **({"unreadable_videos": unreadable} if unreadable else {})},
        "protocol": _protocol(options, run.num_frames),
        "dual_softmax": options.dual_softmax,
        "metrics": metrics,
    }
    if options.dual_softmax:
        results["dual_softmax_metrics"] = {"transductive": True, **dual_metrics}
    results.update(
        config=run.config,
        embedding_cache=run.stats["embedding_cache"],
        batches=batches,
        resumed_batches=sum(stats["resumed_batches"] for stats in batches.values()),
    )
    if options.save_scores is not None:
        results["scores"] = str(options.save_scores)
    results["timing"] = {**timer.seconds, "total": time.time() - started}
    return finish_run(options, results, run.work_dir)


def _protocol(options: VideoRetrievalOptions, num_frames: int) -> dict:
    """What the numbers mean, recorded in the results."""
    queries = {
        "msrvtt": "one caption per video (CLIP4Clip's MSRVTT_JSFUSION_test.csv, 1k-A)",
        "didemo": "paragraph: a video's descriptions joined in file order (CLIP4Clip's DiDeMo loader)",
        "activitynet": "paragraph: a video's sentences joined (CLIP4Clip's ActivityNet loader)",
    }[options.dataset]
    protocol = {
        "name": "video-text-cosine",
        "scores": "cosine similarity of get_text_features and get_video_features (L2-normalised)",
        "queries": queries,
        "num_frames": num_frames,
        "ranks": "1-based; median of an even count is the mean of the middle two",
        "tie_break": "index",
    }
    if options.dual_softmax:
        protocol["dual_softmax"] = (
            "CAMoE dual softmax, transductive (uses every query at once): text->video sim * softmax(sim / T, dim=0) "
            f"* N over the queries, video->text the same over the videos; T = {options.dual_softmax_temperature:g} "
            "on cosine similarities; reported next to the plain metrics"
        )
    return protocol
