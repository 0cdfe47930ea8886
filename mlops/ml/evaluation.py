"""Holdout evaluation: every metric of the registry that applies to the split's problem."""

from __future__ import annotations

from dataclasses import dataclass

from mlops.ml.problems import Model
from mlops.ml.split import Split


@dataclass(frozen=True)
class Reproduction:
    """A registered version retrained from its own data and config: do the metrics match?"""

    model: str
    version: int
    data_md5: str
    data_rev: str  # where the data was found: a git revision or "workspace"
    same_code: bool  # the pipeline code now is the code the version was trained with
    recorded: dict[str, float]
    reproduced: dict[str, float]
    max_difference: float
    matches: bool


def evaluate_model(model: Model, split: Split) -> dict[str, float]:
    """Score the fitted model on the holdout set (NaN for a metric undefined on it)."""
    predictions = split.problem.predict(model, split.X_holdout)
    return split.problem.score_all(split.y_holdout.to_numpy(), predictions)
