"""Outliers per request: how unlike the training data a row is, and which column makes it so.

Fitted at registration on the training rows and saved in the model's MLmodel metadata
(``OUTLIER_METADATA``: a few numbers per column, so it travels with the model into every image and
target, inside the checksum the model folder already has). Each input column gives a row a
*surprise* on one scale, that of a normal deviate:

- a number: its distance from the training median in robust standard deviations (the central
  99 % of the training values spans +-2.576 of them); beyond the training's smallest or largest
  value it is as surprising as a category never seen;
- a category (and a missing value, in any column): the two-sided normal quantile of its share of
  the training rows (a category of 1 % scores 2.58); a category, or a missing value, never seen
  in training scores twice the threshold: always an outlier.

A row's score is its largest surprise, and the column it comes from is named; a row is an outlier
above the threshold that ``RATE`` of the training rows exceed, so the rate expected of
training-like traffic is known and monitoring compares a window's rate with it. Per column, so
a value out of range or a category never seen is caught and named; a combination of ordinary
values that never occurred together is not (an IsolationForest on the transformed features
would, but is thousands of tree nodes the metadata cannot hold; it would be a second artifact
beside the model).

Kept free of scikit-learn, MLflow and Prefect: the model server imports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

#: Where a model's detector is kept in its MLmodel metadata.
OUTLIER_METADATA = "mlops_outliers"
#: The share of training rows above the threshold: the expected rate on training-like traffic.
RATE = 0.01
#: Scores are capped here (a value a billion deviations away is as much an outlier as at 1,000).
MAX_SCORE = 1000.0
_CENTRAL = NormalDist().inv_cdf(0.995)  # 2.576: the central 99 % of a normal sample
MISSING = "(missing)"


def _z(share: float) -> float:
    """The two-sided normal quantile of ``share``: how surprising a value that common is."""
    return min(MAX_SCORE, NormalDist().inv_cdf(1 - share / 2)) if share < 1 else 0.0


@dataclass(frozen=True)
class OutlierScores:
    scores: np.ndarray  # per row
    columns: list[str | None]  # per row, the column of its largest surprise (None: no column)
    flags: np.ndarray  # per row, above the threshold


@dataclass(frozen=True)
class OutlierDetector:
    # column -> (median, robust standard deviation, smallest and largest training value)
    numeric: dict[str, tuple[float, float, float, float]]
    categories: dict[str, dict[str, float]]  # column -> category -> surprise
    missing: dict[str, float]  # column -> the surprise of a missing value
    unseen: float  # the surprise of a category (or a missing value) never seen in training
    threshold: float
    rate: float  # the share of training rows above the threshold
    rows: int  # training rows fitted on

    @classmethod
    def fit(cls, frame: pd.DataFrame, rate: float = RATE) -> OutlierDetector:
        """The detector of ``frame``'s columns (the training rows): numbers by their median and
        robust spread, the rest by their categories' shares."""
        n = len(frame)
        if n == 0:
            raise ValueError("no training rows to fit an outlier detector on")
        numeric: dict[str, tuple[float, float, float, float]] = {}
        categories: dict[str, dict[str, float]] = {}
        missing: dict[str, float] = {}
        for column in frame.columns:
            values = frame[column]
            gone = values.isna()
            missing[column] = _z(float(gone.mean())) if gone.any() else _z(1 / (2 * n))
            if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
                known = values[~gone].astype("float64").to_numpy()
                if len(known) == 0:
                    continue
                lo, median, hi = np.quantile(known, [0.005, 0.5, 0.995])
                spread = (hi - lo) / (2 * _CENTRAL)
                floor = max(abs(float(median)) * 1e-6, 1e-9)  # a constant column: any change
                numeric[column] = (
                    float(median), float(max(spread, floor)), float(known.min()), float(known.max())
                )  # fmt: skip
            else:
                shares = values[~gone].astype(str).value_counts() / n
                categories[column] = {str(k): _z(float(s)) for k, s in shares.items()}
        detector = cls(numeric, categories, missing, _z(1 / (2 * n)), math.inf, 0.0, n)
        scores = detector._score(frame)[0]
        threshold = float(np.quantile(scores, 1 - rate))
        flagged = float(np.mean(scores > threshold))
        # never seen in training (a category, or a missing value where none was): an outlier
        # whatever the other columns' tails put the threshold at
        unseen = 2 * max(threshold, detector.unseen)
        missing = {c: unseen if z >= detector.unseen else z for c, z in missing.items()}
        return cls(numeric, categories, missing, unseen, threshold, flagged, n)

    def score(self, frame: pd.DataFrame) -> OutlierScores:
        """Each row's score, the column it comes from, and whether it is an outlier."""
        scores, columns = self._score(frame)
        return OutlierScores(scores, columns, scores > self.threshold)

    def score_records(self, records: Sequence[Mapping[str, Any]]) -> OutlierScores:
        """``score`` of rows as dicts (the server's validated rows), without a DataFrame."""
        scores = np.zeros(len(records))
        columns: list[str | None] = [None] * len(records)
        for i, record in enumerate(records):
            best, where = 0.0, None
            for column in (*self.numeric, *self.categories):
                s = self._surprise(column, record.get(column))
                if s > best:
                    best, where = s, column
            scores[i], columns[i] = best, where
        return OutlierScores(scores, columns, scores > self.threshold)

    def _surprise(self, column: str, value: Any) -> float:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.missing.get(column, self.unseen)
        if column in self.numeric:
            median, spread, low, high = self.numeric[column]
            try:
                number = float(value)
            except (TypeError, ValueError):
                return self.unseen
            z = abs(number - median) / spread
            if not low <= number <= high:
                z = max(z, self.unseen)
            return min(MAX_SCORE, z) if math.isfinite(z) else MAX_SCORE
        return self.categories[column].get(str(value), self.unseen)

    def _score(self, frame: pd.DataFrame) -> tuple[np.ndarray, list[str | None]]:
        names = [c for c in (*self.numeric, *self.categories)]
        table = np.zeros((len(frame), len(names)))
        for j, column in enumerate(names):
            if column not in frame:
                table[:, j] = self.unseen  # a column the rows lack: every value is missing
                continue
            values = frame[column]
            gone = values.isna().to_numpy()
            if column in self.numeric:
                median, spread, low, high = self.numeric[column]
                numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
                z = np.abs(numbers - median) / spread
                with np.errstate(invalid="ignore"):
                    beyond = (numbers < low) | (numbers > high)
                z = np.where(beyond, np.maximum(z, self.unseen), z)
                z = np.where(np.isnan(z) & ~gone, self.unseen, z)  # not a number at all
                z = np.minimum(np.nan_to_num(z, nan=0.0, posinf=MAX_SCORE), MAX_SCORE)
            else:
                known = self.categories[column]
                z = values.astype(str).map(known).fillna(self.unseen).to_numpy(dtype="float64")
            table[:, j] = np.where(gone, self.missing.get(column, self.unseen), z)
        if not names:
            return np.zeros(len(frame)), [None] * len(frame)
        best = table.argmax(axis=1)
        scores = table[np.arange(len(frame)), best]
        columns = [names[k] if s > 0 else None for k, s in zip(best, scores, strict=True)]
        return scores, columns

    def to_metadata(self) -> dict[str, Any]:
        return {
            "numeric": {c: list(v) for c, v in self.numeric.items()},
            "categories": self.categories,
            "missing": self.missing,
            "unseen": self.unseen,
            "threshold": self.threshold,
            "rate": self.rate,
            "rows": self.rows,
        }

    @classmethod
    def from_metadata(cls, metadata: Any) -> OutlierDetector | None:
        """The detector an MLmodel's metadata holds; None for a model saved without one (or a
        record that does not read as one: serving goes on without outlier scores)."""
        spec = metadata.get(OUTLIER_METADATA) if isinstance(metadata, Mapping) else None
        if not isinstance(spec, Mapping):
            return None
        try:
            return cls(
                {str(c): (float(v[0]), float(v[1]), float(v[2]), float(v[3])) for c, v in spec["numeric"].items()},
                {str(c): {str(k): float(z) for k, z in m.items()} for c, m in spec["categories"].items()},
                {str(c): float(z) for c, z in spec["missing"].items()},
                float(spec["unseen"]),
                float(spec["threshold"]),
                float(spec["rate"]),
                int(spec["rows"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None
