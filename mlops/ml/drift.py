"""Data drift and data quality with Evidently, in one place for the training-data gate and for
production monitoring alike.

Two entry points over the same tests:

- ``drift_tests`` decides. Per column it asks Evidently which test its ``DataDriftPreset`` would
  run (Evidently's column-type inference, then its default test for the type and sample sizes:
  normed Wasserstein distance or Jensen-Shannon distance on large samples, K-S, chi-square or
  Z-test on small ones, with Evidently's thresholds) and runs that test function. It skips the
  report machinery, whose per-column distribution plots cost about nine tenths of a preset's
  time (``benchmarks/drift.py``), so decisions come first and fast.
- With a ``DriftRule`` (the monitoring policy's default), a column drifts only when Evidently's
  test says so *and* a two-sample significance test agrees after a multiple-testing correction
  across the columns: Evidently's distances on a small window of many-level categories exceed
  their threshold by chance (on 500 unshifted Adult rows, 14 of 50 windows crossed the policy's
  share), and its p-value tests on a huge window call a negligible shift significant. The effect
  (Evidently's decision) keeps tiny shifts out, the corrected significance keeps noise out, so
  false alarms do not grow with the window's size, small or large (tests/unit/ml/
  test_drift_false_alarms.py, benchmarks/drift_false_alarms.py).
- ``evidently_report`` renders the full Evidently report (data summary and drift) for people to
  read. Run on the same frames, it reaches the same decisions; the monitoring flow renders it
  after it has emitted its events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlops.ml.prediction_shift import chi_square_p

#: Column types Evidently judges for drift; others (dates, lists, unknown) are left out.
_JUDGED = ("num", "cat", "text")


#: Corrections for testing many columns at once: Benjamini-Hochberg bounds the share of false
#: discoveries, Bonferroni the chance of any (stricter, fewer real drifts found).
Correction = Literal["benjamini-hochberg", "bonferroni"]
#: Expected counts below this are pooled into one category before the chi-square test.
MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class DriftRule:
    """Evidently's decision confirmed by a corrected significance test (module docstring):
    ``alpha`` is the corrected level (false discovery rate for Benjamini-Hochberg, family-wise
    error for Bonferroni)."""

    correction: Correction = "benjamini-hochberg"
    alpha: float = 0.05


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str  # the test Evidently chose for the column's type and the sample sizes
    score: float  # a p-value or a distance, as the method says
    threshold: float
    drifted: bool  # the decision: Evidently's alone, or confirmed under a DriftRule
    p_value: float | None = None  # the significance test's, corrected across columns (a rule)
    evidently: bool | None = None  # Evidently's own decision, when a rule decided


@dataclass(frozen=True)
class DriftReading:
    share: float | None  # share of columns drifted; None without a reference
    columns: list[ColumnDrift] = field(default_factory=list)
    missing_share: dict[str, float] = field(default_factory=dict)  # per column, of the current data
    skipped: dict[str, str] = field(default_factory=dict)  # column -> why it was not judged

    @property
    def drifted(self) -> list[str]:
        return sorted(c.column for c in self.columns if c.drifted)


def is_drifted(method: str, score: float, threshold: float) -> bool:
    """Evidently reports a test's p-value (drift below the threshold) or a distance (drift at or
    above it), by the method it chose for the column's type and size."""
    if "p_value" in method:
        return score < threshold
    return score >= threshold


def drift_tests(
    current: pd.DataFrame, reference: pd.DataFrame | None, rule: DriftRule | None = None
) -> DriftReading:
    """Missing values of ``current`` per column and, given a reference, Evidently's default drift
    test per column common to both, with the share of columns drifted; with ``rule``, a column
    drifts only where the corrected significance test agrees (module docstring)."""
    missing = {c: float(current[c].isna().mean()) for c in current.columns}
    if reference is None:
        return DriftReading(None, [], missing)
    from evidently.core.datasets import infer_column_type
    from evidently.legacy.calculations.stattests.registry import get_stattest

    columns: list[ColumnDrift] = []
    pvalues: list[tuple[int, float]] = []  # (column's index, its p-value): a rule's family
    skipped: dict[str, str] = {}
    for name in [c for c in current.columns if c in reference.columns]:
        kind = infer_column_type(current[name])  # Evidently types the column by the current data
        if kind.value not in _JUDGED:
            skipped[name] = f"{kind.value} column: no drift test"
            continue
        cur, ref = (_finite(current[name]), _finite(reference[name]))
        if cur.empty or ref.empty:
            skipped[name] = f"no values in the {'current' if cur.empty else 'reference'} data"
            continue
        if kind.value == "num" and not (
            pd.api.types.is_numeric_dtype(cur) and pd.api.types.is_numeric_dtype(ref)
        ):
            skipped[name] = "numeric in one frame, not in the other"
            continue
        test = get_stattest(ref, cur, kind, None)
        result = test(ref, cur, kind, None)
        score, threshold = float(result.drift_score), float(result.actual_threshold)
        columns.append(ColumnDrift(name, test.display_name, score, threshold, bool(result.drifted)))
        if rule is not None and kind.value != "text":  # Evidently alone judges text content
            pvalues.append((len(columns) - 1, two_sample_p_value(ref, cur, kind.value)))
    if rule is not None and pvalues:
        adjusted = corrected([p for _, p in pvalues], rule.correction)
        for (i, _), p in zip(pvalues, adjusted, strict=True):
            c = columns[i]
            columns[i] = ColumnDrift(
                c.column,
                c.method,
                c.score,
                c.threshold,
                c.drifted and p < rule.alpha,
                p_value=p,
                evidently=c.drifted,
            )
    share = sum(c.drifted for c in columns) / len(columns) if columns else 0.0
    return DriftReading(share, columns, missing, skipped)


def two_sample_p_value(reference: pd.Series, current: pd.Series, kind: str) -> float:
    """The p-value of both samples coming from one distribution: two-sample Kolmogorov-Smirnov
    for numbers; for categories, the chi-square test of homogeneity on the two samples' counts
    (``mlops.ml.prediction_shift.chi_square_p``, as the canary's class shares), with categories expected fewer than ``MIN_EXPECTED`` times in either sample
    pooled into one (where the test's approximation holds; a category only one side has counts
    against the other, unlike a goodness-of-fit test whose expected zero divides)."""
    from scipy import stats

    if kind == "num":
        ref = reference.to_numpy(dtype="float64")
        cur = current.to_numpy(dtype="float64")
        return float(stats.ks_2samp(ref, cur, method="asymp").pvalue)
    table = pd.concat(
        [reference.astype(str).value_counts(), current.astype(str).value_counts()],
        axis=1,
        keys=["reference", "current"],
    ).fillna(0.0)
    n_ref, n_cur = float(len(reference)), float(len(current))
    shares = table.sum(axis=1) / (n_ref + n_cur)
    rare = shares * min(n_ref, n_cur) < MIN_EXPECTED
    if rare.any():
        table = pd.concat([table[~rare], table[rare].sum().to_frame("(rare)").T])
    # 1.0 for a single category: nothing moved
    return chi_square_p(table["reference"].to_dict(), table["current"].to_dict())


def corrected(pvalues: list[float], correction: Correction) -> list[float]:
    """``pvalues`` adjusted for being tested together (scipy's Benjamini-Hochberg, or
    Bonferroni): compare each with the level the family should hold."""
    from scipy import stats

    if not pvalues:
        return []
    if correction == "bonferroni":
        return [min(1.0, p * len(pvalues)) for p in pvalues]
    return [float(p) for p in stats.false_discovery_control(pvalues, method="bh")]


def _finite(values: pd.Series) -> pd.Series:
    """The values that are neither missing nor infinite (a mask: ``replace`` on a million
    strings costs more than the column's drift test)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values[np.isfinite(values.to_numpy(dtype="float64", na_value=np.nan))]
    known = values.notna()
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return values[known]  # no string is infinite: no need to hash a million of them
    return values[known & ~values.isin([np.inf, -np.inf])]


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


def evidently_report(
    current: pd.DataFrame, reference: pd.DataFrame | None, html: Path
) -> DriftReading:
    """Evidently's data summary (and drift, given a reference) of ``current`` saved as an HTML
    report at ``html``, with the figures it shows."""
    from evidently import Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    if reference is not None:
        reference = reference[[c for c in current.columns if c in reference.columns]]
        snapshot = Report([DataSummaryPreset(), DataDriftPreset()]).run(
            current[reference.columns], reference
        )
    else:
        snapshot = Report([DataSummaryPreset()]).run(current, None)
    html.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html))
    return read_snapshot(snapshot.dict()["metrics"])
