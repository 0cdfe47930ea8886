"""The monitoring flow: production data is watched; drift or decaying performance becomes a Prefect
event that an automation answers with retraining."""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.variables import Variable

from mlops.adapters.locks import held, lock_name
from mlops.adapters.registry import lookup_model_version
from mlops.adapters.tracking import load_run_frame
from mlops.core.config import load_pipeline_config
from mlops.core.events import DRIFT_DETECTED, PERFORMANCE_DEGRADED, emit_model_event
from mlops.core.policy import load_policy
from mlops.core.settings import Settings
from mlops.ml.monitoring import (
    SETTLE,
    DriftVerdict,
    MonitoringOutcome,
    PerformanceVerdict,
    evidence,
    write_prometheus,
)
from tasks.monitoring import (
    detect_drift,
    measure_live_performance,
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
    log = get_run_logger()
    settings = Settings()
    cfg = load_pipeline_config(settings.project_dir / pipeline if pipeline else settings.pipeline)
    policy, _ = load_policy(cfg.policy, set(cfg.contract.columns))
    rules = policy.monitoring
    uri, name = str(settings.mlflow_tracking_uri), cfg.model_name
    features = cfg.features.columns
    # One run per model at a time: two runs reading the same watermark would judge one window
    # twice (a scheduled run beside `mlops monitor`).
    with held(lock_name("monitoring", name), timeout_seconds=600):
        # files committed in the last moments may not be readable yet: the window ends before them,
        # and the next one starts exactly there (the watermark), so no row is skipped or judged twice
        until = datetime.now(UTC) - SETTLE
        mark = watermark_name(name)
        start = datetime.fromisoformat(since) if since else _watermark(mark)
        champion = lookup_model_version(uri, name, "champion")
        window = read_prediction_window(
            settings.prediction_log(name), start, until, features, rules.max_rows
        )
        run_id = str(flow_run.get_id() or "local")

        if champion is None:
            drift = DriftVerdict(
                False, False, "no champion: nothing serves, nothing to compare with"
            )
            perf = PerformanceVerdict(False, False, "no champion", rules.performance_metric)
        else:
            reference = load_run_frame(uri, champion.run_id, "training")
            drift = detect_drift(window, reference, features, rules)
            perf = measure_live_performance(window, champion.version, champion.metrics, rules)

        outcome = MonitoringOutcome(
            name,
            champion.version if champion else None,
            start.isoformat() if start else None,
            until.isoformat(),
            len(window.rows),
            drift,
            perf,
            window.problems,
            {},
        )
        events: dict[str, str] = {}
        run_url = f"{settings.prefect_ui_url}/runs/flow-run/{run_id}"
        if drift.judged and drift.detected:
            payload = evidence(outcome, "drift") | {"flow_run": run_url}
            events[DRIFT_DETECTED] = emit_model_event(DRIFT_DETECTED, name, payload) or ""
        if perf.judged and perf.degraded:
            payload = evidence(outcome, "performance") | {"flow_run": run_url}
            events[PERFORMANCE_DEGRADED] = (
                emit_model_event(PERFORMANCE_DEGRADED, name, payload) or ""
            )
        outcome = replace(outcome, events=events)
        if drift.judged and champion is not None:  # the report for people, once the events are out
            html = settings.reports_dir / "monitoring" / name / f"{run_id}.html"
            report = render_drift_report(window, reference, features, rules, drift, html)
            drift = replace(drift, report=report)
            outcome = replace(outcome, drift=drift)

        report_url = log_monitoring_run(
            uri, f"{cfg.experiment}-monitoring", asdict(outcome), drift.report
        )
        publish_monitoring_report(outcome, report_url)
        write_prometheus(
            outcome,
            settings.state_dir / "metrics" / f"monitoring-{name}.prom",
            settings.pushgateway_url,
        )
        if drift.judged and not since:
            Variable.set(mark, until.isoformat(), overwrite=True)
    for problem in window.problems:
        log.warning(problem)
    log.info("%s: drift %s; performance %s", name, drift.reason, perf.reason)
    return outcome


def _watermark(name: str) -> datetime | None:
    value = Variable.get(name, default=None)
    return datetime.fromisoformat(str(value)) if value else None
