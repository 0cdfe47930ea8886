"""The model registry: idempotent registration of model versions with their lineage tags."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.errors import MlopsError
from mlops.integrity import CHECKSUM_TAG, artifact_checksum
from mlops.lineage import FINGERPRINT_TAG
from mlops.retries import only_connection_errors
from tasks.tracking import tracking_server


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int
    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]  # the holdout metrics logged on the version's run
    reused: bool  # True when an identical earlier run's version was found instead of registering


def _as_registered(client: MlflowClient, mv: ModelVersion, reused: bool) -> RegisteredVersion:
    metrics: dict[str, float] = {}
    if mv.run_id:
        logged = client.get_run(mv.run_id).data.metrics
        metrics = {
            k.removeprefix("holdout_"): v for k, v in logged.items() if k.startswith("holdout_")
        }
    return RegisteredVersion(
        name=mv.name,
        version=int(mv.version),
        run_id=mv.run_id or "",
        tags=dict(mv.tags),
        metrics=metrics,
        reused=reused,
    )


@task(
    name="find-model-version",
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=only_connection_errors,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def find_model_version(tracking_uri: str, name: str, fingerprint: str) -> RegisteredVersion | None:
    """The registered version of ``name`` that an identical run produced, if there is one."""
    client = registry_client(tracking_uri)
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}'"
    )
    if not found:
        return None
    earliest = min(found, key=lambda mv: int(mv.version))
    return _as_registered(client, earliest, reused=True)


def download_model(tracking_uri: str, name: str, version: int, dst: Path | None = None) -> Path:
    """The artifacts of one registered version, in a local folder."""
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}",
            dst_path=str(dst) if dst else None,
            tracking_uri=tracking_uri,
        )
    )


@task(name="register-model-version", cache_policy=NO_CACHE, persist_result=False)
def register_model_version(
    tracking_uri: str, name: str, model_uri: str, tags: dict[str, str], description: str
) -> RegisteredVersion:
    """Register the logged model as a new version of ``name``, its lineage tags set in the same call."""
    with tracking_server(tracking_uri):
        mv = mlflow.register_model(model_uri, name, tags=tags)
    client = registry_client(tracking_uri)
    client.update_model_version(name, mv.version, description=description)
    # The checksum of the stored artifacts, so that a server can refuse a tampered model.
    with tempfile.TemporaryDirectory() as tmp:
        checksum = artifact_checksum(download_model(tracking_uri, name, int(mv.version), Path(tmp)))
    client.set_model_version_tag(name, mv.version, CHECKSUM_TAG, checksum)
    return _as_registered(client, client.get_model_version(name, mv.version), reused=False)


class ModelVersionNotFound(MlopsError):
    """No model version answers to the given number or alias."""


def registry_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def lookup_model_version(tracking_uri: str, name: str, ref: str) -> RegisteredVersion | None:
    """The version ``ref`` (a number or an alias such as ``champion``) of ``name``, or None."""
    client = registry_client(tracking_uri)
    try:
        mv = (
            client.get_model_version(name, ref)
            if ref.isdigit()
            else client.get_model_version_by_alias(name, ref)
        )
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return _as_registered(client, mv, reused=False)


@task(name="resolve-model-version", cache_policy=NO_CACHE, persist_result=False)
def resolve_model_version(tracking_uri: str, name: str, ref: str) -> RegisteredVersion:
    """The version ``ref`` of ``name``; an unknown one is an error that says what exists."""
    found = lookup_model_version(tracking_uri, name, ref)
    if found is None:
        client = registry_client(tracking_uri)
        try:
            aliases = sorted(client.get_registered_model(name).aliases)
        except MlflowException:
            raise ModelVersionNotFound(f"model {name!r} is not registered") from None
        raise ModelVersionNotFound(
            f"{name}: no version or alias {ref!r} (aliases: {', '.join(aliases) or 'none'})"
        )
    return found


@task(name="set-model-alias", cache_policy=NO_CACHE, persist_result=False)
def set_model_alias(tracking_uri: str, name: str, alias: str, version: int) -> None:
    """Point ``alias`` of ``name`` at ``version``."""
    registry_client(tracking_uri).set_registered_model_alias(name, alias, str(version))


@task(name="load-model-version", cache_policy=NO_CACHE, persist_result=False, retries=1)
def load_model_version(tracking_uri: str, name: str, version: int) -> Any:
    """The scikit-learn model of one registered version, for scoring it directly."""
    import mlflow.sklearn

    with tracking_server(tracking_uri):
        return mlflow.sklearn.load_model(f"models:/{name}/{version}")
