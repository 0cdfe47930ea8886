"""The retraining flow: what an automation launches when a model's production data drifts, its
live performance decays, or its policy changes. It records why, trains on the current data
version and the labelled production data, and hands a passing version to the gates and the
release (the ``delivery`` flow); anything that fails on the way leaves the champion serving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.delivery import HandOver, delivery
from flows.model_version import TrainingRequest
from mlops.adapters.registry import RegisteredVersion, lookup_model_version
from mlops.adapters.tracking import load_run_frame
from mlops.core.context import RunContext
from mlops.core.events import POLICY_UPDATED
from mlops.core.lineage import CHAMPION_ALIAS
from mlops.core.settings import Settings
from mlops.ml.problems import Model, problem_for
from mlops.ml.production_data import CollectedRows, ProductionData
from mlops.ml.retraining import RetrainingOutcome
from mlops.release.promotion import current_champion
from tasks.gates import check_fairness, check_metric_thresholds
from tasks.monitoring import collect_production_data
from tasks.registry import load_model_version
from tasks.release import AuditContext


@flow(name="retraining", persist_result=True)
def retraining(
    pipeline: str | None = None,
    reason: str = "manual",
    event_id: str | None = None,
    evidence: dict[str, Any] | None = None,
    production_days: float = 7.0,
) -> RetrainingOutcome:
    """Retrain because of ``reason``; release the new version if it passes the gates.

    Args:
        pipeline: pipeline config, relative to the project (default: the settings' example).
        reason: what asked for it: an event name (`mlops.model.drift-detected`, ...) or `manual`.
        event_id: the Prefect event that triggered this run, recorded in the audit trail.
        evidence: the event's payload, recorded in the audit trail.
        production_days: labelled production rows from this many days back join the training data.

    Returns:
        The champion before and after. On a policy change, a champion that still meets the
        policy is kept and nothing is trained.
    """
    ctx = RunContext.load(Settings(), pipeline)
    name = ctx.model_name
    champion = lookup_model_version(ctx.tracking_uri, name, CHAMPION_ALIAS)
    before = champion.version if champion else None
    run_id = str(flow_run.get_id() or "local")
    trigger = f"{reason} (event {event_id})" if event_id else reason
    actor = "automation" if event_id else "retraining"
    audit = AuditContext(
        ctx.tracking_uri, name, actor, trigger, before, ctx.policy.version, ctx.policy_digest,
        links={"prefect_flow_run": ctx.flow_run_url(run_id)},
    )  # fmt: skip
    payload = evidence or {}
    audit.record(
        before or 0,
        "retraining-triggered",
        str(payload.get("reason") or reason),
        event=reason,
        event_id=event_id,
        evidence=payload,
    )
    if reason == POLICY_UPDATED and champion is not None and _meets_policy(ctx, champion):
        note = f"champion v{before} meets policy v{ctx.policy.version}: nothing to retrain"
        audit.record(before or 0, "retraining-skipped", note)
        get_run_logger().info(note)
        return RetrainingOutcome(name, reason, event_id, before, None, before, note)

    production = _collect(ctx, audit, before or 0, production_days, run_id)
    request = TrainingRequest(
        trigger=f"retraining: {trigger}", production_data=production.path if production else None
    )
    hand_over = HandOver("release", production.expected if production else None)
    try:
        trained = delivery(ctx, request, hand_over)
    except Exception as exc:  # a gate, the release, anything: recorded, then the run fails with it
        audit.record(before or 0, "retraining-failed", f"champion v{before} keeps serving: {exc}")
        raise
    after = current_champion(ctx.tracking_uri, name)
    note = (
        f"v{trained.version} trained on {production.rows if production else 0} labelled production "
        f"rows beside the data version; champion v{before} -> v{after}"
    )
    get_run_logger().info(note)
    return RetrainingOutcome(name, reason, event_id, before, trained.version, after, note)


def _meets_policy(ctx: RunContext, champion: RegisteredVersion) -> bool:
    """Whether the champion passes the (changed) policy's metric and fairness gates."""
    uri, name = ctx.tracking_uri, ctx.model_name
    model = cast(Model, load_model_version(uri, name, champion.version))
    holdout = load_run_frame(uri, champion.run_id, "holdout")
    verdicts = [
        check_metric_thresholds(champion.metrics, ctx.policy),
        check_fairness(model, holdout, problem_for(ctx.config.target), ctx.policy.fairness),
    ]
    failed = [v for v in verdicts if not v.passed]
    if failed:
        get_run_logger().warning(
            "champion v%s fails policy v%s: %s",
            champion.version,
            ctx.policy.version,
            "; ".join(v.reason for v in failed),
        )
    return not failed


def _collect(
    ctx: RunContext, audit: AuditContext, version: int, days: float, run_id: str
) -> ProductionData | None:
    """The labelled production rows of the last ``days`` that meet the contract, audited."""
    now = datetime.now(UTC)
    collected = collect_production_data(
        ctx.settings.prediction_log(ctx.model_name),
        now - timedelta(days=days),
        now,
        ctx.config,
        ctx.settings.state_dir / "retraining" / run_id / "production.parquet",
    )
    _record_collection(audit, version, collected)
    return collected.data


def _record_collection(audit: AuditContext, version: int, collected: CollectedRows) -> None:
    """The audit entry of what production data joins the training, what was left out why, and
    what its recent labels look like (the predictions the release expects of the new version)."""
    rejected = collected.rejected
    expected = collected.data.expected.model_dump() if collected.data else None
    reason = f"{collected.kept} labelled production rows meet the data contract" + (
        f"; left out: {rejected.summary()}" if rejected.count else ""
    )
    if rejected.count:
        get_run_logger().warning(reason)
    audit.record(
        version,
        "production-data-collected",
        reason,
        kept_rows=collected.kept,
        rejected_rows=rejected.count,
        failed_checks=rejected.checks,
        rejected_examples=rejected.examples,
        expected_predictions=expected,
    )
