"""Human approval: the promotion flow pauses with a typed form in the Prefect UI; the decision is
recorded on the model version (who, when, why), where every path to production reads it."""

from __future__ import annotations

from mlops.core.errors import MlopsError

#: A person's decision on a version, recorded on the version itself (the release reads it back).
APPROVAL_DECISION_TAG = "mlops.approval.decision"  # APPROVED or REFUSED

APPROVAL_BY_TAG = "mlops.approval.by"

APPROVAL_AT_TAG = "mlops.approval.at"

APPROVAL_REASON_TAG = "mlops.approval.reason"

APPROVED, REFUSED = "approved", "refused"


class ApprovalRejected(MlopsError):
    """A reviewer said no, or nobody answered in time."""
