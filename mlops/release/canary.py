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


def positive_rate(sample: SlotSample) -> float | None:
    total = sum(sample.labels.values())
    return sample.labels.get("1", 0.0) / total if total > 0 else None


def judge(
    candidate: SlotSample,
    champion: SlotSample,
    policy: ReleasePolicy,
    expected_positive_rate: float | None = None,
) -> Verdict:
    """Compare the candidate's traffic since a step began with the champion's over the same time.

    The candidate's share of positive predictions is compared with ``expected_positive_rate``
    when one is given (a retraining after the world changed passes the rate of positives in the
    labels production sent back: there the champion's own rate is what is wrong), else with the
    champion's."""
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
        c99, h99 = (
            quantile(candidate.latency_buckets, 0.99),
            quantile(champion.latency_buckets, 0.99),
        )
        if c99 is not None and h99 is not None:
            # Not "candidate p99 > champion p99": over a few hundred requests a p99 is the
            # slowest two or three, and one pause of a busy machine decides it. Instead: how many
            # candidate requests are slower than the allowed limit, against the 1 % the champion
            # has above its own p99 (a one-sided binomial test).
            limit = max(h99 * policy.max_p99_latency_ratio, h99 + policy.latency_slack_ms / 1000)
            total = max(candidate.latency_buckets.values())
            slow = max(0.0, total - cumulative_at(candidate.latency_buckets, limit))
            p = binomtest(round(slow), round(total), 0.01, alternative="greater").pvalue
            figures |= {
                "candidate_p99_ms": c99 * 1000,
                "champion_p99_ms": h99 * 1000,
                "candidate_slower_than_limit": slow,
            }
            if p < LATENCY_SIGNIFICANCE:
                reasons.append(
                    f"p99 latency {c99 * 1000:.0f} ms against the champion's {h99 * 1000:.0f} ms: "
                    f"{slow:.0f} of {total:.0f} requests slower than {limit * 1000:.0f} ms where "
                    f"1% would be (allowed x{policy.max_p99_latency_ratio:g})"
                )
        cp, hp = positive_rate(candidate), positive_rate(champion)
        against = "the champion's"
        if expected_positive_rate is not None:
            hp, against = expected_positive_rate, "production labels'"
        if cp is not None and hp is not None:
            figures |= {"candidate_positive_rate": cp, "reference_positive_rate": hp}
            if abs(cp - hp) > policy.max_positive_rate_shift:
                reasons.append(
                    f"positive predictions {cp:.1%} against the {against} {hp:.1%} "
                    f"(allowed ±{policy.max_positive_rate_shift:.0%})"
                )
    return Verdict(bool(reasons), reasons, figures)
