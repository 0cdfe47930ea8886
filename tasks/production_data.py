"""Labelled production data for retraining: the rows the model served whose true labels arrived
(``POST /feedback``), in the dataset's own columns and label values, as one Parquet file whose
md5 goes into the new version's lineage beside the DVC data version."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.config import PipelineConfig
from mlops.errors import ConfigError
from tasks.monitoring import read_window


@dataclass(frozen=True)
class ProductionData:
    path: str
    md5: str
    rows: int
    recent_positive_rate: float  # among the most recent labelled rows: the world as it is now


#: How many of the latest labelled rows say what share of positives production has now.
RECENT_ROWS = 1000


def negative_label(cfg: PipelineConfig) -> str:
    """The target's other value, from the data contract (a binary target has exactly two)."""
    values = cfg.contract.columns[cfg.target.column].values or ()
    others = [v for v in values if v != cfg.target.positive]
    if len(others) != 1:
        raise ConfigError(
            f"the contract's {cfg.target.column!r} values {list(values)} do not name one negative "
            f"label beside {cfg.target.positive!r}: production labels cannot be mapped back"
        )
    return others[0]


def labelled_rows(
    log_root: str, since: datetime | None, until: datetime, cfg: PipelineConfig
) -> tuple[pd.DataFrame, list[str]]:
    """Served rows with arrived labels, as dataset rows (features + target in its own values)."""
    features = cfg.features.columns
    window = read_window(log_root, since, until, features, max_rows=10_000_000)
    rows = window.rows
    if rows.empty or "label" not in rows:
        return pd.DataFrame(columns=[*features, cfg.target.column]), window.problems
    rows = rows[rows["label"].notna() & rows[features].notna().all(axis=1)]
    # a request may carry several rows; one label per (request, row) is what was served
    rows = rows.drop_duplicates(["request_id", "row"]) if "row" in rows else rows
    rows = rows.sort_values("time") if "time" in rows else rows  # oldest first
    target = rows["label"].astype(int).map({1: cfg.target.positive, 0: negative_label(cfg)})
    return rows[features].assign(**{cfg.target.column: target}).reset_index(
        drop=True
    ), window.problems


def write_production_data(frame: pd.DataFrame, path: Path, positive: str) -> ProductionData:
    """``frame`` (oldest row first) as Parquet, with its md5 and its recent share of positives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    recent = frame.tail(RECENT_ROWS).iloc[:, -1] == positive
    return ProductionData(str(path), md5, len(frame), float(recent.mean()))


def read_production_data(path: str) -> tuple[pd.DataFrame, str]:
    """The frame and the md5 of the file as it is now (what lineage records)."""
    raw = Path(path).read_bytes()
    return pd.read_parquet(path), hashlib.md5(raw).hexdigest()


@task(name="collect-production-data", cache_policy=NO_CACHE, persist_result=False)
def collect_production_data(
    log_root: str, since: datetime | None, until: datetime, cfg: PipelineConfig, path: Path
) -> ProductionData | None:
    """Labelled production rows since ``since`` as a Parquet file; None when there are none."""
    frame, _ = labelled_rows(log_root, since, until, cfg)
    return write_production_data(frame, path, cfg.target.positive) if len(frame) else None
