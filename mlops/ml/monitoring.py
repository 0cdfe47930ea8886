"""Production monitoring steps: read a window of the prediction log, judge its drift against the
champion's training data and the serving model's live performance where labels arrived, publish
the figures, and emit the events that automations react to.

Broken input never crashes a monitoring run and never raises a drift event: unreadable files,
missing columns, labels for unknown requests and windows too small to judge are reported as
problems, and a window that cannot be judged says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq

from mlops.adapters.prediction_log import FEEDBACK, PREDICTIONS, commit_time
from mlops.core.policy import KNOWN_METRICS, MonitoringPolicy
from mlops.ml.drift import drift_tests, evidently_report
from mlops.ml.evaluation import METRICS

#: Columns the model server writes beside the features.
LOG_COLUMNS = {"request_id", "row", "time", "model", "version", "prediction", "probability"}

_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})")


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


# reading the log ---------------------------------------------------------------------------------
#: How long after its commit stamp a log file is surely readable: the stamp is taken right before
#: the one move that commits the file (a rename locally, a server-side copy on S3), so this covers
#: that move and the clock skew between servers. The monitoring flow ends its windows this long
#: before now, so no file can still appear in a window once it was read.
SETTLE = timedelta(seconds=2)


def _files(root: str, kind: str, since: datetime | None) -> tuple[Any, list[str]]:
    """The log files of ``kind`` in hour partitions reaching past ``since``."""
    fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/{kind}")
    fs.invalidate_cache(path)  # s3fs keeps listings: a long-lived process would miss new files
    files = sorted(fs.glob(f"{path}/**/*.parquet"))
    if since is not None:  # skip hour partitions that ended before the window began

        def recent(f: str) -> bool:
            m = _PARTITION.search(f)
            if not m:
                return True
            start = datetime.fromisoformat(f"{m[1]}T{m[2]}:00:00+00:00")
            return start + timedelta(hours=1) > since

        files = [f for f in files if recent(f)]
    return fs, files


def _committed(
    files: list[str], since: datetime | None, until: datetime, problems: list[str]
) -> list[str]:
    """The files committed in [since, until), by the commit stamp in their names."""
    window = []
    for f in files:
        stamp = commit_time(f)
        if stamp is None:
            problems.append(f"{PREDICTIONS} file {f} has no commit stamp in its name: skipped")
        elif stamp < until and (since is None or stamp >= since):
            window.append(f)
    return window


def _read(
    fs: Any, files: list[str], kind: str, problems: list[str], cache: dict[str, pd.DataFrame]
) -> pd.DataFrame:
    """The records of ``files`` (each read once per window, through ``cache``)."""
    frames = []
    for f in files:
        if f not in cache:
            try:
                with fs.open(f, "rb") as fh:
                    cache[f] = pq.read_table(fh).to_pandas()
            except Exception as exc:  # a corrupt or half-copied file: report it, judge the rest
                problems.append(f"{kind} file {f} is unreadable and was skipped: {exc}")
                cache[f] = pd.DataFrame()
        frames.append(cache[f])
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_window(
    log_root: str,
    since: datetime | None,
    until: datetime,
    features: list[str],
    max_rows: int,
) -> Window:
    """The rows committed to the log in [since, until), the most recent ``max_rows`` of them (by
    prediction time), with their labels.

    Windows are cut by the commit stamps in the files' names, not by the rows' prediction times:
    a row that waited in the server's buffer, in retries or in a spill file belongs to the window
    in which it became readable, so consecutive windows hold every row exactly once (given that
    ``until`` is at least ``SETTLE`` before now). Labels are read from the earliest prediction time
    in the window on: a label arrives after its prediction, however late that was written.
    """
    problems: list[str] = []
    cache: dict[str, pd.DataFrame] = {}
    fs, files = _files(log_root, PREDICTIONS, since)
    rows = _read(fs, _committed(files, since, until, problems), PREDICTIONS, problems, cache)
    if rows.empty or "time" not in rows:
        return Window(since, until, pd.DataFrame(columns=[*features, "label"]), problems)
    times = pd.to_datetime(rows["time"], utc=True)
    rows = rows.assign(time=times).sort_values("time", kind="stable").tail(max_rows)
    missing = [c for c in features if c not in rows]
    if missing:
        problems.append(f"the prediction log lacks feature column(s) {missing}: not judged")
    extra = sorted(set(rows.columns) - set(features) - LOG_COLUMNS)
    if extra:
        problems.append(f"column(s) {extra} are not in the reference: ignored")
    rows = rows.drop(columns=extra)

    earliest = rows["time"].min()
    horizon = since if since is None or pd.isna(earliest) else min(since, earliest - SETTLE)
    fs_feedback, feedback_files = _files(log_root, FEEDBACK, horizon)
    feedback = _read(fs_feedback, feedback_files, FEEDBACK, problems, cache)
    if not feedback.empty and {"request_id", "label"} <= set(feedback.columns):
        labels = feedback.drop_duplicates("request_id", keep="last")[["request_id", "label"]]
        known = _read(fs, _files(log_root, PREDICTIONS, horizon)[1], PREDICTIONS, problems, cache)
        unmatched = int((~labels["request_id"].isin(known.get("request_id", []))).sum())
        if unmatched:
            problems.append(
                f"{unmatched} label(s) name request ids with no logged prediction: ignored"
            )
        rows = rows.merge(labels, on="request_id", how="left")
    else:
        rows = rows.assign(label=pd.NA)
    return Window(since, until, rows.reset_index(drop=True), problems)


# judging -----------------------------------------------------------------------------------------
def drift_frames(
    window: Window, reference: pd.DataFrame, features: list[str], policy: MonitoringPolicy
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The window's feature columns shared with the reference, and the reference sampled to the
    policy's size (seeded: the decision and the report see the same rows)."""
    columns = [c for c in features if c in window.rows and c in reference]
    ref = reference[columns].sample(min(len(reference), policy.reference_rows), random_state=0)
    return window.rows[columns], ref


def judge_drift(
    window: Window, reference: pd.DataFrame, features: list[str], policy: MonitoringPolicy
) -> DriftVerdict:
    """Drift of the window's features against the reference: Evidently's test per column, and
    the share of columns drifted against the policy's limit."""
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


def drift_report(
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


def judge_performance(
    window: Window,
    version: int | None,
    baseline: dict[str, float],
    policy: MonitoringPolicy,
) -> PerformanceVerdict:
    """The serving version's live metric on the window's labelled rows, against its holdout."""
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
    live = METRICS[metric](y, labelled["probability"].astype(float).to_numpy())
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


def write_prometheus(outcome: MonitoringOutcome, path: Path, pushgateway: str | None) -> None:
    """The window's figures as Prometheus gauges: a textfile (node exporter's textfile collector)
    and, when configured, the Pushgateway."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

    registry = CollectorRegistry()
    labels = {"model": outcome.model}
    Gauge(
        "mlops_monitoring_window_rows",
        "Rows in the last monitoring window.",
        ["model"],
        registry=registry,
    ).labels(**labels).set(outcome.rows)
    Gauge(
        "mlops_monitoring_last_run_timestamp_seconds",
        "End of the last window.",
        ["model"],
        registry=registry,
    ).labels(**labels).set(datetime.fromisoformat(outcome.until).timestamp())
    judged = Gauge(
        "mlops_drift_judged",
        "1 if the last window was judged for drift.",
        ["model"],
        registry=registry,
    )
    judged.labels(**labels).set(int(outcome.drift.judged))
    if outcome.drift.judged and outcome.drift.share is not None:
        Gauge(
            "mlops_drift_share",
            "Share of feature columns drifted in the last window.",
            ["model"],
            registry=registry,
        ).labels(**labels).set(outcome.drift.share)
        column = Gauge(
            "mlops_drift_column_detected",
            "1 if the column drifted in the last window.",
            ["model", "column"],
            registry=registry,
        )
        for c in outcome.drift.scores:
            column.labels(column=c, **labels).set(int(c in outcome.drift.drifted))
    if outcome.performance.judged and outcome.performance.live is not None:
        Gauge(
            "mlops_live_metric",
            "The serving model's live metric on labelled rows.",
            ["model", "metric"],
            registry=registry,
        ).labels(metric=outcome.performance.metric, **labels).set(outcome.performance.live)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)  # written aside and renamed: never half a file
    if pushgateway:
        push_to_gateway(pushgateway, job=f"mlops-monitoring-{outcome.model}", registry=registry)


# Prefect tasks -----------------------------------------------------------------------------------
def read_prediction_window(
    log_root: str, since: datetime | None, until: datetime, features: list[str], max_rows: int
) -> Window:
    """The window of the prediction log since the last judged one, with its labels."""
    return read_window(log_root, since, until, features, max_rows)


def detect_drift(
    window: Window, reference: pd.DataFrame, features: list[str], policy: MonitoringPolicy
) -> DriftVerdict:
    """Drift of the window against the champion's training data, by Evidently's tests."""
    return judge_drift(window, reference, features, policy)


def measure_live_performance(
    window: Window, version: int | None, baseline: dict[str, float], policy: MonitoringPolicy
) -> PerformanceVerdict:
    """The serving model's metric on the labels that arrived, against its holdout figure."""
    return judge_performance(window, version, baseline, policy)
