"""Applying a policy file: the audit entry, the Prefect variable and ``mlops.policy.updated``."""

from __future__ import annotations

import uuid
from pathlib import Path

from prefect.variables import Variable

from mlops.adapters.audit import AuditEntry, AuditTrail
from mlops.adapters.events import emit_model_event
from mlops.core.errors import ConfigError
from mlops.core.events import POLICY_UPDATED
from mlops.core.metrics import ProblemType
from mlops.core.policy import load_policy


def apply_policy(
    tracking_uri: str,
    model: str,
    path: Path,
    columns: set[str],
    actor: str,
    problem: ProblemType | None = None,
) -> tuple[str, str | None]:
    """Record the policy file as ``model``'s applied policy (audit trail, Prefect variable) and
    emit ``mlops.policy.updated``, which the retraining automation answers by judging the
    champion against it. A file that changed without a higher ``version`` is refused.

    Returns what happened and the event id (None when the applied policy is this one already).
    """
    policy, digest = load_policy(path, columns, problem)
    key = f"mlops-policy-{model}"
    last = Variable.get(key, default=None)
    last_version = int(last["version"]) if isinstance(last, dict) else None
    if isinstance(last, dict) and last.get("digest") == digest:
        return f"policy v{policy.version} ({digest}) is applied already", None
    if last_version is not None and policy.version <= last_version:
        raise ConfigError(
            f"{path}: the policy changed but its version {policy.version} is not above the "
            f"applied version {last_version}: bump `version`"
        )
    what = (
        f"policy v{last_version} -> v{policy.version}"
        if last_version is not None
        else f"policy v{policy.version} applied"
    )
    # The entry first, naming the event it announces: an automation answering the event finds
    # the entry, and a failed write emits nothing.
    event_id = uuid.uuid4()
    AuditTrail(tracking_uri).append(
        AuditEntry(
            model=model,
            action="policy-applied",
            actor=actor,
            trigger="mlops policy apply",
            reason=what,
            policy_version=policy.version,
            policy_digest=digest,
            evidence={"previous": last, "event_id": str(event_id), "file": str(path)},
        )
    )
    emitted = emit_model_event(
        POLICY_UPDATED,
        model,
        {"reason": what, "policy_version": policy.version, "digest": digest, "previous": last},
        event_id,
    )
    Variable.set(key, {"version": policy.version, "digest": digest}, overwrite=True)
    return what, emitted
