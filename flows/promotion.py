"""The promotion flow: judge a challenger by the gates, ask a person if the policy says so, and
make it champion in one recorded act, or reject it with the reason."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import cast

import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.release import release
from mlops.adapters.adoption import (
    AdoptionRefused,
    needs_adoption,
    record_evaluation,
    record_registration,
)
from mlops.adapters.audit import AuditTrail
from mlops.adapters.locks import held
from mlops.adapters.registry import RegisteredVersion, lookup_model_version, registry_client
from mlops.adapters.tracking import load_run_frame
from mlops.core.context import RunContext
from mlops.ml.gates import GateFailed, GateResult
from mlops.ml.prediction_shift import ExpectedPredictions
from mlops.ml.problems import Model, problem_for
from mlops.release.approval import ApprovalRejected
from mlops.release.canary import ReleaseOutcome
from mlops.release.promotion import (
    CHAMPION,
    GATES_FAILED,
    GATES_PASSED,
    GATES_TAG,
    NotEligible,
    PromotionConflict,
    PromotionFailed,
    PromotionOutcome,
    current_user,
    promotion_lock_name,
    release_eligibility,
)
from tasks.data import load_dataset, resolve_data_version, split_dataset, validate_dataset
from tasks.gates import (
    check_fairness,
    check_metric_thresholds,
    check_model_contract,
    check_replay,
    check_training_data,
    compare_with_champion,
    publish_gate_report,
    read_replay_rows,
    record_approval,
    request_approval,
)
from tasks.registry import load_model_version, resolve_model_version
from tasks.release import AuditContext, promote_to_champion
from tasks.reporting import write_model_card
from tasks.training import evaluate_model


@flow(name="promotion", persist_result=True)
def promotion(
    version: str = "challenger",
    pipeline: str | None = None,
    trigger: str = "manual",
    actor: str | None = None,
    go_live: bool = False,
    expected_predictions: ExpectedPredictions | None = None,
    context: RunContext | None = None,
) -> PromotionOutcome:
    """Run the gates on a model version and promote it to champion if they all pass.

    Args:
        version: the version number or alias to judge (default: the latest `challenger`).
        pipeline: pipeline config, relative to the project (default: the settings' example).
        trigger: who or what started this promotion, recorded in the audit trail.
        actor: the person or system acting (default: the user running the flow).
        go_live: hand a passing version to the release flow, which moves the champion alias
            together with production traffic (the policy's strategy and target), instead of
            moving the alias alone.
        expected_predictions: handed to the release (see there).
        context: the calling run's settings, pipeline config and policy (then ``pipeline`` is
            not read again); handed to the release too.

    Returns:
        What happened. A failed gate, a refused approval or a champion that changed meanwhile
        fail the flow run with the reason; the champion is then untouched.
    """
    log = get_run_logger()
    ctx = context or RunContext.load(pipeline=pipeline)
    uri, name = ctx.tracking_uri, ctx.model_name
    actor = actor or current_user()

    candidate = resolve_model_version(uri, name, version)
    champion = lookup_model_version(uri, name, CHAMPION)
    previous = champion.version if champion else None
    if previous == candidate.version:
        log.info("%s v%s is the champion already; nothing to judge", name, candidate.version)
        if go_live:  # make sure it serves (a stopped target is started again)
            released = _hand_over(
                ctx, candidate.version, pipeline, trigger, actor, expected_predictions
            )
            return PromotionOutcome(name, candidate.version, False, previous, released.reason, [])
        return PromotionOutcome(name, candidate.version, False, previous, "already champion", [])

    audit = _audit(ctx, candidate, previous, actor, trigger)
    if needs_adoption(candidate):  # registered outside mlops' flows (a notebook, say)
        candidate = _adopt(ctx, audit, candidate)
    results = _judge(ctx, audit, candidate, champion)
    audit = _clear(ctx, audit, candidate, results)

    if go_live:
        released = _hand_over(
            ctx, candidate.version, pipeline, trigger, audit.actor, expected_predictions
        )
        log.info("%s v%s %s", name, candidate.version, released.reason)
        _card(uri, name, candidate, results)
        return PromotionOutcome(
            name, candidate.version, released.serving, previous, released.reason, results
        )

    _promote(audit, candidate.version)
    _card(uri, name, candidate, results)
    log.info(
        "%s v%s is champion (was %s)",
        name,
        candidate.version,
        f"v{previous}" if previous else "none",
    )
    return PromotionOutcome(name, candidate.version, True, previous, "promoted", results)


def _judge(
    ctx: RunContext,
    audit: AuditContext,
    candidate: RegisteredVersion,
    champion: RegisteredVersion | None,
) -> list[GateResult]:
    """Every gate on ``candidate`` (against ``champion``), reported, recorded in the audit trail
    and on the version; a failure rejects it (``GateFailed``)."""
    uri, name, target = ctx.tracking_uri, ctx.model_name, ctx.config.target.column
    problem = problem_for(ctx.config.target)
    previous = champion.version if champion else None
    holdout = load_run_frame(uri, candidate.run_id, "holdout")
    # Prefect types a task returning Any as possibly a coroutine; these are sync sklearn models.
    challenger_model = cast(Model, load_model_version(uri, name, candidate.version))
    champion_model = cast(Model, load_model_version(uri, name, previous)) if previous else None
    reference = load_run_frame(uri, champion.run_id, "training") if champion else None
    training = load_run_frame(uri, candidate.run_id, "training")
    features = list(ctx.config.features.columns)
    replayed = ctx.policy.replay
    production = (
        read_replay_rows(
            ctx.settings.prediction_log(name), replayed.lookback_hours, features, replayed.max_rows
        )
        if previous is not None and replayed.enabled
        else pd.DataFrame(columns=[*features, "label"])
    )
    results = [
        check_metric_thresholds(candidate.metrics, ctx.policy),
        compare_with_champion(
            challenger_model,
            champion_model,
            holdout,
            problem,
            ctx.policy.comparison,
            f"champion v{previous}",
            reference,
        ),
        check_replay(
            challenger_model, production, previous, problem, features, ctx.policy, training
        ),
        check_fairness(challenger_model, holdout, problem, ctx.policy.fairness),
        check_training_data(
            training.drop(columns=[target]),
            reference.drop(columns=[target]) if reference is not None else None,
            ctx.policy.data,
        ),
        check_model_contract(
            f"models:/{name}/{candidate.version}", uri, holdout.drop(columns=[target]), problem
        ),
    ]
    publish_gate_report(uri, name, candidate.version, candidate.run_id, previous, results, problem)
    passed = all(r.passed for r in results)
    audit.record(
        candidate.version,
        "gate-decision",
        "all gates pass" if passed else str(GateFailed(results)),
        gates=[asdict(r) for r in results],
    )
    registry_client(uri).set_model_version_tag(
        name, str(candidate.version), GATES_TAG, GATES_PASSED if passed else GATES_FAILED
    )
    if not passed:
        failure = GateFailed(results)
        audit.record(candidate.version, "rejected", str(failure))
        raise failure
    return results


def _adopt(ctx: RunContext, audit: AuditContext, candidate: RegisteredVersion) -> RegisteredVersion:
    """Adopt a version registered outside mlops (``mlops.adapters.adoption``): its artifacts'
    format checked and checksum recorded, its provenance, and its scores on the holdout of the
    pipeline's current data version, split as training splits it, on its run for the gates."""
    uri, name, cfg = ctx.tracking_uri, ctx.model_name, ctx.config
    run_id = str(flow_run.get_id() or "local")
    try:
        provenance = record_registration(uri, candidate, f"promotion flow run {run_id}")
    except AdoptionRefused as exc:
        audit.record(candidate.version, "rejected", str(exc))
        raise
    data = resolve_data_version(ctx.project_dir, cfg.data.path, None)
    frame = load_dataset(ctx.project_dir, data, cfg.data.na_values)
    source = f"{data.path}@{data.short}"
    valid = validate_dataset(frame, cfg.contract, source, ctx.settings.reports_dir / run_id)
    split = split_dataset(valid, cfg.features.columns, problem_for(cfg.target), cfg.split)
    registered = resolve_model_version(uri, name, str(candidate.version))
    model = cast(Model, load_model_version(uri, name, candidate.version))
    metrics = evaluate_model(model, split)
    record_evaluation(uri, registered, split, metrics)
    audit.record(candidate.version, "adopted", provenance, data=source, holdout_metrics=metrics)
    get_run_logger().info("%s v%s adopted: %s", name, candidate.version, provenance)
    return resolve_model_version(uri, name, str(candidate.version))


def _audit(
    ctx: RunContext, candidate: RegisteredVersion, previous: int | None, actor: str, trigger: str
) -> AuditContext:
    """What every audit entry of this promotion shares."""
    run_url = f"{ctx.settings.prefect_ui_url}/runs/flow-run/{flow_run.get_id()}"
    return AuditContext(
        ctx.tracking_uri,
        ctx.model_name,
        actor,
        trigger,
        previous,
        ctx.policy.version,
        ctx.policy_digest,
        links={"prefect_flow_run": run_url, "mlflow_run": candidate.run_id},
    )


def _clear(
    ctx: RunContext, audit: AuditContext, candidate: RegisteredVersion, results: list[GateResult]
) -> AuditContext:
    """Clear a version whose gates passed for production: a person's decision where the policy
    requires one, then the rule every path to production applies; returns the audit with the
    approver as its actor. Raises ``ApprovalRejected`` or ``NotEligible`` with the reason."""
    audit = _approve(ctx, audit, candidate, results)
    # The release applies the same rule by itself; the alias moved here must meet it too.
    refused = release_eligibility(
        resolve_model_version(ctx.tracking_uri, ctx.model_name, str(candidate.version)),
        ctx.policy,
    )
    if refused:
        audit.record(candidate.version, "rejected", refused)
        raise NotEligible(refused)
    return audit


def _approve(
    ctx: RunContext, audit: AuditContext, candidate: RegisteredVersion, results: list[GateResult]
) -> AuditContext:
    """Where the policy requires it, a person's decision (``ApprovalRejected`` when it is no);
    returns the audit with the approver as its actor."""
    if not ctx.policy.require_approval:
        return audit
    name, version = audit.model, candidate.version
    decision = request_approval(
        f"Promote {name} v{version} to champion (now v{audit.previous_champion})? "
        f"Gates: {'; '.join(r.reason for r in results)}",
        ctx.policy.approval_timeout_seconds,
    )
    # On the version itself, where every path to production reads it (release_eligibility).
    record_approval(audit.tracking_uri, name, version, decision)
    audit.record(
        version, "approval", decision.reason, approve=decision.approve, approver=decision.approver
    )
    if not decision.approve:
        reason = f"not approved by {decision.approver}: {decision.reason}"
        audit.record(version, "rejected", reason)
        raise ApprovalRejected(f"{name} v{version}: {reason}")
    return dataclasses.replace(audit, actor=decision.approver)


def _promote(audit: AuditContext, version: int) -> None:
    """Make ``version`` champion over the one the gates judged against, or say why not."""
    previous = audit.previous_champion
    # One promotion of a model at a time (the promotion lock); inside it, the champion must
    # still be the one the gates judged against (else PromotionConflict).
    try:
        with held(promotion_lock_name(audit.model), timeout_seconds=600):
            promote_to_champion(
                audit,
                version,
                previous,
                "promoted",
                f"champion v{previous} replaced" if previous else "first champion",
            )
    except PromotionConflict as exc:
        audit.record(version, "rejected", str(exc))
        raise
    except Exception as exc:  # MLflow down or refusing: alias and tags are back; say so
        reason = f"promotion failed: {type(exc).__name__}: {exc}; champion stays " + (
            f"v{previous}" if previous else "unset"
        )
        unwritten = audit.record_or_report(version, "rejected", reason)
        raise PromotionFailed(reason + (f"; {unwritten}" if unwritten else "")) from exc


def _card(uri: str, name: str, candidate: RegisteredVersion, results: list[GateResult]) -> None:
    write_model_card(
        uri,
        lookup_model_version(uri, name, str(candidate.version)) or candidate,
        [asdict(r) for r in results],
        AuditTrail(uri).entries(name, candidate.version),
    )


def _hand_over(
    ctx: RunContext,
    version: int,
    pipeline: str | None,
    trigger: str,
    actor: str,
    expected_predictions: ExpectedPredictions | None,
) -> ReleaseOutcome:
    """The release of ``version`` (it moves the champion alias together with the traffic)."""
    return release(
        version=str(version),
        pipeline=pipeline,
        trigger=f"promotion ({trigger})",
        actor=actor,
        expected_predictions=expected_predictions,
        context=ctx,
    )
