"""Monitoring steps: prediction windows, drift and live performance, reports, production data."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from mlops.core.config import PipelineConfig
from mlops.core.policy import MonitoringPolicy
from mlops.ml import monitoring
from mlops.ml.contract import split_by_contract
from mlops.ml.monitoring import DriftVerdict, MonitoringOutcome, Window, drift_report
from mlops.ml.production_data import (
    REQUEST,
    CollectedRows,
    _rejected,
    labelled_rows,
    write_production_data,
)
from tasks import step

read_prediction_window = step(monitoring.read_prediction_window, name="read-prediction-window")
detect_drift = step(monitoring.detect_drift, name="detect-drift")
measure_live_performance = step(
    monitoring.measure_live_performance, name="measure-live-performance"
)


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
        path, differ = drift_report(window, reference, features, policy, verdict, html)
    except Exception as exc:
        log.warning("the Evidently report of this window could not be rendered: %s", exc)
        return None
    if differ:
        log.warning("the Evidently report decides otherwise than the verdict on %s", differ)
    return path


@step(name="publish-monitoring-report")
def publish_monitoring_report(outcome: MonitoringOutcome, report_url: str | None) -> None:
    """A summary table and a markdown verdict in the Prefect UI, linking the Evidently report."""
    key = f"monitoring-{outcome.model}".lower().replace("_", "-")
    d = outcome.drift
    drift, perf = outcome.verdicts()
    rows: list[dict[str, Any]] = [
        {"figure": "window", "value": f"{outcome.since or 'start'} .. {outcome.until}"},
        {"figure": "rows", "value": outcome.rows},
        {"figure": "drift", "value": drift},
        {"figure": f"live {outcome.performance.metric}", "value": perf},
    ]
    rows += [
        {
            "figure": f"drift score {c} ({d.methods.get(c, '')})",
            "value": f"{s}{' drifted' if c in d.drifted else ''}",
        }
        for c, s in sorted(d.scores.items())
    ]
    create_table_artifact(
        key=key, table=rows, description=f"{outcome.model}: last monitoring window"
    )
    lines = [f"## {outcome.model} v{outcome.version}: monitoring window", ""]
    lines += [f"- **drift**: {rows[2]['value']}", f"- **performance**: {rows[3]['value']}"]
    if report_url:
        lines.append(f"- Evidently report: [{report_url}]({report_url})")
    lines += [f"- problem: {problem}" for problem in outcome.problems]
    lines += [f"- event `{name}`: {eid}" for name, eid in outcome.events.items()]
    create_markdown_artifact(key=f"{key}-report", markdown="\n".join(lines), description="verdict")


@step(name="collect-production-data")
def collect_production_data(
    log_root: str, since: datetime | None, until: datetime, cfg: PipelineConfig, path: Path
) -> CollectedRows:
    """Labelled production rows since ``since`` that meet the data contract, as a Parquet file;
    the others are counted, described and published as an artifact of the run."""
    frame, _ = labelled_rows(log_root, since, until, cfg)
    requests = frame.pop(REQUEST)
    verdict = split_by_contract(frame, cfg.contract, "labelled production rows")
    failed = verdict.failed_rows.assign(**{REQUEST: requests.reindex(verdict.failed_rows.index)})
    rejected = _rejected(failed, verdict.checks)
    kept = verdict.kept.reset_index(drop=True)
    create_markdown_artifact(
        key="production-data-collected",
        markdown=(
            f"# Labelled production rows\n\n{len(kept)} of {len(frame)} rows meet the data "
            "contract and join the training data.\n\n"
            + (
                f"{verdict.report}\n```json\n{json.dumps(rejected.examples, indent=1)}\n```\n"
                if len(failed)
                else ""
            )
        ),
        description=rejected.summary() or f"{len(kept)} labelled production rows, all in contract",
    )
    data = write_production_data(kept, path, cfg.target.positive) if len(kept) else None
    return CollectedRows(data, rejected, len(kept))
