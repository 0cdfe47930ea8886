"""Promotion: moving the `champion` alias, with its version tags and audit entry, as one act."""

from __future__ import annotations

import contextlib
import getpass
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.transactions import Transaction, get_transaction

from mlops.audit import Action, AuditEntry, AuditTrail
from mlops.errors import MlopsError
from tasks.gates import GateResult
from tasks.registry import registry_client

CHAMPION = "champion"
PROMOTION_TAGS = ("mlops.promoted.at", "mlops.promoted.by", "mlops.promoted.previous")


@dataclass(frozen=True)
class PromotionOutcome:
    model: str
    version: int
    promoted: bool
    previous_champion: int | None
    reason: str
    gates: list[GateResult]


class PromotionConflict(MlopsError):
    """The champion changed while this promotion was being judged."""


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no name
        return "unknown"


def promotion_lock_name(model: str) -> str:
    return f"mlops-promote-{model}"


def ensure_promotion_lock(model: str) -> str:
    """A Prefect global concurrency limit of one, so promotions of one model run one at a time."""
    name = promotion_lock_name(model)
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


def current_champion(tracking_uri: str, model: str) -> int | None:
    try:
        mv = registry_client(tracking_uri).get_model_version_by_alias(model, CHAMPION)
    except MlflowException:
        return None
    return int(mv.version)


@task(name="move-champion-alias", cache_policy=NO_CACHE, persist_result=False)
def move_champion_alias(tracking_uri: str, model: str, version: int, expected: int | None) -> None:
    """Point `champion` at ``version``, if it still points where the judgement assumed."""
    now = current_champion(tracking_uri, model)
    if now != expected:

        def label(v: int | None) -> str:
            return f"v{v}" if v is not None else "none"

        raise PromotionConflict(
            f"{model}: the champion is {label(now)} now, not {label(expected)} as when v{version} "
            "was judged; run the promotion again to judge it against the new champion"
        )
    txn = get_transaction()
    if txn is not None:
        txn.set("tracking_uri", tracking_uri)
        txn.set("model", model)
        txn.set("previous", expected)
    registry_client(tracking_uri).set_registered_model_alias(model, CHAMPION, str(version))


@move_champion_alias.on_rollback
def _restore_champion_alias(txn: Transaction) -> None:
    client = registry_client(txn.get("tracking_uri"))
    previous = txn.get("previous")
    if previous is None:
        client.delete_registered_model_alias(txn.get("model"), CHAMPION)
    else:
        client.set_registered_model_alias(txn.get("model"), CHAMPION, str(previous))


@task(name="tag-promoted-version", cache_policy=NO_CACHE, persist_result=False)
def tag_promoted_version(
    tracking_uri: str, model: str, version: int, actor: str, previous: int | None
) -> None:
    """Record on the version when, by whom and over which champion it was promoted."""
    txn = get_transaction()
    if txn is not None:
        txn.set("tracking_uri", tracking_uri)
        txn.set("model", model)
        txn.set("version", version)
    client = registry_client(tracking_uri)
    values = (datetime.now(UTC).isoformat(), actor, str(previous or ""))
    for key, value in zip(PROMOTION_TAGS, values, strict=True):
        client.set_model_version_tag(model, str(version), key, value)


@tag_promoted_version.on_rollback
def _untag_promoted_version(txn: Transaction) -> None:
    client = registry_client(txn.get("tracking_uri"))
    for key in PROMOTION_TAGS:
        with contextlib.suppress(MlflowException):
            client.delete_model_version_tag(txn.get("model"), str(txn.get("version")), key)


@task(name="record-audit-entry", cache_policy=NO_CACHE, persist_result=False, retries=2)
def record_audit_entry(tracking_uri: str, entry: AuditEntry) -> str:
    """Append one entry to the model's audit trail."""
    return AuditTrail(tracking_uri).append(entry)


@dataclass(frozen=True)
class AuditContext:
    """What every audit entry of one flow run shares; ``record`` adds the act itself."""

    tracking_uri: str
    model: str
    actor: str
    trigger: str
    previous_champion: int | None
    policy_version: int
    policy_digest: str
    links: dict[str, str] = field(default_factory=dict)
    evidence: dict[str, object] = field(default_factory=dict)

    def record(self, version: int, action: Action, reason: str, **evidence: object) -> None:
        record_audit_entry(
            self.tracking_uri,
            AuditEntry(
                model=self.model,
                version=version,
                action=action,
                actor=self.actor,
                trigger=self.trigger,
                reason=reason,
                previous_champion=self.previous_champion,
                policy_version=self.policy_version,
                policy_digest=self.policy_digest,
                evidence=self.evidence | evidence,
                links=self.links,
            ),
        )
