"""What a release decides by: the traffic of each step of its strategy, and whether the candidate
breached the policy while taking it (canary analysis against the champion). No Prefect here:
the release flow's steps (``tasks/release.py``) call these."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mlops.core.errors import MlopsError
from mlops.core.policy import ReleasePolicy
from mlops.ml.prediction_shift import ExpectedPredictions
from mlops.release.analysis import (  # noqa: F401  (read from here by older callers)
    LATENCY_SIGNIFICANCE,
    Measured,
    Window,
    class_shares,
    cumulative_at,
    error_rate,
    latency,
    predictions,
    quantile,
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


def judge(
    candidate: SlotSample,
    champion: SlotSample,
    policy: ReleasePolicy,
    expected: ExpectedPredictions | None = None,
    classes: Sequence[str] = (),
) -> Verdict:
    """The built-in checks of ``mlops.release.analysis`` on two samples of the same window, as
    one verdict: breached when any fails (an inconclusive check is no breach here; the step's
    analysis decides what inconclusive does)."""
    window = Window(Measured(candidate), Measured(champion), 0.0)
    results = [
        error_rate(window, policy),
        latency(window, policy),
        predictions(window, policy, expected, classes),
    ]
    figures: dict[str, float] = {"candidate_requests": candidate.requests}
    for r in results:
        figures |= r.statistic
    failed = [r.reason for r in results if r.outcome == "fail"]
    return Verdict(bool(failed), failed, figures)
