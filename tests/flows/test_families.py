"""XGBoost and LightGBM as first-class families: trained by the training flow on the real Prefect
and MLflow servers, gated by the promotion flow, stored with skops trusting only the family's
own types, and served from the registered version exactly as the model fitted in this process
predicts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from mlops.adapters.dvc import load_dataset, resolve_data_version
from mlops.adapters.registry import download_model
from mlops.core.config import load_pipeline_config
from mlops.core.integrity import CHECKSUM_TAG, FAMILY_TRUSTED_TYPES, FEATURE_TRUSTED_TYPES
from mlops.core.lineage import CHAMPION_ALIAS
from mlops.core.settings import Settings
from mlops.ml.contract import check_contract
from mlops.ml.problems import problem_for
from mlops.ml.split import split_dataset
from mlops.ml.training import train_model
from mlops.release.promotion import GATES_PASSED, GATES_TAG
from mlops.serving.model import load_model_folder
from tests.fixtures import TrainedProject, trained_project

pytestmark = pytest.mark.flows

# Few trees, one thread (the same trees in every process), a learning rate that gets there.
MODELS = {
    "xgboost": {
        "family": "xgboost",
        "params": {"n_estimators": 40, "max_depth": 4, "learning_rate": 0.2, "n_jobs": 1,
                   "random_state": 0},
    },
    "lightgbm": {
        "family": "lightgbm",
        "params": {"n_estimators": 40, "num_leaves": 15, "learning_rate": 0.2, "n_jobs": 1,
                   "random_state": 0, "verbose": -1},
    },
}  # fmt: skip

# The library each family's model names among its requirements (the distribution's name).
DISTRIBUTIONS = {"xgboost": "xgboost-cpu", "lightgbm": "lightgbm"}


@pytest.fixture(scope="module", params=sorted(MODELS))
def project(
    request: pytest.FixtureRequest,
    local_stack: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TrainedProject]:
    """One project per family: v1 trained, then promoted (the gates pass: the champion)."""
    family = request.param
    root = tmp_path_factory.mktemp(f"family-{family}")
    with trained_project(
        root, family, rows=2000, policy={}, promote=True, sections={"model": MODELS[family]}
    ) as built:
        yield built


def _client(settings: Settings) -> MlflowClient:
    return MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)


def test_the_family_is_trained_gated_and_becomes_the_champion(project: TrainedProject) -> None:
    client = _client(project.settings)
    (v1,) = project.versions
    mv = client.get_model_version(project.name, str(v1))
    family = yaml.safe_load(project.pipeline.read_text())["model"]["family"]
    assert mv.tags[GATES_TAG] == GATES_PASSED
    assert client.get_model_version_by_alias(project.name, CHAMPION_ALIAS).version == str(v1)
    assert mv.description.startswith(f"# Model card: {project.name} v{v1}")
    run = client.get_run(mv.run_id)
    assert run.data.params["model.family"] == family
    assert run.data.metrics["holdout_roc_auc"] > 0.85


def test_the_stored_model_trusts_only_its_familys_types_and_names_its_library(
    project: TrainedProject, tmp_path: Path
) -> None:
    family = yaml.safe_load(project.pipeline.read_text())["model"]["family"]
    folder = download_model(
        str(project.settings.mlflow_tracking_uri), project.name, project.versions[0], tmp_path
    )
    sklearn = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["sklearn"]
    assert sklearn["serialization_format"] == "skops"
    trusted = set(sklearn["skops_trusted_types"])
    assert trusted <= set(FAMILY_TRUSTED_TYPES[family]) | set(FEATURE_TRUSTED_TYPES)
    assert any(t.endswith(".Booster") for t in trusted), trusted
    requirements = (folder / "requirements.txt").read_text().split()
    assert any(r.startswith(f"{DISTRIBUTIONS[family]}==") for r in requirements), requirements


def test_the_served_version_answers_as_the_model_fitted_here(
    project: TrainedProject, tmp_path: Path
) -> None:
    settings, (v1,) = project.settings, project.versions
    uri = str(settings.mlflow_tracking_uri)
    mv = _client(settings).get_model_version(project.name, str(v1))
    folder = download_model(uri, project.name, v1, tmp_path / "model")
    served = load_model_folder(folder, project.name, v1, mv.tags[CHECKSUM_TAG])

    # the same data version, contract, split and config, fitted in this process
    cfg = load_pipeline_config(project.pipeline)
    data = resolve_data_version(project.root, cfg.data.path)
    frame = load_dataset(project.root, data, cfg.data.na_values)
    valid = check_contract(frame, cfg.contract, data.path, tmp_path / "reports")
    split = split_dataset(valid, cfg.features.columns, problem_for(cfg.target), cfg.split)
    local = train_model(split, cfg.features, cfg.model)
    rows = split.X_holdout.head(300)
    expected = split.problem.predict(local, rows)

    answers = served.predict(rows)
    assert answers.probabilities is not None
    np.testing.assert_allclose(answers.probabilities, expected.proba, atol=1e-9)
    assert answers.predictions == split.problem.decode(expected.values)
