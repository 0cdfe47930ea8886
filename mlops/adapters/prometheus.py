"""Monitoring figures for Prometheus: the last window's gauges as a textfile (node exporter's
textfile collector) and, when configured, on the Pushgateway."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from mlops.ml.monitoring import MonitoringOutcome


def write_prometheus(outcome: MonitoringOutcome, path: Path, pushgateway: str | None) -> None:
    """The window's figures as Prometheus gauges: a textfile (node exporter's textfile collector)
    and, when configured, the Pushgateway."""

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
        try:
            push_to_gateway(pushgateway, job=f"mlops-monitoring-{outcome.model}", registry=registry)
        except OSError as exc:  # the figures are in the textfile; the window's verdict stands
            logging.getLogger(__name__).warning(
                "the Pushgateway at %s did not take %s's figures (%s); they are in %s",
                pushgateway,
                outcome.model,
                exc,
                path,
            )
