"""The compiled inference path: a fitted feature pipeline turned into plain numpy, so a validated
row reaches the model's estimator without a one-row DataFrame and a ColumnTransformer.

On one row of the example, ``predict_proba`` through the registered Pipeline costs about 4 ms, of
which the tree ensemble on the transformed array is 0.6 ms: the rest is pandas and scikit-learn's
per-call checks. ``compile_pipeline`` reads the fitted parameters of the shipped feature pipeline
(``mlops.ml.features``, which the server may not import): the imputers' statistics, the scalers'
means and scales, the one-hot encoders' categories with their infrequent group and unknown
handling, in the ColumnTransformer's output order. It compiles only the classes and settings it
knows to transform exactly as scikit-learn does; anything else is ``NotCompiled`` with the reason,
and the model answers by its registered Pipeline.

Compiling is not trusted by itself: ``mlops.serving.model.ServedModel.with_fast_path`` answers
``probe_rows`` (the input example, missing values, every known and an unseen category) by both
paths and serves the compiled one only if ``disagreement`` finds none beyond ``TOLERANCE``. The
release's smoke test holds the served answers to the in-process registered ones on the same rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

__all__ = [
    "TOLERANCE",
    "Agreement",
    "ColumnSpec",
    "CompiledPipeline",
    "InferencePath",
    "NotCompiled",
    "compile_pipeline",
    "disagreement",
    "probe_rows",
]

#: How far the compiled path's probabilities or values may be from the registered model's, both
#: relatively and absolutely (as ``math.isclose``). The compiled path does the same float64
#: operations in the same order, so it agrees exactly; this only absorbs a JSON round trip in the
#: smoke test, which holds served answers to the same bound. Predicted classes must be identical.
TOLERANCE = 1e-9

#: A text value no training set holds, for the unseen-category probe rows.
UNSEEN = "mlops:unseen-category"

#: MLflow schema types the compiled numeric steps take (as floats, as the imputer casts them).
NUMERIC_TYPES = frozenset({"long", "integer", "double", "float"})

PathName = Literal["compiled", "registered"]


class NotCompiled(Exception):
    """The model cannot be compiled exactly: the reason names the part and why."""


@dataclass(frozen=True)
class InferencePath:
    """Which path answers a served model's rows (``compiled`` or ``registered``), why, and the
    largest difference between the two the load check measured (None: not measured)."""

    name: PathName
    reason: str
    max_difference: float | None = None


class ColumnSpec(Protocol):
    """An input column as the model's signature declares it (``mlops.serving.model.Column``)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def required(self) -> bool: ...


# ---- the compiled steps ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Impute:
    fill: np.ndarray  # per column: the value a missing one becomes


@dataclass(frozen=True)
class _Scale:
    mean: np.ndarray | None  # None: not centred (with_mean=False)
    scale: np.ndarray | None  # None: not scaled (with_std=False)


@dataclass(frozen=True)
class NumericBlock:
    """Numeric columns through imputers and scalers, in the branch's order, as float64."""

    columns: tuple[str, ...]
    steps: tuple[_Impute | _Scale, ...]

    @property
    def width(self) -> int:
        return len(self.columns)

    def transform(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        # None becomes NaN, as the registered path's missing_as_nan and float cast make it
        values = np.array([[r[c] for c in self.columns] for r in records], dtype=np.float64)
        for step in self.steps:
            if isinstance(step, _Impute):
                missing = np.isnan(values)
                if missing.any():
                    values[missing] = np.broadcast_to(step.fill, values.shape)[missing]
            else:  # the same in-place operations as StandardScaler.transform, in its order
                if step.mean is not None:
                    values -= step.mean
                if step.scale is not None:
                    values /= step.scale
        return values


@dataclass(frozen=True)
class OneHotBlock:
    """Text columns, each imputed (``fill``; None: a missing value stays missing) and one-hot
    encoded: ``lookup[k]`` maps a category of column k to its output column within the column's
    ``widths[k]``; a value it lacks goes to ``unknown[k]`` (None: all zeros)."""

    columns: tuple[str, ...]
    fill: tuple[str | None, ...]
    lookup: tuple[dict[str, int], ...]
    unknown: tuple[int | None, ...]
    widths: tuple[int, ...]

    @property
    def width(self) -> int:
        return sum(self.widths)

    def transform(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        out = np.zeros((len(records), self.width))
        offsets = itertools.accumulate(self.widths, initial=0)
        for column, fill, lookup, unknown, offset in zip(
            self.columns, self.fill, self.lookup, self.unknown, offsets, strict=False
        ):
            for i, record in enumerate(records):
                value = record[column]
                if value is None:
                    value = fill
                position = lookup.get(value, unknown)
                if position is not None:
                    out[i, offset + position] = 1.0
        return out

    def categories(self) -> dict[str, tuple[str, ...]]:
        return {c: tuple(lookup) for c, lookup in zip(self.columns, self.lookup, strict=True)}


@dataclass(frozen=True)
class CompiledPipeline:
    """A fitted Pipeline's feature transformer as numpy ``blocks`` (the ColumnTransformer's
    outputs, in order) and its ``final`` estimator, called on their float64 array."""

    blocks: tuple[NumericBlock | OneHotBlock, ...]
    final: Any

    @property
    def width(self) -> int:
        return sum(b.width for b in self.blocks)

    def transform(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """The feature array of validated rows (dicts holding every column; None: missing)."""
        if len(self.blocks) == 1:
            return self.blocks[0].transform(records)
        return np.hstack([b.transform(records) for b in self.blocks])

    def categories(self) -> dict[str, tuple[str, ...]]:
        """Each one-hot encoded column's known categories (for the probe rows)."""
        known: dict[str, tuple[str, ...]] = {}
        for block in self.blocks:
            if isinstance(block, OneHotBlock):
                known |= block.categories()
        return known


# ---- compiling -------------------------------------------------------------------------------
def compile_pipeline(model: Any, columns: Iterable[ColumnSpec]) -> CompiledPipeline:
    """The array-level path of a fitted ``Pipeline([ColumnTransformer, estimator])`` whose
    ColumnTransformer holds only the shipped feature pipeline's steps (SimpleImputer,
    StandardScaler, OneHotEncoder) on columns named in the signature ``columns``.

    Raises NotCompiled naming what is not recognised: another kind of model or step, a setting
    whose transform this does not reproduce, a column of another type, or an estimator fitted
    with feature names (it would want a DataFrame)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if type(model) is not Pipeline:
        raise NotCompiled(f"the model is a {_name(model)}, not a scikit-learn Pipeline")
    steps = [(n, s) for n, s in model.steps if s is not None and not _is_passthrough(s)]
    if len(steps) != 2 or type(steps[0][1]) is not ColumnTransformer:
        kinds = ", ".join(f"{n} ({_name(s)})" for n, s in steps)
        raise NotCompiled(
            f"the Pipeline's steps are {kinds}: compiled is a ColumnTransformer, then the estimator"
        )
    transformer, final = steps[0][1], steps[1][1]
    if hasattr(final, "feature_names_in_"):
        raise NotCompiled(
            f"the estimator {_name(final)} was fitted with feature names and wants a DataFrame"
        )
    types = {c.name: c.type for c in columns}
    blocks = _blocks(transformer, types)
    compiled = CompiledPipeline(tuple(blocks), final)
    expected = getattr(final, "n_features_in_", compiled.width)
    if expected != compiled.width:
        raise NotCompiled(
            f"the features compile to {compiled.width} columns, the estimator {_name(final)} "
            f"takes {expected}"
        )
    return compiled


def _blocks(transformer: Any, types: dict[str, str]) -> list[NumericBlock | OneHotBlock]:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if transformer.transformer_weights:
        raise NotCompiled("the ColumnTransformer weighs its transformers (transformer_weights)")
    if getattr(transformer, "sparse_output_", False):
        raise NotCompiled("the ColumnTransformer's output is sparse")
    blocks: list[NumericBlock | OneHotBlock] = []
    for name, step, selected in transformer.transformers_:
        if _is_drop(step) or _empty(selected):
            continue
        where = f"the ColumnTransformer's {name!r}"
        if not isinstance(selected, list) or not all(isinstance(c, str) for c in selected):
            raise NotCompiled(f"{where} selects columns by {selected!r:.60}, not by name")
        unknown = [c for c in selected if c not in types]
        if unknown:
            raise NotCompiled(f"{where} takes columns {unknown} the signature does not have")
        if _is_passthrough(step):
            raise NotCompiled(f"{where} passes columns through untransformed")
        inner = [s for _, s in step.steps] if type(step) is Pipeline else [step]
        parts = [s for s in inner if s is not None and not _is_passthrough(s)]
        if not parts:
            raise NotCompiled(f"{where} passes columns through untransformed")
        if type(parts[-1]) is OneHotEncoder:
            blocks.append(_one_hot(where, selected, parts, types))
        else:
            blocks.append(_numeric(where, selected, parts, types))
    if not blocks:
        raise NotCompiled("the ColumnTransformer outputs no columns")
    return blocks


def _numeric(
    where: str, columns: list[str], parts: list[Any], types: dict[str, str]
) -> NumericBlock:
    """Imputers (mean or median: a float statistic per column) and StandardScalers."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    other = {c: types[c] for c in columns if types[c] not in NUMERIC_TYPES}
    if other:
        raise NotCompiled(f"{where} scales non-numeric columns {other}")
    steps: list[_Impute | _Scale] = []
    for part in parts:
        if type(part) is SimpleImputer:
            if part.strategy not in ("mean", "median"):
                raise NotCompiled(f"{where}: a numeric SimpleImputer of strategy {part.strategy!r}")
            steps.append(_Impute(_statistics(where, part, np.float64)))
        elif type(part) is StandardScaler:
            mean = None if part.mean_ is None else np.asarray(part.mean_, dtype=np.float64)
            scale = None if part.scale_ is None else np.asarray(part.scale_, dtype=np.float64)
            steps.append(_Scale(mean if part.with_mean else None, scale if part.with_std else None))
        else:
            raise NotCompiled(f"{where} holds a {_name(part)}, which is not compiled")
    return NumericBlock(tuple(columns), tuple(steps))


def _one_hot(
    where: str, columns: list[str], parts: list[Any], types: dict[str, str]
) -> OneHotBlock:
    """Text imputers (most_frequent or constant) in front of a dense OneHotEncoder that drops no
    category. A category seen less often than ``min_frequency`` (or beyond ``max_categories``)
    belongs to the column's infrequent group, the last of its outputs; an unknown value is all
    zeros (``handle_unknown="ignore"``) or, with ``infrequent_if_exist``/``warn``, the group's."""
    from sklearn.impute import SimpleImputer

    other = {c: types[c] for c in columns if types[c] != "string"}
    if other:
        raise NotCompiled(f"{where} one-hot encodes non-text columns {other}")
    *imputers, encoder = parts
    fill: list[str | None] = [None] * len(columns)
    for part in reversed(imputers):  # the first imputer fills; later ones find nothing missing
        if type(part) is not SimpleImputer:
            raise NotCompiled(f"{where} holds a {_name(part)}, which is not compiled")
        if part.strategy not in ("most_frequent", "constant"):
            raise NotCompiled(f"{where}: a text SimpleImputer of strategy {part.strategy!r}")
        fill = list(_statistics(where, part, object))
    if encoder.drop is not None:
        raise NotCompiled(f"{where}: a OneHotEncoder that drops a category per column (drop)")
    if encoder.sparse_output:
        raise NotCompiled(f"{where}: a OneHotEncoder with sparse output")
    if encoder.handle_unknown == "error":
        raise NotCompiled(f"{where}: a OneHotEncoder that refuses unknown categories")
    if np.dtype(encoder.dtype) != np.float64:
        raise NotCompiled(f"{where}: a OneHotEncoder of dtype {np.dtype(encoder.dtype)}")
    infrequent = getattr(encoder, "infrequent_categories_", [None] * len(columns))
    lookups, unknown, widths = [], [], []
    for k, (categories, rare) in enumerate(zip(encoder.categories_, infrequent, strict=True)):
        if not all(isinstance(c, str) for c in categories):
            raise NotCompiled(f"{where}: column {columns[k]!r} has categories that are not text")
        rare_set = set() if rare is None else set(rare)
        frequent = [c for c in categories if c not in rare_set]
        lookup = {c: i for i, c in enumerate(frequent)}
        group = len(frequent) if rare_set else None
        for c in rare_set:  # the infrequent group: one output, after the frequent ones
            lookup[c] = len(frequent)
        lookups.append(lookup)
        to_group = encoder.handle_unknown in ("infrequent_if_exist", "warn")
        unknown.append(group if to_group else None)
        widths.append(len(frequent) + (1 if rare_set else 0))
    return OneHotBlock(tuple(columns), tuple(fill), tuple(lookups), tuple(unknown), tuple(widths))


def _statistics(where: str, imputer: Any, dtype: Any) -> np.ndarray:
    """A fitted SimpleImputer's fill values; refused where its transform does more than fill NaN
    (an indicator, another missing marker, a column it drops for having no statistic)."""
    if imputer.add_indicator:
        raise NotCompiled(f"{where}: a SimpleImputer that adds missing-value indicators")
    marker = imputer.missing_values
    if not (isinstance(marker, float) and np.isnan(marker)):
        raise NotCompiled(f"{where}: a SimpleImputer of missing_values={marker!r}, not NaN")
    statistics = np.asarray(imputer.statistics_, dtype=dtype)
    if dtype is object:
        if not all(isinstance(s, str) for s in statistics):
            raise NotCompiled(f"{where}: a text SimpleImputer whose fill values are not all text")
    elif not np.isfinite(statistics).all():
        raise NotCompiled(f"{where}: a SimpleImputer with no statistic for a column")
    return statistics


def _name(obj: Any) -> str:
    return type(obj).__name__


def _is_drop(step: Any) -> bool:
    return isinstance(step, str) and step == "drop"


def _is_passthrough(step: Any) -> bool:
    return isinstance(step, str) and step == "passthrough"


def _empty(selected: Any) -> bool:
    return hasattr(selected, "__len__") and not isinstance(selected, str) and len(selected) == 0


# ---- checking --------------------------------------------------------------------------------
def probe_rows(
    columns: Sequence[ColumnSpec],
    example: Sequence[dict[str, Any]],
    categories: dict[str, tuple[str, ...]],
    *,
    servable: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Deterministic rows to answer by both paths: the ``example`` rows; then, from its first row
    (or a row of zeros and empty text), each column missing and all of them at once, each text
    column with an unseen value, and each known category of ``categories`` (round robin over the
    columns, so a ``limit`` keeps every column covered). ``servable`` keeps values the server's
    validation refuses out: a missing value only where the signature allows one."""
    names = [c.name for c in columns]
    rows = [{n: r.get(n) for n in names} for r in example]
    base = dict(rows[0]) if rows else {c.name: _zero(c.type) for c in columns}
    missable = [c.name for c in columns if not (servable and c.required)]
    rows += [base | {n: None} for n in missable]
    if len(missable) > 1:
        rows.append(base | dict.fromkeys(missable, None))
    text = [c.name for c in columns if c.type == "string"]
    rows += [base | {n: UNSEEN} for n in text]
    known = [[(n, v) for v in categories[n]] for n in text if n in categories]
    for n, value in (pair for group in itertools.zip_longest(*known) for pair in group if pair):
        rows.append(base | {n: value})
    return rows if limit is None else rows[: max(limit, len(example))]


def _zero(mlflow_type: str) -> Any:
    if mlflow_type in NUMERIC_TYPES:
        return 0
    return False if mlflow_type == "boolean" else ""


@dataclass(frozen=True)
class Agreement:
    """How two answers to the same rows compare: the largest absolute difference of their
    numbers and, if any row differs beyond TOLERANCE or in its class, the first such row."""

    max_difference: float
    rows: int
    differing: int
    first: str | None

    @property
    def agrees(self) -> bool:
        return self.first is None


def disagreement(
    expected: tuple[Sequence[Any], np.ndarray],
    got: tuple[Sequence[Any], np.ndarray],
    classes: Sequence[str] = (),
) -> Agreement:
    """Compare ``(predictions, numbers)`` of two paths: classifiers' predictions must be the same
    class names and their probabilities (rows x ``classes``) within TOLERANCE; a regression's
    numbers are its predictions, within TOLERANCE."""
    (want_labels, want), (got_labels, have) = expected, got
    want, have = np.asarray(want, dtype=np.float64), np.asarray(have, dtype=np.float64)
    if want.shape != have.shape or len(want_labels) != len(got_labels):
        return Agreement(
            float("inf"), len(want_labels), len(want_labels),
            f"answers of shape {have.shape}, not {want.shape}",
        )  # fmt: skip
    both_nan = np.isnan(want) & np.isnan(have)
    gap = np.where(both_nan, 0.0, np.abs(want - have))
    gap = np.where(np.isnan(gap), np.inf, gap)
    bound = np.maximum(TOLERANCE * np.maximum(np.abs(want), np.abs(have)), TOLERANCE)
    far = (gap > bound).reshape(len(want_labels), -1).any(axis=1)
    labels = np.array([a != b for a, b in zip(want_labels, got_labels, strict=True)], dtype=bool)
    bad = np.flatnonzero(far | labels) if classes else np.flatnonzero(far)
    first = None
    if bad.size:
        i = int(bad[0])
        if classes and labels[i]:
            first = f"row {i}: a different class"
        elif classes:
            k = int(np.argmax(gap[i]))
            first = f"row {i}: P({classes[k]}) differs by {gap[i, k]:.3g}"
        else:
            first = f"row {i}: the value differs by {float(gap[i]):.3g}"
    return Agreement(float(gap.max(initial=0.0)), len(want_labels), int(bad.size), first)
