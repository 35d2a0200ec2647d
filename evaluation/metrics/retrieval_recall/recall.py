"""Image-text retrieval recall (R@1/5/10 both ways and their mean) from a score matrix, as the BridgeTower original
computes it (`src/modules/objectives.py`, `compute_irtr_recall` / `compute_irtr_itm_itc_recall`).

Orientation: `scores[t, i]` is the score of text (caption) `t` against image `i`, a (num_texts, num_images) matrix,
higher = more similar; `text_to_image[t]` is the index of caption `t`'s image (several captions per image, e.g. 5).
(The original holds the transpose, images x texts; the recalls do not depend on it.)

- text -> image ("image retrieval", the original's `ir_r*`): caption `t`'s query is correct at K when its image is
  among the K highest-scored images of row `t`.
- image -> text ("text retrieval", the original's `tr_r*`): image `i`'s query is correct at K when ANY of its
  captions is among the K highest-scored captions of column `i`.
Each is a percentage (x 100); `r_mean` is the mean of the six, as the original's (tr_mean + ir_mean) / 2.

Ties: the original takes the top K with `torch.topk`, whose order among equal scores is unspecified (it differs
between CPU and CUDA builds). Here it is fixed: `tie_break="index"` (default) ranks equal scores by index, lower
first, as a stable descending sort would; `tie_break="pessimistic"` ranks the correct item after every other item
with the same score. K larger than the number of candidates counts every query as correct.

Rank statistics (`rank_statistics=True`, added to the recalls): the median and mean 1-based rank of the correct item
in each direction (image -> text: the best-ranked of the image's captions), under the same tie rule; the median of an
even number of ranks is the mean of the two middle ones (numpy's median), as video-text retrieval papers report it.
"""

from collections.abc import Sequence

import numpy as np

KS = (1, 5, 10)
TIE_BREAKS = ("index", "pessimistic")
_BLOCK = 256  # queries compared at once: bounds memory to _BLOCK x num_candidates


def _target_ranks(matrix: np.ndarray, queries: np.ndarray, targets: np.ndarray, tie_break: str) -> np.ndarray:
    """For each n, the 0-based rank of `matrix[queries[n], targets[n]]` within row `matrix[queries[n]]`."""
    ranks = np.empty(len(targets), dtype=np.int64)
    positions = np.arange(matrix.shape[1])
    for start in range(0, len(targets), _BLOCK):
        block = slice(start, start + _BLOCK)
        rows = matrix[queries[block]]
        target = targets[block]
        target_scores = rows[np.arange(len(target)), target][:, None]
        ahead = (rows > target_scores).sum(axis=1)
        ties = rows == target_scores
        if tie_break == "index":
            ahead += (ties & (positions[None, :] < target[:, None])).sum(axis=1)
        else:
            ahead += ties.sum(axis=1) - 1
        ranks[block] = ahead
    return ranks


def retrieval_ranks(scores, text_to_image: Sequence[int], tie_break: str = "index") -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the correct item: each text's image in its row, and each image's best-ranked caption in its
    column (arrays of num_texts and num_images integers)."""
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):  # float16/32 stay as they are: comparisons are exact
        scores = scores.astype(np.float64)
    text_to_image = np.asarray(text_to_image)
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    if scores.ndim != 2 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty (num_texts, num_images) matrix, got shape {scores.shape}")
    num_texts, num_images = scores.shape
    if text_to_image.shape != (num_texts,) or not np.issubdtype(text_to_image.dtype, np.integer):
        raise ValueError(
            f"text_to_image must hold one integer image index per text (row of scores): {num_texts} texts, "
            f"got {text_to_image.shape} of {text_to_image.dtype}"
        )
    if text_to_image.min() < 0 or text_to_image.max() >= num_images:
        raise ValueError(f"text_to_image holds image indices outside 0..{num_images - 1}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    captions_per_image = np.bincount(text_to_image, minlength=num_images)
    if (captions_per_image == 0).any():
        uncaptioned = np.flatnonzero(captions_per_image == 0)
        raise ValueError(f"images {uncaptioned[:10].tolist()} have no caption; every image needs at least one")

    texts = np.arange(num_texts)
    text_ranks = _target_ranks(scores, texts, text_to_image, tie_break)
    # Image -> text: rank of each caption in its image's column; an image counts its best-ranked caption.
    caption_ranks = _target_ranks(scores.T, text_to_image, texts, tie_break)
    image_ranks = np.full(num_images, num_texts, dtype=np.int64)
    np.minimum.at(image_ranks, text_to_image, caption_ranks)
    return text_ranks, image_ranks


def retrieval_recall(
    scores, text_to_image: Sequence[int], tie_break: str = "index", rank_statistics: bool = False
) -> dict:
    """R@1/5/10 text->image and image->text (in percent) and `r_mean` from a (num_texts, num_images) score matrix;
    with `rank_statistics`, also `{direction}_median_rank` and `{direction}_mean_rank` (1-based)."""
    text_ranks, image_ranks = retrieval_ranks(scores, text_to_image, tie_break)
    result = {}
    for k in KS:
        result[f"text_to_image_r{k}"] = 100.0 * float(np.mean(text_ranks < k))
    for k in KS:
        result[f"image_to_text_r{k}"] = 100.0 * float(np.mean(image_ranks < k))
    result["r_mean"] = sum(result.values()) / len(result)
    if rank_statistics:
        for direction, ranks in (("text_to_image", text_ranks), ("image_to_text", image_ranks)):
            result[f"{direction}_median_rank"] = float(np.median(ranks + 1))
            result[f"{direction}_mean_rank"] = float(np.mean(ranks + 1))
    return result
