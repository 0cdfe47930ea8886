"""A model version's global feature importance, computed at registration: what drives its
answers, for its model card and its MLflow run.

Where the model has an explainer (``mlops.core.explanations``: Tree SHAP for the tree families,
exact linear attributions for the linear ones) a feature's importance is its mean absolute
attribution over a sample of the holdout, in the explanation's space (log-odds, probability,
value...). Otherwise (a user's own estimator) it is scikit-learn's permutation importance on the
same sample: how much the holdout score drops when the column is shuffled.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance

from mlops.core.explanations import Explainer, NotExplainable, baseline_of, explainer_for
from mlops.ml.split import Split

#: Holdout rows the importance is averaged over, explained CHUNK_ROWS at a time until the
#: budget is spent (Tree SHAP of a deep random forest costs ~0.1 s a row, of boosted trees
#: ~1 ms): a registration never waits minutes for its chart. The rows used are recorded.
SAMPLE_ROWS = 500
CHUNK_ROWS = 50
BUDGET_SECONDS = 10.0

#: Shuffles per column for permutation importance.
REPEATS = 5


@dataclass(frozen=True)
class Importance:
    """Each input column's importance, most important first, and how it was measured."""

    method: str  # "tree_shap", "linear" or "permutation"
    measure: str  # what a value is, in words
    values: dict[str, float]
    rows: int
    note: str = ""  # why permutation importance stood in, when it did

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        return list(self.values.items())[:n]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Importance:
        return cls(
            str(data["method"]),
            str(data["measure"]),
            {str(k): float(v) for k, v in dict(data["values"]).items()},
            int(data["rows"]),
            str(data.get("note", "")),
        )


def global_importance(model: Any, split: Split, seed: int = 0) -> Importance:
    """The fitted ``model``'s importance per input column over a sample of the holdout."""
    X = split.X_holdout
    sample = X.sample(min(SAMPLE_ROWS, len(X)), random_state=seed)
    problem = split.problem
    try:
        explainer = explainer_for(
            model,
            list(X.columns),
            problem.kind,
            problem.classes,
            sample.head(50),
            baseline_of(model, split.X_train),
        )
    except NotExplainable as exc:
        return _permutation(model, sample, split.y_holdout.loc[sample.index], split, str(exc))
    values = absolute_attributions(explainer, sample, BUDGET_SECONDS)
    means = dict(zip(explainer.features, values.mean(axis=0).tolist(), strict=True))
    measure = f"mean |{explainer.method} attribution| in {explainer.space}"
    return Importance(explainer.method, measure, _ranked(means), len(values))


def absolute_attributions(
    explainer: Explainer, rows: pd.DataFrame, budget_seconds: float
) -> np.ndarray:
    """Each row's absolute attribution per feature (``[row, feature]``, averaged over the
    explained outputs), explained CHUNK_ROWS at a time until ``budget_seconds`` are spent: the
    first chunk always, so at least min(CHUNK_ROWS, len(rows)) rows."""
    started, parts = time.monotonic(), []
    for start in range(0, len(rows), CHUNK_ROWS):
        values = explainer.explain(rows.iloc[start : start + CHUNK_ROWS]).values
        parts.append(np.abs(values).mean(axis=2))
        if time.monotonic() - started > budget_seconds:
            break
    if not parts:
        return np.zeros((0, len(explainer.features)))
    return np.concatenate(parts)


def _permutation(model: Any, X: pd.DataFrame, y: pd.Series, split: Split, why: str) -> Importance:
    scoring = "neg_log_loss" if split.problem.is_classifier else "neg_root_mean_squared_error"
    result = permutation_importance(
        model, X, y, scoring=scoring, n_repeats=REPEATS, random_state=0, n_jobs=1
    )
    means = dict(zip(X.columns, (float(v) for v in result.importances_mean), strict=True))
    measure = f"how much {scoring.removeprefix('neg_')} worsens when the column is shuffled"
    return Importance("permutation", measure, _ranked(means), len(X), f"no explainer: {why}")


def _ranked(values: dict[str, float]) -> dict[str, float]:
    return dict(sorted(values.items(), key=lambda kv: (-kv[1], kv[0])))
