"""VQAv2 accuracy, an `evaluate` metric that reproduces the official evaluation (GT-Vision-Lab/VQA master a013f00).

Load it by path, offline: `evaluate.load(towerzoo.evaluation.metrics.metric_path("vqa_accuracy"))`. The scoring rules
live in the sibling `vqa_official.py` (evaluate copies it along with this script); its docstring lists the official
quirks that are reproduced.
"""

import datasets
import evaluate

from .vqa_official import python2_round, question_accuracy, summarize

_DESCRIPTION = """
VQAv2 accuracy exactly as the official evaluation script (GT-Vision-Lab/VQA, master a013f00) computes it: answers are
cleaned of tabs/newlines; only when the ground-truth answers are not all identical are they and the prediction
normalised (punctuation, number words, articles, contractions); a question scores the mean over its ground-truth
answers of min(1, matching other answers / 3); summaries are round(100 * mean, 2) with Python 2 rounding.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one predicted answer per question.
    references (`list` of `list` of `str`): the ground-truth answers of each question (ten in VQAv2), raw.
    answer_types (`list` of `str`, optional): each question's answer type ("yes/no", "number", "other").
    question_types (`list` of `str`, optional): each question's question type ("what color is the", ...).
    return_per_question (`bool`, default False): also return every question's accuracy.
Returns:
    accuracy (`float`): overall accuracy in percent, rounded to two decimals as the official script does.
    per_answer_type (`dict`): answer type -> accuracy in percent (only with `answer_types`).
    per_question_type (`dict`): question type -> accuracy in percent (only with `question_types`).
    per_question (`list` of `float`): each question's accuracy in percent, rounded to two decimals (only with
        `return_per_question=True`).
Examples:
    >>> metric = evaluate.load("/path/to/evaluation/metrics/vqa_accuracy")
    >>> metric.compute(predictions=["two"], references=[["2"] * 9 + ["3"]], answer_types=["number"])
    {'accuracy': 100.0, 'per_answer_type': {'number': 100.0}}
"""

_CITATION = """
@inproceedings{goyal2017making,
  title={Making the {V} in {VQA} Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={CVPR},
  year={2017}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/GT-Vision-Lab/VQA"],
        )

    def _compute(self, predictions, references, answer_types=None, question_types=None, return_per_question=False):
        accuracies = [
            question_accuracy(prediction, answers) for prediction, answers in zip(predictions, references, strict=True)
        ]
        result = summarize(accuracies, answer_types=answer_types, question_types=question_types)
        if return_per_question:
            result["per_question"] = [python2_round(100 * accuracy) for accuracy in accuracies]
        return result
