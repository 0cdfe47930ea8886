"""Deterministic train/holdout split."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sklearn.model_selection import train_test_split

from mlops.core.config import SplitConfig
from mlops.ml.problems import Problem


@dataclass(frozen=True)
class Split:
    """Features and model labels (``Problem.encode``) for training and holdout, and the problem
    they belong to."""

    X_train: pd.DataFrame
    y_train: pd.Series
    X_holdout: pd.DataFrame
    y_holdout: pd.Series
    problem: Problem


def split_dataset(
    frame: pd.DataFrame, features: list[str], problem: Problem, config: SplitConfig
) -> Split:
    """Split into training and holdout sets; the same data and seed give the same split, row for
    row. Stratified by the target when the config asks and the problem has classes."""
    y = problem.encode(frame[problem.column])
    X = frame[features]
    X_train, X_holdout, y_train, y_holdout = train_test_split(
        X,
        y,
        test_size=config.test_size,
        random_state=config.seed,
        stratify=y if config.stratify and problem.stratify else None,
    )
    return Split(X_train, y_train, X_holdout, y_holdout, problem)
