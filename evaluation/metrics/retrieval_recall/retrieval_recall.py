"""Image-text retrieval recall, an `evaluate` metric: R@1/5/10 text->image and image->text and their mean.

Load it by path, offline: `evaluate.load(towerzoo.evaluation.metrics.metric_path("retrieval_recall"))`. Each example
is one text query: its scores against every image (a row of the texts x images matrix) and its image's index. The
computation lives in the sibling `recall.py` (orientation and tie rule documented there); for full-size test sets
(COCO 5K: 25,000 x 5,000) call `recall.retrieval_recall` on the matrix directly rather than through the metric's
Arrow cache.
"""

import datasets
import evaluate

from .recall import retrieval_recall

_DESCRIPTION = """
Image-text retrieval recall as the BridgeTower original computes it: text->image R@K counts a caption as correct when
its image is among its K best-scored images; image->text R@K counts an image as correct when any of its captions is
among its K best-scored captions. Percentages; r_mean is the mean of the six. Equal scores are ranked by index (lower
first) unless tie_break="pessimistic", which ranks the correct item after all items with the same score.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row per text (caption): its scores against every image, higher =
        more similar (the score matrix is texts x images).
    references (`list` of `int`): for each text, the index of its image (a column of the matrix).
    tie_break (`str`, default "index"): "index" or "pessimistic".
    rank_statistics (`bool`, default False): also return the median and mean rank of the correct item.
Returns:
    text_to_image_r1, text_to_image_r5, text_to_image_r10, image_to_text_r1, image_to_text_r5, image_to_text_r10,
    r_mean (`float`, percent); with rank_statistics, text_to_image_median_rank, text_to_image_mean_rank,
    image_to_text_median_rank, image_to_text_mean_rank (`float`, 1-based; image -> text: the best-ranked caption).
Examples:
    >>> metric = evaluate.load("/path/to/evaluation/metrics/retrieval_recall")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1])["r_mean"]
    100.0
"""

_CITATION = """
@inproceedings{xu2023bridgetower,
  title={BridgeTower: Building Bridges Between Encoders in Vision-Language Representation Learning},
  author={Xu, Xiao and Wu, Chenfei and Rosenman, Shachar and Lal, Vasudev and Che, Wanxiang and Duan, Nan},
  booktitle={AAAI},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://github.com/microsoft/BridgeTower"],
        )

    def _compute(self, predictions, references, tie_break="index", rank_statistics=False):
        lengths = {len(row) for row in predictions}
        if len(lengths) != 1:
            raise ValueError(f"every text needs a score for every image; got rows of lengths {sorted(lengths)}")
        return retrieval_recall(predictions, references, tie_break=tie_break, rank_statistics=rank_statistics)
