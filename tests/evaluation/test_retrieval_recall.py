"""Retrieval recall from a texts x images score matrix: hand-checked matrices (5 captions per image, ties), the tie
rules, the chunked computation, a cross-check against the original's torch.topk formula, and the evaluate metric."""

import evaluate
import numpy as np
import pytest
import torch

from towerzoo.evaluation.metrics import metric_path
from towerzoo.evaluation.metrics.retrieval_recall import recall
from towerzoo.evaluation.metrics.retrieval_recall.recall import retrieval_recall

# Three images (A=0, B=1, C=2) with five captions each: texts 0-4 describe A, 5-9 B, 10-14 C. Written by column
# (one image's scores against the 15 texts) so the image -> text ranks are easy to read:
#   A: its caption 2 has the highest score (9)                           -> best caption at rank 0
#   B: texts 0, 1, 2 (8, 7, 6) beat its best caption, text 5 (5)         -> rank 3
#   C: texts 0-6 (17..11) beat its best caption, text 10 (3)             -> rank 7
COLUMN_A = [5, 4, 9, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
COLUMN_B = [8, 7, 6, 0, 0, 5, 4, 0, 0, 0, 0, 0, 0, 0, 0]
COLUMN_C = [17, 16, 15, 14, 13, 12, 11, 0, 0, 0, 3, 2, 1, 0, 0]
FIVE_CAPTIONS = np.stack([COLUMN_A, COLUMN_B, COLUMN_C], axis=1).astype(float)
FIVE_CAPTIONS_IMAGES = [0] * 5 + [1] * 5 + [2] * 5
# Read by row (text -> image), only texts 10 ([1, 0, 3]) and 11 ([1, 0, 2]) put their own image C first; every
# other text has a higher score for another image (e.g. text 0: [5, 8, 17]; text 12: [1, 0, 1], A wins the tie).
FIVE_CAPTIONS_EXPECTED = {
    "text_to_image_r1": 100 * 2 / 15,
    "text_to_image_r5": 100.0,  # only three images: every text's image is in its top 5
    "text_to_image_r10": 100.0,
    "image_to_text_r1": 100 * 1 / 3,  # A
    "image_to_text_r5": 100 * 2 / 3,  # A, B
    "image_to_text_r10": 100.0,  # A, B, C
}


def test_five_captions_per_image():
    result = retrieval_recall(FIVE_CAPTIONS, FIVE_CAPTIONS_IMAGES)
    assert result == pytest.approx({**FIVE_CAPTIONS_EXPECTED, "r_mean": sum(FIVE_CAPTIONS_EXPECTED.values()) / 6})


def test_chunked_computation_gives_the_same(monkeypatch):
    monkeypatch.setattr(recall, "_BLOCK", 2)
    result = retrieval_recall(FIVE_CAPTIONS, FIVE_CAPTIONS_IMAGES)
    assert {k: result[k] for k in FIVE_CAPTIONS_EXPECTED} == pytest.approx(FIVE_CAPTIONS_EXPECTED)


def test_perfect_and_float32_input():
    scores = np.eye(4, dtype=np.float32)
    assert all(value == 100.0 for value in retrieval_recall(scores, [0, 1, 2, 3]).values())


def _own_item_at(ranks: list[int]) -> np.ndarray:
    """Square matrix whose row q ranks item q at `ranks[q]` (0-based): the other items in index order, item q
    inserted at that position, scores descending."""
    num = len(ranks)
    matrix = np.empty((num, num))
    for query, rank in enumerate(ranks):
        order = [item for item in range(num) if item != query]
        order.insert(rank, query)
        matrix[query, order] = np.arange(num, 0, -1)
    return matrix


# Twelve images with one caption each (text q describes image q).
RANKS = [0, 1, 4, 5, 9, 10, 0, 0, 2, 11, 4, 9]
# rank < 1: 3 of 12 (ranks 0, 0, 0); rank < 5: 7 (0, 1, 4, 0, 0, 2, 4); rank < 10: all but ranks 10 and 11 -> 10.
RANKS_EXPECTED = {"r1": 100 * 3 / 12, "r5": 100 * 7 / 12, "r10": 100 * 10 / 12}


def test_ranks_at_the_k_boundaries_text_to_image():
    rows = _own_item_at(RANKS)
    result = retrieval_recall(rows, list(range(12)))
    assert {k: result[f"text_to_image_{k}"] for k in RANKS_EXPECTED} == pytest.approx(RANKS_EXPECTED)


def test_ranks_at_the_k_boundaries_image_to_text():
    columns = _own_item_at(RANKS).T  # now column q (image q) ranks text q at RANKS[q]
    result = retrieval_recall(columns, list(range(12)))
    assert {k: result[f"image_to_text_{k}"] for k in RANKS_EXPECTED} == pytest.approx(RANKS_EXPECTED)


def test_ties_index_rule_and_pessimistic():
    # Every score equal. "index": the lower index ranks first, so text 0 finds image 0 first and image 0 finds text
    # 0 first (hits), text 1 and image 1 find the other one first (misses). "pessimistic": every tie is a miss.
    scores = np.full((2, 2), 0.5)
    index = retrieval_recall(scores, [0, 1])
    assert index["text_to_image_r1"] == 50.0
    assert index["image_to_text_r1"] == 50.0
    pessimistic = retrieval_recall(scores, [0, 1], tie_break="pessimistic")
    assert pessimistic["text_to_image_r1"] == 0.0
    assert pessimistic["image_to_text_r1"] == 0.0
    assert pessimistic["text_to_image_r5"] == 100.0  # two candidates: both are always in the top 5
    assert pessimistic["r_mean"] == pytest.approx(400 / 6)


def test_ties_with_several_captions():
    # Two images, two captions each (texts 0, 1 -> image 0; texts 2, 3 -> image 1). Image 1's column ties its
    # caption 3 with text 0 (0.7) above caption 2: index rule -> text 0 first (miss), pessimistic -> miss too.
    # Image 0's column: text 1 ties text 3 at 0.9: index rule -> text 1 first (hit); pessimistic -> miss.
    scores = np.array(
        [
            [0.2, 0.7],
            [0.9, 0.1],
            [0.3, 0.4],
            [0.9, 0.7],
        ]
    )
    images = [0, 0, 1, 1]
    index = retrieval_recall(scores, images)
    assert index["image_to_text_r1"] == 50.0  # image 0 hits, image 1 misses
    # text -> image: text 0 [0.2, 0.7] miss; text 1 hit; text 2 [0.3, 0.4] hit; text 3 [0.9, 0.7] miss.
    assert index["text_to_image_r1"] == 50.0
    pessimistic = retrieval_recall(scores, images, tie_break="pessimistic")
    assert pessimistic["image_to_text_r1"] == 0.0
    assert pessimistic["image_to_text_r5"] == 100.0
    assert pessimistic["text_to_image_r1"] == 50.0  # no tie within any text's row


def test_same_result_every_time_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(40, 8)).astype(float)  # many ties
    images = np.repeat(np.arange(8), 5)
    first = retrieval_recall(scores, images)
    assert all(retrieval_recall(scores.copy(), images.copy()) == first for _ in range(3))


def _original_formula(scores_texts_images: np.ndarray, text_to_image: np.ndarray) -> dict:
    """The BridgeTower original's recall computation (images x texts, torch.topk), re-expressed for the test."""
    scores = torch.tensor(scores_texts_images).t()
    iids = torch.arange(scores.shape[0])
    tiids = torch.tensor(text_to_image)
    out = {}
    for k in (1, 5, 10):
        topk_texts = scores.topk(k, dim=1).indices
        out[f"image_to_text_r{k}"] = 100 * (iids.unsqueeze(1) == tiids[topk_texts]).float().max(dim=1)[0].mean().item()
    for k in (1, 5, 10):
        topk_images = scores.topk(k, dim=0).indices
        out[f"text_to_image_r{k}"] = (
            100 * (tiids.unsqueeze(0) == iids[topk_images]).float().max(dim=0)[0].mean().item()
        )
    return out


@pytest.mark.parametrize("block", [256, 7])  # 7: the queries are compared in several uneven blocks
def test_agrees_with_the_original_formula_without_ties(monkeypatch, block):
    monkeypatch.setattr(recall, "_BLOCK", block)
    rng = np.random.default_rng(1)
    images = np.repeat(np.arange(20), 5)
    scores = rng.normal(size=(100, 20))
    scores[np.arange(100), images] += 1.5  # make recalls land somewhere in between
    ours = retrieval_recall(scores, images)
    theirs = _original_formula(scores, images)
    assert 0 < ours["text_to_image_r1"] < 100
    assert {k: ours[k] for k in theirs} == pytest.approx(theirs, abs=1e-4)


@pytest.mark.parametrize(
    ("scores", "images", "kwargs", "message"),
    [
        (np.zeros(3), [0, 0, 0], {}, "matrix"),
        (np.zeros((3, 2)), [0, 1], {}, "one integer image index per text"),
        (np.zeros((2, 2)), [0.0, 1.0], {}, "one integer image index per text"),
        (np.zeros((2, 2)), [0, 2], {}, "outside 0..1"),
        (np.array([[np.nan, 0], [0, 0]]), [0, 1], {}, "NaN"),
        (np.zeros((2, 3)), [0, 1], {}, r"images \[2\] have no caption"),
        (np.zeros((2, 2)), [0, 1], {"tie_break": "optimistic"}, "tie_break"),
    ],
)
def test_bad_inputs(scores, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_recall(scores, images, **kwargs)


@pytest.fixture(scope="module")
def recall_metric():
    return evaluate.load(metric_path("retrieval_recall"))


def test_metric_compute(recall_metric):
    result = recall_metric.compute(predictions=FIVE_CAPTIONS.tolist(), references=FIVE_CAPTIONS_IMAGES)
    assert {k: result[k] for k in FIVE_CAPTIONS_EXPECTED} == pytest.approx(FIVE_CAPTIONS_EXPECTED)


def test_metric_add_batch_and_tie_break(recall_metric):
    recall_metric.add_batch(predictions=[[0.5, 0.5]], references=[0])
    recall_metric.add_batch(predictions=[[0.5, 0.5]], references=[1])
    assert recall_metric.compute(tie_break="pessimistic")["text_to_image_r1"] == 0.0


def test_metric_rejects_ragged_rows(recall_metric):
    with pytest.raises(ValueError, match="every text needs a score for every image"):
        recall_metric.compute(predictions=[[0.1, 0.2], [0.3]], references=[0, 1])


# Rank statistics (1-based ranks of the correct item). FIVE_CAPTIONS by row, ties by index: texts 0, 1 rank A third
# (B and C higher); 2-9 second (C higher, or A's 1 above B's 0 with C tied at a later index); 10, 11 first; 12 second
# (A ties at 1 with a lower index); 13, 14 third (A higher, B ties at 0 with a lower index). Images: ranks 0, 3, 7
# above, so 1, 4, 8.
FIVE_CAPTIONS_TEXT_RANKS = [3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 2, 3, 3]
FIVE_CAPTIONS_RANK_STATISTICS = {
    "text_to_image_median_rank": 2.0,
    "text_to_image_mean_rank": 32 / 15,
    "image_to_text_median_rank": 4.0,
    "image_to_text_mean_rank": 13 / 3,
}


def test_rank_statistics_with_ties_and_several_captions():
    assert sum(FIVE_CAPTIONS_TEXT_RANKS) == 32
    text_ranks, image_ranks = recall.retrieval_ranks(FIVE_CAPTIONS, FIVE_CAPTIONS_IMAGES)
    assert (text_ranks + 1).tolist() == FIVE_CAPTIONS_TEXT_RANKS and (image_ranks + 1).tolist() == [1, 4, 8]
    result = retrieval_recall(FIVE_CAPTIONS, FIVE_CAPTIONS_IMAGES, rank_statistics=True)
    assert result == pytest.approx(
        {
            **FIVE_CAPTIONS_EXPECTED,
            "r_mean": sum(FIVE_CAPTIONS_EXPECTED.values()) / 6,  # the ranks do not enter r_mean
            **FIVE_CAPTIONS_RANK_STATISTICS,
        }
    )
    assert "text_to_image_median_rank" not in retrieval_recall(FIVE_CAPTIONS, FIVE_CAPTIONS_IMAGES)


def test_rank_statistics_even_count_median_is_the_middle_mean():
    # RANKS + 1 = [1, 2, 5, 6, 10, 11, 1, 1, 3, 12, 5, 10]; sorted 1 1 1 2 3 5 | 5 6 10 10 11 12: median (5 + 5) / 2
    # = 5, mean 67 / 12; the transpose puts the same ranks on the image -> text side.
    for scores, direction in ((_own_item_at(RANKS), "text_to_image"), (_own_item_at(RANKS).T, "image_to_text")):
        result = retrieval_recall(scores, list(range(12)), rank_statistics=True)
        assert result[f"{direction}_median_rank"] == 5.0
        assert result[f"{direction}_mean_rank"] == pytest.approx(67 / 12)
    ranks = [3, 0, 1, 0]  # 1-based 4, 1, 2, 1: median (1 + 2) / 2
    result = retrieval_recall(_own_item_at(ranks), list(range(4)), rank_statistics=True)
    assert result["text_to_image_median_rank"] == 1.5 and result["text_to_image_mean_rank"] == 2.0


def test_rank_statistics_tie_rules():
    scores = np.full((2, 2), 0.5)
    index = retrieval_recall(scores, [0, 1], rank_statistics=True)
    assert index["text_to_image_mean_rank"] == 1.5 and index["image_to_text_median_rank"] == 1.5  # ranks 1 and 2
    pessimistic = retrieval_recall(scores, [0, 1], tie_break="pessimistic", rank_statistics=True)
    assert pessimistic["text_to_image_mean_rank"] == 2.0 and pessimistic["image_to_text_median_rank"] == 2.0


def test_metric_rank_statistics(recall_metric):
    result = recall_metric.compute(
        predictions=FIVE_CAPTIONS.tolist(), references=FIVE_CAPTIONS_IMAGES, rank_statistics=True
    )
    assert {k: result[k] for k in FIVE_CAPTIONS_RANK_STATISTICS} == pytest.approx(FIVE_CAPTIONS_RANK_STATISTICS)
