"""The canary's prediction check per problem type, on synthetic slot samples: class shares by
class name (multiclass; binary counts of servers older than problem types), histograms of
predicted values (regression), and the expected predictions a retraining hands over."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError

from mlops.core.policy import ReleasePolicy
from mlops.ml.prediction_shift import (
    ExpectedPredictions,
    distance_to_quantiles,
    histogram_cdf,
    histogram_distance,
    histogram_quantile,
    quantile_cdf,
    quantiles_of,
)
from mlops.release.canary import class_shares, judge
from mlops.release.targets.base import SlotSample
from mlops.release.targets.local import parse_prediction_counts, parse_prediction_values

pytestmark = pytest.mark.unit

LATENCY = {0.005: 50.0, 0.01: 90.0, 0.05: 99.0, 0.1: 100.0, math.inf: 100.0}
IRIS = ("setosa", "versicolor", "virginica")
POLICY = ReleasePolicy(min_requests=100)


def _classes(requests: float, shares: dict[str, float]) -> SlotSample:
    latency = {le: c * requests / 100 for le, c in LATENCY.items()}
    return SlotSample(requests, 0, latency, {k: v * requests for k, v in shares.items()})


def _histogram(values: np.ndarray, bounds: list[float]) -> dict[float, float]:
    """Cumulative bucket counts as Prometheus keeps them, with ``+Inf``."""
    counts = {b: float((values <= b).sum()) for b in bounds}
    return counts | {math.inf: float(len(values))}


def _values(values: np.ndarray, bounds: list[float]) -> SlotSample:
    n = float(len(values))
    latency = {le: c * n / 100 for le, c in LATENCY.items()}
    return SlotSample(n, 0, latency, {}, _histogram(values, bounds))


def test_a_multiclass_candidate_is_judged_by_each_class_share_and_the_class_is_named() -> None:
    champion = _classes(2000, {"setosa": 0.5, "versicolor": 0.3, "virginica": 0.2})
    alike = judge(_classes(200, {"setosa": 0.45, "versicolor": 0.33, "virginica": 0.22}), champion, POLICY)  # fmt: skip
    assert not alike.breached, alike.reasons
    assert alike.figures["prediction_shift"] == pytest.approx(0.05)
    assert alike.figures["candidate_share[virginica]"] == pytest.approx(0.22)
    assert alike.figures["reference_share[setosa]"] == pytest.approx(0.5)

    moved = judge(_classes(200, {"setosa": 0.3, "versicolor": 0.3, "virginica": 0.4}), champion, POLICY)  # fmt: skip
    assert moved.breached and moved.figures["prediction_shift"] == pytest.approx(0.2)
    assert moved.figures["total_variation"] == pytest.approx(0.2)
    assert moved.reasons == [  # of equal differences, the class predicted more often now
        "'virginica' predicted for 40.0% of requests against 20.0% for the stable version (allowed ±15%; 200 requests, chi-square p = 3e-11)"
    ]
    # a class the champion never predicted counts from 0
    new_class = judge(_classes(200, {"setosa": 0.5, "virginica": 0.2, "versicolor": 0.1, "other": 0.2}), champion, POLICY)  # fmt: skip
    assert new_class.breached and "'other' predicted for 20.0%" in new_class.reasons[0]


def test_few_requests_leave_the_predictions_unjudged() -> None:
    champion = _classes(2000, {"setosa": 0.5, "versicolor": 0.3, "virginica": 0.2})
    few = judge(_classes(50, {"setosa": 1.0}), champion, POLICY)
    assert not few.breached and "prediction_shift" not in few.figures


def test_a_champion_on_a_server_older_than_problem_types_is_compared_by_class_name() -> None:
    """Its server counted binary predictions as "0" and "1"; the candidate's counts class names.
    With the target's classes the two are compared as the same classes."""
    old = SlotSample(1000, 0, {k: v * 10 for k, v in LATENCY.items()}, {"1": 250, "0": 750})
    new = _classes(200, {">50K": 0.27, "<=50K": 0.73})
    assert not judge(new, old, POLICY, classes=("<=50K", ">50K")).breached
    assert class_shares(old, ("<=50K", ">50K")) == {">50K": 0.25, "<=50K": 0.75}
    unnamed = judge(new, old, POLICY)  # without the classes nothing is alike: the check says so
    assert unnamed.breached and unnamed.figures["total_variation"] == 1.0
    assert "'0' predicted for 0.0% of requests against 75.0%" in unnamed.reasons[0]
    # a target whose classes are "0" and "1" needs no naming
    assert class_shares(old, ("0", "1")) == {"1": 0.25, "0": 0.75}


def test_a_retrained_classifier_is_judged_against_the_class_shares_of_production_labels() -> None:
    champion = _classes(2000, {"setosa": 0.5, "versicolor": 0.3, "virginica": 0.2})
    candidate = _classes(200, {"setosa": 0.2, "versicolor": 0.3, "virginica": 0.5})
    assert judge(candidate, champion, POLICY).breached
    labels = ExpectedPredictions(
        shares={"setosa": 0.25, "versicolor": 0.3, "virginica": 0.45},
        rows=1000,
        source="the last 1000 production labels",
    )
    verdict = judge(candidate, champion, POLICY, labels)
    assert not verdict.breached and verdict.figures["reference_share[virginica]"] == 0.45
    wrong = judge(champion, champion, POLICY, labels)
    assert wrong.reasons == [
        "'setosa' predicted for 50.0% of requests against 25.0% in the last 1000 production "
        "labels (allowed ±15%; 2000 requests, chi-square p = 2.2e-54)"
    ]


def test_a_shift_past_the_limit_that_chance_explains_on_few_requests_passes() -> None:
    """CI's penguins retraining, at its 25 % step: 33 of 40 requests predicted 'Gentoo' against
    614 of the last 915 labels (82.5 % vs 67.1 %, past the ±15 %). Forty requests move a share
    by 7 points by luck alone: the shift is not evidence. The same shares over 400 requests are."""
    labels = ExpectedPredictions(
        shares={"Gentoo": 614 / 915, "Adelie": 301 / 915}, rows=915, source="the last 915 labels"
    )
    few = SlotSample(40, 0, {le: c * 0.4 for le, c in LATENCY.items()}, {"Gentoo": 33, "Adelie": 7})
    lucky = judge(few, few, ReleasePolicy(min_requests=40), labels)
    assert lucky.figures["prediction_shift"] > 0.15 and not lucky.breached, lucky.reasons
    assert 0.001 < lucky.figures["p_value"] < 0.1
    many = SlotSample(
        400, 0, {le: c * 4 for le, c in LATENCY.items()}, {"Gentoo": 330, "Adelie": 70}
    )
    shifted = judge(many, many, ReleasePolicy(min_requests=40), labels)
    assert shifted.breached and "'Gentoo' predicted for 82.5%" in shifted.reasons[0]
    # shares given without their sample are known exactly: the binomial test of the count
    exact = ExpectedPredictions(shares=dict(labels.shares), source="a survey")
    assert judge(many, many, ReleasePolicy(min_requests=40), exact).breached
    assert not judge(few, few, ReleasePolicy(min_requests=40), exact).breached


BOUNDS = [float(b) for b in np.linspace(40, 160, 13)]


def test_a_regression_candidate_is_judged_by_the_distance_of_its_value_histogram() -> None:
    rng = np.random.default_rng(0)
    champion = _values(rng.normal(100, 15, 2000), BOUNDS)
    alike = judge(_values(rng.normal(100, 15, 300), BOUNDS), champion, POLICY)
    assert not alike.breached, alike.reasons
    assert alike.figures["prediction_shift"] < 0.1
    assert alike.figures["candidate_median"] == pytest.approx(100, abs=3)

    moved = judge(_values(rng.normal(112, 15, 300), BOUNDS), champion, POLICY)
    assert moved.breached and moved.figures["prediction_shift"] == pytest.approx(0.31, abs=0.06)
    assert moved.figures["reference_median"] == pytest.approx(100, abs=2)
    [reason] = moved.reasons
    assert (
        "Kolmogorov-Smirnov over the value buckets" in reason and "for the stable version" in reason
    )
    assert moved.figures["candidate_median"] == pytest.approx(112, abs=4)
    median = f"median {moved.figures['candidate_median']:.4g} against {moved.figures['reference_median']:.4g}"
    assert median in reason and "(allowed 0.15)" in reason

    # a retrained model buckets by its own value_buckets: the same distribution is still alike
    other = [float(b) for b in (55, 70, 85, 95, 100, 105, 115, 130, 145)]
    rebucketed = judge(_values(rng.normal(100, 15, 300), other), champion, POLICY)
    assert not rebucketed.breached and rebucketed.figures["prediction_shift"] < 0.1
    shifted = judge(_values(rng.normal(115, 15, 300), other), champion, POLICY)
    assert shifted.breached


def test_a_retrained_regression_is_judged_against_the_quantiles_of_production_labels() -> None:
    rng = np.random.default_rng(1)
    champion = _values(rng.normal(100, 15, 2000), BOUNDS)
    candidate = _values(rng.normal(125, 15, 300), BOUNDS)
    assert judge(candidate, champion, POLICY).breached
    labels = ExpectedPredictions(quantiles=quantiles_of(rng.normal(125, 15, 1000)), rows=1000)
    verdict = judge(candidate, champion, POLICY, labels)
    assert not verdict.breached and verdict.figures["prediction_shift"] < 0.1
    assert verdict.figures["reference_median"] == pytest.approx(125, abs=2)
    assert "in production labels" in judge(champion, champion, POLICY, labels).reasons[0]


def test_histogram_reading_is_exact_at_bounds_and_says_where_it_cannot_know() -> None:
    buckets = {10.0: 20.0, 20.0: 60.0, 30.0: 100.0, math.inf: 100.0}
    assert histogram_cdf(buckets, 20.0) == 0.6
    assert histogram_cdf(buckets, 15.0) == pytest.approx(0.4)  # linear within the bucket
    assert histogram_cdf(buckets, 5.0) is None  # somewhere in the first bucket: unknown
    assert histogram_cdf(buckets, 35.0) == 1.0  # nothing beyond the last finite bound
    assert histogram_cdf({10.0: 0.0, 20.0: 5.0, math.inf: 8.0}, 5.0) == 0.0
    assert histogram_cdf({10.0: 0.0, 20.0: 5.0, math.inf: 8.0}, 25.0) is None
    assert histogram_quantile(buckets, 0.5) == pytest.approx(17.5)
    assert histogram_quantile(buckets, 0.1) == 10.0  # in the first bucket: its bound
    assert histogram_quantile({math.inf: 0.0}, 0.5) is None
    assert histogram_distance(buckets, buckets) == 0.0
    assert histogram_distance(buckets, {}) is None
    assert quantile_cdf([0.0, 10.0, 20.0], 5.0) == pytest.approx(0.25)
    assert quantile_cdf([0.0, 10.0, 20.0], -1.0) == 0.0
    assert quantile_cdf([0.0, 10.0, 20.0], 20.0) == 1.0
    assert quantile_cdf([0.0, 10.0, 10.0, 20.0], 10.0) == pytest.approx(2 / 3)  # ties: right
    assert distance_to_quantiles(buckets, [0.0, 20.0, 30.0]) == pytest.approx(0.1)


def test_expected_predictions_are_plain_json_and_refuse_what_does_not_make_sense() -> None:
    shares = ExpectedPredictions.model_validate({"shares": {"a": 0.25, "b": 0.75}, "rows": 4})
    assert ExpectedPredictions.model_validate_json(shares.model_dump_json()) == shares
    values = ExpectedPredictions(quantiles=(1.0, 2.0, 4.0))
    assert values.median == 2.0 and shares.median is None
    for bad, fragment in [
        ({}, "either `shares` or `quantiles`"),
        ({"shares": {"a": 1.0}, "quantiles": [1, 2]}, "either `shares` or `quantiles`"),
        ({"shares": {"a": 0.5, "b": 0.4}}, "must sum to 1"),
        ({"shares": {"a": 1.5, "b": -0.5}}, "must lie in [0, 1]"),
        ({"quantiles": [3, 2]}, "must not decrease"),
        ({"quantiles": [1]}, "two finite values or more"),
    ]:
        with pytest.raises(ValidationError, match=fragment.replace("[", r"\[")):
            ExpectedPredictions.model_validate(bad)


def test_a_servers_prediction_metrics_are_read_by_class_name_and_by_value_bucket() -> None:
    """The text a model server's prometheus_client writes: counts per class name, and the
    histogram of predicted values; a slot's counters since a step began subtract both."""
    registry = CollectorRegistry()
    labels = {"model": "m", "version": "3"}
    counter = Counter("mlops_predictions", "p", [*labels, "label"], registry=registry)
    counter.labels(**labels, label=">50K").inc(3)
    counter.labels(**labels, label="<=50K").inc(7)
    histogram = Histogram(
        "mlops_prediction_value", "v", list(labels), buckets=(1.0, 2.5), registry=registry
    )
    for v in (0.5, 2.0, 2.0, 9.0):
        histogram.labels(**labels).observe(v)
    text = generate_latest(registry).decode()
    assert parse_prediction_counts(text) == {">50K": 3.0, "<=50K": 7.0}
    values = parse_prediction_values(text)
    assert values == {1.0: 1.0, 2.5: 3.0, math.inf: 4.0}
    now = SlotSample(10, 0, {}, {">50K": 3.0}, values)
    before = SlotSample(4, 0, {}, {">50K": 1.0}, {1.0: 1.0, 2.5: 1.0, math.inf: 1.0})
    assert now.since(before) == SlotSample(
        6, 0, {}, {">50K": 2.0}, {1.0: 0.0, 2.5: 2.0, math.inf: 3.0}
    )
