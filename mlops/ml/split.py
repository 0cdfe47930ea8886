"""Deterministic train/holdout split."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sklearn.model_selection import train_test_split

from mlops.core.config import SplitConfig, TargetConfig


@dataclass(frozen=True)
class Split:
    """Features and binary labels (1 = the positive class) for training and holdout."""

    X_train: pd.DataFrame
    y_train: pd.Series
    X_holdout: pd.DataFrame
    y_holdout: pd.Series


def split_dataset(
    frame: pd.DataFrame, features: list[str], target: TargetConfig, config: SplitConfig
) -> Split:
    """Split into training and holdout sets; the same data and seed give the same split, row for row."""
    y = (frame[target.column] == target.positive).astype("int64").rename(target.column)
    X = frame[features]
    X_train, X_holdout, y_train, y_holdout = train_test_split(
        X,
        y,
        test_size=config.test_size,
        random_state=config.seed,
        stratify=y if config.stratify else None,
    )
    return Split(X_train, y_train, X_holdout, y_holdout)
