"""The model server image: built by the packaging flow on a real engine, pushed to a real registry,
pulled back by digest, run, and asked for predictions and metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest

from flows.packaging import packaging
from mlops.adapters.registry import registry_client
from mlops.adapters.tracking import tracking_server
from mlops.core.frames import missing_as_nan
from mlops.core.integrity import CHECKSUM_TAG, IMAGE_TAG, ModelIntegrityError
from mlops.core.settings import Settings
from mlops.release.packaging import (
    PackagingError,
    container_exited,
    image_repository,
    registry_digest,
)
from mlops.release.smoke import wait_until_ready
from mlops.stack.processes import free_port
from tasks.packaging import assemble_build_context
from tasks.registry import resolve_model_version
from tests.engine import Engine, container_engine
from tests.fixtures import TrainedProject
from tests.helpers import caller_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with container_engine(tmp_path_factory.mktemp("engine")) as found:
        yield found


@pytest.fixture(scope="module")
def project(registered_model: TrainedProject, engine: Engine) -> Iterator[dict[str, Any]]:
    """The session's registered model, packaged from its project with this module's engine."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLOPS_PROJECT_DIR", str(registered_model.root))
    mp.setenv("MLOPS_IMAGE_REGISTRY", f"{engine.registry}/mlops")
    mp.setenv("MLOPS_IMAGE_REGISTRY_INSECURE", "true")
    mp.setenv("MLOPS_BASE_IMAGE", engine.base_image)
    mp.setenv("DOCKER_HOST", engine.docker_host)
    try:
        yield {
            "name": registered_model.name,
            "version": registered_model.versions[0],
            "root": registered_model.root,
        }
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def packaged(project: dict[str, Any]) -> Iterator[Any]:
    """The version's image, removed with the module: on the vfs driver (setup-engine.sh's
    fallback) each is ~4.5 GB of disk."""
    image = packaging(version=str(project["version"]), model=project["name"])
    yield image
    client = docker.from_env(timeout=600)
    for reference in (image.reference, f"{image.repository}@{image.digest}"):
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(reference, force=True)


def _run(client: Any, image: str, port: int, **env: str) -> Any:
    return client.containers.run(
        image, detach=True, network_mode="host", environment={"PORT": str(port), **env}
    )


def test_image_is_tagged_pushed_and_recorded_by_digest(
    local_stack: Settings, engine: Engine, project: dict[str, Any], packaged: Any
) -> None:
    name, version = project["name"], project["version"]
    assert packaged.repository == f"{engine.registry}/mlops/{name}"
    assert re.fullmatch(rf"v{version}-[0-9a-f]{{7}}", packaged.tag), packaged.tag
    assert packaged.digest == registry_digest(packaged.repository, packaged.tag, insecure=True)
    tags = resolve_model_version(str(local_stack.mlflow_tracking_uri), name, str(version)).tags
    assert tags[IMAGE_TAG] == f"{packaged.repository}:{packaged.tag}@{packaged.digest}"
    labels = docker.from_env(timeout=600).images.get(packaged.reference).labels
    assert labels["io.mlops.model.version"] == str(version)
    assert labels["io.mlops.model.sha256"] == tags[CHECKSUM_TAG]
    assert packaged.tag.endswith(labels["org.opencontainers.image.revision"][:7])


def test_image_pulled_by_digest_serves_the_models_predictions_and_metrics(
    local_stack: Settings, project: dict[str, Any], packaged: Any
) -> None:
    client = docker.from_env(timeout=600)
    client.images.remove(packaged.reference, force=True)  # what runs comes from the registry
    pinned = f"{packaged.repository}@{packaged.digest}"
    client.images.pull(pinned)
    port, token = free_port(), uuid.uuid4().hex
    container = _run(client, pinned, port, HOST="127.0.0.1", MLOPS_SERVING_TOKEN=token)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, 120, container_exited(container))
        rows = caller_rows(40)
        refused = httpx.post(f"{base}/predict", json={"rows": rows})
        assert refused.status_code == 401  # outside local mode a token is required
        answer = httpx.post(
            f"{base}/predict", json={"rows": rows}, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        with tracking_server(str(local_stack.mlflow_tracking_uri)):
            model = mlflow.sklearn.load_model(f"models:/{project['name']}/{project['version']}")
        # missing values arrive as JSON nulls; training saw NaN, and so does the server
        expected = model.predict_proba(missing_as_nan(pd.DataFrame(rows)))
        assert np.allclose(body["probabilities"], expected, rtol=0, atol=1e-12)
        assert body["model"] == {"name": project["name"], "version": project["version"]}
        metrics = httpx.get(f"{base}/metrics").text
        labels = f'model="{project["name"]}",route="/predict",status="200",version="{project["version"]}"'
        assert f"mlops_requests_total{{{labels}}} 1.0" in metrics
        assert re.search(r"mlops_predictions_total\{.*\} (\d+\.\d+)", metrics)
        predicted = sum(
            float(v) for v in re.findall(r"^mlops_predictions_total\{[^}]*\} (\S+)$", metrics, re.M)
        )
        assert predicted == len(rows)
    finally:
        container.remove(force=True)


def test_image_refuses_to_start_in_prod_without_a_token(packaged: Any) -> None:
    client = docker.from_env(timeout=600)
    container = _run(client, packaged.reference, free_port())
    try:
        assert container.wait(timeout=60)["StatusCode"] == 2
        assert "set MLOPS_SERVING_TOKEN" in container.logs().decode()
    finally:
        container.remove(force=True)


def test_the_image_runs_the_installed_library_and_nothing_of_the_pipeline(packaged: Any) -> None:
    """The server is the mlops wheel installed in the image's venv (no source folder on a
    PYTHONPATH), and the pipeline's packages are not there at all."""
    client = docker.from_env(timeout=600)
    env = client.images.get(packaged.reference).attrs["Config"]["Env"] or []
    assert not [e for e in env if e.startswith("PYTHONPATH=")], env
    code = (
        "import importlib.util as u, mlops.serving; print(mlops.serving.__file__); "
        "print(*[m for m in ('prefect', 'dvc', 'evidently', 'tasks', 'flows') if u.find_spec(m)])"
    )
    out = client.containers.run(packaged.reference, ["python", "-c", code], remove=True)
    where, pipeline = out.decode().splitlines()
    assert where.startswith("/opt/venv/lib/") and "/site-packages/mlops/serving/" in where, where
    assert pipeline == "", pipeline


def test_a_version_whose_artifacts_changed_is_not_packaged(
    local_stack: Settings, project: dict[str, Any], tmp_path: Path
) -> None:
    uri = str(local_stack.mlflow_tracking_uri)
    found = resolve_model_version(uri, project["name"], str(project["version"]))
    altered = dataclasses.replace(found, tags={**found.tags, CHECKSUM_TAG: "0" * 64})
    with pytest.raises(ModelIntegrityError, match="refusing to serve it"):
        assemble_build_context.fn(uri, altered, tmp_path / "context")


def test_a_model_name_that_is_no_image_name_is_refused_by_name() -> None:
    with pytest.raises(PackagingError, match="'Adult Income' is not a valid image name"):
        image_repository("127.0.0.1:5000", "Adult Income")
    assert image_repository(None, "adult-income") == "mlops/adult-income"


def test_no_engine_is_a_clear_error(
    local_stack: Settings, project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix:///nonexistent/{uuid.uuid4().hex}.sock")
    uri = str(local_stack.mlflow_tracking_uri)
    before = registry_client(uri).get_model_version(project["name"], str(project["version"])).tags
    with pytest.raises(PackagingError, match="no container engine answers at DOCKER_HOST="):
        packaging(version=str(project["version"]), model=project["name"])
    after = registry_client(uri).get_model_version(project["name"], str(project["version"])).tags
    assert after == before
