"""Holdout evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm
from sklearn.pipeline import Pipeline

from mlops.core.metrics import REGISTRY, Metric
from mlops.ml.split import Split

THRESHOLD = 0.5  # P(positive) at or above which a row is labelled positive


def _labels(proba: np.ndarray) -> np.ndarray:
    return (proba >= THRESHOLD).astype(int)


def _scorer(metric: Metric) -> Callable[[np.ndarray, np.ndarray], float]:
    fn = getattr(skm, metric.scorer)
    if metric.reads == "labels":
        return lambda y, p: float(fn(y, _labels(p), **metric.options))
    return lambda y, p: float(fn(y, p, **metric.options))


#: Every metric of the registry (mlops.core.metrics), from 0/1 labels and P(positive).
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    name: _scorer(metric) for name, metric in REGISTRY.items()
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
