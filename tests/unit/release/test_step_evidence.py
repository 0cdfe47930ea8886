"""A step that ends on evidence (``ReleasePolicy.end_on_evidence``): it passes at the first
analysis whose checks all pass, which the checks allow only from ``min_requests`` candidate
requests on; too few requests keep it watching, a breach still rolls back, and without the
setting a step watches its whole bake."""

from __future__ import annotations

import math

from mlops.core.policy import ReleasePolicy
from mlops.release.analysis import CheckResult, Measured, StepAnalysis, Window, analyse
from mlops.release.targets.base import SlotSample

BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, math.inf)

EARLY = ReleasePolicy(min_requests=100, end_on_evidence=True)


def _sample(requests: int, errors: int = 0) -> SlotSample:
    """``requests`` answered in 4 ms each, a quarter of them predicting ``>50K``."""
    buckets = {le: float(requests) for le in BOUNDS}
    labels = {"<=50K": 0.75 * requests, ">50K": 0.25 * requests}
    return SlotSample(float(requests), float(errors), buckets, labels)


def _analysed(candidate_requests: int, policy: ReleasePolicy, errors: int = 0) -> list[CheckResult]:
    """The built-in checks of one step's window: the candidate against 1,000 stable requests."""
    window = Window(Measured(_sample(candidate_requests, errors)), Measured(_sample(1000)), 5.0)
    return analyse(window, policy)


def test_a_step_ending_on_evidence_passes_once_min_requests_are_judged() -> None:
    step = StepAnalysis(EARLY, seconds=15)
    watching = step.decide(_analysed(99, EARLY), elapsed=2)
    assert watching.action == "continue"
    assert {r.name for r in watching.inconclusive} == {"error-rate", "latency", "predictions"}
    done = step.decide(_analysed(100, EARLY), elapsed=3)
    assert done.action == "pass" and "after 3.0 s (ends on evidence)" in done.reason
    assert [r.outcome for r in done.results] == ["pass", "pass", "pass"]
    assert all(r.statistic["requests"] >= 100 for r in done.results if "requests" in r.statistic)


def test_a_breach_still_rolls_back_a_step_ending_on_evidence() -> None:
    step = StepAnalysis(EARLY, seconds=15)
    decision = step.decide(_analysed(120, EARLY, errors=12), elapsed=3)
    assert decision.action == "rollback"
    assert [r.name for r in decision.failed] == ["error-rate"]


def test_without_it_a_step_with_its_evidence_watches_its_whole_bake() -> None:
    policy = ReleasePolicy(min_requests=100)
    step = StepAnalysis(policy, seconds=15)
    assert step.decide(_analysed(500, policy), elapsed=3).action == "continue"
    done = step.decide(_analysed(2500, policy), elapsed=15)
    assert done.action == "pass" and done.reason == "every check passed"


def test_an_inconclusive_step_ending_on_evidence_still_extends_at_its_deadline() -> None:
    step = StepAnalysis(EARLY, seconds=15)
    assert step.decide(_analysed(40, EARLY), elapsed=14).action == "continue"
    extended = step.decide(_analysed(60, EARLY), elapsed=15)
    assert extended.action == "extend" and step.deadline == 30
    assert step.decide(_analysed(100, EARLY), elapsed=17).action == "pass"
