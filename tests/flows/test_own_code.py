"""A project outside the library with its own model and feature code, by reference: its package
(written into the test's folder, importable as an installed one would be) holds a model factory,
a feature factory with a transformer class of its own and a helper module; the project is
trained, gated and released to the local target (real Prefect and MLflow servers, real model
servers behind the router) without a change to the library. A factory that cannot be imported
or whose fit fails stops the training flow before anything is logged or registered."""

from __future__ import annotations

import shutil
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from flows.release import release
from flows.training import training
from mlops.adapters.dvc import load_dataset, resolve_data_version
from mlops.adapters.registry import download_model
from mlops.core.config import load_pipeline_config
from mlops.core.errors import ConfigError
from mlops.core.integrity import CODE_METADATA
from mlops.core.lineage import CODE_TAG
from mlops.core.settings import Settings
from mlops.ml.contract import check_contract
from mlops.ml.fingerprint import training_fingerprint
from mlops.ml.problems import problem_for
from mlops.ml.split import split_dataset
from mlops.ml.training import train_model
from tests.fixtures import TrainedProject, trained_project
from tests.helpers import caller_rows, replace_sections

pytestmark = pytest.mark.flows

PACKAGE = "acme_income"  # the user's package; no other test imports a module of this name

FILES = {
    "__init__.py": "",
    "amounts.py": """
        # the money columns: a long tail that a log scale tames
        AMOUNTS = ("capital_gain", "capital_loss")
    """,
    "features.py": """
        import numpy as np
        from sklearn.base import BaseEstimator, TransformerMixin
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder

        from acme_income.amounts import AMOUNTS


        class LogAmounts(BaseEstimator, TransformerMixin):
            def fit(self, X, y=None):
                return self

            def transform(self, X):
                return np.log1p(np.clip(np.asarray(X, dtype=float), 0, None))


        def build(numeric, categorical, min_frequency=20):
            amounts = [c for c in numeric if c in AMOUNTS]
            plain = [c for c in numeric if c not in AMOUNTS]
            categories = make_pipeline(
                SimpleImputer(strategy="most_frequent"),
                OneHotEncoder(
                    handle_unknown="infrequent_if_exist",
                    min_frequency=min_frequency,
                    sparse_output=False,
                ),
            )
            return ColumnTransformer(
                [
                    ("amounts", LogAmounts(), amounts),
                    ("numeric", SimpleImputer(strategy="median"), plain),
                    ("categorical", categories, list(categorical)),
                ]
            )
    """,
    "model.py": """
        from sklearn.ensemble import HistGradientBoostingClassifier


        def build(max_iter=30, learning_rate=0.1):
            return HistGradientBoostingClassifier(
                max_iter=max_iter, learning_rate=learning_rate, random_state=0
            )


        class Stubborn(HistGradientBoostingClassifier):
            def fit(self, X, y):
                raise ValueError("refuses to learn from fewer than a million rows")


        def stubborn():
            return Stubborn()
    """,
}

OWN_CODE = {
    "model": {"factory": f"{PACKAGE}.model:build", "params": {"max_iter": 30}},
    "features": {
        "numeric": ["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"],
        # sex and race: the policy's fairness gate judges the groups of these columns
        "categorical": ["workclass", "marital_status", "occupation", "relationship", "race", "sex"],
        "factory": f"{PACKAGE}.features:build",
        "params": {"min_frequency": 10},
    },
}

RELEASE = {
    "release": {
        "bake_seconds": 2,
        "analysis_interval_seconds": 0.25,
        "min_requests": 10,
        "max_p99_latency_ratio": 50,
    }
}


@pytest.fixture(scope="module")
def project(
    local_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrainedProject]:
    """The user's project: its package beside its data and configs, on the import path of the
    flows here and of the model servers the release starts (PYTHONPATH)."""
    root = tmp_path_factory.mktemp("own-code-project")
    package = root / PACKAGE
    package.mkdir()
    for name, text in FILES.items():
        (package / name).write_text(textwrap.dedent(text.rstrip() + "\n").lstrip("\n"))
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(root))
    try:
        with trained_project(
            root,
            "own-code",
            rows=2000,
            policy=RELEASE,
            promote=True,
            router=True,
            env={"PYTHONPATH": str(root)},
            sections=OWN_CODE,
        ) as built:
            yield built
    finally:
        mp.undo()


def _client(settings: Settings) -> MlflowClient:
    return MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)


def test_the_projects_own_code_is_trained_with_its_types_and_source_recorded(
    project: TrainedProject, tmp_path: Path
) -> None:
    client = _client(project.settings)
    (v1,) = project.versions
    mv = client.get_model_version(project.name, str(v1))
    cfg = load_pipeline_config(project.pipeline)
    assert cfg.model.factory == f"{PACKAGE}.model:build"
    # the code hash covers the factories and the helper they import from their package (editing
    # them changes it: tests/unit/ml/test_fingerprint.py)
    assert mv.tags[CODE_TAG] == training_fingerprint(cfg, mv.tags["mlops.data.md5"])[1]
    library_only = cfg.model_copy(
        update={"features": cfg.features.model_copy(update={"factory": None, "params": {}})}
    )
    assert training_fingerprint(library_only, mv.tags["mlops.data.md5"])[1] != mv.tags[CODE_TAG]

    folder = download_model(str(project.settings.mlflow_tracking_uri), project.name, v1, tmp_path)
    conf = yaml.safe_load((folder / "MLmodel").read_text())
    assert conf["metadata"][CODE_METADATA] == {"packages": [PACKAGE]}
    assert f"{PACKAGE}.features.LogAmounts" in conf["flavors"]["sklearn"]["skops_trusted_types"]


def test_the_projects_own_code_is_released_and_served_by_the_model_servers(
    project: TrainedProject, tmp_path: Path
) -> None:
    (v1,) = project.versions
    outcome = release(version=str(v1), pipeline=str(project.pipeline), strategy="blue-green")
    assert outcome.serving and project.target.state().stable.version == v1

    # what the model fitted in this process answers for rows without a missing value
    cfg = load_pipeline_config(project.pipeline)
    data = resolve_data_version(project.root, cfg.data.path)
    valid = check_contract(
        load_dataset(project.root, data, cfg.data.na_values), cfg.contract, data.path, tmp_path
    )
    split = split_dataset(valid, cfg.features.columns, problem_for(cfg.target), cfg.split)
    local = train_model(split, cfg.features, cfg.model)
    rows = [
        {c: r[c] for c in cfg.features.columns} for r in caller_rows(60) if None not in r.values()
    ][:20]
    expected = split.problem.predict(local, pd.DataFrame(rows)[cfg.features.columns])

    with httpx.Client(timeout=30) as client:
        answers = [
            client.post(f"{project.target.router.url}/predict", json={"row": r}) for r in rows
        ]
    assert [a.status_code for a in answers] == [200] * len(rows), answers[0].text
    assert {a.json()["model"]["version"] for a in answers} == {v1}
    served = np.array([a.json()["probabilities"][0] for a in answers])
    np.testing.assert_allclose(served, expected.proba, atol=1e-9)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"factory": f"{PACKAGE}.models:build"},
            rf"model\.factory '{PACKAGE}\.models:build': cannot import module '{PACKAGE}\.models'",
        ),
        (
            {"factory": f"{PACKAGE}.model:stubborn"},
            rf"model\.factory '{PACKAGE}\.model:stubborn' with features\.factory "
            rf"'{PACKAGE}\.features:build': fitting failed: ValueError: refuses to learn",
        ),
    ],
)
def test_a_bad_factory_stops_the_training_before_anything_is_logged_or_registered(
    project: TrainedProject, model: dict[str, str], message: str
) -> None:
    name = f"own-code-bad-{uuid.uuid4().hex[:6]}"
    bad = project.pipeline.with_name(f"{name}.yaml")
    shutil.copy(project.pipeline, bad)
    replace_sections(bad, model=model, model_name=name, experiment=name)
    with pytest.raises(ConfigError, match=message):
        training(pipeline=str(bad), trigger="test")
    client = _client(project.settings)
    assert client.get_experiment_by_name(name) is None, "no MLflow run was started"
    assert not client.search_model_versions(f"name='{name}'"), "nothing was registered"
