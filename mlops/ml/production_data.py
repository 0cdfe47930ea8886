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

import numpy as np
import pandas as pd

from mlops.core.config import PipelineConfig
from mlops.core.frames import canonical_order, missing_as_nan
from mlops.ml.contract import contract_of, split_by_contract
from mlops.ml.monitoring import Window, read_answers
from mlops.ml.prediction_shift import ExpectedPredictions, class_counts, quantiles_of, shares
from mlops.ml.problems import Problem, problem_for


@dataclass(frozen=True)
class ProductionData:
    path: str
    md5: str
    rows: int
    # the most recent labelled rows' class shares or value quantiles: the world as it is now,
    # which the release expects a model retrained on it to predict (mlops.release.canary.judge)
    expected: ExpectedPredictions


#: How many of the latest labelled rows say what production's labels look like now.
RECENT_ROWS = 1000

#: The rows of a collection's window: all of them in practice (the bound keeps memory finite).
MAX_ROWS = 10_000_000

#: The column of ``labelled_rows`` that says which request a row came from (not a dataset column).
REQUEST = "request_id"


def dataset_labels(labels: pd.Series, cfg: PipelineConfig) -> pd.Series:
    """Logged labels as the dataset holds its target: the class name (binary logs written before
    problem types hold 0/1, the negative and the positive class), True/False for a bool target,
    the number for regression. A label naming no class stays as it came, for the data contract
    to refuse and report with its row."""
    problem = problem_for(cfg.target)
    values, bad = read_answers(labels, problem)
    if not problem.is_classifier:
        return pd.Series(np.where(bad, np.nan, values), index=labels.index, dtype="float64")
    names = np.asarray(problem.classes, dtype=object)[values]
    out = pd.Series(np.where(bad, labels.astype(str).to_numpy(), names), index=labels.index)
    if cfg.contract.columns[cfg.target.column].type == "bool":
        return out.map({"True": True, "False": False}).where(~bad, out).astype(object)
    return out.astype(object)


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
    frame = rows.reindex(columns=features).assign(
        **{
            cfg.target.column: dataset_labels(rows["label"], cfg),
            REQUEST: rows[REQUEST].astype(str),
        }
    )
    return frame.reset_index(drop=True)


def recent_labels(frame: pd.DataFrame, problem: Problem) -> ExpectedPredictions:
    """What the last ``RECENT_ROWS`` labels of ``frame`` (oldest row first) look like: each class's
    share (classifiers), or the values' minimum, deciles and maximum (regression)."""
    recent = frame[problem.column].tail(RECENT_ROWS)
    source = f"the last {len(recent)} production labels"
    if problem.is_classifier:
        counts = class_counts((str(v) for v in recent), problem.classes)
        return ExpectedPredictions(shares=shares(counts), rows=len(recent), source=source)
    values = recent.astype("float64").to_numpy()
    return ExpectedPredictions(quantiles=quantiles_of(values), rows=len(recent), source=source)


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


def write_production_data(frame: pd.DataFrame, path: Path, problem: Problem) -> ProductionData:
    """``frame`` (oldest row first) as Parquet, with its md5 and what its recent labels look like
    (``recent_labels``, from the arrival order).

    The file holds the rows in an order of their content alone (``canonical_order``): concurrent
    callers are answered in a different order each time, and the train/holdout split of the same
    rows in another order is another split, so the same labelled rows would train another model
    (one run of the demo's v2 failed the fairness gate, the next passed it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    expected = recent_labels(frame, problem)
    canonical_order(frame).to_parquet(path, index=False)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    return ProductionData(str(path), md5, len(frame), expected)


def read_production_data(path: str) -> tuple[pd.DataFrame, str]:
    """The frame and the md5 of the file as it is now (what lineage records)."""
    raw = Path(path).read_bytes()
    # Parquet gives None where a text value is missing; training imputes NaN only
    return missing_as_nan(pd.read_parquet(path)), hashlib.md5(raw).hexdigest()


def collect_production_data(window: Window, cfg: PipelineConfig, path: Path) -> CollectedRows:
    """The window's labelled rows that meet the data contract, written to ``path`` as Parquet
    (none written when no row does); the others counted and described."""
    frame = labelled_rows(window, cfg)
    requests = frame.pop(REQUEST)
    # the rows hold what the model was served and its label: the contract's other columns
    # (in the dataset, not read by the model) are not theirs to meet
    contract = contract_of(cfg.contract, list(frame.columns))
    verdict = split_by_contract(frame, contract, "labelled production rows")
    failed = verdict.failed_rows.assign(**{REQUEST: requests.reindex(verdict.failed_rows.index)})
    rejected = _rejected(failed, verdict.checks)
    kept = verdict.kept.reset_index(drop=True)
    problem = problem_for(cfg.target)
    data = write_production_data(kept, path, problem) if len(kept) else None
    report = verdict.report if len(failed) else ""
    return CollectedRows(data, rejected, len(kept), len(frame), report)
