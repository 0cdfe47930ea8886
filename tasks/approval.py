"""Human approval: the promotion flow pauses with a typed form in the Prefect UI; the decision is
recorded on the model version (who, when, why), where every path to production reads it."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FailedRun, FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from mlops.errors import MlopsError
from tasks.registry import registry_client

#: A person's decision on a version, recorded on the version itself (the release reads it back).
APPROVAL_DECISION_TAG = "mlops.approval.decision"  # APPROVED or REFUSED
APPROVAL_BY_TAG = "mlops.approval.by"
APPROVAL_AT_TAG = "mlops.approval.at"
APPROVAL_REASON_TAG = "mlops.approval.reason"
APPROVED, REFUSED = "approved", "refused"


class ApprovalDecision(RunInput):
    """The form a reviewer fills in to let a model version become champion, or not."""

    approve: bool = Field(description="Promote this version to champion?")
    approver: str = Field(description="Who decides (name or e-mail).", min_length=1)
    reason: str = Field(description="Why: recorded in the audit trail.", min_length=1)


class ApprovalRejected(MlopsError):
    """A reviewer said no, or nobody answered in time."""


def request_approval(
    description: str, timeout_seconds: int, poll_interval: int = 5
) -> ApprovalDecision:
    """Pause this flow run until a reviewer answers the form; no answer in time is a rejection.

    Must be called from a flow run (the pause is the flow run's state).
    """
    try:
        decision = pause_flow_run(
            wait_for_input=ApprovalDecision.with_initial_data(
                description=description, approve=False, approver="", reason=""
            ),
            timeout=timeout_seconds,
            poll_interval=poll_interval,
        )
    except (FlowPauseTimeout, FailedRun):
        # The client gives up at the timeout (FlowPauseTimeout), or finds the server already
        # failed the paused run for it (FailedRun): either way nobody approved.
        return ApprovalDecision(
            approve=False,
            approver="(nobody)",
            reason=f"no decision within {timeout_seconds} s: rejected by timeout",
        )
    return decision


@task(name="record-approval", cache_policy=NO_CACHE, persist_result=False, retries=2)
def record_approval(
    tracking_uri: str, model: str, version: int, decision: ApprovalDecision
) -> None:
    """Record on the version who decided, when, why, and whether it may go live."""
    client = registry_client(tracking_uri)
    # An earlier decision goes first and the new one is written last: a write cut short leaves
    # the version undecided, which the release refuses, never a stale approval beside new text.
    with contextlib.suppress(MlflowException):
        client.delete_model_version_tag(model, str(version), APPROVAL_DECISION_TAG)
    values = {
        APPROVAL_BY_TAG: decision.approver,
        APPROVAL_AT_TAG: datetime.now(UTC).isoformat(),
        APPROVAL_REASON_TAG: decision.reason,
        APPROVAL_DECISION_TAG: APPROVED if decision.approve else REFUSED,
    }
    for key, value in values.items():
        client.set_model_version_tag(model, str(version), key, value)
