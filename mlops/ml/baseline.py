"""A quick baseline: the pipeline's default model cross-validated on the data, and the starting
policy whose thresholds it gives.

``cross_validate_baseline`` fits the model on ``folds`` folds (stratified by class for a
classifier) and scores each held-out fold with every metric of the problem
(``Problem.score_all``). The fold count follows the pipeline's split (``folds_for``): with a
holdout of 20 %, five folds, so each fold's model trains on as many rows as the real one and its
scores spread as the real holdout's will.

``starting_policy`` sets each threshold below the baseline's mean by its slack: the larger of
``MARGIN`` of the figure and ``SPREAD`` fold standard deviations (above, for a metric where lower
is better), rounded outward. A model as good as the baseline passes with room for a holdout's
noise; a clearly worse one does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from mlops.core.config import FeatureConfig, ModelConfig
from mlops.core.errors import MlopsError
from mlops.core.metrics import DEFAULT_METRIC, KNOWN_METRICS, ProblemType, metrics_for
from mlops.ml.contract_inference import round_outward, yaml_comment, yaml_text
from mlops.ml.problems import Problem
from mlops.ml.training import build_pipeline

#: The metrics a starting policy sets thresholds on, per problem: the comparison default, a
#: metric of the labels and one of the probabilities (or errors) beside it.
POLICY_METRICS: dict[ProblemType, tuple[str, ...]] = {
    "binary": ("roc_auc", "f1", "brier"),
    "multiclass": ("f1_macro", "accuracy", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}
#: A threshold's slack is at least this share of the baseline's figure ...
MARGIN = 0.05
#: ... and at least this many standard deviations of the figure across folds.
SPREAD = 2.0
#: OpenMP threads of the baseline's fits (see cross_validate_baseline).
THREADS = 1
#: The champion comparison tolerates a challenger this share of the baseline's figure worse.
COMPARISON_MARGIN = 0.01

#: Column names a fairness review should consider (matched as words of the column's name).
SENSITIVE_WORDS = (
    "age", "sex", "gender", "race", "ethnicity", "ethnic", "religion", "nationality", "country",
    "marital", "disability", "pregnancy", "orientation",
)  # fmt: skip


@dataclass(frozen=True)
class FoldScores:
    """One metric's score on each held-out fold."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in self.values)


@dataclass(frozen=True)
class Baseline:
    """The default model's cross-validated scores on the data."""

    problem: ProblemType
    rows: int
    folds: int
    scores: dict[str, FoldScores]

    def summary(self) -> str:
        """One line per metric: mean ± standard deviation over the folds."""
        lines = [f"baseline: {self.folds}-fold cross-validation on {self.rows} rows"]
        for name, s in self.scores.items():
            figure = f"{s.mean:.4f} ± {s.std:.4f}" if s.finite else "undefined on some folds"
            lines.append(f"  {name:<18} {figure}")
        return "\n".join(lines)


def folds_for(test_size: float) -> int:
    """As many folds as make each fold's held-out share the split's holdout share (2 to 10)."""
    return min(10, max(2, round(1 / test_size)))


def baseline_model(features: FeatureConfig, model: ModelConfig, problem: Problem) -> Pipeline:
    """The unfitted model exactly as training builds it for this problem (the feature pipeline,
    then the family's classifier or regressor)."""
    return build_pipeline(features, model, problem.kind)


def cross_validate_baseline(
    frame: pd.DataFrame,
    features: FeatureConfig,
    model: ModelConfig,
    problem: Problem,
    folds: int,
    seed: int = 42,
) -> Baseline:
    """Fit the model on ``folds`` folds of ``frame`` and score each held-out fold.

    Raises:
        MlopsError: a class of the target has fewer rows than there are folds.
    """
    y = problem.encode(frame[problem.column])
    X = frame[list(features.columns)]
    if problem.is_classifier:
        counts = y.value_counts()
        rare = {problem.classes[int(k)]: int(v) for k, v in counts.items() if v < folds}
        if rare:
            few = ", ".join(f"{c!r} ({n} rows)" for c, n in rare.items())
            raise MlopsError(
                f"target {problem.column!r}: every class needs at least {folds} rows for the "
                f"baseline's {folds}-fold cross-validation; too few: {few}"
            )
        splitter: StratifiedKFold | KFold = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(folds, shuffle=True, random_state=seed)
    unfitted = baseline_model(features, model, problem)
    per_fold: list[dict[str, float]] = []
    # One thread: on a busy machine OpenMP's threads wait on one another (five 300-row
    # hist-gradient-boosting fits took 14.7 s with two threads, 0.33 s with one).
    with threadpool_limits(limits=THREADS, user_api="openmp"):
        for train, held_out in splitter.split(X, y):
            fitted = clone(unfitted).fit(X.iloc[train], y.iloc[train])
            predictions = problem.predict(fitted, X.iloc[held_out])
            per_fold.append(problem.score_all(y.iloc[held_out].to_numpy(), predictions))
    scores = {
        name: FoldScores(tuple(fold[name] for fold in per_fold)) for name in problem.metrics()
    }
    return Baseline(problem.kind, len(frame), folds, scores)


def slack(scores: FoldScores) -> float:
    """How far below (or above) the baseline's figure a threshold sits."""
    return max(MARGIN * abs(scores.mean), SPREAD * scores.std)


def thresholds(baseline: Baseline) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The starting thresholds on the problem's ``POLICY_METRICS``, and the metrics left out
    (undefined on some fold)."""
    out: dict[str, dict[str, float]] = {}
    left_out = []
    for name in POLICY_METRICS[baseline.problem]:
        scores = baseline.scores[name]
        if not scores.finite:
            left_out.append(name)
            continue
        gap = slack(scores)
        if KNOWN_METRICS[name] == "higher":
            out[name] = {"min": round_outward(scores.mean - gap, gap, down=True)}
        else:
            out[name] = {"max": round_outward(scores.mean + gap, gap, down=False)}
    return out, left_out


def sensitive_candidates(columns: Sequence[str]) -> list[str]:
    """Columns whose names suggest a protected attribute (``SENSITIVE_WORDS``), for a review."""
    found = []
    for column in columns:
        words = set(column.lower().replace("-", "_").replace(" ", "_").split("_"))
        if words & set(SENSITIVE_WORDS):
            found.append(column)
    return found


def monitoring_rows(rows: int) -> tuple[int, int]:
    """A monitoring window's row floor and labelled-row floor for a dataset of ``rows`` rows: a
    fifth and a twentieth of it, within the policy's bounds (50 to 1,000; 10 to 200)."""
    return min(1000, max(50, rows // 5)), min(200, max(10, rows // 20))


def missing_limit(largest_share: float) -> float:
    """The training-data gate's limit on missing values per column: the policy default (10 %),
    or above the data's own largest share by five points, so the data it started from passes."""
    return min(1.0, max(0.1, math.ceil((largest_share + 0.05) * 100) / 100))


def starting_policy(
    baseline: Baseline, columns: Sequence[str], source: str, largest_missing_share: float = 0.0
) -> str:
    """The policy file a new pipeline starts with, commented: thresholds from ``baseline``, the
    champion comparison on the problem's default metric, fairness empty with the candidate
    sensitive ``columns`` named, the missing-value limit above the data's own
    (``missing_limit``), monitoring floors scaled to the data."""
    assert all(m in metrics_for(baseline.problem) for m in POLICY_METRICS[baseline.problem])
    limits, left_out = thresholds(baseline)
    compared = DEFAULT_METRIC[baseline.problem]
    figure = baseline.scores[compared]
    share = COMPARISON_MARGIN * abs(figure.mean)
    margin = round_outward(share, share, down=False) if figure.finite else 0.0
    drop = slack(figure)
    max_drop = round_outward(drop, drop, down=False) if figure.finite else 0.05
    min_rows, min_labelled = monitoring_rows(baseline.rows)
    candidates = sensitive_candidates(columns)
    figures = ", ".join(
        f"{name} {baseline.scores[name].mean:.4f} ± {baseline.scores[name].std:.4f}"
        for name in limits
    )

    def block(comment: str, body: dict[str, Any]) -> str:
        return comment + yaml_text(body)

    parts = [
        f"# Starting policy written by `mlops init` for {source} (a {baseline.problem} problem).\n"
        "# Bump `version` on every change: each model version records the policy version it was\n"
        "# judged by.\n",
        block("", {"version": 1}),
        block(
            yaml_comment(
                f"Holdout thresholds from a {baseline.folds}-fold cross-validation of the default "
                f"model on {baseline.rows} rows ({figures}): each sits below the baseline (above, "
                f"where lower is better) by the larger of {MARGIN:.0%} of its figure and "
                f"{SPREAD:g} standard deviations across folds."
                + (
                    f" Left out (undefined on some fold): {', '.join(left_out)}."
                    if left_out
                    else ""
                )
            ),
            {"metrics": limits},
        ),
        block(
            yaml_comment(
                f"Challenger against champion on {compared}: worse by more than `margin` "
                f"({COMPARISON_MARGIN:.0%} of the baseline's figure) at the confidence level fails."
            ),
            {"comparison": {"metric": compared, "margin": margin}},
        ),
        block(
            yaml_comment(
                "Group fairness: no sensitive column is judged until you name one. "
                + (
                    f"Candidates by name: {', '.join(candidates)}."
                    if candidates
                    else "No column's name suggests one; name any that is."
                )
            ),
            {"fairness": {"sensitive": []}},
        ),
        block(
            yaml_comment(
                "The training data (Evidently): missing values per column (the data this started "
                f"from had up to {largest_missing_share:.1%}), drift against the champion's data."
            ),
            {
                "data": {
                    "max_missing_share": missing_limit(largest_missing_share),
                    "max_drift_share": 0.3,
                }
            },
        ),
        block(
            yaml_comment("How a version that passed the gates goes live (the local router)."),
            {"release": {"strategy": "canary", "target": "local"}},
        ),
        block(
            yaml_comment(
                f"Production monitoring: a window is judged from {min_rows} rows, live performance "
                f"from {min_labelled} labelled rows (a fifth and a twentieth of the "
                f"{baseline.rows} rows this started from); live {compared} may fall behind the "
                "champion's holdout figure by as much as a holdout threshold sits below the "
                "baseline's (in the metric's own units)."
            ),
            {
                "monitoring": {
                    "min_rows": min_rows,
                    "min_labelled_rows": min_labelled,
                    "max_metric_drop": max_drop,
                }
            },
        ),
        block(
            yaml_comment("A person approves each promotion in the Prefect UI when this is true."),
            {"require_approval": False},
        ),
    ]
    return "".join(parts)
