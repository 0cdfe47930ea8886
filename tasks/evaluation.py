"""Holdout evaluation."""

from __future__ import annotations

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from sklearn import metrics as skm
from sklearn.pipeline import Pipeline

from tasks.split import Split


def score(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Every metric a policy may name (mlops.policy.KNOWN_METRICS), from labels and P(positive)."""
    pred = (proba >= threshold).astype(int)
    return {
        "roc_auc": float(skm.roc_auc_score(y_true, proba)),
        "average_precision": float(skm.average_precision_score(y_true, proba)),
        "f1": float(skm.f1_score(y_true, pred, zero_division=0)),
        "precision": float(skm.precision_score(y_true, pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, pred, zero_division=0)),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "log_loss": float(skm.log_loss(y_true, proba, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y_true, proba)),
    }


@task(name="evaluate-model", cache_policy=NO_CACHE, persist_result=False)
def evaluate_model(model: Pipeline, split: Split) -> dict[str, float]:
    """Score the fitted model on the holdout set."""
    proba = model.predict_proba(split.X_holdout)[:, 1]
    return score(split.y_holdout.to_numpy(), proba)
