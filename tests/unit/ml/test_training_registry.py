"""The built-in model families per problem type: which estimator each builds, which problems it
refuses, and that a fitted model of each stores and loads through skops trusting exactly the
family's own list of types (mlops.core.integrity)."""

from __future__ import annotations

import typing

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.metrics import get_scorer_names
from sklearn.pipeline import Pipeline

from mlops.core.config import (
    DEFAULT_SEARCH_METRIC,
    SEARCH_METRICS,
    FeatureConfig,
    ModelConfig,
    ModelFamily,
    SearchConfig,
    resolve_search,
)
from mlops.core.errors import ConfigError
from mlops.core.integrity import FAMILY_TRUSTED_TYPES, FEATURE_TRUSTED_TYPES, SKOPS_TRUSTED_TYPES
from mlops.core.metrics import ProblemType
from mlops.ml.problems import Problem
from mlops.ml.search import candidates
from mlops.ml.split import Split
from mlops.ml.training import FAMILIES, build_estimator, train_model, trusted_types

pytestmark = pytest.mark.unit

FEATURES = FeatureConfig(numeric=("x1", "x2"), categorical=("colour",))

#: Few trees, so each fit below takes milliseconds.
SMALL: dict[str, dict[str, object]] = {
    "logistic_regression": {"max_iter": 200},
    "linear_regression": {},
    "random_forest": {"n_estimators": 4, "random_state": 0},
    "hist_gradient_boosting": {"max_iter": 5, "random_state": 0},
    "gradient_boosting": {"n_estimators": 4, "random_state": 0},
    "xgboost": {"n_estimators": 4, "n_jobs": 1, "random_state": 0},
    "lightgbm": {"n_estimators": 4, "n_jobs": 1, "random_state": 0, "verbose": -1},
}

EXPECTED: dict[str, tuple[str | None, str | None]] = {
    "logistic_regression": ("LogisticRegression", None),
    "linear_regression": (None, "Ridge"),
    "random_forest": ("RandomForestClassifier", "RandomForestRegressor"),
    "hist_gradient_boosting": ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor"),
    "gradient_boosting": ("GradientBoostingClassifier", "GradientBoostingRegressor"),
    "xgboost": ("XGBClassifier", "XGBRegressor"),
    "lightgbm": ("LGBMClassifier", "LGBMRegressor"),
}


def _split(problem: ProblemType, rows: int = 120) -> Split:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(
        {
            "x1": rng.normal(size=rows),
            "x2": rng.integers(0, 50, size=rows),
            "colour": rng.choice(["red", "green", "blue"], size=rows),
        }
    )
    signal = X["x1"] + (X["colour"] == "red") * 1.5
    if problem == "regression":
        y = pd.Series(signal * 3.0 + 10.0, name="y")
        spec = Problem("regression", (), "y")
    elif problem == "binary":
        y = pd.Series((signal > 0.5).astype("int64"), name="y")
        spec = Problem("binary", ("no", "yes"), "y")
    else:
        y = pd.Series(np.digitize(signal, [0.0, 1.0]).astype("int64"), name="y")
        spec = Problem("multiclass", ("low", "mid", "high"), "y")
    return Split(X.iloc[:90], y.iloc[:90], X.iloc[90:], y.iloc[90:], spec)


def test_every_family_is_configurable_and_says_which_types_skops_trusts() -> None:
    assert set(FAMILIES) == set(typing.get_args(ModelFamily)) == set(FAMILY_TRUSTED_TYPES)
    assert set(EXPECTED) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(EXPECTED))
@pytest.mark.parametrize("problem", ["binary", "multiclass", "regression"])
def test_each_family_builds_its_estimator_for_the_problem_or_refuses_it(
    family: str, problem: ProblemType
) -> None:
    classifier, regressor = EXPECTED[family]
    expected = regressor if problem == "regression" else classifier
    config = ModelConfig.model_validate({"family": family})
    if expected is None:
        kind = "regressor" if problem == "regression" else "classifier"
        with pytest.raises(ConfigError, match=rf"{family!r} has no {kind} for a {problem} target"):
            build_estimator(config, problem)
        return
    assert type(build_estimator(config, problem)).__name__ == expected


def test_a_refused_family_names_the_ones_that_fit() -> None:
    with pytest.raises(ConfigError) as err:
        build_estimator(ModelConfig(family="logistic_regression"), "regression")
    assert "families that fit: linear_regression, random_forest" in str(err.value)
    assert "logistic_regression," not in str(err.value).split("fit:")[1]


def test_a_parameter_of_the_other_kind_is_refused_naming_the_estimator() -> None:
    # max_features="sqrt" is fine for both, criterion="gini" only for the classifier
    config = ModelConfig(family="random_forest", params={"criterion": "gini", "typo": 1})
    with pytest.raises(
        ConfigError, match=r"\['typo'\] are not parameters of RandomForestRegressor"
    ):
        build_estimator(config, "regression")


CASES = [
    (family, problem)
    for family, (classifier, regressor) in sorted(EXPECTED.items())
    for problem in ("binary", "multiclass", "regression")
    if (regressor if problem == "regression" else classifier) is not None
]


@pytest.fixture(scope="module")
def fitted() -> dict[tuple[str, str], tuple[Split, Pipeline]]:
    """A small fitted model of each family for each problem it fits."""
    out = {}
    for family, problem in CASES:
        split = _split(problem)
        config = ModelConfig.model_validate({"family": family, "params": SMALL[family]})
        out[family, problem] = split, train_model(split, FEATURES, config)
    return out


@pytest.mark.parametrize(("family", "problem"), CASES)
def test_each_fitted_family_round_trips_through_skops_trusting_only_its_own_list(
    fitted: dict[tuple[str, str], tuple[Split, Pipeline]], family: str, problem: str
) -> None:
    split, model = fitted[family, problem]
    allowed = set(FEATURE_TRUSTED_TYPES) | set(FAMILY_TRUSTED_TYPES[family])
    needed = trusted_types(model, ())
    assert set(needed) <= allowed, f"{family} needs {set(needed) - allowed}"
    loaded = skops.io.loads(skops.io.dumps(model), trusted=needed)
    if problem == "regression":
        np.testing.assert_allclose(loaded.predict(split.X_holdout), model.predict(split.X_holdout))
    else:
        np.testing.assert_allclose(
            loaded.predict_proba(split.X_holdout), model.predict_proba(split.X_holdout)
        )


def test_each_familys_trusted_list_is_the_minimum_its_models_need(
    fitted: dict[tuple[str, str], tuple[Split, Pipeline]],
) -> None:
    """Nothing in a family's list that none of its fitted models needs."""
    needed: dict[str, set[str]] = {family: set() for family in EXPECTED}
    for (family, _), (_, model) in fitted.items():
        needed[family] |= set(trusted_types(model, ()))
    for family, types in needed.items():
        assert set(FAMILY_TRUSTED_TYPES[family]) == types - set(FEATURE_TRUSTED_TYPES), family
    assert set(FEATURE_TRUSTED_TYPES) <= set.intersection(*needed.values())
    assert sorted(set().union(*needed.values())) == SKOPS_TRUSTED_TYPES


# search metrics per problem -------------------------------------------------------------------
def test_every_search_metric_is_a_scikit_learn_scorer_and_the_defaults_fit() -> None:
    scorers = set(get_scorer_names())
    for problem, names in SEARCH_METRICS.items():
        assert set(names) <= scorers, set(names) - scorers
        assert DEFAULT_SEARCH_METRIC[problem] in names


@pytest.mark.parametrize(
    ("problem", "default"),
    [
        ("binary", "roc_auc"),
        ("multiclass", "f1_macro"),
        ("regression", "neg_root_mean_squared_error"),
    ],
)
def test_a_search_without_a_metric_takes_the_problems_default(
    problem: ProblemType, default: str
) -> None:
    search = resolve_search(SearchConfig(grid={"max_iter": [5]}), problem, "p.yaml")
    assert search.scorer == default


@pytest.mark.parametrize(
    ("problem", "metric"),
    [("regression", "roc_auc"), ("binary", "neg_root_mean_squared_error"), ("multiclass", "f1")],
)
def test_a_search_metric_that_does_not_fit_the_problem_is_refused(
    problem: ProblemType, metric: str
) -> None:
    with pytest.raises(
        ConfigError, match=rf"p\.yaml: search\.metric {metric!r} does not fit a {problem} problem"
    ):
        resolve_search(SearchConfig(grid={"max_iter": [5]}, metric=metric), problem, "p.yaml")


def test_an_unresolved_search_metric_is_not_used_silently() -> None:
    with pytest.raises(ConfigError, match="load_pipeline_config"):
        _ = SearchConfig(grid={"max_iter": [5]}).scorer


def test_a_regression_search_cross_validates_the_regressor_on_unstratified_folds() -> None:
    from mlops.ml.search import score_candidate

    base = ModelConfig(family="random_forest", params=SMALL["random_forest"])
    search = resolve_search(SearchConfig(grid={"max_depth": [2, 4]}), "regression", "p.yaml")
    configs = candidates(base, search, "regression")
    assert [c.params["max_depth"] for c in configs] == [2, 4]
    assert all(c.family == "random_forest" for c in configs)
    scores = [score_candidate(_split("regression"), FEATURES, c, search) for c in configs]
    # RMSE is negated so that greater is better, as for every scorer
    assert all(s.mean < 0 for s in scores)
    assert scores[1].mean > scores[0].mean, "deeper trees fit this signal better"
