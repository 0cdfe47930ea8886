"""Promotion: moving the `champion` alias, with its version tags and audit entry, as one act."""

from __future__ import annotations

import getpass
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from mlops.adapters.audit import AuditEntry, AuditTrail
from mlops.adapters.locks import lock_name
from mlops.adapters.registry import RegisteredVersion, registration_complete, registry_client
from mlops.core.errors import MlopsError
from mlops.core.lineage import CHAMPION_ALIAS as CHAMPION  # defined once, in core
from mlops.core.policy import Policy
from mlops.ml.gates import GateResult
from mlops.release.approval import (
    APPROVAL_AT_TAG,
    APPROVAL_BY_TAG,
    APPROVAL_DECISION_TAG,
    APPROVAL_REASON_TAG,
    APPROVED,
    REFUSED,
)

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
    (``mlops.adapters.registry.registration_complete``: its checksum recorded, so that every
    load is verified), and, where the policy requires it, a person approved it.
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
    """The lock every change of ``model``'s champion holds, so that promotions and releases of
    one model run one at a time (``mlops.adapters.locks``)."""
    return lock_name("promote", model)


def current_champion(tracking_uri: str, model: str) -> int | None:
    """The version the `champion` alias of ``model`` points at; None while there is none."""
    try:
        mv = registry_client(tracking_uri).get_model_version_by_alias(model, CHAMPION)
    except MlflowException:
        return None
    return int(mv.version)


# An MLflow that is briefly away (restarting, a dropped connection) gets about a minute.
def record_audit_entry(tracking_uri: str, entry: AuditEntry) -> str:
    """Append one entry to the model's audit trail."""
    return AuditTrail(tracking_uri).append(entry)


@dataclass(frozen=True)
class Settlement:
    """What became of a champion alias that disagreed with the version serving all traffic."""

    repaired: bool
    reason: str
    previous: int | None  # the champion before


def interrupted_release(entries: list[AuditEntry], version: int) -> AuditEntry | None:
    """The `release-started` entry of ``version``'s last release, if that release never ended."""
    ends = ("release-started", "released", "release-rolled-back")
    mine = [e for e in entries if e.version == version and e.action in ends]
    return mine[-1] if mine and mine[-1].action == "release-started" else None


def settlement_refusal(
    serving: RegisteredVersion | None,
    policy: Policy,
    started: AuditEntry | None,
    candidate: int,
) -> str | None:
    """Why the champion alias may not be moved to ``serving``, the version all traffic goes to;
    None when it may: it is eligible, and its release got that far before it died (``started``)
    or it is the ``candidate`` being released again."""
    if serving is None:
        return "it is not registered"
    refused = release_eligibility(serving, policy)
    if refused is None and started is None and serving.version != candidate:
        refused = "no release of it is recorded as started and unfinished"
    return refused
