"""The release flow: a validated model version goes live by the policy's strategy, is watched while
it takes traffic, and is rolled back by itself when it misbehaves."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NoReturn

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.transactions import transaction

from mlops.adapters.audit import Action
from mlops.adapters.locks import held_lease
from mlops.adapters.registry import RegisteredVersion
from mlops.core.context import RunContext
from mlops.core.errors import MlopsError
from mlops.core.integrity import CHECKSUM_TAG, IMAGE_TAG
from mlops.core.policy import ReleasePolicy
from mlops.ml.prediction_shift import ExpectedPredictions
from mlops.release.analysis import Decision
from mlops.release.canary import ReleaseFailed, ReleaseOutcome, check_strategy, traffic_steps
from mlops.release.promotion import (
    Settlement,
    current_champion,
    current_user,
    promotion_lock_name,
    release_eligibility,
)
from mlops.release.targets import make_target
from mlops.release.targets.base import ReleaseTarget
from mlops.stack.local import serving_token
from tasks.registry import resolve_model_version
from tasks.release import (
    AuditContext,
    deploy_candidate,
    load_known_batch,
    promote_to_champion,
    roll_back_traffic,
    route_all_to,
    settle_champion,
    shift_traffic,
    smoke_test_candidate,
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
    expected_predictions: ExpectedPredictions | None = None,
    context: RunContext | None = None,
) -> ReleaseOutcome:
    """Put a model version into production by blue-green, canary or shadow, or roll it back.

    Args:
        version: version number or alias (default: the latest `challenger`); it must be eligible
            (`mlops.release.promotion.release_eligibility`: gates passed, registration complete,
            approved where the policy requires it).
        pipeline: pipeline config, relative to the project (default: the settings' example).
        target: where it runs (default: the policy's, `local`).
        strategy: `blue-green`, `canary` or `shadow` (default: the policy's).
        trigger, actor: recorded in the audit trail.
        expected_predictions: what the candidate's predictions should look like: the class
            shares (classifiers, ``{"shares": {"<=50K": 0.76, ">50K": 0.24}}``) or the value
            quantiles (regression, ``{"quantiles": [min, deciles..., max]}``) of recent
            production labels, which a retraining passes; default: the champion's predictions.
        context: the calling run's settings, pipeline config and policy (then ``pipeline`` is
            not read again).

    A release that cannot go on ends with production traffic on the champion, an audit entry
    saying why, and a failed flow run whose message is that reason.
    """
    ctx = context or RunContext.load(pipeline=pipeline)
    run = _open(ctx, version, target, strategy, trigger, actor, expected_predictions)
    # One release or promotion of a model at a time. From the moment this one holds the lock a
    # separate process, the guard, watches it: should it die, the guard puts all traffic back on
    # the stable slot and frees the lock; the next release then settles the champion alias.
    with held_lease(promotion_lock_name(run.name), timeout_seconds=900) as lease:
        run.where.guard(lease)
        try:
            return _go_live(run)
        finally:
            run.where.unguard()


@dataclass(frozen=True)
class _Release:
    """One release under way: what it releases, where, by which strategy, and its audit."""

    ctx: RunContext
    audit: AuditContext  # its previous_champion is the champion alias as this release knows it
    strategy: str
    where: ReleaseTarget
    candidate: RegisteredVersion
    expected: ExpectedPredictions | None

    @property
    def name(self) -> str:
        return self.audit.model

    @property
    def version(self) -> int:
        return self.candidate.version

    @property
    def previous(self) -> int | None:
        return self.audit.previous_champion

    @property
    def rules(self) -> ReleasePolicy:
        return self.ctx.policy.release

    def with_champion(self, champion: int | None) -> _Release:
        audit = dataclasses.replace(self.audit, previous_champion=champion)
        return dataclasses.replace(self, audit=audit)

    def record(self, action: Action, reason: str, **evidence: object) -> None:
        self.audit.record(self.version, action, reason, **evidence)

    def outcome(self, reason: str, previous: int | None) -> ReleaseOutcome:
        return ReleaseOutcome(self.name, self.version, True, previous, reason, self.strategy)


def _open(
    ctx: RunContext,
    version: str,
    target: str | None,
    strategy: str | None,
    trigger: str,
    actor: str | None,
    expected: ExpectedPredictions | None,
) -> _Release:
    """The candidate, its target and the audit of this release; a release that cannot start
    leaves a `release-failed` entry and raises."""
    rules = ctx.policy.release
    chosen, kind = strategy or rules.strategy, target or rules.target
    uri, name = ctx.tracking_uri, ctx.model_name
    run_url = f"{ctx.settings.prefect_ui_url}/runs/flow-run/{flow_run.get_id()}"
    audit = AuditContext(
        uri,
        name,
        actor or current_user(),
        trigger,
        current_champion(uri, name),
        ctx.policy.version,
        ctx.policy_digest,
        links={"prefect_flow_run": run_url},
        evidence={"strategy": chosen, "target": kind},
    )
    candidate: RegisteredVersion | None = None
    try:
        check_strategy(chosen)
        candidate = resolve_model_version(uri, name, version)
        refused = release_eligibility(candidate, ctx.policy)
        if refused:
            raise ReleaseFailed(refused)
        where = make_target(kind, ctx.settings, name)
    except MlopsError as exc:
        unwritten = audit.record_or_report(
            candidate.version if candidate else 0, "release-failed", str(exc)
        )
        if unwritten:
            raise ReleaseFailed(f"{exc}; {unwritten}") from exc
        raise
    return _Release(ctx, audit, chosen, where, candidate, expected)


def _go_live(run: _Release) -> ReleaseOutcome:
    """The release proper, holding the promotion lock with the guard watching."""
    log = get_run_logger()
    if (now_champion := current_champion(run.audit.tracking_uri, run.name)) != run.previous:
        run = run.with_champion(now_champion)  # it moved while this release waited for the lock
    recovered = run.where.recover()
    if recovered:
        log.warning(recovered)
        run.record("release-rolled-back", recovered)
    now = run.where.state()
    stable = now.stable.slot if now.stable else None
    serving = now.stable.version if now.stable else None
    run, settled = _settle_alias(run, serving)
    if settled is not None and settled.repaired and serving == run.version:
        return run.outcome(settled.reason, settled.previous)
    if serving is not None and serving == run.version == run.previous:
        log.info("%s v%s serves already", run.name, run.version)
        return run.outcome("already serving", run.previous)
    mismatch = settled.reason if settled is not None and not settled.repaired else None
    run.record(
        "release-started",
        f"{run.strategy} of v{run.version} on {run.where.name}",
        **({"mismatch": mismatch} if mismatch else {}),
    )
    candidate = _deploy(run, stable)
    if stable is not None:
        _shift_and_watch(run, stable, candidate)
    _promote(run, candidate, stable)
    log.info(
        "%s v%s serves all traffic (%s, slot %s)", run.name, run.version, run.strategy, candidate
    )
    return run.outcome("released", run.previous)


def _settle_alias(run: _Release, serving: int | None) -> tuple[_Release, Settlement | None]:
    """A release killed after the switch and before the alias moved: finish it, or say why not
    (the release then puts traffic where the alias will point)."""
    if serving is None or serving == run.previous:
        return run, None
    settled = settle_champion(run.audit, run.ctx.policy, serving, run.version, run.where.name)
    get_run_logger().warning(settled.reason)
    return (run.with_champion(serving) if settled.repaired else run), settled


def _deploy(run: _Release, stable: str | None) -> str:
    """Deploy and smoke-test the candidate beside ``stable``; returns its slot."""
    try:
        batch = load_known_batch(
            run.audit.tracking_uri, run.name, run.version, run.candidate.tags.get(CHECKSUM_TAG)
        )
        deployed = deploy_candidate(
            run.where,
            run.name,
            run.version,
            run.candidate.tags.get(IMAGE_TAG),
            run.rules.ready_timeout_seconds,
        )
        token = serving_token(run.ctx.settings)
        smoke_test_candidate(run.name, deployed, batch, run.rules.warmup_requests, token)
    except MlopsError as exc:
        _roll_back(run, stable, f"before any traffic: {exc}")
    return deployed.slot


def _shift_and_watch(run: _Release, stable: str, candidate: str) -> None:
    """Each step of the strategy, watched; the first breach (or failure) rolls back, with the
    analysis that decided it as the audit entry's evidence."""
    try:
        breach = _first_breach(run, stable, candidate)
    except MlopsError as exc:
        _roll_back(run, stable, str(exc))
    if breach:
        reason, decision = breach
        _roll_back(run, stable, reason, analysis=decision.as_dict())


def _first_breach(run: _Release, stable: str, candidate: str) -> tuple[str, Decision] | None:
    rules = run.rules
    for where, traffic in traffic_steps(run.strategy, rules.canary_steps, stable, candidate):
        shift_traffic(run.where, run.name, traffic)
        decision = watch_candidate(
            run.where,
            run.name,
            stable,
            candidate,
            rules.bake_seconds,
            rules,
            run.expected,
            run.ctx.config.target.classes,
            stable_before=stable not in traffic.serving,
        )
        if decision.action != "pass":
            return f"{where}: {decision.reason}", decision
    return None


def _promote(run: _Release, candidate: str, stable: str | None) -> None:
    """All traffic on ``candidate`` and it champion: traffic, alias, tags and audit entry change
    together or not at all."""
    reason = f"{run.strategy}: all traffic on v{run.version} ({candidate})"
    try:
        with transaction():
            route_all_to(run.where, run.name, candidate, stable)
            promote_to_champion(run.audit, run.version, run.previous, "released", reason)
    except Exception as exc:  # MLflow down or refusing, too: traffic goes back
        _roll_back(run, stable, f"promotion failed: {type(exc).__name__}: {exc}")


def _roll_back(run: _Release, stable: str | None, reason: str, **evidence: object) -> NoReturn:
    """All traffic back on ``stable``, an audit entry (with ``evidence``), and the release fails
    with ``reason``."""
    roll_back_traffic(run.where, run.name, stable, reason)
    unwritten = run.audit.record_or_report(run.version, "release-rolled-back", reason, **evidence)
    raise ReleaseFailed(
        f"{run.name} v{run.version} rolled back: {reason}" + (f"; {unwritten}" if unwritten else "")
    )
