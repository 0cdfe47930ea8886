"""The feature pipeline: how raw columns become model inputs."""

from __future__ import annotations

from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlops.core.config import FeatureConfig


def build_feature_pipeline(features: FeatureConfig) -> ColumnTransformer:
    """Numeric columns: median-imputed and scaled. Categorical: most-frequent-imputed and one-hot.

    Categories unseen in training are encoded as all zeros at prediction time rather than
    failing, so a rare new value in production degrades gracefully (monitoring flags it).
    """
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            (
                "encode",
                OneHotEncoder(handle_unknown="ignore", min_frequency=20, sparse_output=False),
            ),
        ]
    )
    return ColumnTransformer(
        [
            ("numeric", numeric, list(features.numeric)),
            ("categorical", categorical, list(features.categorical)),
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    )
