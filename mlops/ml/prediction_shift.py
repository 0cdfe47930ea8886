"""How a model's predictions are spread, and how far two such spreads lie apart, per problem type.

Three stages ask it: monitoring (the serving model's predictions in a window against its own on
the holdout), production data (the recent labels' class shares or deciles, which a model
retrained after the world changed is expected to follow) and the canary (a candidate's
predictions against the champion's, or against those expected).

Every distance lies in [0, 1], so one policy limit (``max_prediction_shift``) reads alike for
every problem type:

- classes: the total variation distance (half the summed absolute differences of the class
  shares: the share of predictions that would have to change class) and the largest absolute
  difference of one class's share; for two classes both are the change of the positive share;
- values: the Kolmogorov-Smirnov distance, the largest gap between the two cumulative
  distributions (read from histograms where only buckets are known: ``histogram_distance``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

#: How many evenly spaced quantiles (levels 0, 0.1, ..., 1: the minimum, the deciles, the
#: maximum) describe a value distribution handed to the canary.
QUANTILE_POINTS = 11


class ExpectedPredictions(BaseModel):
    """What a candidate's predictions should look like, when the champion's are not the yardstick
    (a retraining after the world changed passes those of the labels production sent back).

    Exactly one of ``shares`` (classifiers: class name -> share of the rows) and ``quantiles``
    (regression: the values at evenly spaced levels from 0 to 1, first the minimum, last the
    maximum) is given. Plain JSON, so that it travels as a Prefect flow parameter.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    shares: dict[str, float] = Field(default_factory=dict)
    quantiles: tuple[float, ...] = ()
    rows: int = Field(0, ge=0, description="How many labels the reference was read from.")
    source: str = Field("production labels", description="What it was read from, for reasons.")

    @model_validator(mode="after")
    def _one_kind(self) -> ExpectedPredictions:
        if bool(self.shares) == bool(self.quantiles):
            raise ValueError("expected predictions need either `shares` or `quantiles`, not both")
        if self.shares:
            bad = {c: s for c, s in self.shares.items() if not 0 <= s <= 1}
            if bad:
                raise ValueError(f"class shares must lie in [0, 1]: {bad}")
            total = sum(self.shares.values())
            if not math.isclose(total, 1.0, abs_tol=1e-6):
                raise ValueError(f"class shares must sum to 1, not {total:.6g}")
        else:
            q = self.quantiles
            if len(q) < 2 or not all(math.isfinite(v) for v in q):
                raise ValueError(f"quantiles must be two finite values or more, not {list(q)}")
            if any(b < a for a, b in pairwise(q)):
                raise ValueError(f"quantiles must not decrease: {list(q)}")
        return self

    @property
    def median(self) -> float | None:
        return quantile_value(self.quantiles, 0.5) if self.quantiles else None


# classes ------------------------------------------------------------------------------------------
def class_counts(labels: Iterable[str], classes: Sequence[str] = ()) -> dict[str, float]:
    """How many times each class was predicted; each of ``classes`` appears, at 0 if never."""
    counts = dict.fromkeys(classes, 0.0)
    for label in labels:
        counts[label] = counts.get(label, 0.0) + 1.0
    return counts


def shares(counts: Mapping[str, float]) -> dict[str, float]:
    """Counts as shares of their total; empty when there is nothing to share."""
    total = sum(counts.values())
    return {c: n / total for c, n in counts.items()} if total > 0 else {}


def total_variation(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Half the summed absolute share differences over the classes of either (a class one of them
    lacks has share 0 there)."""
    return 0.5 * sum(abs(a.get(c, 0.0) - b.get(c, 0.0)) for c in set(a) | set(b))


def largest_share_shift(
    candidate: Mapping[str, float], reference: Mapping[str, float]
) -> tuple[str, float, float]:
    """The class whose share differs most, with its share on each side. Of equal differences
    the class whose share rose is named (of two classes: the one predicted more often now)."""

    def key(c: str) -> tuple[float, bool, str]:
        d = candidate.get(c, 0.0) - reference.get(c, 0.0)
        return (round(abs(d), 12), d > 0, c)

    name = max(set(candidate) | set(reference), key=key)
    return name, candidate.get(name, 0.0), reference.get(name, 0.0)


def chi_square_p(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """The chi-square test's p-value that two samples' class counts come from one distribution
    (1.0 when fewer than two classes were predicted at all)."""
    from scipy.stats import chi2_contingency

    classes = sorted(c for c in set(a) | set(b) if a.get(c, 0.0) + b.get(c, 0.0) > 0)
    if len(classes) < 2 or sum(a.values()) <= 0 or sum(b.values()) <= 0:
        return 1.0
    table = np.array([[a.get(c, 0.0) for c in classes], [b.get(c, 0.0) for c in classes]])
    return float(chi2_contingency(table).pvalue)


def describe_shares(now: Mapping[str, float], before: Mapping[str, float], most: int = 3) -> str:
    """The classes whose shares moved most, as ``'a' 31.0% vs 24.0%``."""
    moved = sorted(
        set(now) | set(before), key=lambda c: (-abs(now.get(c, 0.0) - before.get(c, 0.0)), c)
    )
    return ", ".join(
        f"{c!r} {now.get(c, 0.0):.1%} vs {before.get(c, 0.0):.1%}" for c in moved[:most]
    )


# values -------------------------------------------------------------------------------------------
def quantiles_of(values: np.ndarray, points: int = QUANTILE_POINTS) -> tuple[float, ...]:
    """The values at ``points`` evenly spaced levels from 0 (the minimum) to 1 (the maximum)."""
    levels = np.linspace(0.0, 1.0, points)
    return tuple(float(v) for v in np.quantile(np.asarray(values, dtype="float64"), levels))


def quantile_value(quantiles: Sequence[float], q: float) -> float:
    """The q-quantile read off evenly spaced quantiles (linear between them)."""
    levels = np.linspace(0.0, 1.0, len(quantiles))
    return float(np.interp(q, levels, quantiles))


def quantile_cdf(quantiles: Sequence[float], x: float) -> float:
    """The share of values at or below ``x`` of a distribution given by evenly spaced quantiles:
    0 below the minimum, 1 from the maximum on, linear between two quantiles."""
    q = np.asarray(quantiles, dtype="float64")
    levels = np.linspace(0.0, 1.0, len(q))
    j = int(np.searchsorted(q, x, side="right"))  # q[j - 1] <= x < q[j]
    if j == 0:
        return 0.0
    if j >= len(q):
        return 1.0
    i = j - 1
    return float(levels[i] + (levels[j] - levels[i]) * (x - q[i]) / (q[j] - q[i]))


def _finite_bounds(buckets: Mapping[float, float]) -> tuple[list[float], float]:
    bounds = sorted(b for b in buckets if math.isfinite(b))
    total = max(buckets.values(), default=0.0)
    return bounds, total


def histogram_cdf(buckets: Mapping[float, float], x: float) -> float | None:
    """The share of observations at or below ``x`` in a cumulative histogram (Prometheus'
    ``le`` -> count, with ``+Inf``): exact at its bounds, linear within a bucket, None where the
    histogram cannot say (below its first bound or above its last finite one, unless the bucket
    beyond is empty)."""
    bounds, total = _finite_bounds(buckets)
    if not bounds or total <= 0:
        return None
    if x < bounds[0]:
        return 0.0 if buckets[bounds[0]] <= 0 else None
    if x >= bounds[-1]:
        last = buckets[bounds[-1]] / total
        return last if x == bounds[-1] or last >= 1.0 else None
    j = next(k for k, b in enumerate(bounds) if b > x)
    lo, hi = bounds[j - 1], bounds[j]
    below, at = buckets[lo], buckets[hi]
    return float((below + (at - below) * (x - lo) / (hi - lo)) / total)


def histogram_quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram of values (linear within a bucket; a rank in the
    first bucket is its upper bound, beyond the last finite bound that bound): None when empty."""
    bounds, total = _finite_bounds(buckets)
    if not bounds or total <= 0:
        return None
    rank = q * total
    for k, b in enumerate(bounds):
        count = buckets[b]
        if count >= rank:
            if k == 0:
                return b
            lo, below = bounds[k - 1], buckets[bounds[k - 1]]
            return lo + (b - lo) * ((rank - below) / (count - below) if count > below else 1.0)
    return bounds[-1]


def histogram_distance(a: Mapping[float, float], b: Mapping[float, float]) -> float | None:
    """The Kolmogorov-Smirnov distance of two cumulative histograms, read at every finite bound
    of either where both can say (``histogram_cdf``); None where there is no such bound.

    Two models' servers may bucket differently (each model's own ``value_buckets``): at a bound
    of one the other's share is interpolated within its bucket. With the same bounds it is the
    exact distance of the bucketed data, a lower bound of the raw values' distance."""
    points = sorted({x for x in (*a, *b) if math.isfinite(x)})
    gaps = [
        abs(fa - fb)
        for x in points
        if (fa := histogram_cdf(a, x)) is not None and (fb := histogram_cdf(b, x)) is not None
    ]
    return max(gaps) if gaps else None


def distance_to_quantiles(
    buckets: Mapping[float, float], quantiles: Sequence[float]
) -> float | None:
    """The Kolmogorov-Smirnov distance of a cumulative histogram from a distribution given by
    evenly spaced quantiles, read at the histogram's finite bounds (where it is exact)."""
    bounds, total = _finite_bounds(buckets)
    if not bounds or total <= 0:
        return None
    return max(abs(buckets[x] / total - quantile_cdf(quantiles, x)) for x in bounds)
