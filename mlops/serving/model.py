"""Loading one model folder for serving, refusing it if its artifacts were altered."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models import Model
from threadpoolctl import ThreadpoolController

from mlops.core.errors import MlopsError
from mlops.core.integrity import ModelIntegrityError, verify_artifacts

__all__ = ["ModelIntegrityError", "ServedModel", "load_model_folder"]

# Small batches predict on one OpenMP thread: splitting a row or two across threads costs more in
# thread wake-ups than it saves, and on a busy machine spinning threads make it several times
# slower (measured: 7.7 ms on one thread, 19 to 72 ms on two, for one row of the example).
SINGLE_THREAD_ROWS = 64


@cache
def _threads() -> ThreadpoolController:
    """The thread pools loaded by the time the first prediction runs. Made at import, the
    controller would not see the OpenMP runtime scikit-learn loads with the model, and limiting
    "openmp" would silently limit nothing (it did: two servers on two cores spun each other's
    OpenMP workers, and a canary's p99 read 900 ms)."""
    return ThreadpoolController()


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # MLflow schema type: long, integer, double, float, string, boolean
    required: bool


@dataclass
class ServedModel:
    """A model version ready to answer: its estimator, its input columns and its identity."""

    name: str
    version: int
    estimator: Any
    columns: list[Column]

    def predict(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(labels, P(positive)) for rows already checked against ``columns``."""
        X = frame[[c.name for c in self.columns]]
        if len(X) <= SINGLE_THREAD_ROWS:
            with _threads().limit(limits=1, user_api="openmp"):
                proba = self.estimator.predict_proba(X)[:, 1]
        else:
            proba = self.estimator.predict_proba(X)[:, 1]
        return (proba >= 0.5).astype(int), proba


def load_model_folder(folder: Path, name: str, version: int, sha256: str | None) -> ServedModel:
    """Load an MLflow model folder (as baked into an image) after checking it is the registered one."""
    verify_artifacts(folder, sha256, f"{name} v{version}")
    return _served(folder, name, version)


def _served(folder: Path, name: str, version: int) -> ServedModel:
    """The model of a folder already verified (checksum and format): never call it on another."""
    schema = Model.load(str(folder)).get_input_schema()
    if schema is None:
        raise MlopsError(f"{name} v{version}: the model has no input signature")
    columns = [
        Column(c.name or "", c.type.name if hasattr(c.type, "name") else str(c.type), c.required)
        for c in schema.inputs
    ]
    return ServedModel(name, version, mlflow.sklearn.load_model(str(folder)), columns)
