"""The release's analysis on hand-made windows: each check's small-sample behaviour, the user's
query checks, and a step's tally (tolerated failures, extensions, hold, roll back)."""

from __future__ import annotations

import json
import math

import pytest

from mlops.core.policy import QueryCheck, ReleasePolicy
from mlops.release.analysis import (
    Answer,
    CheckResult,
    Decision,
    Measured,
    StepAnalysis,
    Window,
    analyse,
    cumulative_at,
    error_rate,
    latency,
    predictions,
    quantile,
    query_check,
)
from mlops.release.targets.base import SlotSample

BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, math.inf)


def _buckets(times: list[float]) -> dict[float, float]:
    """A cumulative histogram of ``times`` (seconds) over BOUNDS."""
    return {le: float(sum(t <= le for t in times)) for le in BOUNDS}


def _sample(
    requests: int,
    errors: int = 0,
    times: list[float] | None = None,
    labels: dict[str, float] | None = None,
) -> SlotSample:
    answered = times if times is not None else [0.004] * requests
    counted = labels if labels is not None else {"<=50K": 0.75 * requests, ">50K": 0.25 * requests}
    return SlotSample(float(requests), float(errors), _buckets(answered), counted)


def _window(
    candidate: SlotSample, stable: SlotSample | None = None, seconds: float = 10.0
) -> Window:
    queries = {"requests": "sum(increase(r[10s]))", "errors": "sum(increase(e[10s]))"}
    return Window(
        Measured(candidate, queries),
        Measured(stable if stable is not None else _sample(1000), queries),
        seconds,
    )


POLICY = ReleasePolicy(min_requests=20)


# error rate -------------------------------------------------------------------------------------
def test_three_errors_in_three_requests_fail_at_once_below_min_requests() -> None:
    result = error_rate(_window(_sample(3, 3)), POLICY)
    assert result.outcome == "fail"
    assert result.candidate == 1.0 and result.stable == 0.0
    assert result.statistic["p_value"] < POLICY.error_significance
    assert "3 of 3" in result.reason
    # the resolved queries of both sides come with the verdict
    assert set(result.query) == {
        "candidate.requests",
        "candidate.errors",
        "stable.requests",
        "stable.errors",
    }


def test_one_error_in_a_hundred_against_a_stable_zero_passes() -> None:
    result = error_rate(_window(_sample(100, 1), _sample(1000, 0)), POLICY)
    assert result.outcome == "pass", result.reason
    assert result.candidate == pytest.approx(0.01)
    assert result.statistic["p_value"] > POLICY.error_significance


def test_many_errors_in_many_requests_fail_and_the_stable_rate_is_the_reference() -> None:
    # 10% errors where the stable version has 4% (+1% allowed)
    assert error_rate(_window(_sample(500, 50), _sample(1000, 40)), POLICY).outcome == "fail"
    # 5% against a stable 4.5% (+1% allowed) passes
    assert error_rate(_window(_sample(500, 25), _sample(1000, 45)), POLICY).outcome == "pass"


def test_few_requests_without_errors_are_inconclusive() -> None:
    result = error_rate(_window(_sample(5, 0)), POLICY)
    assert result.outcome == "inconclusive"
    assert "fewer than the 20" in result.reason


def test_no_requests_are_inconclusive_not_a_crash() -> None:
    result = error_rate(_window(SlotSample()), POLICY)
    assert result.outcome == "inconclusive" and "no requests" in result.reason


def test_more_errors_counted_than_requests_do_not_crash_the_test() -> None:
    # two series extrapolated apart by increase() may disagree by a fraction of a request
    result = error_rate(_window(_sample(4, 5)), POLICY)
    assert result.outcome == "fail" and result.candidate == 1.0


def test_an_exact_zero_allowance_fails_any_error() -> None:
    strict = ReleasePolicy(min_requests=20, max_error_rate_increase=0)
    assert error_rate(_window(_sample(1000, 1), _sample(1000, 0)), strict).outcome == "fail"
    assert error_rate(_window(_sample(1000, 0), _sample(1000, 0)), strict).outcome == "pass"


# latency ----------------------------------------------------------------------------------------
def test_quantile_and_cumulative_count_interpolate_within_buckets() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, math.inf: 100.0}
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert quantile(buckets, 0.75) == pytest.approx(0.15)
    assert cumulative_at(buckets, 0.15) == pytest.approx(75)
    assert quantile({}, 0.99) is None and quantile({math.inf: 0.0}, 0.99) is None


def test_a_slow_candidate_fails_latency_with_both_p99s() -> None:
    slow = _sample(100, times=[0.3] * 100)
    result = latency(_window(slow, _sample(1000, times=[0.004] * 1000)), POLICY)
    assert result.outcome == "fail", result.reason
    assert result.statistic["candidate_p99_ms"] > result.statistic["limit_ms"]
    assert result.statistic["slower_than_limit"] == pytest.approx(100)
    assert result.candidate is not None and result.stable is not None
    assert result.candidate > result.stable


def test_two_slow_requests_in_a_hundred_are_what_a_p99_allows_for_noise() -> None:
    times = [0.004] * 98 + [0.3, 0.3]
    result = latency(_window(_sample(100, times=times)), POLICY)
    assert result.outcome == "pass", result.reason


def test_latency_is_inconclusive_below_min_requests_and_without_a_stable_side() -> None:
    few = latency(_window(_sample(5, times=[0.3] * 5)), POLICY)
    assert few.outcome == "inconclusive" and "fewer than 20" in few.reason
    blind = latency(_window(_sample(100), SlotSample()), POLICY)
    assert blind.outcome == "inconclusive" and "stable" in blind.reason


# predictions ------------------------------------------------------------------------------------
def test_predictions_are_inconclusive_below_min_requests() -> None:
    few = predictions(_window(_sample(5, labels={">50K": 5.0})), POLICY)
    assert few.outcome == "inconclusive" and "fewer than the 20" in few.reason


def test_predictions_need_predictions_not_requests() -> None:
    # 100 requests answered, all but 3 with a 500: 3 predictions are not a distribution
    failing = predictions(_window(_sample(100, 97, labels={">50K": 3.0})), POLICY)
    assert failing.outcome == "inconclusive", failing.reason


def test_a_target_whose_metrics_carry_no_predictions_says_so_and_the_step_still_passes() -> None:
    """Seldon's agent counts requests and latency, never predictions: the check is not measured,
    said in the decision, and neither passes the step on its own nor holds it."""
    sample = _sample(100)
    unmeasured = Measured(sample, {}, predictions=False)
    window = Window(unmeasured, Measured(_sample(1000), {}, predictions=False), 10)
    result = predictions(window, POLICY)
    assert result.outcome == "not-measured" and "carry none" in result.reason
    results = analyse(window, POLICY)
    assert [r.outcome for r in results] == ["pass", "pass", "not-measured"], results
    decision = StepAnalysis(POLICY, seconds=10).decide(results, elapsed=10)
    assert decision.action == "pass", decision.reason
    assert "not-measured" in json.dumps(decision.as_dict())


def test_a_shifted_distribution_fails_and_a_similar_one_passes() -> None:
    shifted = predictions(_window(_sample(100, labels={">50K": 90.0, "<=50K": 10.0})), POLICY)
    assert shifted.outcome == "fail" and "'>50K'" in shifted.reason
    similar = predictions(_window(_sample(100, labels={">50K": 27.0, "<=50K": 73.0})), POLICY)
    assert similar.outcome == "pass", similar.reason


# the user's query checks ------------------------------------------------------------------------
def _check(**limits: float) -> QueryCheck:
    return QueryCheck(name="queue", query="sum(q{{selector}})", **limits)  # type: ignore[arg-type]


def _answers(c: float | None, s: float | None) -> tuple[Answer, Answer]:
    return Answer(c, 'sum(q{version="2"})'), Answer(s, 'sum(q{version="1"})')


@pytest.mark.parametrize(
    ("limits", "candidate", "stable", "outcome"),
    [
        ({"max": 10}, 11, 1, "fail"),
        ({"max": 10}, 10, 1, "pass"),
        ({"min": 0.8}, 0.7, 0.9, "fail"),
        ({"min": 0.8}, 0.85, 0.9, "pass"),
        ({"max_ratio": 1.5}, 16, 10, "fail"),
        ({"max_ratio": 1.5}, 15, 10, "pass"),
        ({"max_increase": 0.05}, 0.2, 0.1, "fail"),
        ({"max_increase": 0.05}, 0.12, 0.1, "pass"),
        ({"max_ratio": 2}, 1, 0, "fail"),  # anything against a stable 0 is an infinite ratio
        ({"max_ratio": 2}, 0, 0, "pass"),  # nothing against nothing is no change
    ],
)
def test_query_check_limits(
    limits: dict[str, float], candidate: float, stable: float, outcome: str
) -> None:
    result = query_check(_check(**limits), *_answers(candidate, stable))
    assert result.outcome == outcome, result.reason
    assert result.name == "queue" and result.candidate == candidate and result.stable == stable
    assert result.query == {"candidate": 'sum(q{version="2"})', "stable": 'sum(q{version="1"})'}


def test_a_failed_query_check_says_every_limit_it_broke() -> None:
    result = query_check(_check(max=10, max_ratio=1.5), *_answers(30, 10))
    assert result.outcome == "fail"
    assert "above the limit 10" in result.reason and "x3" in result.reason


def test_empty_answers_are_inconclusive_never_a_pass() -> None:
    empty = query_check(_check(max=10), *_answers(None, 1))
    assert empty.outcome == "inconclusive" and "empty for the candidate" in empty.reason
    # a comparison needs the stable side; an absolute limit does not
    stable_empty = query_check(_check(max_ratio=2), *_answers(1, None))
    assert stable_empty.outcome == "inconclusive" and "stable version" in stable_empty.reason
    assert query_check(_check(max=10), *_answers(1, None)).outcome == "pass"


def test_a_check_the_provider_was_not_asked_is_inconclusive() -> None:
    policy = ReleasePolicy(min_requests=20, checks=(_check(max=1),))
    results = analyse(_window(_sample(100)), policy)
    assert [r.name for r in results] == ["error-rate", "latency", "predictions", "queue"]
    assert results[-1].outcome == "inconclusive"
    plain = _window(_sample(100))
    asked = Window(plain.candidate, plain.stable, plain.seconds, {"queue": _answers(2, 0)})
    assert analyse(asked, policy)[-1].outcome == "fail"


# a step's decision ------------------------------------------------------------------------------
def _result(outcome: str, name: str = "error-rate") -> CheckResult:
    return CheckResult(name, outcome, f"{name} {outcome}")  # type: ignore[arg-type]


PASS = [_result("pass"), _result("pass", "latency")]
FAIL = [_result("fail"), _result("pass", "latency")]
UNSURE = [_result("pass"), _result("inconclusive", "latency")]


def test_a_failure_rolls_back_at_once_by_default() -> None:
    step = StepAnalysis(ReleasePolicy(), seconds=10)
    decision = step.decide(FAIL, elapsed=1)
    assert decision.action == "rollback" and decision.failures == 1
    assert [r.name for r in decision.failed] == ["error-rate"]


def test_failure_limit_tolerates_that_many_failed_analyses() -> None:
    step = StepAnalysis(ReleasePolicy(failure_limit=2), seconds=10)
    assert step.decide(FAIL, 1).action == "continue"
    assert step.decide(PASS, 2).action == "continue"
    second = step.decide(FAIL, 3)
    assert second.action == "continue" and "2 of 2 tolerated" in second.reason
    assert step.decide(FAIL, 4).action == "rollback"


def test_a_step_passes_at_its_deadline_when_every_check_passes() -> None:
    step = StepAnalysis(ReleasePolicy(), seconds=10)
    assert step.decide(PASS, 5).action == "continue"
    assert step.decide(UNSURE, 5).action == "continue"  # no verdict before the deadline
    done = step.decide(PASS, 10)
    assert done.action == "pass" and done.reason == "every check passed"


def test_inconclusive_extends_up_to_max_extensions_then_rolls_back() -> None:
    step = StepAnalysis(ReleasePolicy(on_inconclusive="extend", max_extensions=2), seconds=10)
    first = step.decide(UNSURE, 10)
    assert first.action == "extend" and "1 of 2" in first.reason and step.deadline == 20
    assert step.decide(UNSURE, 15).action == "continue"
    assert step.decide(UNSURE, 20).action == "extend" and step.deadline == 30
    last = step.decide(UNSURE, 30)
    assert last.action == "rollback"
    assert "inconclusive" in last.reason and "after 2 extensions" in last.reason


def test_an_extension_that_gathers_the_evidence_passes() -> None:
    step = StepAnalysis(ReleasePolicy(on_inconclusive="extend", max_extensions=3), seconds=10)
    assert step.decide(UNSURE, 10).action == "extend"
    assert step.decide(PASS, 20).action == "pass"


def test_inconclusive_holds_or_rolls_back_as_the_policy_says() -> None:
    held = StepAnalysis(ReleasePolicy(on_inconclusive="hold"), seconds=10).decide(UNSURE, 10)
    assert held.action == "hold" and held.reason.startswith("inconclusive: latency")
    back = StepAnalysis(ReleasePolicy(on_inconclusive="rollback"), seconds=10).decide(UNSURE, 10)
    assert back.action == "rollback" and [r.name for r in back.inconclusive] == ["latency"]
    never = StepAnalysis(ReleasePolicy(max_extensions=0), seconds=10).decide(UNSURE, 10)
    assert never.action == "rollback"


def test_decision_as_dict_is_strict_json() -> None:
    results = analyse(_window(_sample(100, 50)), ReleasePolicy(min_requests=20))
    infinite = query_check(_check(max_ratio=2), *_answers(3, 0))  # an infinite ratio
    decision = Decision("rollback", "error rate", (*results, infinite), 3.14159, 1)
    text = json.dumps(decision.as_dict(), allow_nan=False)
    back = json.loads(text)
    assert back["action"] == "rollback" and back["elapsed_seconds"] == 3.142
    assert [c["name"] for c in back["checks"]] == [
        "error-rate",
        "latency",
        "predictions",
        "queue",
    ]
    assert back["checks"][0]["outcome"] == "fail"
    assert back["checks"][0]["query"]["candidate.errors"] == "sum(increase(e[10s]))"
    assert back["checks"][-1]["statistic"]["ratio"] == "inf"
