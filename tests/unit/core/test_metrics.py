"""The metric registry and problem types: which metric fits which problem, and how a target's
problem type is declared or inferred from its contract."""

from __future__ import annotations

import pytest
from sklearn import metrics as skm

from mlops.core.config import ColumnContract, TargetConfig, infer_problem, resolve_target
from mlops.core.errors import ConfigError
from mlops.core.metrics import (
    DEFAULT_METRIC,
    PROBLEM_TYPES,
    REGISTRY,
    check_metric,
    metrics_for,
)

pytestmark = pytest.mark.unit


def test_every_metric_names_a_scikit_learn_scorer_and_a_problem() -> None:
    for name, metric in REGISTRY.items():
        assert callable(getattr(skm, metric.scorer, None)), name
        assert metric.problems and metric.problems <= set(PROBLEM_TYPES), name


def test_each_problem_type_has_its_metrics_and_a_default_among_them() -> None:
    assert metrics_for("regression") == ["rmse", "mae", "r2", "mape"]
    assert {"f1_macro", "f1_weighted", "accuracy", "log_loss", "roc_auc_ovr"} <= set(
        metrics_for("multiclass")
    )
    assert "roc_auc" not in metrics_for("multiclass") and "rmse" not in metrics_for("binary")
    for problem in PROBLEM_TYPES:
        assert DEFAULT_METRIC[problem] in metrics_for(problem)
    assert REGISTRY["rmse"].better == "lower" and REGISTRY["f1_macro"].better == "higher"


def test_a_metric_that_does_not_fit_the_problem_is_named_with_where_it_was_asked() -> None:
    assert check_metric("rmse", "regression", "metrics.rmse") is None
    assert check_metric("roc_auc", "regression", "comparison.metric") == (
        "comparison.metric: 'roc_auc' does not apply to a regression problem (it applies to "
        "binary); use one of ['rmse', 'mae', 'r2', 'mape']"
    )
    unknown = check_metric("gini", "binary", "metrics.gini")
    assert unknown is not None and unknown.startswith("metrics.gini: unknown metric 'gini'")


def _category(*values: str) -> ColumnContract:
    return ColumnContract(type="category", values=values)


@pytest.mark.parametrize(
    ("column", "problem", "why"),
    [
        (_category("no", "yes"), "binary", "a category column of 2 values"),
        (_category("a", "b", "c"), "multiclass", "a category column of 3 values"),
        (ColumnContract(type="bool"), "binary", "a bool column"),
        (ColumnContract(type="int"), "regression", "an int column"),
        (ColumnContract(type="float"), "regression", "a float column"),
    ],
)
def test_the_problem_type_is_inferred_from_the_targets_contract(
    column: ColumnContract, problem: str, why: str
) -> None:
    assert infer_problem(column) == (problem, f"the target is {why}")


def test_a_string_target_cannot_be_inferred() -> None:
    with pytest.raises(ConfigError, match="a string target without categories"):
        infer_problem(ColumnContract(type="string"))


def test_an_inferred_binary_target_says_so_and_takes_the_last_class_as_positive() -> None:
    target = resolve_target(TargetConfig(column="y"), _category("no", "yes"), "p.yaml: target")
    assert target.kind == "binary" and target.classes == ("no", "yes")
    assert target.positive == "yes"
    assert target.inferred == (
        "binary (inferred: the target is a category column of 2 values; declare target.problem "
        "to choose); 'yes' taken as the positive class (set target.positive to choose)"
    )


def test_a_declared_positive_class_comes_second() -> None:
    target = resolve_target(
        TargetConfig(column="y", positive="no"), _category("no", "yes"), "p.yaml: target"
    )
    assert target.classes == ("yes", "no") and target.inferred is not None
    assert "positive" not in target.inferred


def test_declared_problems_keep_their_classes_and_state_no_inference() -> None:
    multi = resolve_target(
        TargetConfig(column="s", problem="multiclass"), _category("a", "b", "c"), "here"
    )
    assert multi.classes == ("a", "b", "c") and multi.inferred is None
    # a number coded as categories may be declared a regression only on a numeric column
    regression = resolve_target(
        TargetConfig(column="v", problem="regression"), ColumnContract(type="int"), "here"
    )
    assert regression.kind == "regression" and regression.classes == ()


@pytest.mark.parametrize(
    ("target", "column", "message"),
    [
        (
            TargetConfig(column="y", problem="regression"),
            _category("a", "b"),
            "here: a regression target must be an int or float column, not category",
        ),
        (
            TargetConfig(column="y", problem="binary"),
            _category("a", "b", "c"),
            "here: a binary target has two classes, not ['a', 'b', 'c']",
        ),
        (
            TargetConfig(column="y", positive="maybe"),
            _category("no", "yes"),
            "here: positive 'maybe' is not one of ['no', 'yes']",
        ),
        (
            TargetConfig(column="y", problem="multiclass", positive="a"),
            _category("a", "b", "c"),
            "here: `positive` applies to a binary target only",
        ),
        (
            TargetConfig(column="y", problem="multiclass"),
            _category("a", "b"),
            "here: a multiclass target needs three classes or more, not ['a', 'b']",
        ),
        (
            TargetConfig(column="y", problem="multiclass", classes=("a", "b", "a")),
            _category("a", "b", "c"),
            "here: classes ['a', 'b', 'a'] repeat a value",
        ),
        (
            TargetConfig(column="y", problem="binary"),
            ColumnContract(type="int"),
            "here: a binary target needs its classes",
        ),
        (
            TargetConfig(column="y", classes=("a", "b", "c")),
            ColumnContract(type="float"),
            "here: `positive` and `classes` apply to classifiers only",
        ),
    ],
)
def test_a_target_that_does_not_fit_its_problem_is_refused(
    target: TargetConfig, column: ColumnContract, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_target(target, column, "here")
    assert str(err.value).startswith(message)


def test_the_problem_type_is_unknown_until_the_config_is_loaded() -> None:
    with pytest.raises(ConfigError, match="load_pipeline_config"):
        _ = TargetConfig(column="y").kind
