"""Canary analysis as policy: each check of a release step compares the candidate with the stable
version over the same window, and passes, fails, or is inconclusive; a step's analyses add up to
a decision. Pure logic: the figures come from a metrics provider (``mlops.release.providers``),
the flow acts on the decision (``flows/release.py``).

The checks, and the test each uses (chosen for the small samples a canary step sees):

- ``error-rate``: the candidate's 5xx count against the stable version's rate plus
  ``max_error_rate_increase``, by a one-sided binomial test at ``error_significance``: three
  errors in three requests fail at once, one in a hundred does not, and a failure needs no
  minimum sample (errors are decisive early); a pass needs ``min_requests``.
- ``latency``: how many candidate requests are slower than the allowed limit (the stable
  version's p99 times ``max_p99_latency_ratio``, at least plus ``latency_slack_ms``), against the
  1 % the stable version has above its own p99: one-sided binomial test (a p99 of a few hundred
  requests is their two or three slowest, which one pause of a busy machine decides).
- ``predictions``: the distribution of what the candidate predicts against the stable version's
  (or the expected, after a retraining): the largest change of one class's share (classifiers),
  the Kolmogorov-Smirnov distance of the predicted values' histograms (regression), against
  ``max_prediction_shift``; a class shift past it fails only where the chi-square test of the
  two samples' class counts (binomial, against shares given without their sample) says chance
  does not explain it at ``PREDICTION_SIGNIFICANCE``: forty requests move a share by 7 points
  by luck alone.
- each of the policy's ``checks``: the user's query asked of both sides, and its limits.

Too little traffic (fewer than ``min_requests`` candidate requests, or predictions for the
prediction check), no reference on the stable side, or an empty query is **inconclusive**: never a silent pass, never a crash.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from scipy.stats import binomtest

from mlops.core.policy import QueryCheck, ReleasePolicy
from mlops.ml.prediction_shift import (
    ExpectedPredictions,
    chi_square_p,
    distance_to_quantiles,
    histogram_distance,
    histogram_quantile,
    largest_share_shift,
    shares,
    total_variation,
)

# not-measured: the target's metrics cannot carry the check's figures (Seldon's agent counts no
# predictions); said in the decision, and neither passes nor holds the step
Outcome = Literal["pass", "fail", "inconclusive", "not-measured"]

#: How unlikely, for a candidate as fast as the stable version, its count of slow requests must be.
LATENCY_SIGNIFICANCE = 0.001

#: How unlikely, for a candidate predicting as the reference does, its class counts must be for a
#: shift past ``max_prediction_shift`` to fail (below it a shift is too small to matter).
PREDICTION_SIGNIFICANCE = 0.001


class SlotSample(Protocol):
    """One slot's figures over a window, as the analysis reads them: the shape of
    ``mlops.release.targets.base.SlotSample``, which providers fill in (described here, not
    imported: the targets' interface names the providers, which name this module)."""

    @property
    def requests(self) -> float: ...
    @property
    def errors(self) -> float: ...
    @property
    def latency_buckets(self) -> dict[float, float]: ...  # le -> cumulative count
    @property
    def labels(self) -> dict[str, float]: ...  # predicted class -> count
    @property
    def values(self) -> dict[float, float]: ...  # le -> cumulative count of predicted values


@dataclass(frozen=True)
class Answer:
    """A provider's answer to one query of one side: its value (None: the query came back
    empty) and the query as resolved (selectors and window filled in)."""

    value: float | None
    query: str


@dataclass(frozen=True)
class Measured:
    """One side's figures over a window, with the resolved query of each figure."""

    sample: SlotSample
    queries: dict[str, str] = field(default_factory=dict)  # figure -> resolved query
    empty: bool = False  # the provider found no series at all for this side
    predictions: bool = True  # False: this target's metrics carry no predictions at all


@dataclass(frozen=True)
class Window:
    """What the analysis judges: both sides over the same ``seconds``, and the answers of the
    policy's own checks (name -> (candidate, stable))."""

    candidate: Measured
    stable: Measured
    seconds: float
    answers: dict[str, tuple[Answer, Answer]] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict over one window, with everything that explains it."""

    name: str
    outcome: Outcome
    reason: str
    candidate: float | None = None  # the check's figure on each side
    stable: float | None = None
    statistic: dict[str, float] = field(default_factory=dict)  # test statistic, p, limit, n
    query: dict[str, str] = field(default_factory=dict)  # side.figure -> resolved query

    def as_dict(self) -> dict[str, object]:
        """Strict JSON (an infinite ratio against a stable 0 is the string ``"inf"``)."""
        return {
            "name": self.name,
            "outcome": self.outcome,
            "reason": self.reason,
            "candidate": _json_number(self.candidate),
            "stable": _json_number(self.stable),
            "statistic": {k: _json_number(v) for k, v in self.statistic.items()},
            "query": self.query,
        }


def _json_number(value: float | None) -> float | str | None:
    return value if value is None or math.isfinite(value) else str(value)


def _queries(window: Window, *figures: str) -> dict[str, str]:
    found = {}
    for side, measured in (("candidate", window.candidate), ("stable", window.stable)):
        for figure in figures:
            if figure in measured.queries:
                found[f"{side}.{figure}"] = measured.queries[figure]
    return found


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


def class_shares(sample: SlotSample, classes: Sequence[str] = ()) -> dict[str, float]:
    """The slot's predicted classes' shares, by class name (``predicted_counts``)."""
    return shares(predicted_counts(sample, classes))


def predicted_counts(sample: SlotSample, classes: Sequence[str] = ()) -> dict[str, float]:
    """How often the slot predicted each class, by class name. A server older than problem types
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
    return counts


# the built-in checks ------------------------------------------------------------------------------
def error_rate(window: Window, policy: ReleasePolicy) -> CheckResult:
    cand, stab = window.candidate.sample, window.stable.sample
    query = _queries(window, "requests", "errors")
    # two queries, each increase() extrapolated on its own: never more errors than requests
    n = round(cand.requests)
    k = min(round(cand.errors), n)
    if n <= 0:
        return CheckResult(
            "error-rate",
            "inconclusive",
            f"the candidate answered no requests in {window.seconds:.0f} s",
            query=query,
        )
    rate = k / n
    reference = stab.errors / stab.requests if stab.requests else 0.0
    allowed = min(1.0, reference + policy.max_error_rate_increase)
    p = 1.0 if k == 0 else float(binomtest(k, n, allowed, alternative="greater").pvalue)
    stats = {"requests": n, "errors": k, "allowed_rate": allowed, "p_value": p}
    stats["stable_requests"] = stab.requests
    described = (
        f"error rate {rate:.1%} ({k} of {n}) against the stable version's {reference:.1%} "
        f"(allowed +{policy.max_error_rate_increase:.1%}; binomial p = {p:.2g})"
    )
    if p < policy.error_significance:
        return CheckResult("error-rate", "fail", described, rate, reference, stats, query)
    if n < max(policy.min_requests, 1):
        return CheckResult(
            "error-rate",
            "inconclusive",
            f"{described}: {n} requests, fewer than the {policy.min_requests} a pass needs",
            rate,
            reference,
            stats,
            query,
        )
    return CheckResult("error-rate", "pass", described, rate, reference, stats, query)


def latency(window: Window, policy: ReleasePolicy) -> CheckResult:
    cand, stab = window.candidate.sample, window.stable.sample
    query = _queries(window, "latency")
    c99, h99 = quantile(cand.latency_buckets, 0.99), quantile(stab.latency_buckets, 0.99)
    total = max(cand.latency_buckets.values(), default=0.0)
    if c99 is None or h99 is None or total < max(policy.min_requests, 1):
        missing = (
            "no latency figures of the stable version over the same window"
            if h99 is None
            else f"{total:.0f} candidate requests timed, fewer than {policy.min_requests}"
        )
        return CheckResult("latency", "inconclusive", missing, query=query)
    limit = max(h99 * policy.max_p99_latency_ratio, h99 + policy.latency_slack_ms / 1000)
    slow = max(0.0, total - cumulative_at(cand.latency_buckets, limit))
    p = float(binomtest(round(slow), round(total), 0.01, alternative="greater").pvalue)
    stats = {
        "candidate_p99_ms": c99 * 1000,
        "stable_p99_ms": h99 * 1000,
        "limit_ms": limit * 1000,
        "slower_than_limit": slow,
        "requests": total,
        "p_value": p,
    }
    described = (
        f"p99 latency {c99 * 1000:.0f} ms against the stable version's {h99 * 1000:.0f} ms: "
        f"{slow:.0f} of {total:.0f} requests slower than {limit * 1000:.0f} ms where 1% would "
        f"be (allowed x{policy.max_p99_latency_ratio:g}; binomial p = {p:.2g})"
    )
    outcome: Outcome = "fail" if p < LATENCY_SIGNIFICANCE else "pass"
    return CheckResult("latency", outcome, described, c99 * 1000, h99 * 1000, stats, query)


def predictions(
    window: Window,
    policy: ReleasePolicy,
    expected: ExpectedPredictions | None = None,
    classes: Sequence[str] = (),
) -> CheckResult:
    """The candidate's predictions against the stable version's (or ``expected``)."""
    if not window.candidate.predictions:
        return CheckResult(
            "predictions",
            "not-measured",
            "predictions: not measured, the target's metrics carry none (Seldon's MLServer "
            "exports no predicted classes or values); error rate and latency judge this release",
        )
    cand = window.candidate.sample
    query = _queries(window, "labels", "values")
    # what the server predicted, not what the router counted (a request answered 500 predicted
    # nothing): the class counts, or the values histogram's total
    n = sum(cand.labels.values()) if cand.labels else max(cand.values.values(), default=0.0)
    if n < max(policy.min_requests, 1):
        return CheckResult(
            "predictions",
            "inconclusive",
            f"{n:.0f} candidate predictions, fewer than the {policy.min_requests} compared",
            query=query,
        )
    if cand.values:
        return _value_shift(window, policy, expected, query)
    return _class_shift(window, policy, expected, classes, query)


def _class_shift(
    window: Window,
    policy: ReleasePolicy,
    expected: ExpectedPredictions | None,
    classes: Sequence[str],
    query: dict[str, str],
) -> CheckResult:
    counted = predicted_counts(window.candidate.sample, classes)
    now = shares(counted)
    reference: dict[str, float] | None  # the reference's counts, where it is a sample
    if expected is not None and expected.shares:
        before, against = dict(expected.shares), f"in {expected.source}"
        reference = {c: s * expected.rows for c, s in before.items()} if expected.rows else None
    else:
        reference = predicted_counts(window.stable.sample, classes)
        before, against = shares(reference), "for the stable version"
    if not now or not before:
        side = "candidate" if not now else "stable version"
        return CheckResult(
            "predictions", "inconclusive", f"no predicted classes of the {side}", query=query
        )
    name, c, h = largest_share_shift(now, before)
    shift = abs(c - h)
    # a shift past the limit fails only where chance cannot explain it: forty requests put a
    # class's share within a few points only by luck (their standard error is ~7 points)
    n = sum(counted.values())
    if reference is not None:
        p = chi_square_p(counted, reference)
        test = "chi-square"
    else:  # shares given without their sample: known exactly
        p = float(binomtest(round(c * n), round(n), h).pvalue) if 0 < h < 1 else float(c == h)
        test = "binomial"
    stats = {
        "prediction_shift": shift,
        "total_variation": total_variation(now, before),
        "p_value": p,
    }
    for label in sorted(set(now) | set(before)):
        stats[f"candidate_share[{label}]"] = now.get(label, 0.0)
        stats[f"reference_share[{label}]"] = before.get(label, 0.0)
    described = (
        f"{name!r} predicted for {c:.1%} of requests against {h:.1%} {against} "
        f"(allowed ±{policy.max_prediction_shift:.0%}; {n:.0f} requests, {test} p = {p:.2g})"
    )
    beyond = shift > policy.max_prediction_shift and p < PREDICTION_SIGNIFICANCE
    outcome: Outcome = "fail" if beyond else "pass"
    return CheckResult("predictions", outcome, described, c, h, stats, query)


def _value_shift(
    window: Window,
    policy: ReleasePolicy,
    expected: ExpectedPredictions | None,
    query: dict[str, str],
) -> CheckResult:
    cand, stab = window.candidate.sample, window.stable.sample
    median = histogram_quantile(cand.values, 0.5)
    if expected is not None and expected.quantiles:
        shift = distance_to_quantiles(cand.values, expected.quantiles)
        reference, against = expected.median, f"in {expected.source}"
    else:
        shift = histogram_distance(cand.values, stab.values) if stab.values else None
        reference, against = histogram_quantile(stab.values, 0.5), "for the stable version"
    if shift is None or median is None or reference is None:
        return CheckResult(
            "predictions",
            "inconclusive",
            "no predicted values to compare with on the stable side",
            query=query,
        )
    stats = {"prediction_shift": shift, "candidate_median": median, "reference_median": reference}
    described = (
        f"predicted values {shift:.2f} apart (Kolmogorov-Smirnov over the value buckets) from "
        f"those {against}: median {median:.4g} against {reference:.4g} "
        f"(allowed {policy.max_prediction_shift:.2f})"
    )
    outcome: Outcome = "fail" if shift > policy.max_prediction_shift else "pass"
    return CheckResult("predictions", outcome, described, median, reference, stats, query)


def query_check(check: QueryCheck, candidate: Answer, stable: Answer) -> CheckResult:
    """A user's check: its query's value on both sides, against its limits."""
    query = {"candidate": candidate.query, "stable": stable.query}
    c, s = candidate.value, stable.value
    needs_stable = check.max_ratio is not None or check.max_increase is not None
    if c is None or (needs_stable and s is None):
        side = "candidate" if c is None else "stable version"
        return CheckResult(
            check.name,
            "inconclusive",
            f"{check.name}: the query came back empty for the {side}",
            c,
            s,
            query=query,
        )
    broken: list[str] = []
    stats: dict[str, float] = {"candidate": c}
    if check.max is not None and c > check.max:
        broken.append(f"{c:.4g} above the limit {check.max:g}")
    if check.min is not None and c < check.min:
        broken.append(f"{c:.4g} below the limit {check.min:g}")
    if s is not None:
        stats["stable"] = s
        if check.max_increase is not None:
            stats["increase"] = c - s
            if c - s > check.max_increase:
                broken.append(
                    f"{c:.4g} against the stable {s:.4g} (allowed +{check.max_increase:g})"
                )
        if check.max_ratio is not None:
            ratio = c / s if s else (float("inf") if c > 0 else 1.0)
            stats["ratio"] = ratio
            if ratio > check.max_ratio:
                broken.append(
                    f"{c:.4g} is x{ratio:.3g} the stable {s:.4g} (allowed x{check.max_ratio:g})"
                )
    if broken:
        return CheckResult(
            check.name, "fail", f"{check.name}: {'; '.join(broken)}", c, s, stats, query
        )
    against = f" (stable {s:.4g})" if s is not None else ""
    return CheckResult(check.name, "pass", f"{check.name}: {c:.4g}{against}", c, s, stats, query)


def analyse(
    window: Window,
    policy: ReleasePolicy,
    expected: ExpectedPredictions | None = None,
    classes: Sequence[str] = (),
) -> list[CheckResult]:
    """Every check of ``policy`` over ``window``: the built-in three, then the policy's own (a
    check whose answers the provider did not give is inconclusive)."""
    results = [
        error_rate(window, policy),
        latency(window, policy),
        predictions(window, policy, expected, classes),
    ]
    for check in policy.checks:
        answers = window.answers.get(check.name)
        if answers is None:
            results.append(
                CheckResult(check.name, "inconclusive", f"{check.name}: not asked of the provider")
            )
        else:
            results.append(query_check(check, *answers))
    return results


# a step's decision ---------------------------------------------------------------------------------
Action = Literal["continue", "pass", "rollback", "extend", "hold"]


@dataclass(frozen=True)
class Decision:
    """What a step's analysis decided after one interval, and the results it decided by."""

    action: Action
    reason: str
    results: tuple[CheckResult, ...]
    elapsed: float
    failures: int

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome == "fail"]

    @property
    def inconclusive(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome == "inconclusive"]

    def as_dict(self) -> dict[str, object]:
        return {
            "action": self.action,
            "reason": self.reason,
            "elapsed_seconds": round(self.elapsed, 3),
            "failed_analyses": self.failures,
            "checks": [r.as_dict() for r in self.results],
        }


@dataclass
class StepAnalysis:
    """The running tally of one step (or the bake): call ``decide`` after each interval's
    ``analyse``; it says go on, pass, roll back, extend or hold.

    - a failed check counts one failed analysis; more than ``failure_limit`` rolls back at once;
    - at the step's end every check passing passes the step; with the policy's
      ``end_on_evidence``, so does every check passing before the end (each needs
      ``min_requests`` to pass at all);
    - a check still inconclusive at the end does ``on_inconclusive``: ``extend`` (the step
      lasts ``seconds`` longer, up to ``max_extensions`` times, then rolls back), ``hold`` (the
      flow asks a person) or ``rollback``.
    """

    policy: ReleasePolicy
    seconds: float
    failures: int = 0
    extensions: int = 0

    @property
    def deadline(self) -> float:
        return self.seconds * (1 + self.extensions)

    def decide(self, results: Sequence[CheckResult], elapsed: float) -> Decision:
        results = tuple(results)
        failed = [r for r in results if r.outcome == "fail"]
        if failed:
            self.failures += 1
            said = "; ".join(r.reason for r in failed)
            if self.failures > self.policy.failure_limit:
                return self._decision("rollback", said, results, elapsed)
            tolerated = f"failed analysis {self.failures} of {self.policy.failure_limit} tolerated"
            return self._decision("continue", f"{tolerated}: {said}", results, elapsed)
        unsure = [r for r in results if r.outcome == "inconclusive"]
        if not unsure and results and self.policy.end_on_evidence and elapsed < self.deadline:
            return self._decision(
                "pass",
                f"every check passed after {elapsed:.1f} s (ends on evidence)",
                results,
                elapsed,
            )
        if elapsed < self.deadline:
            return self._decision("continue", "watching", results, elapsed)
        if not unsure:
            return self._decision("pass", "every check passed", results, elapsed)
        said = "inconclusive: " + "; ".join(r.reason for r in unsure)
        rule = self.policy.on_inconclusive
        if rule == "extend" and self.extensions < self.policy.max_extensions:
            self.extensions += 1
            return self._decision(
                "extend",
                f"{said}; extended by {self.seconds:g} s "
                f"({self.extensions} of {self.policy.max_extensions})",
                results,
                elapsed,
            )
        if rule == "extend":
            said += f", still after {self.policy.max_extensions} extensions"
            return self._decision("rollback", said, results, elapsed)
        return self._decision("hold" if rule == "hold" else "rollback", said, results, elapsed)

    def _decision(
        self, action: Action, reason: str, results: tuple[CheckResult, ...], elapsed: float
    ) -> Decision:
        return Decision(action, reason, results, elapsed, self.failures)
