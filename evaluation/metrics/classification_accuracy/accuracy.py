"""Top-1 accuracy, mean per-class accuracy and the base-to-novel harmonic mean, as the CoOp family reports them
(Dassl's `Classification` evaluator: `100 * correct / total`; HM = 2·B·N / (B + N) of the base and novel accuracies).
Percentages are `round(100 * fraction, 2)` like towerzoo's other metrics.
"""

from collections.abc import Sequence


def _percent(fraction: float) -> float:
    return round(100 * fraction, 2)


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Percentage of predictions equal to their reference label."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("accuracy of no examples is undefined")
    return _percent(sum(int(p) == int(r) for p, r in zip(predictions, references, strict=True)) / len(references))


def mean_per_class_accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """The mean over the reference labels present of each label's accuracy (classes without examples left out)."""
    accuracy(predictions, references)  # the same input checks
    correct: dict[int, int] = {}
    total: dict[int, int] = {}
    for prediction, reference in zip(predictions, references, strict=True):
        total[int(reference)] = total.get(int(reference), 0) + 1
        correct[int(reference)] = correct.get(int(reference), 0) + (int(prediction) == int(reference))
    return _percent(sum(correct[label] / count for label, count in total.items()) / len(total))


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2·B·N / (B + N) of two accuracies in percent, rounded to two decimals (0 when both are 0)."""
    if base + novel == 0:
        return 0.0
    return round(2 * base * novel / (base + novel), 2)
