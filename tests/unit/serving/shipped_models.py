"""The models the project ships, tiny: every built-in family behind the shipped feature pipeline
(``mlops.ml.training.build_pipeline``), fitted on a few hundred synthetic rows with gaps, rare
and missing categories and a column the pipeline drops, for each problem type it fits. The
compiled path's and the explanations' tests hold every family to the registered model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from mlops.core.config import FeatureConfig, ModelConfig
from mlops.ml.training import FAMILIES, build_pipeline
from mlops.serving.model import Column, ServedModel, ServedProblem

FEATURES = FeatureConfig(numeric=("x", "n"), categorical=("color", "shape"))
COLUMNS = [
    Column("x", "double", True),
    Column("n", "long", False),
    Column("color", "string", False),
    Column("shape", "string", True),
    Column("unused", "boolean", False),  # in the signature, dropped by the ColumnTransformer
]
CLASSES = {"binary": ("no", "yes"), "multiclass": ("low", "mid", "high"), "regression": ()}

#: Few trees and rounds: the agreement does not depend on the model's size, the tier's time does.
SMALL = {
    "random_forest": {"n_estimators": 5, "random_state": 0},
    "gradient_boosting": {"n_estimators": 10, "random_state": 0},
    "hist_gradient_boosting": {"max_iter": 10, "random_state": 0},
    "xgboost": {"n_estimators": 5, "max_depth": 3, "n_jobs": 1},
    "lightgbm": {"n_estimators": 5, "min_child_samples": 5, "verbose": -1, "n_jobs": 1},
    "logistic_regression": {"max_iter": 500},
}


def frame(rows: int, seed: int) -> pd.DataFrame:
    """Numbers with gaps; colours of which 'violet' and 'teal' are rarer than the encoder's
    min_frequency (20), so they form its infrequent group; a shape that is sometimes missing."""
    rng = np.random.default_rng(seed)
    colors = rng.choice(
        ["red", "green", "blue", "violet", "teal"], rows, p=[0.4, 0.3, 0.26, 0.02, 0.02]
    )
    x = rng.normal(0, 2, rows)
    x[rng.random(rows) < 0.1] = np.nan
    n = rng.integers(0, 100, rows).astype("float64")
    n[rng.random(rows) < 0.1] = np.nan
    shape = rng.choice(["round", "square", "flat"], rows).astype(object)
    shape[rng.random(rows) < 0.1] = np.nan
    unused = rng.random(rows) < 0.5
    return pd.DataFrame({"x": x, "n": n, "color": colors, "shape": shape, "unused": unused})


def target(X: pd.DataFrame, problem: str) -> pd.Series:
    rng = np.random.default_rng(3)
    score = np.nan_to_num(X["x"].to_numpy()) + 0.02 * np.nan_to_num(X["n"].to_numpy())
    score = score + (X["color"] == "violet") - (X["shape"] == "flat") + rng.normal(0, 0.5, len(X))
    if problem == "regression":
        return pd.Series(10 * score)
    if problem == "binary":
        return pd.Series((score > 1).astype("int64"))
    return pd.Series(np.digitize(score, [0.3, 1.6]).astype("int64"))


def shipped(family: str, problem: str, rows: int = 300) -> Pipeline:
    """The family's model behind the shipped feature pipeline, as training builds and fits it."""
    config = ModelConfig(family=family, params=SMALL.get(family, {}))
    X = frame(rows, seed=0)
    with threadpool_limits(1):  # OpenMP threads on a busy machine cost more than they give
        return build_pipeline(FEATURES, config, problem).fit(X, target(X, problem))  # type: ignore[arg-type]


def served(pipeline: Any, problem: str) -> ServedModel:
    kind: Any = problem
    return ServedModel("m", 1, pipeline, COLUMNS, ServedProblem(kind, "y", CLASSES[problem]))


def records(X: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as the server's validation hands them over: None for a missing value, ints as ints."""
    out = []
    for row in X.to_dict("records"):
        rec = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        rec["n"] = None if rec["n"] is None else int(rec["n"])
        out.append(rec)
    return out


def example() -> list[dict[str, Any]]:
    return records(frame(5, seed=7))


#: Every built-in family with every problem type it fits.
SHIPPED = [
    (family, problem)
    for family in FAMILIES
    for problem in ("binary", "multiclass", "regression")
    if FAMILIES[family].fits(problem)
]
