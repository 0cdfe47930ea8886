"""The release flow: a validated model version goes live by the policy's strategy, is watched while
it takes traffic, and is rolled back by itself when it misbehaves."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.transactions import transaction

from mlops.adapters.audit import Action
from mlops.adapters.registry import download_model
from mlops.core.config import load_pipeline_config
from mlops.core.errors import MlopsError
from mlops.core.integrity import CHECKSUM_TAG, IMAGE_TAG
from mlops.core.policy import load_policy
from mlops.core.settings import Settings
from mlops.release.canary import ReleaseFailed, ReleaseOutcome, Verdict
from mlops.release.promotion import current_champion, current_user, release_eligibility
from mlops.release.router import Traffic
from mlops.release.smoke import known_batch
from mlops.release.targets.base import make_target
from mlops.stack.local import serving_token
from tasks.registry import resolve_model_version
from tasks.release import (
    AuditContext,
    deploy_candidate,
    move_champion_alias,
    promotion_lock,
    roll_back_traffic,
    route_all_to,
    settle_champion,
    shift_traffic,
    smoke_test_candidate,
    tag_promoted_version,
    watch_candidate,
)


@flow(name="release", persist_result=True)
def release(
    version: str = "challenger",
    pipeline: str | None = None,
    target: str | None = None,
    strategy: str | None = None,
    trigger: str = "manual",
    actor: str | None = None,
    expected_positive_rate: float | None = None,
) -> ReleaseOutcome:
    """Put a model version into production by blue-green, canary or shadow, or roll it back.

    Args:
        version: version number or alias (default: the latest `challenger`); it must be eligible
            (`tasks.promotion.release_eligibility`: gates passed, registration complete, approved
            where the policy requires it).
        pipeline: pipeline config, relative to the project (default: the settings' example).
        target: where it runs (default: the policy's, `local`).
        strategy: `blue-green`, `canary` or `shadow` (default: the policy's).
        trigger, actor: recorded in the audit trail.
        expected_positive_rate: the share of positives the candidate should predict (a retraining
            passes the one in recent production labels); default: the champion's share.

    A release that cannot go on ends with production traffic on the champion, an audit entry
    saying why, and a failed flow run whose message is that reason.
    """
    log = get_run_logger()
    settings = Settings()
    cfg = load_pipeline_config(settings.project_dir / pipeline if pipeline else settings.pipeline)
    policy, digest = load_policy(cfg.policy, set(cfg.contract.columns))
    rules = policy.release
    chosen = strategy or rules.strategy
    uri, name = str(settings.mlflow_tracking_uri), cfg.model_name
    actor = actor or current_user()
    run_url = f"{settings.prefect_ui_url}/runs/flow-run/{flow_run.get_id()}"
    previous = current_champion(uri, name)
    cand_version: int | None = None

    context = AuditContext(
        uri,
        name,
        actor,
        trigger,
        previous,
        policy.version,
        digest,
        links={"prefect_flow_run": run_url},
        evidence={"strategy": chosen, "target": target or rules.target},
    )

    def audit(action: Action, reason: str, **evidence: object) -> None:
        context.record(cand_version or 0, action, reason, **evidence)

    try:
        if chosen not in ("blue-green", "canary", "shadow"):
            raise ReleaseFailed(f"unknown strategy {chosen!r} (blue-green, canary, shadow)")
        candidate = resolve_model_version(uri, name, version)
        cand_version = candidate.version
        refused = release_eligibility(candidate, policy)
        if refused:
            raise ReleaseFailed(refused)
        where = make_target(target or rules.target, settings, name)
    except MlopsError as exc:
        unwritten = context.record_or_report(cand_version or 0, "release-failed", str(exc))
        if unwritten:
            raise ReleaseFailed(f"{exc}; {unwritten}") from exc
        raise

    # One release or promotion of a model at a time. From the moment this one holds the lock a
    # separate process, the guard, watches it: should it die, the guard puts all traffic back on
    # the stable slot and frees the lock; the next release then settles the champion alias.
    with promotion_lock(name, timeout_seconds=900) as lease:
        where.guard(lease)
        try:
            if (now_champion := current_champion(uri, name)) != previous:  # moved while we waited
                previous = now_champion
                context = dataclasses.replace(context, previous_champion=previous)
            recovered = where.recover()
            if recovered:
                log.warning(recovered)
                audit("release-rolled-back", recovered)
            now = where.state()
            stable = now.stable.slot if now.stable else None
            serving = now.stable.version if now.stable else None
            mismatch: str | None = None
            if serving is not None and serving != previous:
                # A release killed after the switch and before the alias moved: finish it, or say so
                # (the release below then puts traffic where the alias will point).
                settled = settle_champion(context, policy, serving, candidate.version, where.name)
                log.warning(settled.reason)
                if not settled.repaired:
                    mismatch = settled.reason
                else:
                    context = dataclasses.replace(context, previous_champion=serving)
                    previous = serving
                    if serving == candidate.version:
                        return ReleaseOutcome(
                            name, candidate.version, True, settled.previous, settled.reason, chosen
                        )
            if serving is not None and serving == candidate.version == previous:
                log.info("%s v%s serves already", name, candidate.version)
                return ReleaseOutcome(
                    name, candidate.version, True, previous, "already serving", chosen
                )
            audit(
                "release-started",
                f"{chosen} of v{candidate.version} on {where.name}",
                **({"mismatch": mismatch} if mismatch else {}),
            )

            def roll_back(reason: str) -> ReleaseOutcome:
                roll_back_traffic(where, name, stable, reason)
                unwritten = context.record_or_report(
                    candidate.version, "release-rolled-back", reason
                )
                raise ReleaseFailed(
                    f"{name} v{candidate.version} rolled back: {reason}"
                    + (f"; {unwritten}" if unwritten else "")
                )

            try:
                with tempfile.TemporaryDirectory() as tmp:
                    folder = download_model(uri, name, candidate.version, Path(tmp) / "model")
                    batch = known_batch(
                        folder, name, candidate.version, candidate.tags.get(CHECKSUM_TAG)
                    )
                deployed = deploy_candidate(
                    where,
                    name,
                    candidate.version,
                    candidate.tags.get(IMAGE_TAG),
                    rules.ready_timeout_seconds,
                )
                smoke_test_candidate(
                    name, deployed, batch, rules.warmup_requests, serving_token(settings)
                )
            except MlopsError as exc:
                return roll_back(f"before any traffic: {exc}")

            cand = deployed.slot

            def watch() -> Verdict:
                assert stable is not None  # watched only beside a stable slot
                return watch_candidate(
                    where, name, stable, cand, rules.bake_seconds, rules, expected_positive_rate
                )

            if stable is not None:
                try:
                    if chosen == "canary":
                        for step in rules.canary_steps[:-1]:
                            shift_traffic(where, name, Traffic({stable: 100 - step, cand: step}))
                            verdict = watch()
                            if verdict.breached:
                                return roll_back(f"at {step}%: {'; '.join(verdict.reasons)}")
                    elif chosen == "blue-green":
                        # one atomic switch; the old slot stays warm, so a breach switches straight back
                        shift_traffic(where, name, Traffic.only(cand))
                        verdict = watch()
                        if verdict.breached:
                            return roll_back(f"after the switch: {'; '.join(verdict.reasons)}")
                    elif chosen == "shadow":
                        shift_traffic(where, name, Traffic({stable: 100}, mirror=cand))
                        verdict = watch()
                        if verdict.breached:
                            return roll_back(f"in shadow: {'; '.join(verdict.reasons)}")
                except ReleaseFailed:
                    raise  # rolled back already, with its reason
                except MlopsError as exc:
                    return roll_back(str(exc))

            # Traffic, alias, tags and audit entry change together or not at all.
            try:
                with transaction():
                    route_all_to(where, name, cand, stable)
                    if previous != candidate.version:
                        move_champion_alias(uri, name, candidate.version, expected=previous)
                        tag_promoted_version(uri, name, candidate.version, actor, previous)
                    audit("released", f"{chosen}: all traffic on v{candidate.version} ({cand})")
            except Exception as exc:  # MLflow down or refusing, too: traffic goes back
                return roll_back(f"promotion failed: {type(exc).__name__}: {exc}")
        finally:
            where.unguard()

    log.info("%s v%s serves all traffic (%s, slot %s)", name, candidate.version, chosen, cand)
    return ReleaseOutcome(name, candidate.version, True, previous, "released", chosen)
