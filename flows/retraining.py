"""The retraining flow: what an automation launches when a model's production data drifts, its
live performance decays, or its policy changes. It records why, trains on the current data
version and the labelled production data, and hands a passing version to the gates and the
release; anything that fails on the way leaves the champion serving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.training import training
from mlops.adapters.registry import lookup_model_version
from mlops.adapters.tracking import load_run_frame
from mlops.core.config import load_pipeline_config
from mlops.core.events import POLICY_UPDATED
from mlops.core.policy import load_policy
from mlops.core.settings import Settings
from mlops.ml.gates import ProbabilisticModel
from mlops.ml.production_data import CollectedRows
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
    log = get_run_logger()
    settings = Settings()
    cfg = load_pipeline_config(settings.project_dir / pipeline if pipeline else settings.pipeline)
    policy, digest = load_policy(cfg.policy, set(cfg.contract.columns))
    uri, name = str(settings.mlflow_tracking_uri), cfg.model_name
    champion = lookup_model_version(uri, name, "champion")
    before = champion.version if champion else None
    run_id = str(flow_run.get_id() or "local")
    trigger = f"{reason} (event {event_id})" if event_id else reason
    context = AuditContext(
        uri,
        name,
        "automation" if event_id else "retraining",
        trigger,
        before,
        policy.version,
        digest,
        links={"prefect_flow_run": f"{settings.prefect_ui_url}/runs/flow-run/{run_id}"},
    )
    payload = evidence or {}
    context.record(
        before or 0,
        "retraining-triggered",
        str(payload.get("reason") or reason),
        event=reason,
        event_id=event_id,
        evidence=payload,
    )

    if reason == POLICY_UPDATED and champion is not None:
        model = cast(ProbabilisticModel, load_model_version(uri, name, champion.version))
        holdout = load_run_frame(uri, champion.run_id, "holdout")
        verdicts = [
            check_metric_thresholds(champion.metrics, policy),
            check_fairness(model, holdout, cfg.target.column, policy.fairness),
        ]
        failed = [v for v in verdicts if not v.passed]
        if not failed:
            note = f"champion v{before} meets policy v{policy.version}: nothing to retrain"
            context.record(before or 0, "retraining-skipped", note)
            log.info(note)
            return RetrainingOutcome(name, reason, event_id, before, None, before, note)
        log.warning(
            "champion v%s fails policy v%s: %s",
            before,
            policy.version,
            "; ".join(v.reason for v in failed),
        )

    now = datetime.now(UTC)
    collected = collect_production_data(
        settings.prediction_log(name),
        now - timedelta(days=production_days),
        now,
        cfg,
        settings.state_dir / "retraining" / run_id / "production.parquet",
    )
    _record_collection(context, before or 0, collected)
    production = collected.data
    try:
        trained = training(
            pipeline=pipeline,
            trigger=f"retraining: {trigger}",
            hand_over="release",
            production_data=production.path if production else None,
            expected_positive_rate=production.recent_positive_rate if production else None,
        )
    except Exception as exc:  # a gate, the release, anything: recorded, then the run fails with it
        context.record(before or 0, "retraining-failed", f"champion v{before} keeps serving: {exc}")
        raise
    after = current_champion(uri, name)
    note = (
        f"v{trained.version} trained on {production.rows if production else 0} labelled production "
        f"rows beside the data version; champion v{before} -> v{after}"
    )
    log.info(note)
    return RetrainingOutcome(name, reason, event_id, before, trained.version, after, note)


def _record_collection(context: AuditContext, version: int, collected: CollectedRows) -> None:
    """The audit entry of what production data joins the training, and what was left out why."""
    rejected = collected.rejected
    reason = f"{collected.kept} labelled production rows meet the data contract" + (
        f"; left out: {rejected.summary()}" if rejected.count else ""
    )
    if rejected.count:
        get_run_logger().warning(reason)
    context.record(
        version,
        "production-data-collected",
        reason,
        kept_rows=collected.kept,
        rejected_rows=rejected.count,
        failed_checks=rejected.checks,
        rejected_examples=rejected.examples,
    )
