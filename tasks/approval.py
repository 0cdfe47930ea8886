"""Human approval: the promotion flow pauses with a typed form in the Prefect UI."""

from __future__ import annotations

from prefect.exceptions import FailedRun, FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from mlops.errors import MlopsError


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
