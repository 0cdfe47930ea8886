"""Model training: the configured estimator behind the feature pipeline."""

from __future__ import annotations

from typing import Any

from sklearn.base import ClassifierMixin
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mlops.core.config import FeatureConfig, ModelConfig
from mlops.core.errors import ConfigError
from mlops.ml.features import build_feature_pipeline
from mlops.ml.split import Split

ESTIMATORS: dict[str, type[ClassifierMixin]] = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
    "gradient_boosting": GradientBoostingClassifier,
}


def build_estimator(config: ModelConfig) -> ClassifierMixin:
    """The estimator of the configured family with its hyper-parameters; unknown ones are refused."""
    cls = ESTIMATORS[config.family]
    valid = cls().get_params()
    unknown = sorted(set(config.params) - set(valid))
    if unknown:
        raise ConfigError(
            f"model.params: {unknown} are not parameters of {cls.__name__} "
            f"(valid: {', '.join(sorted(valid))})"
        )
    params: dict[str, Any] = dict(config.params)
    return cls(**params)


def build_pipeline(features: FeatureConfig, config: ModelConfig) -> Pipeline:
    """The unfitted model: the feature pipeline, then the configured estimator."""
    return Pipeline(
        [("features", build_feature_pipeline(features)), ("model", build_estimator(config))]
    )


def train_model(split: Split, features: FeatureConfig, config: ModelConfig) -> Pipeline:
    """Fit the feature pipeline and the estimator on the training set."""
    return build_pipeline(features, config).fit(split.X_train, split.y_train)
