"""Image classification accuracy, an `evaluate` metric: top-1 accuracy in percent and, optionally, the mean per-class
accuracy, as the CoOp family (CoOp, CoCoOp, MaPLe, RESTORE) reports it.

Load it by path, offline: `evaluate.load(towerzoo.evaluation.metrics.metric_path("classification_accuracy"))`. The
computation lives in the sibling `accuracy.py` (evaluate copies it along with this script), which also holds the
base-to-novel harmonic mean.
"""

import datasets
import evaluate

from .accuracy import accuracy, mean_per_class_accuracy

_DESCRIPTION = """
Top-1 classification accuracy: the percentage of examples whose predicted label equals the reference label, rounded
to two decimals (round(100 * correct / total, 2)). With mean_per_class=True, also the mean over the classes present in
the references of each class's accuracy (balanced accuracy), rounded the same way.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): the predicted label of each example (the argmax of the logits).
    references (`list` of `int`): the true label of each example.
    mean_per_class (`bool`, default False): also return the mean per-class accuracy.
Returns:
    accuracy (`float`): percent, two decimals.
    mean_per_class_accuracy (`float`): percent, two decimals (only with `mean_per_class=True`).
Examples:
    >>> metric = evaluate.load("/path/to/evaluation/metrics/classification_accuracy")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], mean_per_class=True)
    {'accuracy': 66.67, 'mean_per_class_accuracy': 75.0}
"""

_CITATION = """
@article{zhou2022coop,
  title={Learning to Prompt for Vision-Language Models},
  author={Zhou, Kaiyang and Yang, Jingkang and Loy, Chen Change and Liu, Ziwei},
  journal={International Journal of Computer Vision},
  year={2022}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassificationAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://github.com/KaiyangZhou/CoOp"],
        )

    def _compute(self, predictions, references, mean_per_class=False):
        result = {"accuracy": accuracy(predictions, references)}
        if mean_per_class:
            result["mean_per_class_accuracy"] = mean_per_class_accuracy(predictions, references)
        return result
