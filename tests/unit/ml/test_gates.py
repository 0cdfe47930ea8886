"""Gates on small synthetic inputs: each verdict, and the reason a person reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops.core.policy import ComparisonPolicy, DataPolicy, FairnessPolicy, Policy, Threshold
from mlops.ml.gates import (
    GateResult,
    check_fairness,
    check_metric_thresholds,
    check_training_data,
    compare_with_champion,
)
from mlops.ml.problems import Problem

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)
N = 2000
Y = RNG.integers(0, 2, N)
SIGNAL = Y + RNG.normal(0, 0.8, N)


class Scores:
    """A stand-in classifier whose P(positive) is a fixed transform of a hidden signal."""

    def __init__(self, noise: float) -> None:
        self.p = 1 / (1 + np.exp(-(SIGNAL + np.random.default_rng(1).normal(0, noise, N) - 0.5)))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p = self.p[X.index.to_numpy()]
        return np.column_stack([1 - p, p])


class Fixed:
    """A stand-in classifier that gives each row the probability it is told to."""

    def __init__(self, p: np.ndarray) -> None:
        self.p = p.astype(float)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p = self.p[X.index.to_numpy()]
        return np.column_stack([1 - p, p])


HOLDOUT = pd.DataFrame({"row": range(N), "y": Y})
POLICY = ComparisonPolicy(bootstrap_samples=200, margin=0.005)
BINARY = Problem("binary", ("no", "yes"), "y")


def compare(challenger: Scores, champion: Scores | None, label: str = "champion") -> GateResult:
    return compare_with_champion(challenger, champion, HOLDOUT, BINARY, POLICY, label)


def test_a_clearly_better_challenger_is_a_win() -> None:
    r = compare(Scores(0.1), Scores(2.0))
    assert r.passed and r.details["verdict"] == "better"
    assert r.details["interval"][0] > 0


def test_a_clearly_worse_challenger_fails_with_the_interval() -> None:
    r = compare(Scores(2.0), Scores(0.1), "champion v3")
    assert not r.passed and r.details["verdict"] == "worse"
    assert "worse than champion v3 beyond the margin 0.005" in r.reason
    assert "95% interval" in r.reason


def test_the_same_model_is_a_tie_not_a_win() -> None:
    model = Scores(0.5)
    r = compare(model, model)
    assert r.passed and r.details["verdict"] == "tie"
    assert r.details["difference"] == 0


def test_no_champion_passes_with_that_reason() -> None:
    r = compare(Scores(0.5), None)
    assert r.passed and "no champion" in r.reason


def test_metric_thresholds_name_each_failure() -> None:
    policy = Policy(version=1, metrics={"roc_auc": Threshold(min=0.9), "brier": Threshold(max=0.1)})
    ok = check_metric_thresholds({"roc_auc": 0.95, "brier": 0.05}, policy)
    bad = check_metric_thresholds({"roc_auc": 0.85, "brier": 0.2}, policy)
    assert ok.passed
    assert not bad.passed
    assert bad.reason == "roc_auc 0.8500 is not >= 0.9; brier 0.2000 is not <= 0.1"


def test_fairness_names_the_gap_and_the_groups() -> None:
    groups = pd.DataFrame({"sex": ["F"] * 500 + ["M"] * 500})
    y = np.tile([0, 1], 500)
    pred = np.concatenate([np.zeros(500, int), y[500:]])  # F never selected; M perfectly
    r = check_fairness(
        Fixed(pred),
        groups.assign(y=y),
        BINARY,
        FairnessPolicy(sensitive=("sex",), min_group_size=50),
    )
    assert not r.passed
    assert (
        "demographic parity difference on sex is 0.500 > 0.2 (selection rate M 0.500 vs F 0.000)"
        in r.reason
    )
    assert "equal opportunity difference on sex is 1.000 > 0.2" in r.reason
    assert r.details["sex"]["groups"]["F"]["rows"] == 500


def test_fairness_leaves_small_groups_out_of_the_verdict() -> None:
    groups = pd.DataFrame({"race": ["A"] * 500 + ["B"] * 500 + ["C"] * 10})
    y = np.tile([0, 1], 505)
    pred = y.copy()
    pred[-10:] = 0  # the tiny group is never selected
    r = check_fairness(
        Fixed(pred),
        groups.assign(y=y),
        BINARY,
        FairnessPolicy(sensitive=("race",), min_group_size=50),
    )
    assert r.passed
    assert r.details["race"]["too_small"] == ["C"]


def test_training_data_flags_missing_values_and_drift() -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"a": rng.normal(0, 1, 800), "b": rng.choice(["x", "y"], 800)})
    cur = pd.DataFrame({"a": rng.normal(3, 1, 800), "b": rng.choice(["x", "y"], 800)})
    cur.loc[:200, "b"] = None
    r = check_training_data(
        cur, ref, DataPolicy(max_missing_share=0.1, max_drift_share=0.3, sample_rows=800)
    )
    assert not r.passed
    assert "missing values above 10%: b 25.1%" in r.reason
    assert "drifted against the champion's training data" in r.reason
    assert "a" in r.details["drifted_columns"]
    same = check_training_data(ref, ref, DataPolicy(sample_rows=800))
    assert same.passed and same.details["drift_share"] == 0


def test_the_champion_is_compared_only_on_rows_it_never_trained_on() -> None:
    from mlops.ml.gates import unseen_rows

    frame = pd.DataFrame(
        {"a": range(300), "b": [i % 7 for i in range(300)], "y": [i % 2 for i in range(300)]}
    )
    holdout, champion_training = frame.iloc[:100], frame.iloc[50:300]
    unseen = unseen_rows(holdout, champion_training)
    pd.testing.assert_frame_equal(unseen, frame.iloc[:50])
    assert unseen_rows(holdout, None) is holdout
