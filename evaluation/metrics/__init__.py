"""`evaluate` metric modules shipped with towerzoo, each a folder loaded by path (no network):
`evaluate.load(metric_path("vqa_accuracy"))`."""

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("vqa_accuracy", "retrieval_recall", "classification_accuracy", "wer")


def metric_path(name: str) -> str:
    """Absolute path of a shipped metric folder, to pass to `evaluate.load`."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; towerzoo ships {', '.join(METRIC_NAMES)}")
    return str(METRICS_DIR / name)
