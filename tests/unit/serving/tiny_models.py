"""Tiny real models of each problem type, for the serving tests: a scikit-learn pipeline fitted
on a few hundred synthetic rows and, where a test serves it, saved as an MLflow model folder the
way mlops.adapters.tracking logs one (skops, the trusted types it needs, a signature that keeps
the columns' types, an input example and the ``mlops_problem`` metadata), so no MLflow server is
needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlops.core.explanations import baseline_of
from mlops.core.integrity import SERIALIZATION_FORMAT, artifact_checksum
from mlops.core.lineage import EXPLANATION_METADATA, PROBLEM_METADATA
from mlops.core.outliers import OUTLIER_METADATA, OutlierDetector
from mlops.serving.model import Column

#: The classes of each problem type's target, in label order (binary: negative, positive).
CLASSES: dict[str, list[str]] = {
    "binary": ["no", "yes"],
    "multiclass": ["low", "mid", "high"],
    "regression": [],
}

TARGET = "outcome"

#: The tiny models' features as a server reads them from a signature: each required.
COLUMNS = [
    Column("x", "double", True),
    Column("n", "long", True),
    Column("color", "string", True),
    Column("flag", "boolean", True),
]


def features(rows: int, seed: int = 0) -> pd.DataFrame:
    """Rows of the four column types a signature holds: double, long, string, boolean."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(0, 1, rows),
            "n": rng.integers(0, 50, rows).astype("int64"),
            "color": rng.choice(["red", "green", "blue"], rows),
            "flag": rng.random(rows) < 0.3,
        }
    )


def target(frame: pd.DataFrame, problem: str, seed: int = 1) -> pd.Series:
    """Labels as a model is fitted on (class indexes, or floats) that the features explain."""
    rng = np.random.default_rng(seed)
    score = 1.5 * frame["x"] + 0.04 * frame["n"] + (frame["color"] == "red") - 1
    noisy = score + rng.normal(0, 0.5, len(frame))
    if problem == "regression":
        return (10 * noisy + 3 * frame["flag"]).rename(TARGET)
    if problem == "binary":
        return (noisy > 0).astype("int64").rename(TARGET)
    return pd.Series(np.digitize(noisy, [-0.5, 0.8]), name=TARGET).astype("int64")


def fitted(problem: str, rows: int = 300) -> tuple[Pipeline, pd.DataFrame, pd.Series]:
    """A pipeline of ``problem`` type fitted on ``rows`` synthetic rows, with its data."""
    X = features(rows)
    y = target(X, problem)
    prep = ColumnTransformer(
        [
            ("num", StandardScaler(), ["x", "n"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["color"]),
            ("flag", "passthrough", ["flag"]),
        ]
    )
    estimator = LinearRegression() if problem == "regression" else LogisticRegression(max_iter=500)
    return Pipeline([("prep", prep), ("model", estimator)]).fit(X, y), X, y


def problem_spec(problem: str, y: pd.Series) -> dict[str, Any]:
    """The model's ``mlops_problem`` metadata, as the training run writes it."""
    from mlops.adapters.tracking import problem_metadata
    from mlops.ml.problems import Problem

    kind: Any = problem
    return problem_metadata(Problem(kind, tuple(CLASSES[problem]), TARGET), y)


def save_folder(folder: Path, problem: str, name: str, version: int = 1) -> dict[str, Any]:
    """The fitted model of ``problem`` as an MLflow model folder, with the ``model.json`` an image
    holds beside it (name, version, sha256); returns that metadata."""
    model, X, y = fitted(problem)
    save_model_folder(folder, model, X, problem_spec(problem, y))
    meta = {"name": name, "version": version, "sha256": artifact_checksum(folder)}
    (folder.parent / f"{folder.name}.json").write_text(json.dumps(meta))
    return meta


def save_model_folder(folder: Path, model: Any, X: pd.DataFrame, spec: dict[str, Any]) -> str:
    """A fitted ``model`` of the rows ``X`` saved as training logs it (skops with its own types
    trusted, signature and example from ``X``, the problem metadata ``spec``); returns the
    folder's checksum, as registration records it."""
    import warnings

    import mlflow.sklearn
    import skops.io
    from mlflow.models import infer_signature

    sample = X.head(50)
    with warnings.catch_warnings():  # as the training run: the contract rules out missing values
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(sample, model.predict(sample))
    mlflow.sklearn.save_model(
        model,
        str(folder),
        signature=signature,
        input_example=X.head(5),
        # named, as the training run names them: inferring them loads the model in a subprocess
        pip_requirements=mlflow.sklearn.get_default_pip_requirements(),
        serialization_format=SERIALIZATION_FORMAT,
        skops_trusted_types=sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model))),
        metadata={
            PROBLEM_METADATA: spec,
            EXPLANATION_METADATA: {"baseline": baseline_of(model, X)},
            OUTLIER_METADATA: OutlierDetector.fit(X).to_metadata(),
        },
    )
    return artifact_checksum(folder)
