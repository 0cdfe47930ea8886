"""Production monitoring judgements: a window of the prediction log (read by
``mlops.adapters.prediction_window``) judged for drift against the champion's training data and
for the serving model's live performance where labels arrived; the evidence events carry.

Broken input never crashes a monitoring run and never raises a drift event: unreadable files,
missing columns, labels for unknown requests and windows too small to judge are reported as
problems (by the reader, in the window), and a window that cannot be judged says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.core.metrics import KNOWN_METRICS
from mlops.core.policy import MonitoringPolicy
from mlops.ml.drift import drift_tests, evidently_report
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
class MonitoringOutcome:
    model: str
    version: int | None
    since: str | None
    until: str
    rows: int
    drift: DriftVerdict
    performance: PerformanceVerdict
    problems: list[str]
    events: dict[str, str]  # event name -> id, for the events emitted

    def verdicts(self) -> tuple[str, str]:
        """The drift and the performance verdict, each in one line."""
        d, p = self.drift, self.performance
        drift = (
            (("DETECTED: " if d.detected else "none: ") + d.reason)
            if d.judged
            else f"not judged: {d.reason}"
        )
        perf = (
            (("DEGRADED: " if p.degraded else "holds: ") + p.reason)
            if p.judged
            else f"not judged: {p.reason}"
        )
        return drift, perf


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
    window: Window, reference: pd.DataFrame, features: list[str], policy: MonitoringPolicy
) -> DriftVerdict:
    """Drift of the window's features against the reference (the champion's training data):
    Evidently's test per column, and the share of columns drifted against the policy's limit."""
    if len(window.rows) < policy.min_rows:
        return DriftVerdict(
            False,
            False,
            f"{len(window.rows)} rows: too small to judge (needs {policy.min_rows}); "
            "the window keeps accumulating",
        )
    current, ref = drift_frames(window, reference, features, policy)
    reading = drift_tests(current, ref)
    if not reading.columns:
        skipped = "; ".join(f"{c}: {why}" for c, why in reading.skipped.items())
        return DriftVerdict(
            False, False, "no feature column in common with the reference to judge"
            + (f" ({skipped})" if skipped else ""),
        )  # fmt: skip
    share = reading.share or 0.0
    detected = share > policy.max_drift_share
    drifted = reading.drifted
    reason = (
        f"{len(drifted)} of {len(reading.columns)} columns drifted ({share:.0%}; "
        f"limit {policy.max_drift_share:.0%})" + (f": {', '.join(drifted)}" if drifted else "")
    )
    return DriftVerdict(
        True,
        detected,
        reason,
        share,
        drifted,
        {c.column: round(c.score, 4) for c in reading.columns},
        {c.column: c.method for c in reading.columns},
        skipped=reading.skipped,
    )


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
    holdout figure."""
    metric = policy.performance_metric
    rows = window.rows
    if version is not None and "version" in rows:
        rows = rows[rows["version"] == version]
    labelled = rows[rows["label"].notna()] if "label" in rows else rows.iloc[0:0]
    n = len(labelled)
    base = baseline.get(metric)
    if n < policy.min_labelled_rows:
        return PerformanceVerdict(
            False,
            False,
            f"{n} labelled rows (needs {policy.min_labelled_rows})",
            metric,
            n,
            None,
            base,
        )
    y = labelled["label"].astype(int).to_numpy()
    if len(set(y)) < 2:
        return PerformanceVerdict(False, False, "labels hold one class only", metric, n, None, base)
    p = labelled["probability"].astype(float).to_numpy()
    answered = Predictions(labelled["prediction"].astype(int).to_numpy(), _binary(p))
    live = problem.score(metric, y, answered)
    if base is None or math.isnan(base):
        return PerformanceVerdict(
            False, False, f"no holdout {metric} to compare with", metric, n, live, None
        )
    higher = KNOWN_METRICS[metric] == "higher"
    drop = base - live if higher else live - base
    degraded = drop > policy.max_metric_drop
    reason = (
        f"live {metric} {live:.3f} on {n} labelled rows against {base:.3f} on the holdout "
        f"({'worse' if drop > 0 else 'better'} by {abs(drop):.3f}; limit {policy.max_metric_drop:.3f})"
    )
    return PerformanceVerdict(True, degraded, reason, metric, n, live, base)


def evidence(outcome: MonitoringOutcome, kind: str) -> dict[str, Any]:
    """The payload of an event: what was judged, on which window, and why."""
    common = {
        "model": outcome.model,
        "version": outcome.version,
        "window": {"since": outcome.since, "until": outcome.until, "rows": outcome.rows},
    }
    if kind == "drift":
        d = outcome.drift
        return common | {
            "reason": d.reason,
            "drift_share": d.share,
            "drifted_columns": d.drifted,
            "scores": {c: d.scores[c] for c in d.drifted},
        }
    p = outcome.performance
    return common | {
        "reason": p.reason,
        "metric": p.metric,
        "live": p.live,
        "baseline": p.baseline,
        "labelled_rows": p.labelled,
    }


def _binary(p: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - p, p])
