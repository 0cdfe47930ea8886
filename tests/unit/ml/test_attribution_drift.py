"""Feature-attribution drift (``mlops.ml.attribution_drift``) and the skew and drift objectives
side by side (``mlops.ml.monitoring.detect_drift``): a window in which only the inputs' joint
distribution moves under the model is caught by the attributions while every column's own drift
test stays quiet; skew and drift judge a window against different references, each with its
limit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from mlops.core.config import FeatureConfig, ModelConfig
from mlops.core.policy import MonitoringPolicy
from mlops.ml.attribution_drift import attribution_drift
from mlops.ml.explanations import CHUNK_ROWS
from mlops.ml.monitoring import (
    MonitoringOutcome,
    PerformanceVerdict,
    Window,
    detect_drift,
    evidence,
)
from mlops.ml.problems import Problem
from mlops.ml.training import build_pipeline

FEATURES = FeatureConfig(numeric=("a", "b", "c"), categorical=())
COLUMNS = list(FEATURES.columns)
BINARY = Problem("binary", ("no", "yes"), "y")
POLICY = MonitoringPolicy(
    min_rows=500, skew={"max_share": 0.1}, drift={"max_share": 0.1},
    attribution={"max_shift": 0.1, "rows": 300},
)  # fmt: skip


def rows(n: int, together: bool, seed: int) -> pd.DataFrame:
    """Columns a and b with the same marginals whether they go together (b follows a) or not;
    c is noise the target ignores."""
    rng = np.random.default_rng(seed)
    a, c = rng.normal(0, 1, n), rng.normal(0, 1, n)
    b = a + rng.normal(0, 0.3, n) if together else rng.normal(0, np.sqrt(1.09), n)
    return pd.DataFrame({"a": a, "b": b, "c": c})


def label(X: pd.DataFrame) -> np.ndarray:
    """Whether a and b have the same sign: an interaction, which only a model of both reads."""
    return np.where((X["a"] > 0) == (X["b"] > 0), "yes", "no")


def fitted(family: str, params: dict[str, Any]) -> tuple[Pipeline, pd.DataFrame]:
    """The family trained on rows where a and b go together, and those rows."""
    train = rows(3000, together=True, seed=0)
    with threadpool_limits(1):
        model = build_pipeline(FEATURES, ModelConfig(family=family, params=params), "binary")
        model.fit(train, label(train))
    return model, train


TREES = {
    "gradient_boosting": {"n_estimators": 50, "random_state": 0},
    "random_forest": {"n_estimators": 30, "max_depth": 8, "random_state": 0},
}


def window(frame: pd.DataFrame) -> Window:
    return Window(None, datetime.now(UTC), frame)


@pytest.mark.parametrize("family", sorted(TREES))
def test_only_the_joint_distribution_moves_and_only_the_attributions_see_it(family: str) -> None:
    model, train = fitted(family, TREES[family])
    apart = rows(2000, together=False, seed=1)  # every column as in training, a and b unlinked
    plain = detect_drift(window(apart), train, COLUMNS, POLICY)
    assert plain.judged and not plain.detected and plain.drifted == [], plain.reason

    moved = attribution_drift(model, apart, train, COLUMNS, BINARY, POLICY)
    assert moved.judged and moved.detected, moved.reason
    assert "a" in moved.moved and "c" not in moved.moved, moved.reason
    top = moved.influences[0]
    assert top.feature in ("a", "b") and top.shift > 0.1 and top.p_value < 1e-6
    assert moved.method == "tree_shap" and moved.rows == moved.reference_rows == 300
    head = moved.reason.split(";")[0]  # the features that moved, largest shift first
    assert head.startswith("the influence of ") and head.endswith(" moved"), moved.reason
    assert sorted(head.removeprefix("the influence of ").removesuffix(" moved").split(", ")) == (
        moved.moved
    )

    # the event names the objective that caught it, with each feature's shift
    outcome = MonitoringOutcome(
        "m", 1, None, "now", len(apart), plain, _no_labels(), [], {}, attribution=moved
    )
    assert outcome.detected == ["attribution"]
    payload = evidence(outcome, "drift")
    assert payload["objectives"] == ["attribution"] and payload["drifted_columns"] == []
    assert payload["attribution"]["moved"] == moved.moved
    assert payload["reason"].startswith("attribution: the influence of ")


@pytest.mark.parametrize("family", sorted(TREES))
def test_a_window_like_the_training_data_moves_no_influence(family: str) -> None:
    model, train = fitted(family, TREES[family])
    for seed in (2, 3, 4):
        like = rows(2000, together=True, seed=seed)
        verdict = attribution_drift(model, like, train, COLUMNS, BINARY, POLICY)
        assert verdict.judged and not verdict.detected, verdict.reason
        assert max(abs(i.shift) for i in verdict.influences) < 0.1, verdict.reason


def test_the_same_window_in_another_arrival_order_gives_the_same_verdict() -> None:
    """Concurrent callers are answered in another order each time; the sample of the window's
    rows must not depend on it (seen: two runs of the demo printed different largest shifts)."""
    model, train = fitted("gradient_boosting", TREES["gradient_boosting"])
    window_rows = rows(2000, together=False, seed=1)
    shuffled = window_rows.sample(frac=1.0, random_state=7).reset_index(drop=True)
    first = attribution_drift(model, window_rows, train, COLUMNS, BINARY, POLICY)
    second = attribution_drift(model, shuffled, train, COLUMNS, BINARY, POLICY)
    assert first.reason == second.reason and first.influences == second.influences


def test_a_linear_models_influences_follow_the_columns_alone() -> None:
    """Attributions of an additive model depend on each column's own value, so unlinking a and b
    moves nothing: what the attributions add over column drift is the model's interactions."""
    model, train = fitted("logistic_regression", {"max_iter": 500})
    verdict = attribution_drift(
        model, rows(2000, together=False, seed=1), train, COLUMNS, BINARY, POLICY
    )
    assert verdict.judged and not verdict.detected and verdict.method == "linear", verdict.reason
    shifted = rows(2000, together=True, seed=1).assign(a=lambda f: f["a"] * 3)
    moved = attribution_drift(model, shifted, train, COLUMNS, BINARY, POLICY)
    assert moved.detected and "a" in moved.moved, moved.reason  # a column that moved does


def test_without_a_limit_the_shift_is_reported_and_nothing_is_detected() -> None:
    model, train = fitted("gradient_boosting", TREES["gradient_boosting"])
    policy = POLICY.model_copy(update={"attribution": POLICY.attribution.model_copy(  # type: ignore[union-attr]
        update={"max_shift": None})})  # fmt: skip
    verdict = attribution_drift(
        model, rows(2000, together=False, seed=1), train, COLUMNS, BINARY, policy
    )
    assert verdict.judged and not verdict.detected and verdict.moved == []
    assert verdict.influences[0].shift > 0.1
    assert "reported only (monitoring.attribution.max_shift is not set)" in verdict.reason


def test_what_cannot_be_judged_says_why() -> None:
    model, train = fitted("gradient_boosting", TREES["gradient_boosting"])
    unset = MonitoringPolicy(min_rows=500)
    assert attribution_drift(model, train, train, COLUMNS, BINARY, unset).reason == (
        "not checked (monitoring.attribution is not set)"
    )
    small = attribution_drift(model, train.head(100), train, COLUMNS, BINARY, POLICY)
    assert not small.judged and "100 rows: too small to judge (needs 500)" in small.reason
    lacking = attribution_drift(model, train.drop(columns="b"), train, COLUMNS, BINARY, POLICY)
    assert not lacking.judged and "feature column(s) ['b'] missing" in lacking.reason

    knn = Pipeline([("model", KNeighborsClassifier())]).fit(train, label(train))
    none = attribution_drift(knn, train, train, COLUMNS, BINARY, POLICY)
    assert not none.judged and none.reason.startswith("the model has no explainer: ")
    assert "KNeighborsClassifier" in none.reason

    broken = train.assign(a="not a number")  # a window the pipeline cannot transform
    failed = attribution_drift(model, broken, train, COLUMNS, BINARY, POLICY)
    assert not failed.judged and "the window's rows could not be explained" in failed.reason


def test_the_time_budget_bounds_the_rows_explained() -> None:
    model, train = fitted("random_forest", TREES["random_forest"])
    tight = POLICY.model_copy(update={"attribution": POLICY.attribution.model_copy(  # type: ignore[union-attr]
        update={"rows": 2000, "budget_seconds": 1e-6})})  # fmt: skip
    verdict = attribution_drift(model, train, train, COLUMNS, BINARY, tight)
    assert verdict.judged and verdict.rows == verdict.reference_rows == CHUNK_ROWS
    assert f"on {CHUNK_ROWS} window and {CHUNK_ROWS} training rows" in verdict.reason


# skew and drift apart ---------------------------------------------------------------------------


def test_skew_and_drift_judge_against_their_own_reference_with_their_own_limit() -> None:
    train = rows(3000, together=True, seed=0)
    before = rows(2000, together=True, seed=5)  # production as trained on
    shifted = rows(2000, together=True, seed=6).assign(c=lambda f: f["c"] + 1)
    later = rows(2000, together=True, seed=7).assign(c=lambda f: f["c"] + 1)

    # the shift arrives: the window differs from the training data and from the rows before it
    skew = detect_drift(window(shifted), train, COLUMNS, POLICY)
    drift = detect_drift(window(shifted), before, COLUMNS, POLICY, objective="drift")
    assert skew.detected and skew.drifted == ["c"] and skew.objective == "skew", skew.reason
    assert drift.detected and drift.drifted == ["c"] and drift.objective == "drift", drift.reason
    assert "against the champion's training data (3000 rows)" in skew.reason
    assert "against the production rows logged before the window (2000 rows)" in drift.reason

    # it stays: still skewed against the training data, no longer drifting against production
    skew = detect_drift(window(later), train, COLUMNS, POLICY)
    drift = detect_drift(window(later), shifted, COLUMNS, POLICY, objective="drift")
    assert skew.detected and not drift.detected and drift.judged, drift.reason
    outcome = MonitoringOutcome("m", 1, None, "now", 2000, skew, _no_labels(), [], {}, drift)
    assert outcome.detected == ["skew"]
    assert evidence(outcome, "drift")["drift"]["against"] == (
        "the production rows logged before the window"
    )

    # each limit is its own: a drift limit left unset reports drift and decides nothing
    unset = MonitoringPolicy(min_rows=500)
    reported = detect_drift(window(shifted), before, COLUMNS, unset, objective="drift")
    assert reported.judged and not reported.detected and reported.drifted == ["c"]
    assert "reported only: monitoring.drift.max_share is not set" in reported.reason
    loose = MonitoringPolicy(min_rows=500, skew={"max_share": 0.5})
    assert not detect_drift(window(shifted), train, COLUMNS, loose).detected  # 1 of 3 < 50 %

    few = detect_drift(window(shifted), before.head(100), COLUMNS, POLICY, objective="drift")
    assert not few.judged and "100 production rows in the 24 h before the window" in few.reason


def test_a_policy_with_the_old_drift_limit_is_refused_with_where_it_went() -> None:
    with pytest.raises(ValidationError, match=r"`max_drift_share` is now `skew: \{max_share"):
        MonitoringPolicy.model_validate({"max_drift_share": 0.1})


def _no_labels() -> PerformanceVerdict:
    return PerformanceVerdict(False, False, "no labels", "roc_auc")
