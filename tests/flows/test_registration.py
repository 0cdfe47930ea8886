"""Registration is whole and happens once, and only verified models are ever deserialized: on a
real Prefect server and a real MLflow server whose stored artifacts the tests tamper with."""

from __future__ import annotations

import pickle
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import mlflow.sklearn
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from flows.training import training
from mlops.adapters.registry import BROKEN_TAG, RUN_ID_TAG, RegisteredVersion, download_model
from mlops.adapters.tracking import load_run_frame
from mlops.core.integrity import (
    CHECKSUM_ALGORITHM_TAG,
    CHECKSUM_TAG,
    SKOPS_TRUSTED_TYPES,
    ModelFormatError,
    ModelIntegrityError,
    artifact_checksum,
    legacy_artifact_checksum,
)
from mlops.core.lineage import FINGERPRINT_TAG
from mlops.core.settings import Settings
from tasks.gates import check_model_contract
from tasks.registry import find_model_version, load_model_version, register_model_version
from tests.helpers import make_project
from tests.training_worker import TrainingWorker

pytestmark = pytest.mark.flows


def _client(settings: Settings) -> MlflowClient:
    uri = str(settings.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small project (1,500 rows, 20 iterations) with its own model name, for the module."""
    root = tmp_path_factory.mktemp("registration")
    path = make_project(root, model_name=f"adult-reg-{uuid.uuid4().hex[:6]}")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLOPS_PROJECT_DIR", str(root))
    try:
        yield path
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def trained(local_stack: Settings, pipeline: Path) -> RegisteredVersion:
    return training(pipeline=str(pipeline))


def _copy(settings: Settings, of: RegisteredVersion, fingerprint: str) -> RegisteredVersion:
    """A new version holding its own copy of ``of``'s model (a run and logged model of its own),
    so that a test may tamper with its stored files without touching the shared one."""
    uri = str(settings.mlflow_tracking_uri)
    model = load_model_version.fn(uri, of.name, of.version)
    with tempfile_dir() as tmp:
        folder = download_model(uri, of.name, of.version, tmp)
        signature = mlflow.models.Model.load(str(folder)).signature
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(of.name)
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(),  # not inferred: slow
            serialization_format="skops",
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
        )
    tags = {FINGERPRINT_TAG: fingerprint, RUN_ID_TAG: run.info.run_id}
    with mlflows_default_elsewhere():
        return register_model_version.fn(uri, of.name, info.model_uri, tags, description="a copy")


@contextmanager
def mlflows_default_elsewhere() -> Iterator[None]:
    """MLflow's default tracking URI pointed away from the server, as in a flow container of the
    docker, kubernetes and cloud pools, which are given MLOPS_MLFLOW_TRACKING_URI alone."""
    previous = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/elsewhere.db")
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)


def test_a_version_registers_and_downloads_from_the_server_named_whatever_mlflows_default(
    local_stack: Settings, trained: RegisteredVersion
) -> None:
    """MLflow 3 resolves a models:/ URI with a client of its own default tracking URI, not the
    tracking_uri it is handed; a flow container's training failed at registration with
    "Logged model with ID ... not found" from a SQLite file of its own."""
    copy = _copy(local_stack, trained, "registers-against-the-named-server")
    assert copy.version > trained.version
    with mlflows_default_elsewhere(), tempfile_dir() as tmp:
        folder = download_model(str(local_stack.mlflow_tracking_uri), copy.name, copy.version, tmp)
        assert (folder / "MLmodel").is_file()


@contextmanager
def tempfile_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def _stored_folder(settings: Settings, version: RegisteredVersion) -> Path:
    """The version's files as the MLflow server stores them, under the session's state folder."""
    source = _client(settings).get_model_version(version.name, str(version.version)).source
    model_id = source.rsplit("/", 1)[-1]
    found = [
        p.parent
        for p in (settings.state_dir / "mlflow" / "artifacts").rglob("MLmodel")
        if model_id in str(p)
    ]
    assert len(found) == 1, found
    return found[0]


class _Marker:
    """Unpickling this creates the marker file: the code an attacker's pickle would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _tamper_to_pickle(folder: Path, marker: Path) -> None:
    """Rewrite a stored model as a pickle that runs code when loaded, its MLmodel told so."""
    (folder / "model.pkl").write_bytes(pickle.dumps(_Marker(marker)))
    conf = yaml.safe_load((folder / "MLmodel").read_text())
    conf["flavors"]["sklearn"] |= {"serialization_format": "pickle", "pickled_model": "model.pkl"}
    conf["flavors"]["python_function"]["model_path"] = "model.pkl"
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))


def _holdout(settings: Settings, version: RegisteredVersion) -> pd.DataFrame:
    frame = load_run_frame(str(settings.mlflow_tracking_uri), version.run_id, "holdout")
    return frame.drop(columns=["income"])


@pytest.mark.parametrize("checksum", ["as-recorded", "rewritten-by-the-attacker"])
def test_a_model_tampered_to_pickle_is_never_deserialized(
    checksum: str, local_stack: Settings, trained: RegisteredVersion, tmp_path: Path
) -> None:
    """Defect 3: the gates and retraining load a version only from a verified folder, and a
    format the project never writes is refused even when its checksum was rewritten to match."""
    uri = str(local_stack.mlflow_tracking_uri)
    copy = _copy(local_stack, trained, f"copy-{uuid.uuid4().hex}")
    holdout = _holdout(local_stack, trained)
    model_uri = f"models:/{copy.name}/{copy.version}"
    # the untouched original loads (the copy is not loaded before it is tampered with: a verified
    # folder is kept for the process, so a later change to the store does not reach it)
    assert check_model_contract.fn(f"models:/{trained.name}/{trained.version}", uri, holdout).passed

    marker = tmp_path / "the-pickle-ran"
    stored = _stored_folder(local_stack, copy)
    _tamper_to_pickle(stored, marker)
    expected: type[Exception] = ModelIntegrityError
    match = "refusing to serve it"
    if checksum == "rewritten-by-the-attacker":
        with tempfile_dir() as tmp:
            forged = artifact_checksum(download_model(uri, copy.name, copy.version, tmp))
        _client(local_stack).set_model_version_tag(
            copy.name, str(copy.version), CHECKSUM_TAG, forged
        )
        expected, match = ModelFormatError, f"v{copy.version}.*serialization format 'pickle'"

    with pytest.raises(expected, match=match):
        load_model_version.fn(uri, copy.name, copy.version)
    with pytest.raises(expected, match=match):
        check_model_contract.fn(model_uri, uri, holdout)
    assert not marker.exists(), "the tampered pickle was deserialized"


def test_a_version_without_its_checksum_never_loads_and_a_rerun_completes_it(
    local_stack: Settings, trained: RegisteredVersion, pipeline: Path
) -> None:
    """Defect 8: a crash between registration and the checksum tag left a version that a rerun
    found and reused but nothing could ever serve. Now it never loads, and the rerun completes it."""
    uri = str(local_stack.mlflow_tracking_uri)
    client = _client(local_stack)
    for tag in (CHECKSUM_TAG, CHECKSUM_ALGORITHM_TAG):
        client.delete_model_version_tag(trained.name, str(trained.version), tag)
    with pytest.raises(ModelIntegrityError, match=f"v{trained.version}: no {CHECKSUM_TAG}"):
        load_model_version.fn(uri, trained.name, trained.version)

    rerun = training(pipeline=str(pipeline))
    assert rerun.reused and rerun.version == trained.version
    with tempfile_dir() as tmp:
        stored = artifact_checksum(download_model(uri, trained.name, trained.version, tmp))
    assert rerun.tags[CHECKSUM_TAG] == stored
    assert load_model_version.fn(uri, trained.name, trained.version) is not None


def test_a_half_registered_version_that_cannot_be_completed_is_set_aside(
    local_stack: Settings, trained: RegisteredVersion, tmp_path: Path
) -> None:
    """Lacking its checksum and stored as a pickle, a version is not completed (that would bless
    the tampering) but set aside: tagged broken, its fingerprint removed, so training registers
    anew; and the pickle is never loaded on the way."""
    uri = str(local_stack.mlflow_tracking_uri)
    fingerprint = f"broken-{uuid.uuid4().hex}"
    copy = _copy(local_stack, trained, fingerprint)
    client = _client(local_stack)
    client.delete_model_version_tag(copy.name, str(copy.version), CHECKSUM_TAG)
    marker = tmp_path / "the-pickle-ran"
    _tamper_to_pickle(_stored_folder(local_stack, copy), marker)

    assert find_model_version.fn(uri, copy.name, fingerprint) is None
    mv = client.get_model_version(copy.name, str(copy.version))
    assert "serialization format 'pickle'" in mv.tags[BROKEN_TAG]
    assert FINGERPRINT_TAG not in mv.tags
    assert not marker.exists()


def test_a_legacy_checksum_is_checked_then_upgraded(
    local_stack: Settings, trained: RegisteredVersion
) -> None:
    """A version registered before the manifest digest is refused at load until a training run
    reuses it; that run checks the old digest against the stored files, then records the new."""
    uri = str(local_stack.mlflow_tracking_uri)
    fingerprint = f"legacy-{uuid.uuid4().hex}"
    copy = _copy(local_stack, trained, fingerprint)
    client = _client(local_stack)
    with tempfile_dir() as tmp:
        legacy = legacy_artifact_checksum(download_model(uri, copy.name, copy.version, tmp))
    client.set_model_version_tag(copy.name, str(copy.version), CHECKSUM_TAG, legacy)
    client.delete_model_version_tag(copy.name, str(copy.version), CHECKSUM_ALGORITHM_TAG)
    with pytest.raises(ModelIntegrityError, match="older algorithm"):
        load_model_version.fn(uri, copy.name, copy.version)

    found = find_model_version.fn(uri, copy.name, fingerprint)
    assert found is not None and found.version == copy.version
    assert found.tags[CHECKSUM_TAG] != legacy
    assert load_model_version.fn(uri, copy.name, copy.version) is not None


def test_two_identical_trainings_at_once_register_one_version(
    local_stack: Settings, tmp_path: Path
) -> None:
    """Defect 10: both find nothing, both train and register; the one registered second gives
    way to the first, and both runs answer with the same version."""
    name = f"adult-race-{uuid.uuid4().hex[:6]}"
    pipeline = make_project(tmp_path / "project", model_name=name)
    workers = [
        TrainingWorker(tmp_path / "project", str(pipeline), tmp_path / f"w{i}.log")
        for i in range(2)
    ]
    for w in workers:
        w.wait_ready()
    for w in workers:
        w.go()  # both started at one instant: both find nothing
    versions = {w.result() for w in workers}
    found = _client(local_stack).search_model_versions(f"name = '{name}'")
    assert len(found) == 1, [(mv.version, mv.tags.get(FINGERPRINT_TAG)) for mv in found]
    assert versions == {int(found[0].version)}
