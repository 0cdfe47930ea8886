"""The metric registry: every holdout metric by name, which way is better, which problem types it
applies to and how it is scored.

Named once, here: the policy accepts only these names, and only for a problem type each applies
to (``metrics_for``); evaluation computes exactly these (``mlops.ml.evaluation``). The scorer is
named, not imported: importing scikit-learn's metrics takes seconds, and the policy (read by the
CLI) lives in core. Adding a metric is one entry below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Better = Literal["higher", "lower"]

#: The kinds of problem the loop handles; a pipeline declares one (``target.problem``).
ProblemType = Literal["binary", "multiclass", "regression"]
PROBLEM_TYPES: tuple[ProblemType, ...] = ("binary", "multiclass", "regression")

CLASSIFIERS: frozenset[ProblemType] = frozenset({"binary", "multiclass"})


@dataclass(frozen=True)
class Metric:
    """A holdout metric: which way is better, for which problems, and how it is scored.

    ``reads`` says what the ``sklearn.metrics`` function ``scorer`` is given beside the truth:
    ``proba`` the class probabilities (P(positive) for a binary problem, the row-by-class matrix
    for a multiclass one), ``labels`` the predicted class (at the binary threshold), ``values``
    the predicted number (regression). ``class_labels`` passes ``labels=range(classes)`` so that
    a sample missing a class still scores against every class the model knows.
    """

    better: Better
    scorer: str
    reads: Literal["proba", "labels", "values"]
    problems: frozenset[ProblemType]
    options: Mapping[str, Any] = field(default_factory=dict)
    class_labels: bool = False


_BINARY: frozenset[ProblemType] = frozenset({"binary"})
_MULTI: frozenset[ProblemType] = frozenset({"multiclass"})
_REGRESSION: frozenset[ProblemType] = frozenset({"regression"})

REGISTRY: dict[str, Metric] = {
    # binary classification
    "roc_auc": Metric("higher", "roc_auc_score", "proba", _BINARY),
    "average_precision": Metric("higher", "average_precision_score", "proba", _BINARY),
    "f1": Metric("higher", "f1_score", "labels", _BINARY, {"zero_division": 0}),
    "precision": Metric("higher", "precision_score", "labels", _BINARY, {"zero_division": 0}),
    "recall": Metric("higher", "recall_score", "labels", _BINARY, {"zero_division": 0}),
    "brier": Metric("lower", "brier_score_loss", "proba", _BINARY),
    # any classifier
    "accuracy": Metric("higher", "accuracy_score", "labels", CLASSIFIERS),
    "balanced_accuracy": Metric("higher", "balanced_accuracy_score", "labels", CLASSIFIERS),
    "log_loss": Metric("lower", "log_loss", "proba", CLASSIFIERS, class_labels=True),
    # multiclass
    "f1_macro": Metric(
        "higher", "f1_score", "labels", _MULTI, {"average": "macro", "zero_division": 0}
    ),
    "f1_weighted": Metric(
        "higher", "f1_score", "labels", _MULTI, {"average": "weighted", "zero_division": 0}
    ),
    "roc_auc_ovr": Metric(
        "higher", "roc_auc_score", "proba", _MULTI, {"multi_class": "ovr"}, class_labels=True
    ),
    # regression
    "rmse": Metric("lower", "root_mean_squared_error", "values", _REGRESSION),
    "mae": Metric("lower", "mean_absolute_error", "values", _REGRESSION),
    "r2": Metric("higher", "r2_score", "values", _REGRESSION),
    "mape": Metric("lower", "mean_absolute_percentage_error", "values", _REGRESSION),
}

#: Every metric name and which way is better.
KNOWN_METRICS: dict[str, Better] = {name: metric.better for name, metric in REGISTRY.items()}

#: The metric a policy compares champions and judges live performance by when it names none.
DEFAULT_METRIC: dict[ProblemType, str] = {
    "binary": "roc_auc",
    "multiclass": "f1_macro",
    "regression": "rmse",
}


def metrics_for(problem: ProblemType) -> list[str]:
    """The names of the metrics that apply to ``problem``, in registry order."""
    return [name for name, metric in REGISTRY.items() if problem in metric.problems]


def check_metric(name: str, problem: ProblemType, where: str) -> str | None:
    """Why ``name`` cannot be used for ``problem`` (naming ``where`` it was asked for), or None."""
    if name not in REGISTRY:
        return f"{where}: unknown metric {name!r}; known for {problem}: {metrics_for(problem)}"
    if problem not in REGISTRY[name].problems:
        return (
            f"{where}: {name!r} does not apply to a {problem} problem "
            f"(it applies to {', '.join(sorted(REGISTRY[name].problems))}); "
            f"use one of {metrics_for(problem)}"
        )
    return None
