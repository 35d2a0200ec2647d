"""`towerzoo eval retrieval`: image-text retrieval on a Karpathy split (Flickr30K 1K test, COCO 5K test) with a towerzoo
model that has ITC and ITM heads, by the BridgeTower original's protocol (`src/modules/objectives.py`,
`compute_irtr_itm_itc_recall`).

1. Embeddings: the L2-normalised uni-modal ITC embedding of every image and caption of the split
   (`get_image_features`, `get_text_features`), computed once (sharded, resumable) and cached on disk, keyed by the
   model, the data and the options, so a rerun (another `--k`, a crash after this step) does not compute them again.
2. Similarity: cosine similarities, captions x images.
3. Re-ranking: each caption's top-k images and each image's top-k captions are candidates. Every candidate pair is
   scored once by the ITM head (its match logit, `itm_logits[:, 1]`), in fixed batches of pairs sorted by image so a
   batch runs the vision tower on one or two images only. The original fills one matrix per direction with ITM
   scores (-100 for non-candidates) and merges them by elementwise max; here that is one matrix holding
   `max(ITM score, -100)` for pairs that are candidates in either direction and -100 elsewhere. Its cost grows with
   (number of images + number of captions) x k; nothing of size captions x images is built but the two matrices.
4. Recall@1/5/10 both ways from the merged matrix with `metrics/retrieval_recall` (ties: lower index first), named as
   the original names them: `ir_r*` text->image (image retrieval), `tr_r*` image->text (text retrieval), `r_mean`;
   the ITC-only recalls of the similarity matrix too. `--no-rerank` stops after step 2.

Data: the Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr30k.json`: `images[]` with `filename`,
`filepath` for COCO, `split`, `sentences[].raw`) and the image folder, as `<images>/<filepath>/<filename>` (COCO) or
`<images>/<filename>` (Flickr30K). Texts are padded to the processor's `max_text_length` as the original pads them
(ManagerTower's managers read padded positions, so this matters there), and longer captions are truncated, counted
and warned about.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
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
    open_image,
    plan_batches,
    read_json,
    save_tensors_atomically,
)

logger = logging.getLogger(__name__)
SPLITS = ("test", "val", "train", "restval")
NON_CANDIDATE_SCORE = -100.0  # the original's fill value for pairs the ITC stage did not propose
TEXT_PADDINGS = ("max_length", "longest")
# the original's names → the retrieval_recall metric's
RECALL_NAMES = {
    **{f"tr_r{k}": f"image_to_text_r{k}" for k in (1, 5, 10)},
    **{f"ir_r{k}": f"text_to_image_r{k}" for k in (1, 5, 10)},
    "r_mean": "r_mean",
}
SHARDED_STEPS = ("image-embeddings", "text-embeddings", "rerank")  # work-folder parts, one `ShardedRun` each


def _image_file(root: Path, entry: dict) -> Path | None:
    """COCO's `<root>/<filepath>/<filename>`, else Flickr's `<root>/<filename>`."""
    candidates = [root / entry["filepath"] / entry["filename"]] if entry.get("filepath") else []
    candidates.append(root / entry["filename"])
    return next((path for path in candidates if path.is_file()), None)


def load_karpathy(
    karpathy: Path,
    images: Path,
    split: str = "test",
    limit: int | None = None,
    skip_missing_images: bool = False,
    keep_duplicate_captions: bool = False,
) -> tuple[datasets.Dataset, datasets.Dataset, dict]:
    """The split's images (`image_index`, `imgid`, `filename`, `path`) and their captions (`caption_index`,
    `image_index`, `text`) as `datasets.Dataset`s, plus `{"dataset", "skipped", "duplicate_captions"}`. An image's
    repeated captions are kept once, as the original's datasets keep them (`remove_duplicate=True`), unless
    `keep_duplicate_captions`."""
    data = read_json(karpathy, "Karpathy split")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise EvaluationError(f"{karpathy} has no 'images' list: is it a Karpathy split JSON (dataset_coco.json)?")
    if split not in SPLITS:
        raise EvaluationError(f"unknown split {split!r}; Karpathy splits are {', '.join(SPLITS)}.")
    entries = [entry for entry in data["images"] if entry.get("split") == split]
    if not entries:
        present = sorted({str(entry.get("split")) for entry in data["images"]})
        raise EvaluationError(f"{karpathy} has no image in split {split!r} (splits present: {', '.join(present)}).")
    if limit is not None:
        entries = entries[:limit]
    root = Path(images)
    if not root.is_dir():
        raise EvaluationError(f"image folder {images} does not exist.")
    image_rows, caption_rows, missing, duplicates = [], [], [], 0
    for entry in entries:
        name = entry.get("filename")
        if not name:
            raise EvaluationError(f"an image of {karpathy} (imgid {entry.get('imgid')}) has no 'filename'.")
        texts = [sentence.get("raw", "") for sentence in entry.get("sentences") or []]
        empty = [k for k, text in enumerate(texts) if not text.strip()]
        if not texts or empty:
            what = "has no caption" if not texts else f"has an empty caption (sentence {empty[0]})"
            raise EvaluationError(f"image {name} {what} in {karpathy}; every image needs non-empty captions.")
        path = _image_file(root, entry)
        if path is None:
            missing.append(str(root / entry.get("filepath", "") / name))
            continue
        if not keep_duplicate_captions:
            duplicates += len(texts) - len(set(texts))
            texts = list(dict.fromkeys(texts))
        image_index = len(image_rows)
        image_rows.append({"image_index": image_index, "imgid": entry.get("imgid", -1), "filename": name})
        image_rows[-1]["path"] = str(path)
        for text in texts:
            caption_rows.append({"caption_index": len(caption_rows), "image_index": image_index, "text": text})
    skipped = {}
    if missing:
        if not skip_missing_images:
            raise EvaluationError(
                f"{len(missing)} images of split {split!r} are missing from {images} (e.g. {missing[0]}); add them, "
                "or pass --skip-missing-images to score the rest (the recalls are then not the official ones)."
            )
        skipped["missing_images"] = len(missing)
        logger.warning("skipping %d images missing from %s (and their captions)", len(missing), images)
    if not image_rows:
        raise EvaluationError("no images to evaluate.")
    info = {"dataset": data.get("dataset"), "skipped": skipped, "duplicate_captions": duplicates}
    return datasets.Dataset.from_list(image_rows), datasets.Dataset.from_list(caption_rows), info


def check_retrieval_heads(model) -> None:
    """Retrieval needs the ITC heads (first stage) and the ITM head (re-ranking) of a `…ForPreTraining` model."""
    heads = list(getattr(model.config, "pretraining_heads", None) or [])
    missing = [head for head in ("itc", "itm") if head not in heads]
    if missing:
        raise EvaluationError(
            f"the model has pre-training heads {heads} but retrieval needs both 'itc' and 'itm' (missing "
            f"{missing}); use an irtr_itm_itc fine-tune or a pre-trained checkpoint with MLM+ITM+ITC heads."
        )


def itm_match_scores(model, input_ids, attention_mask, pixel_values, image_of_pair) -> torch.Tensor:
    """ITM match logits (`itm_logits[:, 1]`) of the pairs (caption row b, image `image_of_pair[b]` of `pixel_values`).
    The model's own steps (`text_model`, `vision_model`, `fuse`, `pool`, the ITM head), except that the vision tower
    runs once per distinct image and the MLM and ITC heads are skipped."""
    base = model.base_model
    text_states = base.text_model(input_ids, attention_mask).hidden_states
    vision_states = tuple(states[image_of_pair] for states in base.vision_model(pixel_values).hidden_states)
    text_out, image_out, _ = base.fuse(text_states, vision_states, attention_mask)
    return model.itm_score(base.pool(text_out, image_out))[:, 1]


def candidate_pairs(similarity: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """The `(caption, image)` pairs that are among a caption's top-k images or an image's top-k captions, each once,
    sorted by image then caption; and how many were proposed by both directions."""
    num_texts, num_images = similarity.shape
    images_of_text = similarity.topk(min(k, num_images), dim=1).indices
    texts_of_image = similarity.topk(min(k, num_texts), dim=0).indices
    text_ids = torch.arange(num_texts, device=similarity.device)
    image_ids = torch.arange(num_images, device=similarity.device)
    # one integer per pair, image-major, so `unique` both deduplicates and sorts by image
    proposed = torch.cat(
        [
            (images_of_text * num_texts + text_ids[:, None]).flatten(),
            (image_ids * num_texts + texts_of_image).flatten(),
        ]
    )
    keys = torch.unique(proposed).cpu()
    pairs = torch.stack([keys % num_texts, keys // num_texts], dim=1)
    return pairs, len(proposed) - len(keys)


def merged_scores(pairs: torch.Tensor, itm: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The original's merged re-ranking matrix: ITM scores of candidate pairs, -100 elsewhere (elementwise max)."""
    scores = torch.full(shape, NON_CANDIDATE_SCORE, dtype=torch.float32)
    scores[pairs[:, 0], pairs[:, 1]] = itm.float().clamp(min=NON_CANDIDATE_SCORE)
    return scores


def recalls(scores: torch.Tensor, text_to_image: list[int]) -> dict[str, float]:
    """R@1/5/10 in the original's names (`tr_*` image->text, `ir_*` text->image) and `r_mean`, from
    `metrics/retrieval_recall`'s computation (called directly: a COCO matrix is too large for its Arrow cache)."""
    computed = retrieval_recall(scores.numpy(), text_to_image)
    return {name: computed[metric_name] for name, metric_name in RECALL_NAMES.items()}


@dataclass
class _Inputs:
    """Model inputs from example indices; runs in DataLoader workers (image decoding, processing, tokenising)."""

    processor: object
    image_paths: list[str]
    captions: list[str]
    text_padding: str
    pairs: torch.Tensor | None = None  # (caption, image) rows, for `pair_batch`

    def texts(self, indices) -> dict:
        return self.processor(text=[self.captions[i] for i in indices], padding=self.text_padding, return_tensors="pt")

    def images(self, indices) -> dict:
        images = [open_image(self.image_paths[i]) for i in indices]
        return {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}

    def pair_batch(self, indices) -> dict:
        """The batch's captions, its distinct images once each, and which image each pair uses."""
        texts, images = self.pairs[torch.as_tensor(list(indices))].unbind(1)
        distinct, image_of_pair = torch.unique(images, return_inverse=True)
        return {**self.texts(texts.tolist()), **self.images(distinct.tolist()), "image_of_pair": image_of_pair}


@dataclass(kw_only=True)
class RetrievalOptions(RunOptions):
    """What `towerzoo eval retrieval` takes (see the CLI's help for each option)."""

    karpathy: Path
    images: Path
    split: str = "test"
    k: int = 128
    rerank: bool = True
    rerank_batch_size: int = 128
    text_padding: str = "max_length"
    skip_missing_images: bool = False
    keep_duplicate_captions: bool = False
    cache_dir: Path | None = None
    save_scores: Path | None = None


class _Retrieval:
    """One run's model, data and folders; `embeddings`, `candidates` and `rerank` are the protocol's steps."""

    def __init__(self, options: RetrievalOptions, accelerator):
        from transformers import AutoProcessor

        for name in ("k", "batch_size", "rerank_batch_size"):
            if getattr(options, name) < 1:
                raise EvaluationError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(options, name)}.")
        if options.text_padding not in TEXT_PADDINGS:
            raise EvaluationError(f"text padding must be one of {TEXT_PADDINGS}, got {options.text_padding!r}.")
        self.options, self.accelerator = options, accelerator
        self.device = accelerator.device if accelerator is not None else torch.device("cpu")
        self.is_main = accelerator is None or accelerator.is_main_process
        self.images, self.captions, self.info = load_karpathy(
            options.karpathy,
            options.images,
            options.split,
            options.limit,
            options.skip_missing_images,
            options.keep_duplicate_captions,
        )
        try:
            self.model = load_model(options.model, "AutoModelForPreTraining", options.attn_implementation, self.device)
        except EvaluationError as error:
            raise EvaluationError(
                f"{error} Retrieval needs the ITC and ITM heads in one …ForPreTraining model: convert an "
                "irtr_itm_itc fine-tune or a pre-trained checkpoint with MLM+ITM+ITC heads."
            ) from None
        check_retrieval_heads(self.model)
        self.processor = AutoProcessor.from_pretrained(options.model, trust_remote_code=True)
        self.texts, self.text_to_image = list(self.captions["text"]), list(self.captions["image_index"])
        self.truncated = count_truncated(self.processor, self.texts)
        if self.truncated:
            logger.warning(
                "%d of %d captions are longer than %d tokens and are truncated (as the original truncates them)",
                *(self.truncated, len(self.texts), self.processor.max_text_length),
            )
        self.inputs = _Inputs(self.processor, list(self.images["path"]), self.texts, options.text_padding)
        self.config = {
            "batch_size": options.batch_size,
            "rerank_batch_size": options.rerank_batch_size,
            "dtype": options.dtype,
            "attn_implementation": self.model.config._attn_implementation,
            "text_padding": options.text_padding,
            "max_text_length": self.processor.max_text_length,
            "limit": options.limit,
            "skip_missing_images": options.skip_missing_images,
            "keep_duplicate_captions": options.keep_duplicate_captions,
            "num_processes": accelerator.num_processes if accelerator is not None else 1,
        }
        # embeddings depend on the model, the images and captions, and the numerics (batches pad texts together)
        embedding_key = fingerprint(
            "retrieval-embeddings",
            model_identity(options.model, self.model),
            file_fingerprint(options.karpathy),
            options.split,
            self.texts,
            [file_fingerprint(path) for path in self.images["path"]],
            {k: self.config[k] for k in ("batch_size", "dtype", "attn_implementation", "text_padding")},
        )
        self.cache_file = Path(options.cache_dir or default_cache_dir("retrieval")) / f"{embedding_key}.safetensors"
        run_key = fingerprint("retrieval", embedding_key, options.k, options.rerank, options.rerank_batch_size)
        self.work_dir = Path(options.work_dir or f"{options.output}.work") / run_key
        self.stats = {"embedding_cache": {"path": str(self.cache_file), "reused": False}}

    def wait(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def _sharded(self, batches, name: str, description: str, step, make_inputs):
        """Run `step` over `batches` sharded and resumable; the concatenated tensor on the main process."""
        run = ShardedRun(batches, self.work_dir / name, self.accelerator, description, tensor_records=True)
        result = run.run_model(step, make_inputs, self.device, self.options.dtype, self.options.num_workers)
        self.stats[name] = {k: run.stats[k] for k in ("computed_batches", "resumed_batches")}
        return result

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """ITC embeddings of the images and the captions: from the cache, or computed (sharded) and cached by the
        main process (None on the others)."""
        from safetensors.torch import load_file

        cached = load_file(self.cache_file) if self.cache_file.is_file() else {}
        shapes = [len(cached[name]) if name in cached else None for name in ("image_embeds", "text_embeds")]
        if shapes == [len(self.images), len(self.texts)]:
            self.stats["embedding_cache"]["reused"] = True
            return cached["image_embeds"], cached["text_embeds"]
        size = self.options.batch_size
        image_embeds = self._sharded(
            plan_batches(len(self.images), size),
            "image-embeddings",
            "image embeddings",
            self.model.get_image_features,
            self.inputs.images,
        )
        text_embeds = self._sharded(
            plan_batches(len(self.texts), size),
            "text-embeddings",
            "caption embeddings",
            self.model.get_text_features,
            self.inputs.texts,
        )
        if not self.is_main:
            return None
        save_tensors_atomically({"image_embeds": image_embeds, "text_embeds": text_embeds}, self.cache_file)
        return image_embeds, text_embeds

    def similarity(self, embeddings: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor | None:
        """Cosine similarities captions x images on the main process's device (None on the others)."""
        if not self.is_main:
            return None
        image_embeds, text_embeds = (embeds.to(self.device) for embeds in embeddings)
        return (text_embeds @ image_embeds.t()).float()

    def candidates(self, similarity: torch.Tensor | None) -> torch.Tensor:
        """The candidate pairs, fixed in the work folder on the first attempt (a resumed re-ranking needs the same
        list), read by every process."""
        from safetensors.torch import load_file

        candidates_file = self.work_dir / "candidates.safetensors"
        if self.is_main and not candidates_file.is_file():
            pairs, shared = candidate_pairs(similarity, self.options.k)
            save_tensors_atomically({"pairs": pairs, "shared": torch.tensor(shared)}, candidates_file)
        self.wait()
        stored = load_file(candidates_file)
        self.stats["candidate_pairs"] = len(stored["pairs"])
        self.stats["candidate_pairs_in_both_directions"] = int(stored["shared"])
        return stored["pairs"]

    def rerank(self, pairs: torch.Tensor) -> torch.Tensor | None:
        """ITM match scores of the candidate pairs, in fixed batches of pairs (sorted by image), on the main process."""
        self.inputs.pairs = pairs
        size = self.options.rerank_batch_size
        batches = [range(start, min(start + size, len(pairs))) for start in range(0, len(pairs), size)]

        def score(image_of_pair, **inputs) -> torch.Tensor:
            return itm_match_scores(self.model, image_of_pair=image_of_pair, **inputs)

        return self._sharded(batches, "rerank", "ITM pairs", score, self.inputs.pair_batch)


def evaluate_retrieval(options: RetrievalOptions, accelerator=None) -> dict | None:
    """Embed, rank and re-rank (sharded over `accelerator`'s processes, resumable) and write the results JSON;
    returns the results on the main process, None on the others."""
    timer, started = Timer(), time.time()
    with timer("loading"):
        run = _Retrieval(options, accelerator)
    with timer("embedding"):
        embeddings = run.embeddings()
    with timer("similarity"):
        similarity = run.similarity(embeddings)
        pairs = run.candidates(similarity) if options.rerank else None
        similarity = similarity.cpu() if similarity is not None else None
    itm = None
    if options.rerank:
        with timer("reranking"):
            itm = run.rerank(pairs)
    if not run.is_main:
        return None

    with timer("scoring"):
        itc_metrics = recalls(similarity, run.text_to_image)
        scores = merged_scores(pairs, itm, tuple(similarity.shape)) if options.rerank else None
        metrics = recalls(scores, run.text_to_image) if options.rerank else itc_metrics
    if options.save_scores is not None:
        tensors = {"itc_similarity": similarity, "text_to_image": torch.tensor(run.text_to_image)}
        save_tensors_atomically(
            tensors if scores is None else {**tensors, "scores": scores}, Path(options.save_scores)
        )
    per_image = torch.bincount(torch.tensor(run.text_to_image), minlength=len(run.images))
    batches = {name: run.stats[name] for name in SHARDED_STEPS if name in run.stats}
    results = {
        "model": options.model,
        "revision": getattr(run.model.config, "_commit_hash", None),
        "task": "retrieval",
        "dataset": run.info["dataset"],
        "split": options.split,
        "num_examples": len(run.images),
        "counts": {
            "images": len(run.images),
            "captions": len(run.texts),
            "captions_per_image": {"min": int(per_image.min()), "max": int(per_image.max())},
            "duplicate_captions_removed": run.info["duplicate_captions"],
            "truncated_captions": run.truncated,
            "candidate_pairs": run.stats.get("candidate_pairs", 0),
            "candidate_pairs_in_both_directions": run.stats.get("candidate_pairs_in_both_directions", 0),
        },
        "skipped": run.info["skipped"],
        "protocol": _protocol(options, len(run.images), len(run.texts)),
        "metrics": metrics,
        "itc_metrics": itc_metrics,
        "config": run.config,
        "embedding_cache": run.stats["embedding_cache"],
        "batches": batches,
        "resumed_batches": sum(stats["resumed_batches"] for stats in batches.values()),
    }
    if options.save_scores is not None:
        results["scores"] = str(options.save_scores)
    results["timing"] = {**timer.seconds, "total": time.time() - started}
    if options.rerank:
        results["timing"]["pairs_per_second"] = len(pairs) / max(timer.seconds["reranking"], 1e-9)
    return finish_run(options, results, run.work_dir)


def _protocol(options: RetrievalOptions, num_images: int, num_texts: int) -> dict:
    """What the numbers mean, recorded in the results."""
    protocol = {
        "name": "bridgetower-itm-itc" if options.rerank else "itc",
        "first_stage": "cosine similarity of the uni-modal ITC embeddings (get_text_features, get_image_features)",
        "captions": "every caption of each image (sentences[].raw)"
        + ("" if options.keep_duplicate_captions else ", repeated captions of an image once, as the original"),
        "text_padding": options.text_padding,
        "tie_break": "index",
    }
    if options.rerank:
        protocol.update(
            reference="microsoft/BridgeTower src/modules/objectives.py compute_irtr_itm_itc_recall",
            rerank="ITM match logit (itm_logits[:, 1]) of each caption's top-k images and each image's top-k "
            f"captions; one matrix with the score for candidates of either direction, {NON_CANDIDATE_SCORE:g} "
            "elsewhere (the original's elementwise max of its two direction matrices)",
            k=options.k,
            k_effective={"text_to_image": min(options.k, num_images), "image_to_text": min(options.k, num_texts)},
        )
    return protocol
