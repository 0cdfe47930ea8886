"""Per-row feature attributions of a fitted model, in its input columns: what the model server's
``/explain`` answers, what registration averages into a version's global importance, and what
monitoring compares between a window and the training data.

A model is the feature pipeline, then the estimator (``mlops.ml.training.build_pipeline``). The
estimator is explained on the transformed features and each transformed column's attribution is
given back to the input column it came from (a one-hot column to its categorical column), so the
attributions of a row are one number per input column and output. Attributions are additive:
``base`` plus a row's attributions is the model's output for that row, in the output's own
``space``, which ``explainer_for`` finds and checks on probe rows before it serves anything:

- ``tree_shap``: shap's TreeExplainer (exact Tree SHAP, tree-path-dependent: no background data)
  for every tree ensemble the project ships (random forest, gradient boosting, histogram gradient
  boosting, XGBoost, LightGBM) and any other estimator shap reads as trees. Its space is the
  estimator's raw output: log-odds of the positive class for boosted binary classifiers, the
  per-class scores before softmax for boosted multiclass ones, the probability for a forest,
  the value for a regression.
- ``linear``: a linear model's exact SHAP values under independent features,
  ``coef * (x - mean)``, from the mean transformed training row (``baseline_of``, saved with the
  model at registration); log-odds or logits for a logistic regression, the value for Ridge.

Anything else (a user's own estimator shap cannot read) is ``NotExplainable`` with the reason;
registration then falls back to permutation importance for the global figure.

It lives in ``core`` because the model server may not import ``mlops.ml``; and explanations do
not shape a model, so they stay out of its code fingerprint.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlops.core.errors import MlopsError

Space = Literal["probability", "log_odds", "logit", "value"]
Method = Literal["tree_shap", "linear"]

#: How far ``base`` plus the attributions may be from the model's own output on the probe rows
#: (XGBoost and LightGBM sum their trees in float32).
ADDITIVITY_TOLERANCE = 1e-4


class NotExplainable(MlopsError):
    """The model has no explainer here: the reason names what could not be explained."""


@dataclass(frozen=True)
class Attributions:
    """Rows' attributions: ``values[row, feature, output]``; ``base[output]`` is the expected
    output, and ``base + values.sum(axis=1)`` the model's output per row (``totals``)."""

    features: tuple[str, ...]
    outputs: tuple[str, ...]  # the class explained (binary: the positive), each class, or "value"
    values: np.ndarray
    base: np.ndarray
    space: Space
    method: Method

    def totals(self) -> np.ndarray:
        """The model's output per row and output, as the attributions add up to it."""
        out: np.ndarray = self.base[None, :] + self.values.sum(axis=1)
        return out

    def mean_abs(self) -> dict[str, float]:
        """Each feature's mean absolute attribution over the rows and outputs: its influence."""
        means = np.abs(self.values).mean(axis=(0, 2)) if len(self.values) else np.zeros(0)
        return {f: float(v) for f, v in zip(self.features, means, strict=False)}

    def records(self) -> list[dict[str, Any]]:
        """One JSON object per row: per output, the base value, each feature's attribution and
        the output they add up to."""
        totals = self.totals()
        return [
            {
                "base_value": {o: float(self.base[k]) for k, o in enumerate(self.outputs)},
                "output_value": {o: float(totals[i, k]) for k, o in enumerate(self.outputs)},
                "attributions": {
                    o: {f: float(self.values[i, j, k]) for j, f in enumerate(self.features)}
                    for k, o in enumerate(self.outputs)
                },
            }
            for i in range(len(self.values))
        ]


@dataclass(frozen=True)
class Explainer:
    """A fitted model's explainer (``explainer_for``): ``explain`` attributes rows already in
    the model's input columns and types."""

    features: tuple[str, ...]
    outputs: tuple[str, ...]
    space: Space
    method: Method
    _groups: tuple[np.ndarray, ...]
    _explain: Any  # transformed rows -> (values[row, column, output], base[output])
    _head: Any  # the feature pipeline, or None for an estimator on the raw columns

    def explain(self, frame: pd.DataFrame) -> Attributions:
        X = _transformed(self._head, frame[list(self.features)])
        values, base = self._explain(X)
        grouped = np.stack([values[:, idx, :].sum(axis=1) for idx in self._groups], axis=1)
        return Attributions(self.features, self.outputs, grouped, base, self.space, self.method)


def split_model(model: Any) -> tuple[Any, Any]:
    """The feature pipeline (None when there is none) and the final estimator of ``model``."""
    steps = getattr(model, "steps", None)
    if steps is None:
        return None, model
    if len(steps) == 1:
        return None, steps[0][1]
    return model[:-1], steps[-1][1]


def baseline_of(model: Any, frame: pd.DataFrame) -> list[float] | None:
    """The mean transformed row of ``frame`` (the training data): what a linear model's
    attributions are measured from. None when the rows do not transform to plain numbers."""
    head, _ = split_model(model)
    try:
        X = _transformed(head, frame)
    except Exception:  # a user's transformer may fail any way on this: the baseline is optional
        return None
    mean = X.mean(axis=0)
    return [float(v) for v in mean] if np.isfinite(mean).all() else None


def explainer_for(
    model: Any,
    features: Sequence[str],
    kind: str,
    classes: Sequence[str],
    probe: pd.DataFrame,
    baseline: Sequence[float] | None = None,
) -> Explainer:
    """The explainer of a fitted ``model`` of problem ``kind`` (binary, multiclass, regression;
    ``classes`` in label order), checked on ``probe`` rows: its attributions must add up to the
    model's own output there, in the space that output is in; NotExplainable otherwise."""
    head, estimator = split_model(model)
    features = tuple(features)
    if len(probe) == 0:
        raise NotExplainable("no probe rows to check the attributions on")
    X = _transformed(head, probe[list(features)])
    groups = _column_groups(head, features, X.shape[1])
    name = type(estimator).__name__
    linear = _linear(estimator, baseline, X.shape[1])
    method: Method
    if linear is not None:
        explain, method = linear, "linear"
    else:
        explain, method = _tree(estimator, name), "tree_shap"
    values, base = explain(X)
    outputs = _outputs(kind, classes, values.shape[2])
    if outputs is None:
        raise NotExplainable(
            f"{name}: {values.shape[2]} explained outputs for {len(classes)} classes"
        )
    if kind == "binary" and values.shape[2] == 2:  # a forest explains both classes: keep one
        explain = _positive_only(explain)
        values, base = explain(X)
    totals = base[None, :] + values.sum(axis=1)
    space = _space(model, probe[list(features)], kind, totals)
    if space is None:
        raise NotExplainable(
            f"{name}: the attributions do not add up to the model's output on the probe rows"
        )
    return Explainer(features, outputs, space, method, groups, explain, head)


# ---- the estimator's attributions on transformed columns -------------------------------------


def _tree(estimator: Any, name: str) -> Any:
    try:
        import shap
    except ImportError as exc:  # pragma: no cover - shap is a dependency of the package
        raise NotExplainable(f"{name}: shap is not installed ({exc})") from None
    if name == "GradientBoostingClassifier" and estimator.estimators_.shape[1] > 1:
        return _per_class_trees(estimator, shap)
    try:
        explainer = shap.TreeExplainer(estimator)
    except Exception as exc:  # shap says "Model type not yet supported" in various ways
        why = f"{name}: not a model shap's TreeExplainer reads ({exc!s:.200})"
        raise NotExplainable(why) from None

    def explain(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(explainer.shap_values(X, check_additivity=False), dtype="float64")
        if values.ndim == 2:
            values = values[:, :, None]
        base = np.atleast_1d(np.asarray(explainer.expected_value, dtype="float64"))
        return values, base

    return explain


def _per_class_trees(estimator: Any, shap: Any) -> Any:
    """scikit-learn's multiclass gradient boosting, which shap's TreeExplainer refuses: one tree
    per class and round, each class's score the initial estimate plus its trees' sum, so each
    class is its own ensemble of trees for TreeExplainer (by shap's list-of-trees form), and
    the initial estimate is the base it starts from."""
    from shap.explainers._tree import SingleTree

    rate = estimator.learning_rate
    per_class = [
        shap.TreeExplainer([SingleTree(e.tree_, scaling=rate) for e in estimator.estimators_[:, k]])
        for k in range(estimator.estimators_.shape[1])
    ]
    init = estimator._raw_predict_init(np.zeros((1, estimator.n_features_in_)))[0]

    def explain(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = X.astype("float32").astype("float64")  # the trees split in float32, as sklearn's
        values = np.stack([np.asarray(e.shap_values(X)) for e in per_class], axis=2)
        base = init + np.array([float(np.ravel(e.expected_value)[0]) for e in per_class])
        return values.astype("float64"), base.astype("float64")

    return explain


def _linear(estimator: Any, baseline: Sequence[float] | None, columns: int) -> Any:
    """The exact attributions of a linear model, or None for a model that is not one."""
    coef = getattr(estimator, "coef_", None)
    intercept = getattr(estimator, "intercept_", None)
    if coef is None or intercept is None:
        return None
    coef = np.atleast_2d(np.asarray(coef, dtype="float64"))  # (outputs, columns)
    if coef.shape[1] != columns:
        return None
    if baseline is None or len(baseline) != columns:
        raise NotExplainable(
            f"{type(estimator).__name__}: a linear model's attributions need the mean training "
            "row, which this model was not saved with (registered before explanations)"
        )
    mean = np.asarray(baseline, dtype="float64")
    base = np.atleast_1d(np.asarray(intercept, dtype="float64")) + coef @ mean

    def explain(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (X - mean)[:, :, None] * coef.T[None, :, :], base

    return explain


def _positive_only(explain: Any) -> Any:
    def positive(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, base = explain(X)
        return values[:, :, 1:], base[1:]

    return positive


def _outputs(kind: str, classes: Sequence[str], explained: int) -> tuple[str, ...] | None:
    if kind == "regression":
        return ("value",) if explained == 1 else None
    if kind == "binary":
        return (classes[1],) if explained in (1, 2) else None
    return tuple(classes) if explained == len(classes) else None


def _space(model: Any, X: pd.DataFrame, kind: str, totals: np.ndarray) -> Space | None:
    """The space the attributions add up in: the one where they match the model's answers."""

    def close(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.allclose(a, b, rtol=0, atol=ADDITIVITY_TOLERANCE))

    if kind == "regression":
        value = np.asarray(model.predict(X), dtype="float64").reshape(-1, 1)
        return "value" if close(totals, value) else None
    proba = np.asarray(model.predict_proba(X), dtype="float64")
    if kind == "binary":
        p = proba[:, 1:2]
        if close(totals, p):
            return "probability"
        with np.errstate(over="ignore"):
            return "log_odds" if close(1 / (1 + np.exp(-totals)), p) else None
    if close(totals, proba):
        return "probability"
    shifted = np.exp(totals - totals.max(axis=1, keepdims=True))
    return "logit" if close(shifted / shifted.sum(axis=1, keepdims=True), proba) else None


# ---- from transformed columns back to input columns -------------------------------------------


def _transformed(head: Any, frame: pd.DataFrame) -> np.ndarray:
    X = frame if head is None else head.transform(frame)
    if hasattr(X, "toarray"):  # a sparse matrix
        X = X.toarray()
    return np.asarray(X, dtype="float64")


def _column_groups(head: Any, features: tuple[str, ...], width: int) -> tuple[np.ndarray, ...]:
    """For each input column, the transformed columns that come from it."""
    if head is None:
        if width != len(features):
            raise NotExplainable(f"{width} model inputs for {len(features)} columns")
        return tuple(np.array([j]) for j in range(width))
    transformer = head[-1] if hasattr(head, "steps") and len(head.steps) == 1 else head
    slices = getattr(transformer, "output_indices_", None)
    if slices is None:
        raise NotExplainable(
            f"{type(transformer).__name__}: the transformed columns cannot be traced back to the "
            "input columns (explanations need a ColumnTransformer as the feature pipeline)"
        )
    owner: dict[str, list[int]] = {f: [] for f in features}
    for name, part, columns in transformer.transformers_:
        span = slices.get(name, slice(0, 0))
        outputs = list(range(span.start, span.stop))
        if not outputs or part == "drop":
            continue
        names = [features[c] if isinstance(c, int) else str(c) for c in np.atleast_1d(columns)]
        for column, outs in zip(names, _per_column(part, names, outputs), strict=True):
            if column not in owner:
                raise NotExplainable(f"the feature pipeline reads {column!r}, not an input column")
            owner[column].extend(outs)
    return tuple(np.asarray(owner[f], dtype=int) for f in features)


def _per_column(part: Any, columns: list[str], outputs: list[int]) -> list[list[int]]:
    if len(columns) == 1:
        return [outputs]
    if len(outputs) == len(columns):
        return [[o] for o in outputs]
    last = part.steps[-1][1] if hasattr(part, "steps") else part
    counts = getattr(last, "_n_features_outs", None)  # OneHotEncoder: outputs per input column
    if counts is None or sum(counts) != len(outputs):
        raise NotExplainable(
            f"{type(last).__name__} turns {len(columns)} columns into {len(outputs)}: which "
            "comes from which cannot be told"
        )
    bounds = np.cumsum([0, *counts])
    return [outputs[a:b] for a, b in itertools.pairwise(bounds)]
