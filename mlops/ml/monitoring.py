"""Production monitoring judgements: a window of the prediction log (read by
``mlops.adapters.prediction_window``) judged for drift against the champion's training data, for
how its predictions moved against its own on the holdout, and for the serving model's live
performance where labels arrived; the evidence events carry. Drift is judged by three objectives,
each with its own limit (``MonitoringPolicy``): *skew*, the window's features against the
champion's training data; *drift*, against the production rows logged before the window (as
Vertex AI separates them); and *attribution*, how each feature's influence on the champion's
answers moved (``mlops.ml.attribution_drift``). Each problem type is read as it is
logged: class names (binary logs written before problem types: 0/1) with the class
probabilities, or numbers.

Broken input never crashes a monitoring run and never raises a drift event: unreadable files,
missing columns, labels for unknown requests and windows too small to judge are reported as
problems (by the reader, in the window), and a window that cannot be judged says so.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlops.core.metrics import KNOWN_METRICS, REGISTRY
from mlops.core.outliers import OutlierDetector
from mlops.core.policy import MonitoringPolicy
from mlops.ml.attribution_drift import AttributionDrift
from mlops.ml.drift import DriftRule, drift_tests, evidently_report
from mlops.ml.prediction_shift import (
    chi_square_p,
    describe_shares,
    shares,
    total_variation,
)
from mlops.ml.problems import Predictions, Problem


@dataclass
class Window:
    """The predicted rows of one monitoring window, with the labels known for them."""

    since: datetime | None
    until: datetime
    rows: pd.DataFrame
    problems: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> int:
        return int(self.rows["label"].notna().sum()) if "label" in self.rows else 0


@dataclass(frozen=True)
class PredictionShift:
    """How the serving model's predictions in a window moved against its own on the holdout.

    ``measure`` is ``total variation`` (classes; ``p_value`` the chi-square test's) or
    ``Kolmogorov-Smirnov`` (values; ``p_value`` the two-sample test's, ``wasserstein`` the
    distance in the target's units); ``window`` and ``reference`` hold the class shares, or the
    values' quartiles and mean. ``exceeded`` only where the policy sets a limit.
    """

    judged: bool
    reason: str
    measure: str = ""
    distance: float | None = None
    p_value: float | None = None
    limit: float | None = None
    exceeded: bool = False
    rows: int = 0
    window: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)
    wasserstein: float | None = None

    def line(self) -> str:
        """The shift in one line, for reports."""
        if not self.judged:
            return f"not judged: {self.reason}"
        return ("BEYOND THE LIMIT: " if self.exceeded else "") + self.reason


#: What each feature-drift objective judges a window against.
Objective = Literal["skew", "drift"]
AGAINST: dict[str, str] = {
    "skew": "the champion's training data",
    "drift": "the production rows logged before the window",
}


@dataclass(frozen=True)
class DriftVerdict:
    judged: bool
    detected: bool
    reason: str
    share: float | None = None
    drifted: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)  # per column, as Evidently's method says
    methods: dict[str, str] = field(default_factory=dict)
    report: str | None = None  # the Evidently HTML report, rendered after the verdict
    skipped: dict[str, str] = field(default_factory=dict)  # column -> why it was not judged
    predictions: PredictionShift | None = None  # how the predictions moved (prediction shift)
    objective: Objective = "skew"  # what the window was judged against (AGAINST)
    limit: float | None = None  # the objective's share limit; None: reported only

    def line(self) -> str:
        """The verdict in one line, for reports."""
        if not self.judged:
            return f"not judged: {self.reason}"
        return ("DETECTED: " if self.detected else "none: ") + self.reason


@dataclass(frozen=True)
class PerformanceVerdict:
    judged: bool
    degraded: bool
    reason: str
    metric: str
    labelled: int = 0
    live: float | None = None
    baseline: float | None = None


@dataclass(frozen=True)
class OutlierRate:
    """The share of a window's rows the champion's outlier detector flags, against the share of
    its training rows (``mlops.core.outliers``): reported, with a one-sided binomial test."""

    judged: bool
    reason: str
    rows: int = 0
    flagged: int = 0
    rate: float | None = None
    training_rate: float | None = None
    p_value: float | None = None
    columns: dict[str, int] = field(default_factory=dict)  # column -> rows it made outliers

    def line(self) -> str:
        return self.reason if self.judged else f"not judged: {self.reason}"


def outlier_rate(
    window: Window, detector: OutlierDetector | None, policy: MonitoringPolicy
) -> OutlierRate:
    """How many of the window's rows the champion's detector flags, by column, against its
    training rate."""
    from scipy.stats import binomtest

    if detector is None:
        return OutlierRate(False, "the champion was saved without an outlier detector")
    n = len(window.rows)
    if n < policy.min_rows:
        return OutlierRate(False, f"{n} rows: too small to judge (needs {policy.min_rows})")
    scored = detector.score(window.rows)
    flagged = int(scored.flags.sum())
    counts: dict[str, int] = {}
    for flag, column in zip(scored.flags, scored.columns, strict=True):
        if flag and column is not None:
            counts[column] = counts.get(column, 0) + 1
    by_column = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    expected = detector.rate
    p = float(binomtest(flagged, n, min(max(expected, 1e-9), 1.0), alternative="greater").pvalue)
    most = ", ".join(f"{c} {k}" for c, k in list(by_column.items())[:3])
    reason = (
        f"{flagged} of {n} rows are outliers ({flagged / n:.1%}) against {expected:.1%} of the "
        f"training rows (binomial p {p:.2g})" + (f"; by column: {most}" if most else "")
    )
    return OutlierRate(True, reason, n, flagged, flagged / n, expected, p, by_column)


@dataclass(frozen=True)
class MonitoringOutcome:
    model: str
    version: int | None
    since: str | None
    until: str
    rows: int
    skew: DriftVerdict  # the window against the champion's training data
    performance: PerformanceVerdict
    problems: list[str]
    events: dict[str, str]  # event name -> id, for the events emitted
    drift: DriftVerdict = field(  # the window against the production rows logged before it
        default_factory=lambda: DriftVerdict(False, False, "not judged", objective="drift")
    )
    attribution: AttributionDrift = field(  # each feature's influence on the champion's answers
        default_factory=lambda: AttributionDrift(False, False, "not checked")
    )
    outliers: OutlierRate = field(  # the rows unlike the training data, against its rate
        default_factory=lambda: OutlierRate(False, "not checked")
    )

    @property
    def detected(self) -> list[str]:
        """The drift objectives that detected drift: skew, drift, attribution."""
        verdicts: dict[str, DriftVerdict | AttributionDrift] = {
            "skew": self.skew,
            "drift": self.drift,
            "attribution": self.attribution,
        }
        return [name for name, v in verdicts.items() if v.judged and v.detected]

    def verdicts(self) -> dict[str, str]:
        """Each objective's verdict and the performance verdict, in one line each."""
        p = self.performance
        perf = (
            (("DEGRADED: " if p.degraded else "holds: ") + p.reason)
            if p.judged
            else f"not judged: {p.reason}"
        )
        return {
            "skew": self.skew.line(),
            "drift": self.drift.line(),
            "attribution": self.attribution.line(),
            "outliers": self.outliers.line(),
            "performance": perf,
        }


# reading the log --------------------------------------------------------------------------------
def served_by(rows: pd.DataFrame, version: int | None) -> pd.DataFrame:
    """The rows ``version`` answered (all of them where the log or the caller names none)."""
    if version is not None and "version" in rows:
        return rows[rows["version"] == version]
    return rows


def read_answers(values: pd.Series, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Logged predictions or labels as ``Problem.encode`` gives them, and which could not be read.

    Classifiers log class names; binary logs written before problem types hold 0 and 1, the
    negative and the positive class's indexes, which are taken as such (a file of each kind may
    sit in one window). Regression logs numbers. A value naming no class, or no finite number, is
    flagged in the second array (its place in the first is 0)."""
    if not problem.is_classifier:
        numbers = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
        bad = ~np.isfinite(numbers)
        return np.where(bad, 0.0, numbers), bad
    binary = problem.kind == "binary"
    # a million answers of one kind are indexed as arrays; only a mixed column goes value by value
    kind = pd.api.types.infer_dtype(values, skipna=False)
    if kind == "string" or (kind == "empty" and len(values) == 0):
        codes = pd.Index(problem.classes).get_indexer(values.astype(object))
        return np.where(codes < 0, 0, codes), codes < 0
    if binary and kind in ("integer", "floating", "boolean"):
        numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        bad = ~np.isin(numbers, (0.0, 1.0))
        return np.where(bad, 0, numbers).astype("int64"), bad
    names = {c: i for i, c in enumerate(problem.classes)}

    def index(v: Any) -> int:
        if isinstance(v, str):
            return names.get(v, -1)
        if binary and isinstance(v, (int, float, np.integer, np.floating)) and v in (0, 1):
            return int(v)
        return -1

    codes = np.fromiter((index(v) for v in values), dtype="int64", count=len(values))
    bad = codes < 0
    return np.where(bad, 0, codes), bad


def _unreadable(values: pd.Series, bad: np.ndarray, problem: Problem, what: str) -> str:
    """Why some of ``values`` were left out, naming a few of them."""
    seen = sorted({str(v) for v in values[bad]})[:5]
    kind = f"no class of {list(problem.classes)}" if problem.is_classifier else "no finite number"
    return f"{int(bad.sum())} {what} naming {kind} left out: {seen}"


def logged_probabilities(rows: pd.DataFrame, problem: Problem) -> np.ndarray | None:
    """The class probabilities the log holds for ``rows`` (row by class, in class order), or None
    where some row has none: a binary log's ``probability`` (P(positive), also in logs written
    before problem types), else ``probabilities``."""
    if not problem.is_classifier:
        return None
    if problem.kind == "binary" and "probability" in rows and rows["probability"].notna().all():
        p = rows["probability"].astype("float64").to_numpy()
        return np.column_stack([1 - p, p])
    if "probabilities" not in rows:
        return None
    k = len(problem.classes)
    lists = list(rows["probabilities"])
    if not all(isinstance(x, (list, tuple, np.ndarray)) and len(x) == k for x in lists):
        return None
    return np.asarray([np.asarray(x, dtype="float64") for x in lists]).reshape(len(lists), k)


# judging -----------------------------------------------------------------------------------------
def drift_frames(
    window: Window, reference: pd.DataFrame, features: list[str], policy: MonitoringPolicy
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The window's feature columns shared with the reference, and the reference sampled to the
    policy's size (seeded: the decision and the report see the same rows)."""
    columns = [c for c in features if c in window.rows and c in reference]
    ref = reference[columns].sample(min(len(reference), policy.reference_rows), random_state=0)
    return window.rows[columns], ref


def detect_drift(
    window: Window,
    reference: pd.DataFrame,
    features: list[str],
    policy: MonitoringPolicy,
    predictions: PredictionShift | None = None,
    objective: Objective = "skew",
) -> DriftVerdict:
    """Drift of the window's features against ``reference``: the champion's training data
    (``objective`` skew, limit ``policy.skew.max_share``) or the production rows logged before
    the window (drift, ``policy.drift.max_share``; None: reported only). Evidently's test per
    column, confirmed as the policy's ``drift_decision`` says, and the share of columns drifted
    against the objective's limit.

    ``predictions`` (``detect_prediction_shift``, skew only) is carried in the verdict; a shift
    beyond the policy's ``max_prediction_shift`` detects skew too (without that limit it is
    reported only).
    """
    limit = policy.skew.max_share if objective == "skew" else policy.drift.max_share

    def unjudged(reason: str) -> DriftVerdict:
        return DriftVerdict(
            False, False, reason, predictions=predictions, objective=objective, limit=limit
        )

    if len(window.rows) < policy.min_rows:
        return unjudged(
            f"{len(window.rows)} rows: too small to judge (needs {policy.min_rows}); "
            "the window keeps accumulating"
        )
    if objective == "drift" and len(reference) < policy.min_rows:
        return unjudged(
            f"{len(reference)} production rows in the {policy.drift.lookback_hours:g} h before the "
            f"window: too few to judge it against (needs {policy.min_rows})"
        )
    current, ref = drift_frames(window, reference, features, policy)
    rule = None
    if policy.drift_decision == "corrected":
        rule = DriftRule(policy.drift_correction, policy.drift_alpha)
    reading = drift_tests(current, ref, rule)
    if not reading.columns:
        skipped = "; ".join(f"{c}: {why}" for c, why in reading.skipped.items())
        return unjudged(
            f"no feature column in common with {AGAINST[objective]} to judge"
            + (f" ({skipped})" if skipped else "")
        )
    share = reading.share or 0.0
    shifted = predictions is not None and predictions.exceeded
    detected = (limit is not None and share > limit) or shifted
    drifted = reading.drifted
    bound = (
        f"limit {limit:.0%}"
        if limit is not None
        else f"reported only: monitoring.{objective}.max_share is not set"
    )
    reason = (
        f"{len(drifted)} of {len(reading.columns)} columns drifted ({share:.0%}; {bound}) "
        f"against {AGAINST[objective]} ({len(ref)} rows)"
        + (f": {', '.join(drifted)}" if drifted else "")
    )
    unconfirmed = sorted(c.column for c in reading.columns if c.evidently and not c.drifted)
    if unconfirmed:  # Evidently's test fired where the corrected significance test did not
        reason += f"; not significant after {policy.drift_correction}: {', '.join(unconfirmed)}"
    if shifted and predictions is not None:
        reason += f"; {predictions.reason}"
    return DriftVerdict(
        True,
        detected,
        reason,
        share,
        drifted,
        {c.column: round(c.score, 4) for c in reading.columns},
        {c.column: c.method for c in reading.columns},
        skipped=reading.skipped,
        predictions=predictions,
        objective=objective,
        limit=limit,
    )


def detect_prediction_shift(
    window: Window,
    reference: Predictions | None,
    problem: Problem,
    policy: MonitoringPolicy,
    version: int | None,
) -> PredictionShift:
    """How the predictions ``version`` made in the window moved against its own on the holdout
    (``reference``: ``Problem.predict`` of that model on its holdout rows).

    Classifiers: the total variation distance of the predicted class shares, with the p-value of
    a chi-square test of the two samples' counts; the classes that moved most are named.
    Regression: the two-sample Kolmogorov-Smirnov distance of the predicted values with its
    p-value, the Wasserstein distance (in the target's units) and the quartiles of each side.
    Both distances lie in [0, 1]; beyond ``policy.max_prediction_shift`` (where set) the shift
    is ``exceeded``."""
    limit = policy.max_prediction_shift
    if reference is None or len(reference) == 0:
        return PredictionShift(
            False, "no predictions of the serving model on its holdout to compare with", limit=limit
        )
    rows = served_by(window.rows, version)
    if len(rows) < policy.min_rows or "prediction" not in rows:
        return PredictionShift(
            False,
            f"{len(rows)} predictions of v{version}: too small to judge (needs {policy.min_rows})",
            limit=limit,
            rows=len(rows),
        )
    values, bad = read_answers(rows["prediction"], problem)
    note = f" ({_unreadable(rows['prediction'], bad, problem, 'predictions')})" if bad.any() else ""
    values = values[~bad]
    if len(values) == 0:
        return PredictionShift(False, f"no readable prediction{note}", limit=limit)
    if problem.is_classifier:
        shift = _class_shift(values, reference.values, problem)
    else:
        shift = _value_shift(values, reference.values)
    assert shift.distance is not None
    exceeded = limit is not None and shift.distance > limit
    bound = (
        f"limit {limit:.3f}"
        if limit is not None
        else "reported only (monitoring.max_prediction_shift is not set)"
    )
    return replace(shift, reason=f"{shift.reason}; {bound}{note}", limit=limit, exceeded=exceeded)


def _class_shift(values: np.ndarray, reference: np.ndarray, problem: Problem) -> PredictionShift:
    names = problem.classes
    now, before = _counts(values, names), _counts(reference, names)
    w, r = shares(now), shares(before)
    distance, p = total_variation(w, r), chi_square_p(now, before)
    reason = (
        f"predicted classes moved by {distance:.3f} (total variation; chi-square p {p:.2g}) over "
        f"{len(values)} predictions against the holdout's: {describe_shares(w, r)}"
    )
    return PredictionShift(
        True, reason, "total variation", round(distance, 6), p, rows=len(values), window=w,
        reference=r,
    )  # fmt: skip


def _counts(codes: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """How often each class (by index) was predicted; each class appears, at 0 if never."""
    counts = np.bincount(np.asarray(codes, dtype="int64"), minlength=len(names))
    return {name: float(n) for name, n in zip(names, counts, strict=True)}


def _value_shift(values: np.ndarray, reference: np.ndarray) -> PredictionShift:
    from scipy.stats import ks_2samp, wasserstein_distance

    test = ks_2samp(values, reference)
    distance, p = float(test.statistic), float(test.pvalue)
    moved = float(wasserstein_distance(values, reference))
    w, r = _summary(values), _summary(reference)
    reason = (
        f"predicted values moved by {distance:.3f} (Kolmogorov-Smirnov; p {p:.2g}) over "
        f"{len(values)} predictions against the holdout's: median {w['median']:.4g} vs "
        f"{r['median']:.4g}, quartiles [{w['q25']:.4g}, {w['q75']:.4g}] vs "
        f"[{r['q25']:.4g}, {r['q75']:.4g}], Wasserstein {moved:.4g}"
    )
    return PredictionShift(
        True, reason, "Kolmogorov-Smirnov", round(distance, 6), p, rows=len(values), window=w,
        reference=r, wasserstein=moved,
    )  # fmt: skip


def _summary(values: np.ndarray) -> dict[str, float]:
    q25, median, q75 = (float(v) for v in np.quantile(values, [0.25, 0.5, 0.75]))
    return {"q25": q25, "median": median, "q75": q75, "mean": float(np.mean(values))}


def render_drift_report(
    window: Window,
    reference: pd.DataFrame,
    features: list[str],
    policy: MonitoringPolicy,
    verdict: DriftVerdict,
    html: Path,
) -> tuple[str, list[str]]:
    """Evidently's full report of the judged window at ``html``, and the columns on which its
    decisions differ from the verdict's (none expected: the same tests on the same rows)."""
    current, ref = drift_frames(window, reference, features, policy)
    reading = evidently_report(current, ref, html)
    differ = sorted(set(reading.drifted) ^ set(verdict.drifted))
    return str(html), differ


def measure_live_performance(
    window: Window,
    version: int | None,
    baseline: dict[str, float],
    policy: MonitoringPolicy,
    problem: Problem,
) -> PerformanceVerdict:
    """The serving version's live metric on the labels that arrived in the window, against its
    holdout figure: labels and logged predictions read per problem type (``read_answers``),
    the class probabilities where the metric reads them. A metric undefined on the labels (a
    ROC AUC of one class) is reported, not judged."""
    metric = policy.performance_metric
    rows = served_by(window.rows, version)
    labelled = rows[rows["label"].notna()] if "label" in rows else rows.iloc[0:0]
    base = baseline.get(metric)

    def unjudged(reason: str, n: int, live: float | None = None) -> PerformanceVerdict:
        return PerformanceVerdict(False, False, reason, metric, n, live, base)

    if len(labelled) < policy.min_labelled_rows:
        return unjudged(
            f"{len(labelled)} labelled rows (needs {policy.min_labelled_rows})", len(labelled)
        )
    if "prediction" not in labelled:
        return unjudged("the prediction log holds no `prediction` column", len(labelled))
    y, bad_label = read_answers(labelled["label"], problem)
    values, bad_prediction = read_answers(labelled["prediction"], problem)
    notes = [
        _unreadable(labelled[c], bad, problem, what)
        for c, bad, what in (("label", bad_label, "labels"), ("prediction", bad_prediction, "predictions"))
        if bad.any()
    ]  # fmt: skip
    keep = ~(bad_label | bad_prediction)
    labelled, y, values = labelled[keep], y[keep], values[keep]
    note = f" ({'; '.join(notes)})" if notes else ""
    n = len(labelled)
    if n < policy.min_labelled_rows:
        return unjudged(f"{n} readable labelled rows (needs {policy.min_labelled_rows}){note}", n)
    proba = logged_probabilities(labelled, problem)
    if REGISTRY[metric].reads == "proba" and proba is None:
        return unjudged(
            f"the log holds no class probabilities for these rows: {metric} reads them", n
        )
    answered = Predictions(values.astype("int64") if problem.is_classifier else values, proba)
    live, why = _score(problem, metric, y, answered)
    if math.isnan(live):
        if problem.is_classifier and len(set(y.tolist())) < 2:
            only = problem.classes[int(y[0])]
            return unjudged(
                f"labels hold one class only ({only!r}): {metric} is undefined on them", n
            )
        return unjudged(f"{metric} is undefined on these {n} labelled rows{why}", n)
    if base is None or math.isnan(base):
        return unjudged(f"no holdout {metric} to compare with", n, live)
    higher = KNOWN_METRICS[metric] == "higher"
    drop = base - live if higher else live - base
    degraded = drop > policy.max_metric_drop
    reason = (
        f"live {metric} {live:.3f} on {n} labelled rows against {base:.3f} on the holdout "
        f"({'worse' if drop > 0 else 'better'} by {abs(drop):.3f}; limit {policy.max_metric_drop:.3f})"
        + note
    )
    return PerformanceVerdict(True, degraded, reason, metric, n, live, base)


def _score(
    problem: Problem, metric: str, y: np.ndarray, answered: Predictions
) -> tuple[float, str]:
    """The metric, or NaN and why where it is undefined on these rows."""
    with warnings.catch_warnings():  # scikit-learn warns where a metric is undefined: NaN says so
        warnings.simplefilter("ignore")
        try:
            return problem.score(metric, y, answered), ""
        except ValueError as exc:
            return float("nan"), f": {exc}"


def evidence(outcome: MonitoringOutcome, kind: str) -> dict[str, Any]:
    """The payload of an event: what was judged, on which window, and why. A drift event names
    the objectives that detected it and carries each objective's figures."""
    common = {
        "model": outcome.model,
        "version": outcome.version,
        "window": {"since": outcome.since, "until": outcome.until, "rows": outcome.rows},
    }
    if kind == "drift":
        s, d, a = outcome.skew, outcome.drift, outcome.attribution
        detected = outcome.detected
        lines = {"skew": s.reason, "drift": d.reason, "attribution": a.reason}
        return common | {
            "objectives": detected,
            "reason": "; ".join(f"{name}: {lines[name]}" for name in detected),
            "drift_share": s.share,
            "drifted_columns": sorted(set(s.drifted) | set(d.drifted)),
            "scores": {c: s.scores[c] for c in s.drifted},
            "predictions": _shift_evidence(s.predictions),
            "skew": _drift_evidence(s),
            "drift": _drift_evidence(d),
            "attribution": _attribution_evidence(a),
        }
    p = outcome.performance
    return common | {
        "reason": p.reason,
        "metric": p.metric,
        "live": p.live,
        "baseline": p.baseline,
        "labelled_rows": p.labelled,
    }


def _drift_evidence(verdict: DriftVerdict) -> dict[str, Any]:
    keys = ("judged", "detected", "reason", "share", "limit", "drifted")
    return {k: getattr(verdict, k) for k in keys} | {"against": AGAINST[verdict.objective]}


def _attribution_evidence(verdict: AttributionDrift) -> dict[str, Any]:
    keys = ("judged", "detected", "reason", "limit", "method", "space", "rows", "reference_rows")
    return {k: getattr(verdict, k) for k in keys} | {
        "moved": verdict.moved,
        "shifts": {i.feature: i.shift for i in verdict.influences},
    }


def _shift_evidence(shift: PredictionShift | None) -> dict[str, Any] | None:
    """How the predictions moved, as the small JSON an event carries."""
    if shift is None:
        return None
    keys = ("judged", "reason", "measure", "distance", "p_value", "limit", "exceeded", "rows")
    return {k: getattr(shift, k) for k in keys} | {
        "window": shift.window, "reference": shift.reference,
    }  # fmt: skip
