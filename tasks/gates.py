"""Gate steps: thresholds, champion comparison, replay, fairness, data and model contract, the gate
report, approval."""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pandas as pd
from mlflow.exceptions import MlflowException
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.input import RunInput
from pydantic import Field

from mlops.adapters.gate_report import gate_report, gate_table
from mlops.adapters.prediction_window import SETTLE, read_prediction_window
from mlops.adapters.registry import parse_registered_uri, registry_client, verified_model_folder
from mlops.adapters.tracking import problem_metadata
from mlops.ml import gates, replay
from mlops.ml.gates import GateResult
from mlops.ml.problems import Problem
from mlops.release.approval import (
    APPROVAL_AT_TAG,
    APPROVAL_BY_TAG,
    APPROVAL_DECISION_TAG,
    APPROVAL_REASON_TAG,
    APPROVED,
    REFUSED,
)
from tasks import ask_in_ui, step

check_metric_thresholds = step(gates.check_metric_thresholds, name="check-metric-thresholds")
compare_with_champion = step(gates.compare_with_champion, name="compare-with-champion")
check_fairness = step(gates.check_fairness, name="check-fairness")
check_training_data = step(gates.check_training_data, name="check-training-data")
check_replay = step(replay.check_replay, name="check-replay")


@step(name="read-replay-rows")
def read_replay_rows(
    log_root: str, lookback_hours: float, features: list[str], max_rows: int
) -> pd.DataFrame:
    """The prediction log's rows of the last ``lookback_hours`` (the newest ``max_rows``), with
    the labels that came back: what the replay gate replays."""
    until = datetime.now(UTC) - SETTLE
    since = until - timedelta(hours=lookback_hours)
    window = read_prediction_window(log_root, since, until, features, max_rows)
    if window.problems:
        get_run_logger().warning("replay: %s", "; ".join(window.problems))
    return window.rows


@step(name="check-model-contract")
def check_model_contract(
    model_uri: str, tracking_uri: str, holdout: pd.DataFrame, problem: Problem | None = None
) -> GateResult:
    """Gate: the registered model, fetched and verified, answers through pyfunc as its problem
    type asks (the same as ``problem``'s, given one) and enforces its signature."""
    name, version = parse_registered_uri(model_uri)
    folder = verified_model_folder(tracking_uri, name, version)
    return gates.check_model_contract(folder, holdout, problem)


@step(name="publish-gate-report")
def publish_gate_report(
    tracking_uri: str,
    model: str,
    version: int,
    run_id: str,
    champion: int | None,
    results: list[GateResult],
    problem: Problem,
) -> None:
    """The gate verdicts, with the problem type they judged, as Prefect artifacts and on the
    version's MLflow run (gates.json, gates.md)."""
    report = gate_report(model, version, champion, results, problem)
    create_table_artifact(
        key="gate-results", table=gate_table(results), description=f"{model} v{version}: gates"
    )
    create_markdown_artifact(key="gate-report", markdown=report, description=f"{model} v{version}")
    client = registry_client(tracking_uri)
    client.log_dict(
        run_id,
        {
            "champion": champion,
            "problem": problem_metadata(problem),
            "gates": [asdict(r) for r in results],
        },
        "gates.json",
    )
    client.log_text(run_id, report, "gates.md")


class ApprovalDecision(RunInput):
    """The form a reviewer fills in to let a model version become champion, or not."""

    approve: bool = Field(description="Promote this version to champion?")
    approver: str = Field(description="Who decides (name or e-mail).", min_length=1)
    reason: str = Field(description="Why: recorded in the audit trail.", min_length=1)


def request_approval(
    description: str, timeout_seconds: int, poll_interval: int = 5
) -> ApprovalDecision:
    """Pause this flow run until a reviewer answers the form; no answer in time is a rejection.

    Must be called from a flow run (the pause is the flow run's state).
    """
    decision = ask_in_ui(
        ApprovalDecision,
        timeout_seconds,
        poll_interval,
        description=description,
        approve=False,
        approver="",
        reason="",
    )
    if decision is None:  # nobody approved
        return ApprovalDecision(
            approve=False,
            approver="(nobody)",
            reason=f"no decision within {timeout_seconds} s: rejected by timeout",
        )
    return decision


@step(name="record-approval", retries=2)
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
