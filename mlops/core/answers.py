"""A classifier's probabilities in class order: shared by the library's reading of a model
(mlops.ml.problems) and the server's (mlops.serving.model), which may not import mlops.ml."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlops.core.errors import MlopsError


def class_columns(raw: np.ndarray, known: Any, classes: tuple[str, ...]) -> np.ndarray:
    """``predict_proba``'s columns placed at their classes' positions. ``known`` is the model's
    ``classes_`` (the label index of each column; None when it has none); a class absent from
    training is a column of zeros. Anything that cannot be placed is an MlopsError."""
    k = len(classes)
    if raw.ndim != 2:
        raise MlopsError(
            f"predict_proba answered an array of shape {raw.shape}, not rows x classes"
        )
    if known is None:
        if raw.shape[1] != k:
            raise MlopsError(
                f"the model gives {raw.shape[1]} probability columns for the {k} classes "
                f"{list(classes)} and no classes_ saying which is which"
            )
        return raw
    labels = np.asarray(known).tolist()
    outside = [c for c in labels if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < k]
    if outside or len(labels) != raw.shape[1]:
        knows = f": it knows labels {outside} outside 0..{k - 1}" if outside else ""
        raise MlopsError(
            f"the model's classes_ {labels} are not label indexes 0..{k - 1} of its "
            f"{raw.shape[1]} probability columns (classes {list(classes)}){knows}; "
            "was it fitted on encoded labels?"
        )
    if labels == list(range(k)):
        return raw
    proba = np.zeros((raw.shape[0], k))
    proba[:, labels] = raw
    return proba
