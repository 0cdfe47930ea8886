"""Drift that does not cry wolf (mlops.ml.drift.DriftRule) on the shipped Adult data, against a
20,000-row reference as monitoring samples it: unshifted windows from 300 to 1,000,000 rows
raise no drift under the rule (Evidently's decision alone does on small windows), a negligible
shift on a million rows is significant and still not drift, and the example's documented shift
is caught in one window of 300 rows. Every window is drawn with a fixed seed: the counts are
the same on every run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from examples.adult.traffic import shift_adult
from mlops.ml.drift import DriftRule, corrected, drift_tests, two_sample_p_value
from tests.helpers import EXAMPLE

pytestmark = pytest.mark.unit

LIMIT = 0.1  # the example policy's max_drift_share
WINDOWS = 50


@pytest.fixture(scope="module")
def pools() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reference (20,000 rows, as monitoring samples the training data) and the other rows
    of the same data, which unshifted windows are drawn from."""
    data = pd.read_csv(EXAMPLE / "adult.csv.gz", na_values=["?"]).drop(columns=["income"])
    reference = data.sample(20_000, random_state=1)
    return reference, data.drop(reference.index)


def alarms(rest: pd.DataFrame, reference: pd.DataFrame, rows: int) -> tuple[int, int]:
    """Of WINDOWS unshifted windows of ``rows`` rows: how many Evidently's decision alone, and
    how many the rule, would call drift (share of columns over LIMIT)."""
    by_evidently = by_rule = 0
    for k in range(WINDOWS):
        reading = drift_tests(rest.sample(rows, random_state=100 + k), reference, DriftRule())
        by_rule += (reading.share or 0.0) > LIMIT
        evidently = [c.evidently for c in reading.columns if c.evidently is not None]
        by_evidently += sum(evidently) / len(reading.columns) > LIMIT
    return by_evidently, by_rule


def test_small_unshifted_windows_raise_no_alarm_under_the_rule(
    pools: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    reference, rest = pools
    by_evidently, by_rule = alarms(rest, reference, 300)
    assert by_evidently >= 10, "Evidently's distances alone cry wolf on 300 rows (34 of 50 seen)"
    assert by_rule == 0


@pytest.mark.parametrize("rows", [1_000, 100_000, 1_000_000])
def test_unshifted_windows_of_any_size_raise_no_alarm(
    pools: tuple[pd.DataFrame, pd.DataFrame], rows: int
) -> None:
    """Windows drawn with replacement from the rows the reference did not take: on a million
    rows, the two pools' own sampling differences are significant, and still not drift."""
    reference, rest = pools
    window = rest.sample(rows, replace=True, random_state=7)
    reading = drift_tests(window, reference, DriftRule())
    assert reading.share == 0.0, [c for c in reading.columns if c.drifted]


def test_a_negligible_shift_on_a_million_rows_is_significant_and_not_drift(
    pools: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    reference, rest = pools
    window = rest.sample(1_000_000, replace=True, random_state=8)
    window["age"] = window["age"] + 0.5  # half a year older: real, and of no consequence
    reading = drift_tests(window, reference, DriftRule())
    age = next(c for c in reading.columns if c.column == "age")
    assert age.p_value is not None and age.p_value < 1e-6, "the shift is significant"
    assert not age.drifted and reading.share == 0.0, "and too small to be drift"


@pytest.mark.parametrize("correction", ["benjamini-hochberg", "bonferroni"])
def test_the_documented_shift_is_caught_in_one_small_window(
    pools: tuple[pd.DataFrame, pd.DataFrame], correction: str
) -> None:
    reference, rest = pools
    window = shift_adult(rest.sample(300, random_state=9))
    reading = drift_tests(window, reference, DriftRule(correction=correction))  # type: ignore[arg-type]
    assert {"age", "hours_per_week"} <= set(reading.drifted), reading.drifted
    assert (reading.share or 0.0) > LIMIT


def test_the_two_sample_tests() -> None:
    """K-S for numbers; chi-square of homogeneity for categories, a category only one side has
    counted (no division by an expected zero), rare ones pooled, one category is no evidence."""
    rng = np.random.default_rng(0)
    same = pd.Series(rng.normal(size=2000)), pd.Series(rng.normal(size=2000))
    assert two_sample_p_value(*same, "num") > 0.01
    moved = pd.Series(rng.normal(size=2000)), pd.Series(rng.normal(0.5, size=2000))
    assert two_sample_p_value(*moved, "num") < 1e-10
    ref = pd.Series(rng.choice(list("abc"), 3000))
    cur = pd.Series(np.concatenate([rng.choice(list("abc"), 900), ["new"] * 100]))
    assert two_sample_p_value(ref, cur, "cat") < 1e-10, "a new category in a tenth of the rows"
    rare = pd.Series(list("aaaaab") * 500), pd.Series(list("aaaaac") * 50)
    assert 0.0 <= two_sample_p_value(*rare, "cat") <= 1.0
    assert two_sample_p_value(pd.Series(["x"] * 50), pd.Series(["x"] * 20), "cat") == 1.0


def test_the_corrections() -> None:
    pvalues = [0.001, 0.01, 0.03, 0.2]
    assert corrected(pvalues, "bonferroni") == pytest.approx([0.004, 0.04, 0.12, 0.8])
    # Benjamini-Hochberg: p_(i) * m / i, made monotone from the largest down
    assert corrected(pvalues, "benjamini-hochberg") == pytest.approx([0.004, 0.02, 0.04, 0.2])
    assert corrected([], "bonferroni") == []
