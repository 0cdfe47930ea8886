"""Outliers per request (``mlops.core.outliers``): fitted on the example's training rows, clearly
out-of-range rows are flagged and their column named, training-like rows are flagged no more
often than the rate the detector was fitted for, the server's per-record scoring agrees with the
frame's, the detector survives the MLmodel metadata, and monitoring's window rate is judged
against the training rate."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from mlops.core.outliers import OUTLIER_METADATA, RATE, OutlierDetector
from mlops.core.policy import MonitoringPolicy
from mlops.ml.monitoring import Window, outlier_rate
from tests.helpers import EXAMPLE

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def adult() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = pd.read_csv(EXAMPLE / "adult.csv.gz", na_values=["?"]).drop(columns=["income"])
    train = frame.sample(frac=0.7, random_state=0)
    return train, frame.drop(train.index)


@pytest.fixture(scope="module")
def detector(adult: tuple[pd.DataFrame, pd.DataFrame]) -> OutlierDetector:
    return OutlierDetector.fit(adult[0])


def test_training_like_rows_are_flagged_no_more_than_the_expected_rate(
    adult: tuple[pd.DataFrame, pd.DataFrame], detector: OutlierDetector
) -> None:
    assert 0 < detector.rate <= RATE and detector.rows == len(adult[0])
    holdout = detector.score(adult[1])
    flagged = int(holdout.flags.sum())
    # not more often than the training rows were: a one-sided binomial test at 1 %
    assert binomtest(flagged, len(adult[1]), detector.rate, alternative="greater").pvalue > 0.01
    assert flagged / len(adult[1]) < 2 * RATE, flagged


def test_clearly_out_of_range_rows_are_flagged_and_their_column_named(
    adult: tuple[pd.DataFrame, pd.DataFrame], detector: OutlierDetector
) -> None:
    base = adult[1].dropna().head(6).to_dict("records")
    odd = [dict(r) for r in base]
    odd[0]["age"] = 500  # far beyond any age in training
    odd[1]["hours_per_week"] = -40
    odd[2]["workclass"] = "Astronaut"  # a category never seen
    odd[3]["capital_gain"] = float("inf")
    odd[4]["age"] = "forty"  # not a number at all
    odd[5]["sex"] = None  # missing where training had no missing value
    scored = detector.score_records(odd)
    assert scored.flags.all(), scored.scores
    assert scored.columns == ["age", "hours_per_week", "workclass", "capital_gain", "age", "sex"]
    assert (scored.scores > detector.threshold).all()
    calm = detector.score_records(base)
    assert not calm.flags.any() or calm.flags.sum() <= 1, calm.scores

    # the server scores records, monitoring scores frames: the same scores either way
    rows = adult[1].head(300)
    by_frame = detector.score(rows)
    by_record = detector.score_records(rows.to_dict("records"))
    np.testing.assert_allclose(by_record.scores, by_frame.scores, rtol=1e-12)
    assert by_record.columns == by_frame.columns
    assert (by_record.flags == by_frame.flags).all()


def test_the_detector_travels_in_the_mlmodel_metadata_and_a_broken_record_is_none(
    detector: OutlierDetector,
) -> None:
    metadata = {OUTLIER_METADATA: json.loads(json.dumps(detector.to_metadata()))}
    assert OutlierDetector.from_metadata(metadata) == detector
    assert OutlierDetector.from_metadata({}) is None
    broken = {OUTLIER_METADATA: {**detector.to_metadata(), "threshold": "high"}}
    assert OutlierDetector.from_metadata(broken) is None
    assert OutlierDetector.from_metadata({OUTLIER_METADATA: {"numeric": []}}) is None
    assert len(json.dumps(detector.to_metadata())) < 20_000  # small enough for an MLmodel file
    with pytest.raises(ValueError, match="no training rows"):
        OutlierDetector.fit(pd.DataFrame({"x": []}))


def test_monitoring_judges_a_windows_outlier_rate_against_the_training_rate(
    adult: tuple[pd.DataFrame, pd.DataFrame], detector: OutlierDetector
) -> None:
    policy = MonitoringPolicy(min_rows=1000)
    now = datetime.now(UTC)
    calm = outlier_rate(Window(None, now, adult[1].head(3000)), detector, policy)
    assert calm.judged and calm.p_value is not None and calm.p_value > 0.01, calm.reason
    odd = adult[1].head(3000).copy()
    odd.loc[odd.index[:150], "age"] = 300  # 5 % of the rows out of range
    moved = outlier_rate(Window(None, now, odd), detector, policy)
    assert moved.flagged >= 150 and moved.p_value is not None and moved.p_value < 1e-10
    assert next(iter(moved.columns)) == "age" and moved.columns["age"] >= 150
    assert moved.reason.startswith(f"{moved.flagged} of 3000 rows are outliers (")
    assert f"against {detector.rate:.1%} of the training rows" in moved.reason
    small = outlier_rate(Window(None, now, odd.head(10)), detector, policy)
    assert not small.judged and "too small to judge" in small.reason
    assert not outlier_rate(Window(None, now, odd), None, policy).judged
