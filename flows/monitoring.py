"""The monitoring flow: production data is watched (its features against the champion's training
data and against the production rows before it, the champion's predictions against its own on
the holdout, each feature's influence on its answers, its live metric where labels arrived);
drift or decaying performance becomes a Prefect event that an automation answers with
retraining."""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta

import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.variables import Variable

from mlops.adapters.events import emit_model_event
from mlops.adapters.locks import held, lock_name
from mlops.adapters.prediction_window import SETTLE
from mlops.adapters.prometheus import write_prometheus
from mlops.adapters.registry import RegisteredVersion, lookup_model_version
from mlops.adapters.tracking import load_run_frame, monitoring_experiment
from mlops.core.context import RunContext
from mlops.core.events import DRIFT_DETECTED, PERFORMANCE_DEGRADED
from mlops.core.lineage import CHAMPION_ALIAS
from mlops.core.settings import Settings
from mlops.ml.attribution_drift import AttributionDrift
from mlops.ml.monitoring import (
    DriftVerdict,
    MonitoringOutcome,
    OutlierRate,
    PerformanceVerdict,
    Window,
    evidence,
)
from mlops.ml.problems import Model, Predictions, problem_for
from tasks.monitoring import (
    detect_attribution_drift,
    detect_drift,
    detect_prediction_shift,
    draw_drift_charts,
    load_outlier_detector,
    load_serving_model,
    measure_live_performance,
    measure_outlier_rate,
    predict_holdout,
    publish_monitoring_report,
    read_prediction_window,
    render_drift_report,
)
from tasks.training import log_monitoring_run


def watermark_name(model: str) -> str:
    """The Prefect variable holding the end of ``model``'s last judged window."""
    return f"mlops-monitoring-{model}"


@flow(name="monitoring", persist_result=True)
def monitoring(pipeline: str | None = None, since: str | None = None) -> MonitoringOutcome:
    """Judge the production window since the last judged one: drift, live performance, events.

    Args:
        pipeline: pipeline config, relative to the project (default: the settings' example).
        since: ISO time to start the window at (default: where the last judged window ended).

    Returns:
        What was judged and which events were emitted. A window too small to judge emits nothing
        and is not consumed: the next run judges it with the rows that arrived since. A window
        holds the rows committed to the log since the watermark until ``SETTLE`` before now.
    """
    ctx = RunContext.load(Settings(), pipeline)
    # One run per model at a time: two runs reading the same watermark would judge one window
    # twice (a scheduled run beside `mlops monitor`).
    with held(lock_name("monitoring", ctx.model_name), timeout_seconds=600):
        outcome = _judge_window(ctx, since)
    log = get_run_logger()
    for problem in outcome.problems:
        log.warning(problem)
    for objective, line in outcome.verdicts().items():
        log.info("%s: %s %s", ctx.model_name, objective, line)
    return outcome


def _judge_window(ctx: RunContext, since: str | None) -> MonitoringOutcome:
    """Judge one window, emit its events, report it, and move the watermark past it."""
    settings, rules, name = ctx.settings, ctx.policy.monitoring, ctx.model_name
    features = ctx.config.features.columns
    # files committed in the last moments may not be readable yet: the window ends before them,
    # and the next one starts exactly there (the watermark), so no row is skipped or judged twice
    until = datetime.now(UTC) - SETTLE
    mark = watermark_name(name)
    start = datetime.fromisoformat(since) if since else _watermark(mark)
    champion = lookup_model_version(ctx.tracking_uri, name, CHAMPION_ALIAS)
    window = read_prediction_window(
        settings.prediction_log(name), start, until, features, rules.max_rows
    )
    run_id = str(flow_run.get_id() or "local")
    reference = load_run_frame(ctx.tracking_uri, champion.run_id, "training") if champion else None
    recent = None  # the rows before the window (none before the first one)
    if start is not None:
        lookback = timedelta(hours=rules.drift.lookback_hours)
        recent = (
            read_prediction_window(
                settings.prediction_log(name), start - lookback, start, features,
                rules.reference_rows,
            ).rows
            if len(window.rows) >= rules.min_rows
            else pd.DataFrame(columns=features)  # too small to judge: nothing to read
        )  # fmt: skip
    skew, drift, attribution, perf = _verdicts(ctx, window, reference, recent, champion)
    outliers = _outlier_rate(ctx, window, champion)
    outcome = MonitoringOutcome(
        name,
        champion.version if champion else None,
        start.isoformat() if start else None,
        until.isoformat(),
        len(window.rows),
        skew,
        perf,
        window.problems,
        {},
        drift,
        attribution,
        outliers,
    )
    outcome = replace(outcome, events=_emit_events(ctx, outcome, run_id))
    if skew.judged and reference is not None:  # the report for people, once the events are out
        html = settings.reports_dir / "monitoring" / name / f"{run_id}.html"
        report = render_drift_report(window, reference, features, rules, skew, html)
        outcome = replace(outcome, skew=replace(skew, report=report))

    charts = {}
    if skew.judged and skew.drifted and reference is not None:
        charts = draw_drift_charts(window, reference, features, rules, skew)
    logged = log_monitoring_run(
        ctx.tracking_uri,
        monitoring_experiment(ctx.config.experiment),
        asdict(outcome),
        outcome.skew.report,
        charts,
    )
    publish_monitoring_report(outcome, logged.url, logged.charts)
    write_prometheus(
        outcome,
        settings.state_dir / "metrics" / f"monitoring-{name}.prom",
        settings.pushgateway_url,
    )
    if skew.judged and not since:
        Variable.set(mark, until.isoformat(), overwrite=True)
    return outcome


def _verdicts(
    ctx: RunContext,
    window: Window,
    reference: pd.DataFrame | None,
    recent: pd.DataFrame | None,
    champion: RegisteredVersion | None,
) -> tuple[DriftVerdict, DriftVerdict, AttributionDrift, PerformanceVerdict]:
    """Skew against the champion's training data (with how its predictions moved against its
    own on the holdout), drift against the ``recent`` production rows, each feature's influence
    on its answers, and its live performance where labelled."""
    rules, features = ctx.policy.monitoring, ctx.config.features.columns
    if champion is None or reference is None:
        nothing = "no champion: nothing serves, nothing to compare with"
        return (
            DriftVerdict(False, False, nothing),
            DriftVerdict(False, False, nothing, objective="drift"),
            AttributionDrift(False, False, nothing),
            PerformanceVerdict(False, False, "no champion", rules.performance_metric),
        )
    problem = problem_for(ctx.config.target)
    holdout: Predictions | None = None
    model: Model | None = None
    if len(window.rows) >= rules.min_rows:  # a window too small is judged on nothing
        try:
            model = load_serving_model(ctx.tracking_uri, champion)
            holdout = predict_holdout(ctx.tracking_uri, champion, model, problem)
        except Exception as exc:  # monitoring reports what it cannot judge, and judges the rest
            window.problems.append(
                f"v{champion.version}'s predictions on its holdout could not be made, so its "
                f"predictions were not compared: {type(exc).__name__}: {exc}"
            )
    shift = detect_prediction_shift(window, holdout, problem, rules, champion.version)
    skew = detect_drift(window, reference, features, rules, shift)
    if recent is None:
        drift = DriftVerdict(
            False,
            False,
            "the first window: no production rows before it to judge it against",
            objective="drift",
            limit=rules.drift.max_share,
        )
    else:
        drift = detect_drift(window, recent, features, rules, objective="drift")
    if model is None:
        why = (
            "the serving model could not be loaded"
            if len(window.rows) >= rules.min_rows
            else (f"{len(window.rows)} rows: too small to judge (needs {rules.min_rows})")
        )
        attribution = AttributionDrift(False, False, why)
    else:
        attribution = detect_attribution_drift(
            model, window.rows, reference, features, problem, rules
        )
    perf = measure_live_performance(window, champion.version, champion.metrics, rules, problem)
    return skew, drift, attribution, perf


def _outlier_rate(
    ctx: RunContext, window: Window, champion: RegisteredVersion | None
) -> OutlierRate:
    """The window's outliers by the champion's detector, against its training rate."""
    rules = ctx.policy.monitoring
    if champion is None:
        return OutlierRate(False, "no champion")
    if len(window.rows) < rules.min_rows:
        return OutlierRate(
            False, f"{len(window.rows)} rows: too small to judge (needs {rules.min_rows})"
        )
    try:
        detector = load_outlier_detector(ctx.tracking_uri, champion)
    except Exception as exc:  # monitoring reports what it cannot judge, and judges the rest
        return OutlierRate(False, f"the detector could not be loaded: {type(exc).__name__}: {exc}")
    return measure_outlier_rate(window, detector, rules)


def _emit_events(ctx: RunContext, outcome: MonitoringOutcome, run_id: str) -> dict[str, str]:
    """The drift and performance events the verdicts call for: event name -> event id."""
    name, perf = ctx.model_name, outcome.performance
    link = {"flow_run": ctx.flow_run_url(run_id)}
    events: dict[str, str] = {}
    if outcome.detected:  # one event, naming each objective that detected drift
        payload = evidence(outcome, "drift") | link
        events[DRIFT_DETECTED] = emit_model_event(DRIFT_DETECTED, name, payload) or ""
    if perf.judged and perf.degraded:
        payload = evidence(outcome, "performance") | link
        events[PERFORMANCE_DEGRADED] = emit_model_event(PERFORMANCE_DEGRADED, name, payload) or ""
    return events


def _watermark(name: str) -> datetime | None:
    value = Variable.get(name, default=None)
    return datetime.fromisoformat(str(value)) if value else None
