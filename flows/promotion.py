"""The promotion flow: judge a challenger by the gates, ask a person if the policy says so, and
make it champion in one recorded act, or reject it with the reason."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run
from prefect.transactions import transaction

from mlops.adapters.audit import Action, AuditTrail
from mlops.adapters.registry import RegisteredVersion, lookup_model_version, registry_client
from mlops.adapters.tracking import load_run_frame
from mlops.core.config import load_pipeline_config
from mlops.core.policy import load_policy
from mlops.core.settings import Settings
from mlops.ml.gates import GateFailed, GateResult, ProbabilisticModel
from mlops.release.approval import ApprovalRejected
from mlops.release.promotion import (
    GATES_FAILED,
    GATES_PASSED,
    GATES_TAG,
    NotEligible,
    PromotionConflict,
    PromotionFailed,
    PromotionOutcome,
    current_user,
    ensure_promotion_lock,
    release_eligibility,
)
from tasks.gates import (
    check_fairness,
    check_metric_thresholds,
    check_model_contract,
    check_training_data,
    compare_with_champion,
    publish_gate_report,
    record_approval,
    request_approval,
)
from tasks.registry import load_model_version, resolve_model_version
from tasks.release import AuditContext, move_champion_alias, tag_promoted_version
from tasks.reporting import write_model_card


@flow(name="promotion", persist_result=True)
def promotion(
    version: str = "challenger",
    pipeline: str | None = None,
    trigger: str = "manual",
    actor: str | None = None,
    go_live: bool = False,
    expected_positive_rate: float | None = None,
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
        expected_positive_rate: handed to the release (see there).

    Returns:
        What happened. A failed gate, a refused approval or a champion that changed meanwhile
        fail the flow run with the reason; the champion is then untouched.
    """
    log = get_run_logger()
    settings = Settings()
    cfg = load_pipeline_config(settings.project_dir / pipeline if pipeline else settings.pipeline)
    policy, policy_digest = load_policy(cfg.policy, set(cfg.contract.columns))
    uri = str(settings.mlflow_tracking_uri)
    name = cfg.model_name
    actor = actor or current_user()
    run_url = f"{settings.prefect_ui_url}/runs/flow-run/{flow_run.get_id()}"

    candidate = resolve_model_version(uri, name, version)
    champion = lookup_model_version(uri, name, "champion")
    previous = champion.version if champion else None
    if previous == candidate.version:
        log.info("%s v%s is the champion already; nothing to judge", name, candidate.version)
        if go_live:  # make sure it serves (a stopped target is started again)
            released = _release(candidate.version, pipeline, trigger, actor, expected_positive_rate)
            return PromotionOutcome(name, candidate.version, False, previous, released.reason, [])
        return PromotionOutcome(name, candidate.version, False, previous, "already champion", [])

    context = AuditContext(
        uri,
        name,
        actor,
        trigger,
        previous,
        policy.version,
        policy_digest,
        links={"prefect_flow_run": run_url, "mlflow_run": candidate.run_id},
    )

    def audit(action: Action, reason: str, **evidence: object) -> None:
        context.record(candidate.version, action, reason, **evidence)

    target = cfg.target.column
    holdout = load_run_frame(uri, candidate.run_id, "holdout")
    # Prefect types a task returning Any as possibly a coroutine; these are sync sklearn models.
    challenger_model = cast(ProbabilisticModel, load_model_version(uri, name, candidate.version))
    champion_model = (
        cast(ProbabilisticModel, load_model_version(uri, name, previous)) if previous else None
    )
    reference = load_run_frame(uri, champion.run_id, "training") if champion else None
    results = [
        check_metric_thresholds(candidate.metrics, policy),
        compare_with_champion(
            challenger_model,
            champion_model,
            holdout,
            target,
            policy.comparison,
            f"champion v{previous}",
            reference,
        ),
        check_fairness(challenger_model, holdout, target, policy.fairness),
        check_training_data(
            load_run_frame(uri, candidate.run_id, "training").drop(columns=[target]),
            reference.drop(columns=[target]) if reference is not None else None,
            policy.data,
        ),
        check_model_contract(
            f"models:/{name}/{candidate.version}", uri, holdout.drop(columns=[target])
        ),
    ]
    publish_gate_report(uri, name, candidate.version, candidate.run_id, previous, results)
    passed = all(r.passed for r in results)
    audit(
        "gate-decision",
        "all gates pass" if passed else str(GateFailed(results)),
        gates=[asdict(r) for r in results],
    )
    client = registry_client(uri)
    client.set_model_version_tag(
        name, str(candidate.version), GATES_TAG, GATES_PASSED if passed else GATES_FAILED
    )
    if not passed:
        failure = GateFailed(results)
        audit("rejected", str(failure))
        raise failure

    if policy.require_approval:
        decision = request_approval(
            f"Promote {name} v{candidate.version} to champion (now v{previous})? "
            f"Gates: {'; '.join(r.reason for r in results)}",
            policy.approval_timeout_seconds,
        )
        # On the version itself, where every path to production reads it (release_eligibility).
        record_approval(uri, name, candidate.version, decision)
        audit("approval", decision.reason, approve=decision.approve, approver=decision.approver)
        if not decision.approve:
            reason = f"not approved by {decision.approver}: {decision.reason}"
            audit("rejected", reason)
            raise ApprovalRejected(f"{name} v{candidate.version}: {reason}")
        actor = decision.approver
        context = dataclasses.replace(context, actor=actor)

    # The release applies the same rule by itself; the alias moved here must meet it too.
    refused = release_eligibility(resolve_model_version(uri, name, str(candidate.version)), policy)
    if refused:
        audit("rejected", refused)
        raise NotEligible(refused)

    if go_live:
        released = _release(candidate.version, pipeline, trigger, actor, expected_positive_rate)
        log.info("%s v%s %s", name, candidate.version, released.reason)
        _card(uri, name, candidate, results)
        return PromotionOutcome(
            name, candidate.version, released.serving, previous, released.reason, results
        )

    # One promotion of a model at a time (a Prefect global concurrency limit of one); inside it,
    # the champion must still be the one the gates judged against, and alias, tags and audit
    # entry change together or not at all.
    try:
        lock = ensure_promotion_lock(name)
        with (
            concurrency(lock, occupy=1, strict=True, timeout_seconds=600, lease_duration=60),
            transaction(),
        ):
            move_champion_alias(uri, name, candidate.version, expected=previous)
            tag_promoted_version(uri, name, candidate.version, actor, previous)
            audit("promoted", f"champion v{previous} replaced" if previous else "first champion")
    except PromotionConflict as exc:
        audit("rejected", str(exc))
        raise
    except Exception as exc:  # MLflow down or refusing: alias and tags are back; say so
        reason = f"promotion failed: {type(exc).__name__}: {exc}; champion stays " + (
            f"v{previous}" if previous else "unset"
        )
        unwritten = context.record_or_report(candidate.version, "rejected", reason)
        raise PromotionFailed(reason + (f"; {unwritten}" if unwritten else "")) from exc

    _card(uri, name, candidate, results)
    log.info(
        "%s v%s is champion (was %s)",
        name,
        candidate.version,
        f"v{previous}" if previous else "none",
    )
    return PromotionOutcome(name, candidate.version, True, previous, "promoted", results)


def _card(uri: str, name: str, candidate: RegisteredVersion, results: list[GateResult]) -> None:
    write_model_card(
        uri,
        lookup_model_version(uri, name, str(candidate.version)) or candidate,
        [asdict(r) for r in results],
        AuditTrail(uri).entries(name, candidate.version),
    )


def _release(
    version: int, pipeline: str | None, trigger: str, actor: str, rate: float | None
) -> Any:
    from flows.release import release

    return release(
        version=str(version),
        pipeline=pipeline,
        trigger=f"promotion ({trigger})",
        actor=actor,
        expected_positive_rate=rate,
    )
