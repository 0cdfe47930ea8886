"""A version's global importance at registration (mlops.ml.explanations): mean absolute Tree SHAP
or linear attributions where the model has an explainer, permutation importance where it has
none (saying why); the column that drives the target ranks first either way; the card shows it."""

from __future__ import annotations

import pytest
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from mlops.adapters.reporting import importance_lines
from mlops.ml import explanations
from mlops.ml.explanations import Importance, global_importance
from mlops.ml.problems import Problem
from mlops.ml.split import Split
from tests.unit.serving.shipped_models import frame, shipped, target

pytestmark = pytest.mark.unit

BINARY = Problem("binary", ("no", "yes"), "y")


def split_for(model_rows: int = 300) -> Split:
    X = frame(model_rows, seed=0)
    holdout = frame(200, seed=1)
    return Split(X, target(X, "binary"), holdout, target(holdout, "binary"), BINARY)


@pytest.mark.parametrize(
    ("family", "method"),
    [("hist_gradient_boosting", "tree_shap"), ("logistic_regression", "linear")],
)
def test_the_column_that_drives_the_target_ranks_first(family: str, method: str) -> None:
    importance = global_importance(shipped(family, "binary"), split_for())
    assert importance.method == method and importance.rows == 200
    assert importance.top(1)[0][0] == "x"
    assert list(importance.values) == sorted(importance.values, key=lambda c: -importance.values[c])
    assert importance.values["unused"] == 0.0  # the pipeline drops it
    assert Importance.from_dict(importance.to_dict()) == importance


def test_a_model_without_an_explainer_gets_permutation_importance_and_says_why() -> None:
    split = split_for()
    prep = ColumnTransformer([("numbers", StandardScaler(), ["x", "n"])])
    X = split.X_train.fillna(0)
    svc = Pipeline([("features", prep), ("model", SVC(probability=True, random_state=0))])
    svc.fit(X, split.y_train)
    holdout = split.X_holdout.fillna(0)
    importance = global_importance(svc, Split(X, split.y_train, holdout, split.y_holdout, BINARY))
    assert importance.method == "permutation" and "SVC" in importance.note
    assert importance.top(1)[0][0] == "x" and importance.values["color"] == 0.0
    assert "log_loss worsens" in importance.measure


def test_the_budget_stops_the_sample_early_and_records_the_rows_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(explanations, "BUDGET_SECONDS", 0.0)
    importance = global_importance(shipped("random_forest", "binary"), split_for())
    assert importance.rows == explanations.CHUNK_ROWS


def test_the_model_card_lists_the_top_columns_with_the_measure() -> None:
    importance = Importance("tree_shap", "mean |tree_shap attribution| in log_odds",
                            {"x": 1.5, "n": 0.25, "color": 0.0}, 200)  # fmt: skip
    lines = importance_lines(importance, top=2)
    assert lines[0].startswith("mean |tree_shap attribution| in log_odds, over 200 holdout rows")
    assert lines[2:] == ["- x: 1.5", "- n: 0.25"]
    assert "registered before explanations" in importance_lines(None)[0]
