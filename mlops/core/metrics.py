"""The metric registry: every holdout metric by name, which way is better and how it is scored.

Named once, here: the policy accepts only these names (``KNOWN_METRICS``) and evaluation
computes exactly these (``mlops.ml.evaluation.METRICS``). The scorer is named, not imported:
importing scikit-learn's metrics takes seconds, and the policy (read by the CLI) lives in core.
Adding a metric is one entry below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Metric:
    """A holdout metric: which way is better, and the ``sklearn.metrics`` function scoring it."""

    better: Better
    scorer: str  # a function of sklearn.metrics, called as scorer(y_true, reads, **options)
    reads: Literal["proba", "labels"]  # P(positive), or 0/1 labels at the evaluation threshold
    options: Mapping[str, Any] = field(default_factory=dict)


REGISTRY: dict[str, Metric] = {
    "roc_auc": Metric("higher", "roc_auc_score", "proba"),
    "average_precision": Metric("higher", "average_precision_score", "proba"),
    "f1": Metric("higher", "f1_score", "labels", {"zero_division": 0}),
    "precision": Metric("higher", "precision_score", "labels", {"zero_division": 0}),
    "recall": Metric("higher", "recall_score", "labels", {"zero_division": 0}),
    "accuracy": Metric("higher", "accuracy_score", "labels"),
    "log_loss": Metric("lower", "log_loss", "proba", {"labels": [0, 1]}),
    "brier": Metric("lower", "brier_score_loss", "proba"),
}

#: Holdout metrics the evaluation step computes; a policy may only name these.
KNOWN_METRICS: dict[str, Better] = {name: metric.better for name, metric in REGISTRY.items()}
