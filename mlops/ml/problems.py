"""Problem types: how a target becomes labels, how a model's answers are read, how they score.

One ``Problem`` per pipeline (``problem_for(cfg.target)``), bound to the target's classes. Every
stage asks it instead of assuming a binary classifier:

- ``encode`` turns the dataset's target column into what the model is fitted on: a classifier's
  labels are the positions of its classes (binary: 0 the negative class, 1 the positive one),
  which every family takes (XGBoost insists on 0..k-1); a regression's values are floats.
- ``predict`` reads a fitted model's answers for some rows as ``Predictions``: a class index per
  row with the class probabilities, or a number per row.
- ``score`` computes a registry metric (``mlops.core.metrics``) of predictions against truth.
- ``decode`` turns labels back into the dataset's own values (labelled production rows).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from mlops.core.answers import class_columns
from mlops.core.config import TargetConfig
from mlops.core.errors import MlopsError
from mlops.core.metrics import REGISTRY, ProblemType

#: P(positive) at or above which a binary classifier's row is labelled positive.
THRESHOLD = 0.5


class Model(Protocol):
    def predict(self, X: pd.DataFrame) -> Any: ...


@dataclass(frozen=True)
class Predictions:
    """A model's answers for some rows, in order: ``values`` is the class index (classifiers) or
    the predicted number (regression); ``proba`` the row-by-class probabilities (classifiers)."""

    values: np.ndarray
    proba: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.values)

    def take(self, index: np.ndarray) -> Predictions:
        """The predictions of the rows at ``index`` (a bootstrap resample)."""
        return Predictions(self.values[index], None if self.proba is None else self.proba[index])


@dataclass(frozen=True)
class Problem:
    """A problem type bound to its target: ``classes`` in label order for classifiers."""

    kind: ProblemType
    classes: tuple[str, ...] = ()
    column: str = "target"
    threshold: float = THRESHOLD

    @property
    def is_classifier(self) -> bool:
        return self.kind != "regression"

    @property
    def stratify(self) -> bool:
        """Whether a split may stratify by the target: only classes can be stratified on."""
        return self.is_classifier

    # labels ---------------------------------------------------------------------------------
    def encode(self, y: pd.Series) -> pd.Series:
        """The dataset's target column as model labels; a value outside the classes (or a number
        that is not one) is an MlopsError naming the column, the values and their count."""
        name = y.name if y.name is not None else self.column
        if not self.is_classifier:
            values = pd.to_numeric(y, errors="coerce")
            bad = values.isna() | ~np.isfinite(values.astype(float))
            if bad.any():
                sample = sorted({str(v) for v in y[bad].head(5)})
                raise MlopsError(
                    f"target {name!r}: {int(bad.sum())} row(s) hold no finite number: {sample}"
                )
            return values.astype("float64").rename(name)
        text = y.astype(str)
        index = {c: i for i, c in enumerate(self.classes)}
        codes = text.map(index)
        unknown = codes.isna()
        if unknown.any():
            seen = sorted(set(text[unknown]))[:5]
            raise MlopsError(
                f"target {name!r}: {int(unknown.sum())} row(s) hold values outside the classes "
                f"{list(self.classes)}: {seen}"
            )
        return codes.astype("int64").rename(name)

    def decode(self, labels: Sequence[Any] | np.ndarray) -> list[Any]:
        """Model labels back as the dataset's values (a class name, or the number itself)."""
        if not self.is_classifier:
            return [float(v) for v in labels]
        return [self.classes[int(v)] for v in labels]

    # answers --------------------------------------------------------------------------------
    def predict(self, model: Model, X: pd.DataFrame) -> Predictions:
        """A fitted model's answers for ``X``: regression calls ``predict``; classifiers
        ``predict_proba``, with the columns put in class order (a class absent from training is
        a column of zeros) and the label the most likely class (binary: P(positive) at or
        above ``threshold``)."""
        if not self.is_classifier:
            return Predictions(np.asarray(model.predict(X), dtype="float64"))
        raw = np.asarray(model.predict_proba(X), dtype="float64")  # type: ignore[attr-defined]
        proba = class_columns(raw, getattr(model, "classes_", None), self.classes)
        if self.kind == "binary":
            labels = (proba[:, 1] >= self.threshold).astype("int64")
        else:
            labels = proba.argmax(axis=1).astype("int64")
        return Predictions(labels, proba)

    # scores ---------------------------------------------------------------------------------
    def metrics(self) -> list[str]:
        """The registry's metrics that apply to this problem."""
        return [n for n, m in REGISTRY.items() if self.kind in m.problems]

    def score(self, name: str, y: np.ndarray, predictions: Predictions) -> float:
        """Metric ``name`` of ``predictions`` against the labels ``y``. Raises ValueError where the
        metric is undefined on these rows (a ROC AUC of rows of one class)."""
        from sklearn import metrics as skm  # seconds to import: only where a score is computed
        from sklearn.exceptions import UndefinedMetricWarning

        metric = REGISTRY[name]
        if self.kind not in metric.problems:
            raise ValueError(f"{name} does not apply to a {self.kind} problem")
        options = dict(metric.options)
        if metric.class_labels:
            options["labels"] = list(range(len(self.classes)))
        if metric.reads == "proba":
            assert predictions.proba is not None
            given: np.ndarray = (
                predictions.proba[:, 1] if self.kind == "binary" else predictions.proba
            )
        else:
            given = predictions.values
        # scikit-learn answers NaN with a warning (it used to raise) where a metric is undefined.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            value = float(getattr(skm, metric.scorer)(y, given, **options))
        if math.isnan(value):
            raise ValueError(f"{name} is undefined on these {len(y)} rows")
        return value

    def score_all(self, y: np.ndarray, predictions: Predictions) -> dict[str, float]:
        """Every metric that applies, NaN where one is undefined on these rows."""
        out = {}
        for name in self.metrics():
            try:
                out[name] = self.score(name, y, predictions)
            except ValueError:
                out[name] = float("nan")
        return out


def problem_for(target: TargetConfig) -> Problem:
    """The problem of a loaded pipeline config's target."""
    return Problem(target.kind, tuple(target.classes), target.column)
