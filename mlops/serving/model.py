"""Loading one model folder for serving, refusing it if its artifacts were altered, and answering
for its problem type.

What a model answers is read from its MLmodel ``metadata`` (``mlops.core.lineage.PROBLEM_METADATA``,
written at training by ``mlops.adapters.tracking.problem_metadata``): a classifier answers its
class names and one probability per class, a regression a number. The server may not import
``mlops.ml``, so the few lines that read a fitted model's answers are written here again, to the
same rules as ``mlops.ml.problems.Problem.predict`` (tests/unit/serving/test_served_problem.py
holds the two to the same answers).

Validated rows are answered by the compiled path (``mlops.serving.fast_path``: the feature
pipeline as numpy, then the estimator) when the model compiles and both paths agree on the probe
rows at load; otherwise by the registered Pipeline on a DataFrame. ``ServedModel.path`` says which
and why.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast

import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models import Model
from threadpoolctl import ThreadpoolController

from mlops.core.answers import class_columns
from mlops.core.errors import MlopsError
from mlops.core.explanations import Explainer, NotExplainable, explainer_for
from mlops.core.frames import missing_as_nan
from mlops.core.integrity import ModelIntegrityError, verify_artifacts
from mlops.core.lineage import EXPLANATION_METADATA, PROBLEM_METADATA
from mlops.core.outliers import OutlierDetector
from mlops.serving.fast_path import (
    CompiledPipeline,
    InferencePath,
    NotCompiled,
    compile_pipeline,
    disagreement,
    probe_rows,
)

__all__ = [
    "Answers",
    "InferencePath",
    "ModelIntegrityError",
    "ServedModel",
    "ServedProblem",
    "input_example",
    "load_model_folder",
    "served_problem",
]

logger = logging.getLogger(__name__)

# Small batches predict on one OpenMP thread: splitting a row or two across threads costs more in
# thread wake-ups than it saves, and on a busy machine spinning threads make it several times
# slower (measured: 7.7 ms on one thread, 19 to 72 ms on two, for one row of the example).
SINGLE_THREAD_ROWS = 64

#: P(positive) at or above which a binary classifier answers its positive class: the value of
#: mlops.ml.problems.THRESHOLD, which the server cannot import (a unit test keeps them equal).
THRESHOLD = 0.5

ProblemKind = Literal["binary", "multiclass", "regression"]

#: Most histogram bounds a regression's metadata may carry (the deciles of its training target).
MAX_VALUE_BUCKETS = 10


@cache
def _threads() -> ThreadpoolController:
    """The thread pools loaded by the time the first prediction runs. Made at import, the
    controller would not see the OpenMP runtime scikit-learn loads with the model, and limiting
    "openmp" would silently limit nothing (it did: two servers on two cores spun each other's
    OpenMP workers, and a canary's p99 read 900 ms)."""
    return ThreadpoolController()


#: MLflow schema types held as numbers.
_NUMERIC = frozenset({"long", "integer", "double", "float"})


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # MLflow schema type: long, integer, double, float, string, boolean
    required: bool


@dataclass(frozen=True)
class ServedProblem:
    """What a model answers: its problem type, target column, class names in label order
    (classifiers: label i is ``classes[i]``; binary: the negative class, then the positive) and,
    for a regression, the bounds of the histogram its predicted values are counted in."""

    kind: ProblemKind
    target: str
    classes: tuple[str, ...] = ()
    value_buckets: tuple[float, ...] = ()

    @property
    def is_classifier(self) -> bool:
        return self.kind != "regression"


#: A model logged without ``mlops_problem`` metadata (versions registered before problem types)
#: is the binary classifier every model was then, its labels the integers 0 and 1: it answers
#: the class names "0" and "1".
LEGACY_BINARY = ServedProblem("binary", "target", ("0", "1"))


@dataclass(frozen=True)
class Answers:
    """A model's answers for some rows, in order: ``predictions`` holds a class name (classifiers)
    or a number (regression) per row; ``probabilities`` (classifiers) one row of class
    probabilities per row, in class order."""

    predictions: list[Any]
    probabilities: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.predictions)

    def non_finite(self) -> list[int]:
        """The rows whose answer holds NaN or an infinity (JSON cannot carry them)."""
        if self.probabilities is not None:
            return [int(i) for i in np.flatnonzero(~np.isfinite(self.probabilities).all(axis=1))]
        return [i for i, v in enumerate(self.predictions) if not math.isfinite(v)]


#: A model nobody tried to compile (built directly, as in tests) answers by its registered path.
NOT_COMPILED = InferencePath("registered", "no compiled path was tried for this model")


@dataclass
class ServedModel:
    """A model version ready to answer: its estimator, its input columns, its identity, what it
    answers (``problem``) and the path that answers validated rows (``path``; ``compiled`` holds
    the compiled path while it serves)."""

    name: str
    version: int
    estimator: Any
    columns: list[Column]
    problem: ServedProblem = field(default=LEGACY_BINARY)
    compiled: CompiledPipeline | None = field(default=None, repr=False, compare=False)
    path: InferencePath = field(default=NOT_COMPILED)
    # what /explain starts from: the mean transformed training row (linear models need it) and
    # the rows its explainer is checked on (the input example and the probe rows)
    baseline: tuple[float, ...] | None = field(default=None, repr=False, compare=False)
    example: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)
    # how unlike the training rows each answered row is (None: saved without a detector)
    outliers: OutlierDetector | None = field(default=None, repr=False, compare=False)
    _explainer: Explainer | NotExplainable | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _explaining: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def frame(self, records: Sequence[dict[str, Any]]) -> pd.DataFrame:
        """Rows already checked against ``columns`` as the registered model reads them: a
        missing value as NaN, as in training (rows built from JSON hold ``None``, which
        scikit-learn's imputers do not match: mlops.core.frames), and a numeric column whose
        only value is a ``None`` as numbers (an object column the median imputer refuses)."""
        return self._typed(pd.DataFrame(list(records), columns=[c.name for c in self.columns]))

    def _typed(self, frame: pd.DataFrame) -> pd.DataFrame:
        X = missing_as_nan(frame[[c.name for c in self.columns]])
        numeric = [c.name for c in self.columns if c.type in _NUMERIC and X[c.name].dtype == object]
        return X.astype({name: "float64" for name in numeric}) if numeric else X

    def explainer(self) -> Explainer:
        """The model's explainer (``mlops.core.explanations``), built at the first call and
        checked on the probe rows; NotExplainable, with the reason, for a model it cannot
        explain. shap's import takes seconds, so a server that is never asked never pays it."""
        with self._explaining:
            if self._explainer is None:
                try:
                    rows = self.frame(self.probe_rows(self.example, servable=True, limit=50))
                    p = self.problem
                    self._explainer = explainer_for(
                        self.estimator, list(rows.columns), p.kind, p.classes, rows, self.baseline
                    )
                except NotExplainable as exc:
                    self._explainer = exc
            if isinstance(self._explainer, NotExplainable):
                raise self._explainer
            return self._explainer

    def predict(self, frame: pd.DataFrame) -> Answers:
        """The registered model's answers for rows already checked against ``columns``, read as
        ``frame`` says: the reference the compiled path is held to."""
        return self._limited(self.estimator, self._typed(frame))

    def predict_records(self, records: list[dict[str, Any]]) -> Answers:
        """The answers for rows already validated against ``columns``, as dicts in column order:
        the serving path's entry. By the compiled path while it serves (the rows straight into a
        float array), else by the registered model on a DataFrame; the same Answers either way."""
        if self.compiled is not None:
            return self._limited(self.compiled.final, self.compiled.transform(records))
        return self.predict(pd.DataFrame(records, columns=[c.name for c in self.columns]))

    def probe_rows(
        self, example: Sequence[dict[str, Any]], servable: bool = False, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """``mlops.serving.fast_path.probe_rows`` of this model: the example, then missing values,
        unseen and every known category of the compiled path's encoders."""
        known = self.compiled.categories() if self.compiled is not None else {}
        return probe_rows(self.columns, example, known, servable=servable, limit=limit)

    def with_fast_path(
        self, example: Sequence[dict[str, Any]], compiled: CompiledPipeline | None = None
    ) -> ServedModel:
        """This model answering by the compiled path (``compiled``, or the estimator compiled
        here) if both paths give the same answers to its probe rows; otherwise by the registered
        path, with the reason (what did not compile, the failure, or the disagreement and its
        largest difference)."""
        registered = replace(self, compiled=None)
        if compiled is None:
            try:
                compiled = compile_pipeline(self.estimator, self.columns)
            except NotCompiled as exc:
                return replace(registered, path=InferencePath("registered", str(exc)))
        candidate = replace(self, compiled=compiled)
        rows = candidate.probe_rows(example)
        try:
            want = registered.predict_records(rows)
            got = candidate.predict_records(rows)
        except Exception as exc:  # any estimator can fail in any way: serve the registered one
            why = f"answering the probe rows failed: {type(exc).__name__}: {exc!s:.200}"
            return replace(registered, path=InferencePath("registered", why))
        check = disagreement(_numbers(want), _numbers(got), self.problem.classes)
        if not check.agrees:
            why = (
                f"the compiled path disagrees on {check.differing} of {check.rows} probe rows "
                f"(first {check.first}); max difference {check.max_difference:.3g}"
            )
            # JSON (/ready) has no infinity: a shape or a NaN apart is said in the reason only
            measured = check.max_difference if math.isfinite(check.max_difference) else None
            return replace(registered, path=InferencePath("registered", why, measured))
        why = f"agrees with the registered model on {check.rows} probe rows"
        return replace(candidate, path=InferencePath("compiled", why, check.max_difference))

    def _limited(self, estimator: Any, X: Any) -> Answers:
        if len(X) <= SINGLE_THREAD_ROWS:
            with _threads().limit(limits=1, user_api="openmp"):
                return self._answer(estimator, X)
        return self._answer(estimator, X)

    def _answer(self, estimator: Any, X: Any) -> Answers:
        problem = self.problem
        if not problem.is_classifier:
            return Answers([float(v) for v in np.asarray(estimator.predict(X), dtype=float)])
        raw = np.asarray(estimator.predict_proba(X), dtype="float64")
        proba = class_columns(raw, getattr(estimator, "classes_", None), problem.classes)
        if problem.kind == "binary":
            labels = (proba[:, 1] >= THRESHOLD).astype(int)
        else:
            labels = proba.argmax(axis=1)
        return Answers([problem.classes[int(i)] for i in labels], proba)


def _numbers(answers: Answers) -> tuple[list[Any], np.ndarray]:
    """An answer's predictions and its numbers: the probabilities, or a regression's values."""
    if answers.probabilities is not None:
        return answers.predictions, answers.probabilities
    return answers.predictions, np.asarray(answers.predictions, dtype=np.float64)


def served_problem(metadata: Any, what: str) -> ServedProblem:
    """The problem a model's MLmodel ``metadata`` declares (``LEGACY_BINARY`` without one); a
    malformed declaration is an MlopsError naming the model and the field."""
    if not isinstance(metadata, dict) or PROBLEM_METADATA not in metadata:
        return LEGACY_BINARY
    spec = metadata[PROBLEM_METADATA]
    where = f"{what}: MLmodel metadata {PROBLEM_METADATA}"
    if not isinstance(spec, dict):
        raise MlopsError(f"{where} is {type(spec).__name__}, not a mapping")
    kind, target = spec.get("type"), spec.get("target")
    if kind not in ("binary", "multiclass", "regression"):
        raise MlopsError(f"{where}.type is {kind!r}: binary, multiclass or regression")
    if not isinstance(target, str) or not target:
        raise MlopsError(f"{where}.target is {target!r}: the target column's name")
    classes = spec.get("classes") or []
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise MlopsError(f"{where}.classes is {classes!r}: a list of class names (strings)")
    if len(set(classes)) != len(classes):
        raise MlopsError(f"{where}.classes {classes!r} names a class twice")
    if kind == "binary" and len(classes) != 2:
        raise MlopsError(f"{where}.classes {classes!r}: a binary classifier has two classes")
    if kind == "multiclass" and len(classes) < 2:
        raise MlopsError(f"{where}.classes {classes!r}: a multiclass model has two or more")
    if kind == "regression" and classes:
        raise MlopsError(f"{where}.classes {classes!r}: a regression has no classes")
    buckets = spec.get("value_buckets") or []
    if kind == "regression" and not _bucket_bounds(buckets):
        raise MlopsError(
            f"{where}.value_buckets is {buckets!r}: up to {MAX_VALUE_BUCKETS} increasing "
            "finite numbers"
        )
    return ServedProblem(
        cast(ProblemKind, kind),
        target,
        tuple(classes),
        tuple(float(b) for b in buckets) if kind == "regression" else (),
    )


def _bucket_bounds(buckets: Any) -> bool:
    """Whether ``buckets`` are up to MAX_VALUE_BUCKETS increasing finite numbers."""
    return (
        isinstance(buckets, list)
        and len(buckets) <= MAX_VALUE_BUCKETS
        and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b)
            for b in buckets
        )
        and all(a < b for a, b in itertools.pairwise(buckets))
    )


def load_model_folder(folder: Path, name: str, version: int, sha256: str | None) -> ServedModel:
    """Load an MLflow model folder (as baked into an image) after checking it is the registered one."""
    verify_artifacts(folder, sha256, f"{name} v{version}")
    return _served(folder, name, version)


def _served(folder: Path, name: str, version: int) -> ServedModel:
    """The model of a folder already verified (checksum and format): never call it on another."""
    mlmodel = Model.load(str(folder))
    schema = mlmodel.get_input_schema()
    if schema is None:
        raise MlopsError(f"{name} v{version}: the model has no input signature")
    columns = [
        Column(c.name or "", c.type.name if hasattr(c.type, "name") else str(c.type), c.required)
        for c in schema.inputs
    ]
    problem = served_problem(mlmodel.metadata, f"{name} v{version}")
    try:
        example = input_example(folder)
    except (MlopsError, ValueError):  # the example only adds probe rows: check without it
        logger.warning("%s v%s: unreadable input example; probing without it", name, version)
        example = []
    estimator = mlflow.sklearn.load_model(str(folder))
    baseline = explanation_baseline(mlmodel.metadata)
    model = ServedModel(
        name, version, estimator, columns, problem, baseline=baseline, example=example,
        outliers=OutlierDetector.from_metadata(mlmodel.metadata),
    )  # fmt: skip
    return model.with_fast_path(example)


def explanation_baseline(metadata: Any) -> tuple[float, ...] | None:
    """The mean transformed training row a model was saved with (None without one, or with one
    that is not a list of finite numbers: the model is served, its linear explanations not)."""
    spec = metadata.get(EXPLANATION_METADATA) if isinstance(metadata, dict) else None
    values = spec.get("baseline") if isinstance(spec, dict) else None
    if not isinstance(values, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        return None
    return tuple(float(v) for v in values)


def input_example(folder: Path) -> list[dict[str, Any]]:
    """The rows of a model folder's ``input_example.json`` (MLflow's split orient), a missing
    value as None; no rows when it has none."""
    path = folder / "input_example.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "columns" not in data or "data" not in data:
        raise MlopsError(f"{path}: not an input example of columns and data rows")
    return [
        {
            k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in zip(data["columns"], row, strict=True)
        }
        for row in data["data"]
    ]
