"""What a release decides by: the traffic of each step of its strategy, and whether the candidate
breached the policy while taking it (canary analysis against the champion). No Prefect here:
the release flow's steps (``tasks/release.py``) call these."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from scipy.stats import binomtest

from mlops.core.errors import MlopsError
from mlops.core.policy import ReleasePolicy
from mlops.ml.prediction_shift import (
    ExpectedPredictions,
    distance_to_quantiles,
    histogram_distance,
    histogram_quantile,
    largest_share_shift,
    shares,
    total_variation,
)
from mlops.release.router import Traffic
from mlops.release.targets.base import SlotSample


class ReleaseFailed(MlopsError):
    """The release ended without the candidate taking production traffic; the reason says why."""


@dataclass(frozen=True)
class ReleaseOutcome:
    model: str
    version: int
    serving: bool
    previous_champion: int | None
    reason: str
    strategy: str


#: How a release moves traffic onto the candidate (``traffic_steps``).
STRATEGIES = ("blue-green", "canary", "shadow")


def check_strategy(strategy: str) -> None:
    """Refuse a strategy the release does not know, naming the ones it does."""
    if strategy not in STRATEGIES:
        raise ReleaseFailed(f"unknown strategy {strategy!r} ({', '.join(STRATEGIES)})")


def traffic_steps(
    strategy: str, canary_steps: Sequence[int], stable: str, candidate: str
) -> list[tuple[str, Traffic]]:
    """The traffic of each step ``strategy`` watches the candidate in beside the stable slot,
    each with the words a breach there is reported with; the last step (all traffic on the
    candidate) is the promotion's, not in this list."""
    check_strategy(strategy)
    if strategy == "canary":
        return [
            (f"at {step}%", Traffic({stable: 100 - step, candidate: step}))
            for step in canary_steps[:-1]
        ]
    if strategy == "blue-green":
        # one atomic switch; the old slot stays warm, so a breach switches straight back
        return [("after the switch", Traffic.only(candidate))]
    return [("in shadow", Traffic({stable: 100}, mirror=candidate))]


@dataclass(frozen=True)
class Verdict:
    breached: bool
    reasons: list[str]
    figures: dict[str, float] = field(default_factory=dict)


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram (Prometheus' histogram_quantile), in seconds."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # beyond the largest finite bucket: its bound is all that is known
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1)
        lower, below = le, count
    return lower


def cumulative_at(buckets: dict[float, float], x: float) -> float:
    """Requests at or below ``x`` seconds, interpolated within a cumulative histogram's bucket."""
    lower, below = 0.0, 0.0
    for le in sorted(buckets):
        count = buckets[le]
        if x <= le:
            if math.isinf(le):
                return below
            return below + (count - below) * (x - lower) / (le - lower) if le > lower else count
        lower, below = le, count
    return below


#: How unlikely, for a candidate as fast as the champion, its count of slow requests must be.
LATENCY_SIGNIFICANCE = 0.001


def class_shares(sample: SlotSample, classes: Sequence[str] = ()) -> dict[str, float]:
    """The slot's predicted classes' shares, by class name. A server older than problem types
    counted a binary model's predictions as "0" and "1": given the target's ``classes`` (in label
    order) those are named as the negative and the positive class."""
    counts = dict(sample.labels)
    if (
        len(classes) == 2
        and counts
        and set(counts) <= {"0", "1"}
        and not set(counts) <= set(classes)
    ):
        counts = {classes[int(k)]: v for k, v in counts.items()}
    return shares(counts)


def judge(
    candidate: SlotSample,
    champion: SlotSample,
    policy: ReleasePolicy,
    expected: ExpectedPredictions | None = None,
    classes: Sequence[str] = (),
) -> Verdict:
    """Compare the candidate's traffic since a step began with the champion's over the same time.

    Errors always; latency and predictions once the candidate answered ``min_requests``. The
    predictions are compared by their distribution, with one limit (``max_prediction_shift``):

    - classifiers: each class's share of the candidate's predictions against the champion's; the
      largest difference of one class's share is the shift and names the class (of two classes
      it is the change of the positive share, as the binary check always was);
    - regression: the Kolmogorov-Smirnov distance of the two servers' histograms of predicted
      values (``mlops_prediction_value``), the largest gap between their cumulative shares at
      the bucket bounds (``histogram_distance``). Chosen over a difference of medians scaled by
      the interquartile range because it sees any change of the distribution, not only of its
      middle, and lies in [0, 1] as a class share does; the medians are reported beside it.

    ``expected`` replaces the champion as the yardstick where given (a retraining after the world
    changed passes the class shares or value quantiles of the labels production sent back: there
    the champion's own predictions are what is wrong). ``classes`` are the target's, in label
    order (they name the counts of servers older than problem types)."""
    reasons: list[str] = []
    figures: dict[str, float] = {"candidate_requests": candidate.requests}
    cand_err = candidate.errors / candidate.requests if candidate.requests else 0.0
    champ_err = champion.errors / champion.requests if champion.requests else 0.0
    figures |= {"candidate_error_rate": cand_err, "champion_error_rate": champ_err}
    if candidate.errors and cand_err > champ_err + policy.max_error_rate_increase:
        reasons.append(
            f"error rate {cand_err:.1%} against the champion's {champ_err:.1%} "
            f"(allowed +{policy.max_error_rate_increase:.1%})"
        )
    if candidate.requests >= max(policy.min_requests, 1):
        reasons += _latency(candidate, champion, policy, figures)
        reasons += _class_shift(candidate, champion, policy, expected, classes, figures)
        reasons += _value_shift(candidate, champion, policy, expected, figures)
    return Verdict(bool(reasons), reasons, figures)


def _latency(
    candidate: SlotSample, champion: SlotSample, policy: ReleasePolicy, figures: dict[str, float]
) -> list[str]:
    c99, h99 = quantile(candidate.latency_buckets, 0.99), quantile(champion.latency_buckets, 0.99)
    if c99 is None or h99 is None:
        return []
    # Not "candidate p99 > champion p99": over a few hundred requests a p99 is the slowest two or
    # three, and one pause of a busy machine decides it. Instead: how many candidate requests are
    # slower than the allowed limit, against the 1 % the champion has above its own p99 (a
    # one-sided binomial test).
    limit = max(h99 * policy.max_p99_latency_ratio, h99 + policy.latency_slack_ms / 1000)
    total = max(candidate.latency_buckets.values())
    slow = max(0.0, total - cumulative_at(candidate.latency_buckets, limit))
    p = binomtest(round(slow), round(total), 0.01, alternative="greater").pvalue
    figures |= {
        "candidate_p99_ms": c99 * 1000,
        "champion_p99_ms": h99 * 1000,
        "candidate_slower_than_limit": slow,
    }
    if p >= LATENCY_SIGNIFICANCE:
        return []
    return [
        f"p99 latency {c99 * 1000:.0f} ms against the champion's {h99 * 1000:.0f} ms: "
        f"{slow:.0f} of {total:.0f} requests slower than {limit * 1000:.0f} ms where "
        f"1% would be (allowed x{policy.max_p99_latency_ratio:g})"
    ]


def _class_shift(
    candidate: SlotSample,
    champion: SlotSample,
    policy: ReleasePolicy,
    expected: ExpectedPredictions | None,
    classes: Sequence[str],
    figures: dict[str, float],
) -> list[str]:
    now = class_shares(candidate, classes)
    if expected is not None and expected.shares:
        before, against = dict(expected.shares), f"in {expected.source}"
    else:
        before, against = class_shares(champion, classes), "for the champion"
    if not now or not before:
        return []
    name, c, h = largest_share_shift(now, before)
    shift = abs(c - h)
    for label in sorted(set(now) | set(before)):
        figures[f"candidate_share[{label}]"] = now.get(label, 0.0)
        figures[f"reference_share[{label}]"] = before.get(label, 0.0)
    figures |= {"prediction_shift": shift, "total_variation": total_variation(now, before)}
    if shift <= policy.max_prediction_shift:
        return []
    return [
        f"{name!r} predicted for {c:.1%} of requests against {h:.1%} {against} "
        f"(allowed ±{policy.max_prediction_shift:.0%})"
    ]


def _value_shift(
    candidate: SlotSample,
    champion: SlotSample,
    policy: ReleasePolicy,
    expected: ExpectedPredictions | None,
    figures: dict[str, float],
) -> list[str]:
    if not candidate.values:
        return []
    median = histogram_quantile(candidate.values, 0.5)
    if expected is not None and expected.quantiles:
        shift = distance_to_quantiles(candidate.values, expected.quantiles)
        reference, against = expected.median, f"in {expected.source}"
    else:
        shift = histogram_distance(candidate.values, champion.values) if champion.values else None
        reference, against = histogram_quantile(champion.values, 0.5), "for the champion"
    if shift is None or median is None or reference is None:
        return []
    figures |= {
        "prediction_shift": shift,
        "candidate_median": median,
        "reference_median": reference,
    }
    if shift <= policy.max_prediction_shift:
        return []
    return [
        f"predicted values {shift:.2f} apart (Kolmogorov-Smirnov over the value buckets) from "
        f"those {against}: median {median:.4g} against {reference:.4g} "
        f"(allowed {policy.max_prediction_shift:.2f})"
    ]
