"""The training flow on a real Prefect server and a real MLflow server (started by the fixtures)."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
)

from flows.training import training
from mlops.adapters.tracking import load_importance
from mlops.core.errors import DataContractError, DataLoadError
from mlops.core.settings import Settings
from tests.helpers import EXAMPLE, PROJECT, adult_frame, git, make_project

pytestmark = pytest.mark.flows


def _client(settings: Settings) -> MlflowClient:
    return MlflowClient(
        tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri
    )


def _artifact_keys(flow_run_id: str) -> set[str]:
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])
            )
        )
    return {a.key for a in arts if a.key}


def _task_states(flow_run_id: str) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)])),
            task_run_filter=TaskRunFilter(),
        )
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs if r.state}


@pytest.fixture(scope="module")
def first_run(local_stack: Settings, adult_data: Path):
    return training()


def test_first_run_registers_a_version_with_its_lineage(local_stack: Settings, first_run) -> None:
    client = _client(local_stack)
    mv = client.get_model_version("adult-income", str(first_run.version))
    assert not first_run.reused
    dvc_record = yaml.safe_load((PROJECT / "data" / "adult.csv.dvc").read_text())["outs"][0]
    assert mv.tags["mlops.data.md5"] == dvc_record["md5"]
    assert mv.tags["mlops.git.commit"] == git(PROJECT, "rev-parse", "HEAD")
    assert len(mv.tags["mlops.fingerprint"]) == 64
    assert mv.tags["mlops.policy.version"] == "1"
    assert mv.description.startswith(f"# Model card: adult-income v{first_run.version}")
    assert dvc_record["md5"] in mv.description and "not judged yet" in mv.description
    # what drives its answers: Tree SHAP over the holdout, in the run as figures and a chart
    assert "## What drives its answers" in mv.description
    assert "mean |tree_shap attribution| in log_odds" in mv.description
    importance = load_importance(str(local_stack.mlflow_tracking_uri), mv.run_id)
    assert importance is not None and importance.method == "tree_shap" and importance.rows >= 50
    features = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())["features"]
    assert set(importance.values) == {*features["numeric"], *features["categorical"]}
    top = importance.top(1)[0][0]
    assert f"- {top}: " in mv.description
    artifacts = {a.path for a in client.list_artifacts(mv.run_id, "explanations")}
    assert artifacts == {"explanations/importance.json", "explanations/importance.png"}
    png = Path(client.download_artifacts(mv.run_id, "explanations/importance.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the flow run the tag names exists on the Prefect server and completed
    with get_client(sync_client=True) as prefect:
        fr = prefect.read_flow_run(uuid.UUID(mv.tags["mlops.prefect.flow_run_id"]))
    assert fr.state is not None and fr.state.is_completed()
    assert {"training-metrics", "training-summary"} <= _artifact_keys(str(fr.id))

    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["holdout_roc_auc"] > 0.88
    assert run.data.params["model.family"] == "hist_gradient_boosting"
    assert run.data.tags["mlops.data.md5"] == dvc_record["md5"]
    contexts = {
        (i.dataset.digest, t.value)
        for i in run.inputs.dataset_inputs
        for t in i.tags
        if t.key == "mlflow.data.context"
    }
    assert contexts == {(dvc_record["md5"], "training"), (dvc_record["md5"], "holdout")}


def test_the_registered_model_loads_and_checks_its_signature(
    local_stack: Settings, first_run
) -> None:
    mlflow.set_tracking_uri(local_stack.mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/adult-income/{first_run.version}")
    names = [c.name for c in model.metadata.get_input_schema().inputs]
    assert "age" in names and "income" not in names
    rows = adult_frame(50).replace("?", None).drop(columns=["income"])
    rows = rows.astype(
        {
            c: "int64"
            for c in (
                "age",
                "fnlwgt",
                "education_num",
                "capital_gain",
                "capital_loss",
                "hours_per_week",
            )
        }
    )
    assert set(model.predict(rows)) <= {0, 1}
    with pytest.raises(Exception, match="age"):
        model.predict(rows.drop(columns=["age"]))


def test_rerun_with_nothing_changed_registers_nothing(local_stack: Settings, first_run) -> None:
    client = _client(local_stack)
    versions_before = len(client.search_model_versions("name = 'adult-income'"))
    exp = client.get_experiment_by_name("adult-income")
    runs_before = len(client.search_runs([exp.experiment_id]))
    again = training()
    assert again.reused and again.version == first_run.version
    assert len(client.search_model_versions("name = 'adult-income'")) == versions_before
    assert len(client.search_runs([exp.experiment_id])) == runs_before


def test_task_results_are_reused_when_only_registration_is_missing(
    local_stack: Settings, first_run
) -> None:
    """With the version gone (deleted by hand), a re-run trains nothing: the model comes from
    Prefect's task cache, and a new version is registered from it."""
    client = _client(local_stack)
    client.delete_model_version("adult-income", str(first_run.version))
    rerun = training()
    assert not rerun.reused and rerun.version > first_run.version
    states = _task_states(rerun.tags["mlops.prefect.flow_run_id"])
    assert states["train-model"] == "Cached", states
    assert states["load-dataset"] == "Completed", "cheap steps run again"
    assert states["register-model-version"] == "Completed"
    assert rerun.metrics == pytest.approx(first_run.metrics)


def _bad_frames() -> dict[str, tuple[pd.DataFrame | bytes, type[Exception], str]]:
    base = adult_frame(400)
    wrong_type = base.copy()
    wrong_type.loc[[2, 5], "hours_per_week"] = ["forty", "full-time"]
    out_of_range = base.copy()
    out_of_range.loc[3, "age"] = "212"
    unknown = base.copy()
    unknown.loc[range(40), "education"] = "Bootcamp"
    return {
        "missing-column": (base.drop(columns=["race"]), DataContractError, "race:missing_column"),
        "wrong-type": (wrong_type, DataContractError, "hours_per_week:int_values"),
        "out-of-range": (out_of_range, DataContractError, r"age:in_range\[17.0, 100.0\]"),
        "unknown-category": (
            unknown,
            DataContractError,
            r"education:known_categories\(tolerance=0.01\)",
        ),
        "empty-file": (b"", DataLoadError, "the file is empty"),
        "unreadable-file": (
            b'age,sex\n"open,Male\n1,2,3\n',
            DataLoadError,
            "not a readable CSV table",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_frames()))
def test_bad_data_stops_the_flow_before_anything_is_logged(
    case: str, local_stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, error, message = _bad_frames()[case]
    name = f"bad-{case}"
    pipeline = make_project(
        tmp_path,
        frame=data if isinstance(data, pd.DataFrame) else None,
        raw=data if isinstance(data, bytes) else None,
        model_name=name,
    )
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(tmp_path))
    state = training(pipeline=str(pipeline), return_state=True)
    assert state.is_failed()
    with pytest.raises(error, match=message):
        state.result()

    client = _client(local_stack)
    assert client.search_model_versions(f"name = '{name}'") == []
    exp = client.get_experiment_by_name(name)
    assert exp is None or client.search_runs([exp.experiment_id]) == []
    if error is DataContractError:
        reports = list(
            (local_stack.reports_dir).glob(f"{state.state_details.flow_run_id}/contract-report.md")
        )
        assert reports, "the contract report is written for inspection"
        assert "data-contract-violations" in _artifact_keys(str(state.state_details.flow_run_id))
