"""Labelled production data for retraining: the rows the model served whose true labels arrived
(``POST /feedback``), in the dataset's own columns and label values, as one Parquet file whose
md5 goes into the new version's lineage beside the DVC data version.

Each row is checked against the data contract as it is collected: rows that break it are left
out and reported (one odd row must not refuse the whole training set for `production_days`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlops.core.config import PipelineConfig
from mlops.core.errors import ConfigError
from mlops.ml.contract import split_by_contract
from mlops.ml.monitoring import Window


@dataclass(frozen=True)
class ProductionData:
    path: str
    md5: str
    rows: int
    recent_positive_rate: float  # among the most recent labelled rows: the world as it is now


#: How many of the latest labelled rows say what share of positives production has now.
RECENT_ROWS = 1000

#: The rows of a collection's window: all of them in practice (the bound keeps memory finite).
MAX_ROWS = 10_000_000


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


#: The column of ``labelled_rows`` that says which request a row came from (not a dataset column).
REQUEST = "request_id"


def labelled_rows(window: Window, cfg: PipelineConfig) -> pd.DataFrame:
    """The window's served rows with arrived labels, as dataset rows (features + target in its own
    values), oldest first, with the request each came from in a last ``request_id`` column."""
    features = cfg.features.columns
    rows = window.rows
    if rows.empty or "label" not in rows:
        return pd.DataFrame(columns=[*features, cfg.target.column, REQUEST])
    # missing feature values are the contract's to judge (nullable columns allow them)
    rows = rows[rows["label"].notna()]
    # a request may carry several rows; one label per (request, row) is what was served
    rows = rows.drop_duplicates([REQUEST, "row"]) if "row" in rows else rows
    rows = rows.sort_values("time", kind="stable") if "time" in rows else rows  # oldest first
    target = rows["label"].astype(int).map({1: cfg.target.positive, 0: negative_label(cfg)})
    frame = rows.reindex(columns=features).assign(
        **{cfg.target.column: target, REQUEST: rows[REQUEST].astype(str)}
    )
    return frame.reset_index(drop=True)


@dataclass(frozen=True)
class RejectedRows:
    """Labelled production rows left out of retraining because they break the data contract."""

    count: int = 0
    checks: dict[str, int] = field(default_factory=dict)  # "column:check" -> failures
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few rows, as collected

    def summary(self) -> str:
        checks = ", ".join(f"{k} ({n})" for k, n in self.checks.items())
        return f"{self.count} row(s) break the data contract: {checks}" if self.count else ""


@dataclass(frozen=True)
class CollectedRows:
    """What one collection kept (None when no row) and what it left out."""

    data: ProductionData | None
    rejected: RejectedRows
    kept: int
    offered: int = 0  # the labelled rows judged
    report: str = ""  # the contract's markdown report of the rows left out; empty when none

    def markdown(self) -> str:
        """What the collection's artifact says: how many rows joined, and why the others did not."""
        text = (
            f"# Labelled production rows\n\n{self.kept} of {self.offered} rows meet the data "
            "contract and join the training data.\n\n"
        )
        if self.rejected.count:
            examples = json.dumps(self.rejected.examples, indent=1)
            text += f"{self.report}\n```json\n{examples}\n```\n"
        return text

    def summary(self) -> str:
        """One line: what was left out, or that every row was in contract."""
        return self.rejected.summary() or f"{self.kept} labelled production rows, all in contract"


#: Refused rows quoted in the audit entry and the artifact; the count and checks cover them all.
EXAMPLES = 5


def _rejected(failed: pd.DataFrame, checks: dict[str, int]) -> RejectedRows:
    # through JSON so numpy scalars and NaN become plain values an audit entry can hold
    examples = json.loads(failed.head(EXAMPLES).to_json(orient="records", date_format="iso"))
    return RejectedRows(len(failed), checks, examples)


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


def collect_production_data(window: Window, cfg: PipelineConfig, path: Path) -> CollectedRows:
    """The window's labelled rows that meet the data contract, written to ``path`` as Parquet
    (none written when no row does); the others counted and described."""
    frame = labelled_rows(window, cfg)
    requests = frame.pop(REQUEST)
    verdict = split_by_contract(frame, cfg.contract, "labelled production rows")
    failed = verdict.failed_rows.assign(**{REQUEST: requests.reindex(verdict.failed_rows.index)})
    rejected = _rejected(failed, verdict.checks)
    kept = verdict.kept.reset_index(drop=True)
    data = write_production_data(kept, path, str(cfg.target.positive)) if len(kept) else None
    report = verdict.report if len(failed) else ""
    return CollectedRows(data, rejected, len(kept), len(frame), report)
