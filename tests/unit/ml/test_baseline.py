"""The quick baseline: the default model cross-validated per problem type, and the starting policy
its figures give (thresholds below the baseline by the stated slack; a policy that loads)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.core.config import FeatureConfig, ModelConfig
from mlops.core.errors import MlopsError
from mlops.core.metrics import DEFAULT_METRIC, ProblemType, metrics_for
from mlops.core.policy import load_policy
from mlops.ml.baseline import (
    MARGIN,
    POLICY_METRICS,
    SPREAD,
    Baseline,
    FoldScores,
    cross_validate_baseline,
    folds_for,
    missing_limit,
    monitoring_rows,
    sensitive_candidates,
    slack,
    starting_policy,
    thresholds,
)
from mlops.ml.problems import Problem

pytestmark = pytest.mark.unit

ROWS = 400
FEATURES = FeatureConfig(numeric=("x", "z"), categorical=("group",))
MODEL = ModelConfig(family="hist_gradient_boosting", params={"max_iter": 30, "random_state": 0})


def _frame(problem: ProblemType) -> tuple[pd.DataFrame, Problem]:
    """Rows whose target follows x (and the group): a model can learn it, chance cannot."""
    rng = np.random.default_rng(1)
    x, z = rng.normal(size=ROWS), rng.normal(size=ROWS)
    group = rng.choice(["a", "b", "c"], ROWS)
    signal = 2 * x + (group == "a")
    if problem == "regression":
        target: object = 10 + 3 * signal + rng.normal(scale=0.5, size=ROWS)
        spec = Problem("regression", (), "y")
    elif problem == "binary":
        target = np.where(signal + rng.normal(scale=0.5, size=ROWS) > 0.3, "yes", "no")
        spec = Problem("binary", ("no", "yes"), "y")
    else:
        target = np.select([signal < -1, signal < 1], ["low", "mid"], "high")
        spec = Problem("multiclass", ("high", "low", "mid"), "y")
    return pd.DataFrame({"x": x, "z": z, "group": group, "y": target}), spec


@pytest.mark.parametrize("problem", ["binary", "multiclass", "regression"])
def test_the_baseline_scores_every_metric_of_the_problem_on_each_fold(
    problem: ProblemType, tmp_path: Path
) -> None:
    frame, spec = _frame(problem)
    baseline = cross_validate_baseline(frame, FEATURES, MODEL, spec, folds=4)
    assert (baseline.problem, baseline.rows, baseline.folds) == (problem, ROWS, 4)
    assert list(baseline.scores) == metrics_for(problem)
    assert all(len(s.values) == 4 and s.finite for s in baseline.scores.values())
    learnt = {"binary": "roc_auc", "multiclass": "f1_macro", "regression": "r2"}[problem]
    assert baseline.scores[learnt].mean > 0.8, baseline.summary()

    limits, left_out = thresholds(baseline)
    assert set(limits) == set(POLICY_METRICS[problem]) and not left_out
    for name, bound in limits.items():
        scores = baseline.scores[name]
        gap = max(MARGIN * abs(scores.mean), SPREAD * scores.std)
        if "min" in bound:
            assert scores.mean - gap * 1.1 <= bound["min"] <= scores.mean - gap, name
        else:
            assert scores.mean + gap <= bound["max"] <= scores.mean + gap * 1.1, name

    path = tmp_path / "policy.yaml"
    path.write_text(starting_policy(baseline, list(frame.columns), "test.csv"))
    policy, _ = load_policy(path, set(frame.columns), problem)
    assert policy.comparison.metric == DEFAULT_METRIC[problem]
    assert policy.fairness.sensitive == ()
    assert policy.monitoring.min_rows == monitoring_rows(ROWS)[0]
    default = baseline.scores[DEFAULT_METRIC[problem]]
    assert 0.01 * abs(default.mean) <= policy.comparison.margin <= 0.011 * abs(default.mean)
    assert slack(default) <= policy.monitoring.max_metric_drop <= 1.1 * slack(default)


def test_the_thresholds_follow_the_stated_slack() -> None:
    tight = FoldScores((0.90, 0.91, 0.89, 0.90, 0.90))  # 5 % of the figure is the larger
    spread = FoldScores((0.60, 0.70, 0.50, 0.65, 0.55))  # two deviations are the larger
    brier = FoldScores((0.10, 0.11, 0.09, 0.10, 0.10))
    undefined = FoldScores((0.1, float("nan"), 0.1, 0.1, 0.1))
    baseline = Baseline(
        "binary", 1000, 5, {"roc_auc": tight, "f1": spread, "brier": brier, "accuracy": undefined}
    )
    limits, left_out = thresholds(baseline)
    assert limits["roc_auc"] == {"min": 0.855}  # 0.90 - 0.045
    two_sd = 2 * spread.std  # 0.158...
    assert limits["f1"]["min"] <= 0.6 - two_sd < limits["f1"]["min"] + 0.01
    assert limits["brier"]["max"] >= 0.1 + 2 * brier.std and "min" not in limits["brier"]
    assert left_out == [] and "accuracy" not in limits  # not a policy metric of binary

    baseline = Baseline("binary", 1000, 5, {"roc_auc": tight, "f1": undefined, "brier": brier})
    limits, left_out = thresholds(baseline)
    assert left_out == ["f1"] and set(limits) == {"roc_auc", "brier"}


def test_a_class_with_fewer_rows_than_folds_is_named() -> None:
    frame, spec = _frame("binary")
    frame.loc[frame.index[3:], "y"] = "no"
    frame.loc[frame.index[:3], "y"] = "yes"
    with pytest.raises(MlopsError, match=r"at least 5 rows .* 'yes' \(3 rows\)"):
        cross_validate_baseline(frame, FEATURES, MODEL, spec, folds=5)


def test_the_policy_helpers() -> None:
    assert folds_for(0.2) == 5 and folds_for(0.5) == 2 and folds_for(0.05) == 10
    assert sensitive_candidates(
        ["age", "sex", "native_country", "income", "hours_per_week", "Gender", "page_views"]
    ) == ["age", "sex", "native_country", "Gender"]
    assert monitoring_rows(3000) == (600, 150)
    assert monitoring_rows(100) == (50, 10)
    assert monitoring_rows(1_000_000) == (1000, 200)
    assert missing_limit(0.0) == 0.1
    assert math.isclose(missing_limit(0.064), 0.12)
    assert missing_limit(0.97) == 1.0
