"""Data drift and data quality with Evidently: one place that runs the report and reads it by name,
for the training-data gate and for production monitoring alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset, DataSummaryPreset


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str  # the test Evidently chose for the column's type and the sample sizes
    score: float  # a p-value or a distance, as the method says
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftReading:
    share: float | None  # share of columns drifted; None without a reference
    columns: list[ColumnDrift] = field(default_factory=list)
    missing_share: dict[str, float] = field(default_factory=dict)  # per column, of the current data

    @property
    def drifted(self) -> list[str]:
        return sorted(c.column for c in self.columns if c.drifted)


def is_drifted(method: str, score: float, threshold: float) -> bool:
    """Evidently reports a test's p-value (drift below the threshold) or a distance (drift at or
    above it), by the method it chose for the column's type and size."""
    if "p_value" in method:
        return score < threshold
    return score >= threshold


def read_snapshot(metrics: list[dict[str, Any]]) -> DriftReading:
    """The drift and missing-value figures of an Evidently snapshot (``snapshot.dict()["metrics"]``)."""
    share: float | None = None
    columns: list[ColumnDrift] = []
    missing: dict[str, float] = {}
    for metric in metrics:
        name, value, config = metric["metric_name"], metric["value"], metric.get("config", {})
        if name.startswith("MissingValueCount(") and "column" in config:
            missing[config["column"]] = float(value["share"])
        elif name.startswith("DriftedColumnsCount("):
            share = float(value["share"])
        elif name.startswith("ValueDrift("):
            method = str(config.get("method", ""))
            threshold = float(config.get("threshold", 0.05))
            columns.append(
                ColumnDrift(
                    config["column"],
                    method,
                    float(value),
                    threshold,
                    is_drifted(method, float(value), threshold),
                )
            )
    return DriftReading(share, columns, missing)


def evidently_drift(
    current: pd.DataFrame, reference: pd.DataFrame | None, html: Path | None = None
) -> DriftReading:
    """Run Evidently's data summary (and drift, given a reference) on ``current``; with ``html``,
    save the report there for people to read."""
    if reference is not None:
        reference = reference[[c for c in current.columns if c in reference.columns]]
        snapshot = Report([DataSummaryPreset(), DataDriftPreset()]).run(
            current[reference.columns], reference
        )
    else:
        snapshot = Report([DataSummaryPreset()]).run(current, None)
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html))
    return read_snapshot(snapshot.dict()["metrics"])
