"""The model registry: idempotent registration of model versions with their lineage tags."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.lineage import FINGERPRINT_TAG
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
    cache_policy=NO_CACHE,
    persist_result=False,
)
def find_model_version(tracking_uri: str, name: str, fingerprint: str) -> RegisteredVersion | None:
    """The registered version of ``name`` that an identical run produced, if there is one."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}'"
    )
    if not found:
        return None
    earliest = min(found, key=lambda mv: int(mv.version))
    return _as_registered(client, earliest, reused=True)


@task(name="register-model-version", cache_policy=NO_CACHE, persist_result=False)
def register_model_version(
    tracking_uri: str, name: str, model_uri: str, tags: dict[str, str], description: str
) -> RegisteredVersion:
    """Register the logged model as a new version of ``name``, its lineage tags set in the same call."""
    with tracking_server(tracking_uri):
        mv = mlflow.register_model(model_uri, name, tags=tags)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.update_model_version(name, mv.version, description=description)
    return _as_registered(client, client.get_model_version(name, mv.version), reused=False)
