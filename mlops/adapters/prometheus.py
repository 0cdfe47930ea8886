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
        "1 if the last window was judged for the objective (skew, drift, attribution).",
        ["model", "objective"],
        registry=registry,
    )
    share = Gauge(
        "mlops_drift_share",
        "Share of feature columns drifted in the last window, against the training data "
        "(objective skew) or the production rows before it (drift).",
        ["model", "objective"],
        registry=registry,
    )
    column = Gauge(
        "mlops_drift_column_detected",
        "1 if the column drifted in the last window, by the objective.",
        ["model", "objective", "column"],
        registry=registry,
    )
    for verdict in (outcome.skew, outcome.drift):
        judged.labels(objective=verdict.objective, **labels).set(int(verdict.judged))
        if verdict.judged and verdict.share is not None:
            share.labels(objective=verdict.objective, **labels).set(verdict.share)
            for c in verdict.scores:
                column.labels(objective=verdict.objective, column=c, **labels).set(
                    int(c in verdict.drifted)
                )
    attribution = outcome.attribution
    judged.labels(objective="attribution", **labels).set(int(attribution.judged))
    if attribution.judged:
        influence = Gauge(
            "mlops_attribution_shift",
            "How far the feature's influence on the serving model's answers moved in the last "
            "window, as a share of its total influence on the training data.",
            ["model", "feature"],
            registry=registry,
        )
        for i in attribution.influences:
            influence.labels(feature=i.feature, **labels).set(i.shift)
    if outcome.outliers.judged and outcome.outliers.rate is not None:
        Gauge(
            "mlops_outlier_rate",
            "Share of the last window's rows the serving model's outlier detector flags.",
            ["model"],
            registry=registry,
        ).labels(**labels).set(outcome.outliers.rate)
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
