"""Monitoring steps: prediction windows, drift and live performance, reports, production data."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pandas as pd
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from mlops.adapters import prediction_window
from mlops.adapters.charts import distribution_figure
from mlops.adapters.registry import RegisteredVersion, load_model_version, model_metadata
from mlops.adapters.reporting import monitoring_summary, monitoring_table
from mlops.adapters.tracking import load_run_frame
from mlops.core.config import PipelineConfig
from mlops.core.outliers import OutlierDetector
from mlops.core.policy import MonitoringPolicy
from mlops.core.priority import yielding
from mlops.ml import attribution_drift, monitoring, production_data
from mlops.ml.monitoring import DriftVerdict, MonitoringOutcome, Window
from mlops.ml.problems import Model, Predictions, Problem
from mlops.ml.production_data import MAX_ROWS, CollectedRows
from tasks import on_connection_errors, step

read_prediction_window = step(
    prediction_window.read_prediction_window, name="read-prediction-window"
)
detect_drift = step(monitoring.detect_drift, name="detect-drift")
detect_prediction_shift = step(monitoring.detect_prediction_shift, name="detect-prediction-shift")
measure_live_performance = step(
    monitoring.measure_live_performance, name="measure-live-performance"
)


detect_attribution_drift = step(
    attribution_drift.attribution_drift, name="detect-attribution-drift"
)


@step(name="load-serving-model", **on_connection_errors(1, 5))
def load_serving_model(tracking_uri: str, version: RegisteredVersion) -> Model:
    """The registered model of the version that serves, as its pipeline was fitted."""
    return cast(Model, load_model_version(tracking_uri, version.name, version.version))


measure_outlier_rate = step(monitoring.outlier_rate, name="measure-outlier-rate")


@step(name="load-outlier-detector", **on_connection_errors(1, 5))
def load_outlier_detector(tracking_uri: str, version: RegisteredVersion) -> OutlierDetector | None:
    """The outlier detector the serving version was saved with (None: saved before detectors)."""
    metadata = model_metadata(tracking_uri, version.name, version.version)
    return OutlierDetector.from_metadata(metadata)


@step(name="predict-holdout", **on_connection_errors(1, 5))
def predict_holdout(
    tracking_uri: str, version: RegisteredVersion, model: Model, problem: Problem
) -> Predictions:
    """What a registered version predicts for its own holdout rows: the yardstick its predictions
    in production are compared with (``detect_prediction_shift``)."""
    holdout = load_run_frame(tracking_uri, version.run_id, "holdout")
    return problem.predict(model, holdout.drop(columns=[problem.column], errors="ignore"))


@step(name="render-drift-report")
def render_drift_report(
    window: Window,
    reference: pd.DataFrame,
    features: list[str],
    policy: MonitoringPolicy,
    verdict: DriftVerdict,
    html: Path,
) -> str | None:
    """Evidently's HTML report of the judged window, for people to read; None if it failed (the
    verdict and its events stand without it)."""
    log = get_run_logger()
    try:
        # drawn once the events are out, beside the retraining they started: it yields
        path, differ = yielding(
            monitoring.render_drift_report, window, reference, features, policy, verdict, html
        )
    except Exception as exc:
        log.warning("the Evidently report of this window could not be rendered: %s", exc)
        return None
    if differ:
        log.warning("the Evidently report decides otherwise than the verdict on %s", differ)
    return path


#: Drifted columns charted per window (the first by name; every column is in the report).
MAX_CHARTS = 8


@step(name="draw-drift-charts")
def draw_drift_charts(
    window: Window,
    reference: pd.DataFrame,
    features: list[str],
    policy: MonitoringPolicy,
    verdict: DriftVerdict,
) -> dict[str, Any]:
    """Each skewed column's distribution in the training data and in the window, side by side
    (matplotlib figures for the window's MLflow run); none where one could not be drawn."""
    current, ref = monitoring.drift_frames(window, reference, features, policy)
    charts: dict[str, Any] = {}
    for column in verdict.drifted[:MAX_CHARTS]:
        try:  # beside the retraining the events started, as the report: it yields
            charts[column] = yielding(
                distribution_figure, column, ref[column], current[column], "training data"
            )
        except Exception as exc:  # a chart is for people: the verdict stands without it
            get_run_logger().warning("no chart of %s: %s", column, exc)
    return charts


@step(name="publish-monitoring-report")
def publish_monitoring_report(
    outcome: MonitoringOutcome, report_url: str | None, charts: dict[str, str] | None = None
) -> None:
    """A summary table and a markdown verdict in the Prefect UI, linking the Evidently report
    and showing each drifted column's chart."""
    key = f"monitoring-{outcome.model}".lower().replace("_", "-")
    create_table_artifact(
        key=key,
        table=monitoring_table(outcome),
        description=f"{outcome.model}: last monitoring window",
    )
    create_markdown_artifact(
        key=f"{key}-report",
        markdown=monitoring_summary(outcome, report_url, charts or {}),
        description="verdict",
    )


@step(name="collect-production-data")
def collect_production_data(
    log_root: str, since: datetime | None, until: datetime, cfg: PipelineConfig, path: Path
) -> CollectedRows:
    """Labelled production rows since ``since`` that meet the data contract, as a Parquet file;
    the others are counted, described and published as an artifact of the run."""
    window = prediction_window.read_prediction_window(
        log_root, since, until, cfg.features.columns, MAX_ROWS
    )
    collected = production_data.collect_production_data(window, cfg, path)
    create_markdown_artifact(
        key="production-data-collected",
        markdown=collected.markdown(),
        description=collected.summary(),
    )
    return collected
