"""Promotion: moving the `champion` alias, with its version tags and audit entry, as one act."""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.concurrency._sync import acquire_concurrency_slots_with_lease
from prefect.transactions import Transaction, get_transaction

from mlops.audit import Action, AuditEntry, AuditTrail
from mlops.errors import MlopsError
from mlops.locks import ensure_limit
from mlops.policy import Policy
from tasks.approval import (
    APPROVAL_AT_TAG,
    APPROVAL_BY_TAG,
    APPROVAL_DECISION_TAG,
    APPROVAL_REASON_TAG,
    APPROVED,
    REFUSED,
)
from tasks.gates import GateResult
from tasks.registry import RegisteredVersion, registration_complete, registry_client

CHAMPION = "champion"
PROMOTION_TAGS = ("mlops.promoted.at", "mlops.promoted.by", "mlops.promoted.previous")
GATES_TAG = "mlops.gates"  # GATES_PASSED or GATES_FAILED, set by the promotion flow
GATES_PASSED, GATES_FAILED = "passed", "failed"


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


class PromotionFailed(MlopsError):
    """Moving the champion failed part-way (MLflow refused or went away); nothing moved."""


class NotEligible(MlopsError):
    """A version may not become champion or take production traffic; the message says why."""


def release_eligibility(version: RegisteredVersion, policy: Policy) -> str | None:
    """Why ``version`` may not become champion or serve under ``policy``; None when it may.

    The one rule every path to production applies (``mlops promote``, ``mlops release``, the
    release deployment, training's hand-over): the gates passed, the registration is complete
    (``tasks.registry.registration_complete``: its checksum recorded, so that every load is
    verified), and, where the policy requires it, a person approved it.
    """
    label = f"{version.name} v{version.version}"
    tags = version.tags
    gates = tags.get(GATES_TAG)
    if gates != GATES_PASSED:
        return (
            f"{label} has not passed the gates ({GATES_TAG} = {gates or 'unset'}); "
            "run the promotion flow"
        )
    if incomplete := registration_complete(version):
        return (
            f"{label} is not completely registered ({incomplete}), so it cannot be verified "
            "where it is loaded; train again to repair the registration"
        )
    if policy.require_approval:
        decision = tags.get(APPROVAL_DECISION_TAG)
        if decision == REFUSED:
            return (
                f"{label} was refused by {tags.get(APPROVAL_BY_TAG, '?')} at "
                f"{tags.get(APPROVAL_AT_TAG, '?')}: {tags.get(APPROVAL_REASON_TAG, '?')}"
            )
        if decision != APPROVED:
            return (
                f"{label} has no recorded approval ({APPROVAL_DECISION_TAG} = "
                f"{decision or 'unset'}), which policy v{policy.version} requires; "
                "run the promotion flow to ask for one"
            )
    return None


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no name
        return "unknown"


def promotion_lock_name(model: str) -> str:
    return f"mlops-promote-{model}"


def ensure_promotion_lock(model: str) -> str:
    """A Prefect global concurrency limit of one, so promotions of one model run one at a time."""
    return ensure_limit(promotion_lock_name(model))


#: Prefect's shortest lease: a holder that dies without a guard blocks the next one this long.
LOCK_LEASE_SECONDS = 60


@contextlib.contextmanager
def promotion_lock(model: str, timeout_seconds: float) -> Iterator[UUID]:
    """Hold ``model``'s promotion lock (``ensure_promotion_lock``); yields the lease's id.

    As Prefect's ``concurrency`` does (renewed while held, released at the end), but the lease id
    is handed out: a release's guard frees it when the release's process is killed, so the next
    release need not wait for the lease to run out (Prefect's ``concurrency`` keeps it private).
    """
    acquired = acquire_concurrency_slots_with_lease(
        [ensure_promotion_lock(model)],
        1,
        timeout_seconds=timeout_seconds,
        strict=True,
        lease_duration=LOCK_LEASE_SECONDS,
    )
    try:
        with maintain_concurrency_lease(
            acquired.lease_id, LOCK_LEASE_SECONDS, raise_on_lease_renewal_failure=True
        ):
            yield acquired.lease_id
    finally:
        release_lock_lease(acquired.lease_id)


def release_lock_lease(lease: UUID) -> None:
    """Free a promotion lock's lease (the server ignores a lease that is gone already)."""
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease)


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


# An MLflow that is briefly away (restarting, a dropped connection) gets about a minute.
@task(
    name="record-audit-entry",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=4,
    retry_delay_seconds=[1, 4, 15, 40],
)
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

    def record_or_report(
        self, version: int, action: Action, reason: str, **evidence: object
    ) -> str | None:
        """``record``, for a path that is failing already: a write that fails after its retries
        is logged and returned as a sentence for the flow's error instead of hiding that error."""
        try:
            self.record(version, action, reason, **evidence)
        except Exception as exc:  # the store is down: the caller's error must still be raised
            note = f"the audit entry ({action}) could not be written: {type(exc).__name__}: {exc}"
            get_run_logger().error(
                "%s v%s: %s; it would have said: %s", self.model, version, note, reason
            )
            return note
        return None

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
