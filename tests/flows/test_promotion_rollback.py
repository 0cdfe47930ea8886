"""The promotion transaction: when a later step fails, the alias and tags are put back."""

from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient
from prefect import Flow, flow, task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import transaction

from mlops.core.settings import Settings
from mlops.release.promotion import CHAMPION, PROMOTION_TAGS
from tasks.release import (
    AuditContext,
    move_champion_alias,
    promote_to_champion,
    tag_promoted_version,
)

pytestmark = pytest.mark.flows


@task(cache_policy=NO_CACHE, persist_result=False)
def audit_store_down() -> None:
    raise ConnectionError("audit store unreachable")


@flow
def promote_with_failing_audit(uri: str, name: str, version: int, previous: int | None) -> None:
    with transaction():
        move_champion_alias(uri, name, version, expected=previous)
        tag_promoted_version(uri, name, version, "tester", previous)
        audit_store_down()


@flow
def promote_then_fail(uri: str, name: str, version: int, previous: int | None) -> None:
    """As the release does: the promotion act inside a larger transaction, a later step fails."""
    audit = AuditContext(uri, name, "tester", "test", previous, 1, "digest")
    with transaction():
        promote_to_champion(audit, version, previous, "released", "all traffic on it")
        audit_store_down()


def _registered(client: MlflowClient, name: str, versions: int) -> None:
    """``versions`` bare model versions of ``name``, each from a run of its own."""
    client.create_registered_model(name)
    experiment = client.create_experiment(name)
    for _ in range(versions):
        run = client.create_run(experiment)
        client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )


# The steps alone, and the promotion act inside a larger transaction (as the release holds it).
@pytest.mark.parametrize("promote", [promote_with_failing_audit, promote_then_fail])
def test_a_failure_after_the_alias_moved_restores_it(
    local_stack: Settings, promote: Flow[[str, str, int, int | None], None]
) -> None:
    uri = str(local_stack.mlflow_tracking_uri)
    client = MlflowClient(uri, registry_uri=uri)
    name = f"rollback-{uuid.uuid4().hex[:6]}"
    _registered(client, name, 2)
    client.set_registered_model_alias(name, CHAMPION, "1")

    state = promote(uri, name, 2, 1, return_state=True)

    assert state.is_failed()
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"
    assert not set(PROMOTION_TAGS) & set(client.get_model_version(name, "2").tags)


def test_a_failed_first_promotion_leaves_no_champion(local_stack: Settings) -> None:
    uri = str(local_stack.mlflow_tracking_uri)
    client = MlflowClient(uri, registry_uri=uri)
    name = f"rollback-{uuid.uuid4().hex[:6]}"
    _registered(client, name, 1)

    state = promote_with_failing_audit(uri, name, 1, None, return_state=True)

    assert state.is_failed()
    assert CHAMPION not in client.get_registered_model(name).aliases
