"""The hyper-parameter search on a real Dask cluster (prefect-dask's local cluster, worker
processes) and the real Prefect and MLflow servers: candidates fan out, the best is trained and
registered with its parameters, and the search is in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from flows.search import hyperparameter_search
from mlops.core.errors import ConfigError
from mlops.core.settings import Settings
from tests.helpers import adult_frame, make_project

pytestmark = pytest.mark.flows

GRID = {"learning_rate": [0.05, 0.3], "max_leaf_nodes": [7, 31]}


def set_search(pipeline: Path, search: dict[str, object]) -> None:
    raw = yaml.safe_load(pipeline.read_text())
    raw["search"] = search
    pipeline.write_text(yaml.safe_dump(raw))


@pytest.fixture
def project(local_stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pipeline = make_project(tmp_path, adult_frame(3000), model_name="adult-search")
    set_search(pipeline, {"grid": GRID, "folds": 3, "metric": "roc_auc"})
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(tmp_path))
    return pipeline


def test_candidates_fan_out_on_dask_and_the_best_is_trained_and_registered(
    local_stack: Settings, project: Path
) -> None:
    import os

    threads_before = os.environ.get("OMP_NUM_THREADS")
    result = hyperparameter_search(pipeline=str(project), runner="dask", hand_over="none")
    assert os.environ.get("OMP_NUM_THREADS") == threads_before  # Dask's nanny leak undone
    scores = result["scores"]
    assert isinstance(scores, list) and len(scores) == 4
    assert {(s["params"]["learning_rate"], s["params"]["max_leaf_nodes"]) for s in scores} == {
        (lr, leaves) for lr in GRID["learning_rate"] for leaves in GRID["max_leaf_nodes"]
    }
    best = max(scores, key=lambda s: s["mean"])
    assert result["best"] == best["params"]

    client = MlflowClient(local_stack.mlflow_tracking_uri, local_stack.mlflow_tracking_uri)
    version = client.get_model_version("adult-search", str(result["version"]))
    run = client.get_run(str(version.run_id))
    for name in GRID:  # the registered model was trained with the best candidate's parameters
        assert float(run.data.params[f"model.params.{name}"]) == float(best["params"][name])
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result['search_run']}'",
    )
    assert len(children) == 4 and all("cv_roc_auc" in c.data.metrics for c in children)

    again = hyperparameter_search(pipeline=str(project), runner="sequential", hand_over="none")
    assert [round(s["mean"], 10) for s in again["scores"]] == [
        round(s["mean"], 10) for s in scores
    ]  # seeded folds: the runner changes the speed, not the scores
    assert again["version"] == result["version"]  # the same best: nothing new to register


def test_an_unknown_grid_parameter_is_named_before_anything_is_fitted(
    local_stack: Settings, project: Path
) -> None:
    set_search(project, {"grid": {"learning_rate": [0.1], "learning_rat": [0.1]}})
    with pytest.raises(ConfigError, match=r"\['learning_rat'\] are not parameters"):
        hyperparameter_search(pipeline=str(project), runner="dask", hand_over="none")
