"""Holdout evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm
from sklearn.pipeline import Pipeline

from mlops.ml.split import Split

THRESHOLD = 0.5  # P(positive) at or above which a row is labelled positive


def _labels(proba: np.ndarray) -> np.ndarray:
    return (proba >= THRESHOLD).astype(int)


#: Every metric a policy may name (mlops.policy.KNOWN_METRICS), from 0/1 labels and P(positive).
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "roc_auc": lambda y, p: float(skm.roc_auc_score(y, p)),
    "average_precision": lambda y, p: float(skm.average_precision_score(y, p)),
    "f1": lambda y, p: float(skm.f1_score(y, _labels(p), zero_division=0)),
    "precision": lambda y, p: float(skm.precision_score(y, _labels(p), zero_division=0)),
    "recall": lambda y, p: float(skm.recall_score(y, _labels(p), zero_division=0)),
    "accuracy": lambda y, p: float(skm.accuracy_score(y, _labels(p))),
    "log_loss": lambda y, p: float(skm.log_loss(y, p, labels=[0, 1])),
    "brier": lambda y, p: float(skm.brier_score_loss(y, p)),
}


def score(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """All metrics of ``METRICS`` for one set of labels and probabilities."""
    return {name: fn(y_true, proba) for name, fn in METRICS.items()}


@dataclass(frozen=True)
class Reproduction:
    """A registered version retrained from its own data and config: do the metrics match?"""

    model: str
    version: int
    data_md5: str
    data_rev: str  # where the data was found: a git revision or "workspace"
    same_code: bool  # the pipeline code now is the code the version was trained with
    recorded: dict[str, float]
    reproduced: dict[str, float]
    max_difference: float
    matches: bool


def evaluate_model(model: Pipeline, split: Split) -> dict[str, float]:
    """Score the fitted model on the holdout set."""
    proba = model.predict_proba(split.X_holdout)[:, 1]
    return score(split.y_holdout.to_numpy(), proba)
