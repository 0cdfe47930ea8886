"""The release flow: a validated model version goes live by the policy's strategy, is watched while
it takes traffic, and is rolled back by itself when it misbehaves."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import NoReturn

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.transactions import transaction

from mlops.adapters.audit import Action
from mlops.adapters.locks import held_lease
from mlops.adapters.registry import RegisteredVersion
from mlops.core.context import RunContext
from mlops.core.errors import MlopsError
from mlops.core.events import RELEASE_PROMOTED, RELEASE_ROLLED_BACK
from mlops.core.integrity import CHECKSUM_TAG, IMAGE_TAG
from mlops.core.policy import ReleasePolicy
from mlops.ml.prediction_shift import ExpectedPredictions
from mlops.release.analysis import Decision
from mlops.release.canary import ReleaseFailed, ReleaseOutcome, check_strategy, traffic_steps
from mlops.release.hooks import AFTER_ROLLBACK, HookPayload, HookRefused, hooks_at
from mlops.release.promotion import (
    Settlement,
    current_champion,
    current_user,
    promotion_lock_name,
    release_eligibility,
)
from mlops.release.router import Traffic
from mlops.release.targets import make_target
from mlops.release.targets.base import ReleaseTarget
from mlops.stack.local import serving_token
from tasks.registry import resolve_model_version, sync_registry_mirrors
from tasks.release import (
    AuditContext,
    HoldAnswer,
    chart_release_steps,
    deploy_candidate,
    explain_step,
    hold_step,
    load_known_batch,
    promote_to_champion,
    restore_champion,
    roll_back_traffic,
    route_all_to,
    run_hooks,
    settle_champion,
    shift_traffic,
    smoke_test_candidate,
    tell_release_outcome,
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
            if run.ctx.settings.registry_mirrors:  # promoted, refused or rolled back alike
                sync_registry_mirrors(run.ctx.settings, run.name)


@dataclass
class _Story:
    """What a release has watched so far, beside ``_Release.decisions``: each step's name and
    hold answer, which steps are told (``explain_step``), and when the stable slot last took
    traffic (the bake after a blue-green switch measures it from before then)."""

    names: list[str] = field(default_factory=list)
    held: list[HoldAnswer | None] = field(default_factory=list)
    told: list[dict[str, object]] = field(default_factory=list)  # the documents explain_step wrote
    stable_idle_since: float | None = None  # time.monotonic()


@dataclass(frozen=True)
class _Release:
    """One release under way: what it releases, where, by which strategy, and its audit."""

    ctx: RunContext
    audit: AuditContext  # its previous_champion is the champion alias as this release knows it
    strategy: str
    where: ReleaseTarget
    candidate: RegisteredVersion
    expected: ExpectedPredictions | None
    decisions: list[Decision] = field(default_factory=list)  # of the steps watched so far
    story: _Story = field(default_factory=_Story)

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

    @property
    def release_id(self) -> str:
        """This release's id: its flow run's (its steps' folder on the version's MLflow run)."""
        return str(flow_run.get_id())

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
    _before_promotion(run, candidate, stable)
    _promote(run, candidate, stable)
    log.info(
        "%s v%s serves all traffic (%s, slot %s)", run.name, run.version, run.strategy, candidate
    )
    if run.rules.bake_after_promotion_seconds > 0:
        if stable is None or run.previous is None:
            log.info("%s v%s: no previous version to bake against", run.name, run.version)
        else:
            _bake(run, candidate, stable, run.previous)
            return run.outcome("released and baked", run.previous)
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
        # the known answers are computed while the candidate starts (the deploy mostly waits)
        known = load_known_batch.submit(
            run.audit.tracking_uri, run.name, run.version, run.candidate.tags.get(CHECKSUM_TAG)
        )
        try:
            deployed = deploy_candidate(
                run.where,
                run.name,
                run.version,
                run.candidate.tags.get(IMAGE_TAG),
                run.rules.ready_timeout_seconds,
            )
        finally:
            known.wait()
        batch = known.result()
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
    except HookRefused as refused:
        _roll_back(run, stable, str(refused), hook=refused.evidence)
    except MlopsError as exc:
        _roll_back(run, stable, str(exc))
    if breach:
        reason, decision = breach
        _roll_back(run, stable, reason, analysis=decision.as_dict())


def _first_breach(run: _Release, stable: str, candidate: str) -> tuple[str, Decision] | None:
    rules = run.rules
    for where, traffic in traffic_steps(run.strategy, rules.canary_steps, stable, candidate):
        phase = "before-traffic-increase" if run.decisions else "before-first-step"
        _gate(run, phase, where, traffic)
        shift_traffic(run.where, run.name, traffic)
        if stable not in traffic.serving and run.story.stable_idle_since is None:
            run.story.stable_idle_since = time.monotonic()
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
        decision = _answer_hold(run, where, decision)
        if decision.action != "pass":
            return f"{where}: {decision.reason}", decision
        _tell_steps(run)
    return None


def _answer_hold(run: _Release, where: str, decision: Decision) -> Decision:
    """A step (or the bake) the policy holds asks a person; the decision is kept as it ends."""
    held = None
    if decision.action == "hold":
        decision, held = hold_step(
            run.name, run.version, where, decision, run.rules.hold_timeout_seconds
        )
    run.decisions.append(decision)
    run.story.names.append(where)
    run.story.held.append(held)
    return decision


def _tell_steps(run: _Release) -> None:
    """Every watched step not told yet: its artifact, the version's MLflow run, its event; then
    the chart of every step so far, redrawn on the run and linked from the release's artifact."""
    already = len(run.story.told)
    for n in range(already, len(run.decisions)):
        run.story.told.append(
            explain_step(
                run.audit.tracking_uri,
                run.name,
                run.version,
                run.candidate.run_id,
                run.release_id,
                n + 1,
                run.story.names[n],
                run.decisions[n],
                run.story.held[n],
                strategy=run.strategy,
                target=run.where.name,
            )
        )
    if len(run.story.told) > already:
        chart_release_steps(
            run.audit.tracking_uri, run.name, run.version, run.candidate.run_id, run.release_id,
            run.story.told,
        )  # fmt: skip


def _steps(run: _Release) -> list[dict[str, object]]:
    """The steps told so far (each one's name, decision and hold answer), for the audit
    entry's evidence; the outcome's event names only their actions."""
    return [
        {
            "step": doc["step"],
            "name": doc["name"],
            "decision": doc["decision"],
            **({"held": doc["held"]} if doc["held"] else {}),
        }
        for doc in run.story.told
    ]


def _promote(run: _Release, candidate: str, stable: str | None) -> None:
    """All traffic on ``candidate`` and it champion: traffic, alias, tags and audit entry change
    together or not at all."""
    reason = f"{run.strategy}: all traffic on v{run.version} ({candidate})"
    steps = _steps(run)
    if run.story.stable_idle_since is None:  # the stable slot's last traffic: the bake's reference
        run.story.stable_idle_since = time.monotonic()
    try:
        with transaction():
            route_all_to(run.where, run.name, candidate, stable)
            promote_to_champion(
                run.audit, run.version, run.previous, "released", reason, steps=steps
            )
    except Exception as exc:  # MLflow down or refusing, too: traffic goes back
        _roll_back(run, stable, f"promotion failed: {type(exc).__name__}: {exc}")
    tell_release_outcome(
        RELEASE_PROMOTED,
        run.name,
        run.version,
        {
            "previous": run.previous,
            "reason": reason,
            "release": run.release_id,
            "strategy": run.strategy,
            "target": run.where.name,
            "bake_seconds": run.rules.bake_after_promotion_seconds,
            "steps": [{"name": s["name"], "action": _action(s)} for s in steps],
        },
    )


def _action(step: dict[str, object]) -> object:
    decision = step["decision"]
    return decision.get("action") if isinstance(decision, dict) else None


def _bake(run: _Release, candidate: str, previous_slot: str, previous: int) -> None:
    """The bake after promotion: the previous version's slot stays running and ready while the
    new champion is watched against the previous version's figures from before it stopped
    taking traffic; a breach, a dead server, or an end the policy does not pass (inconclusive:
    extend, hold, roll back) rolls back to it (``_roll_back_bake``)."""
    seconds = run.rules.bake_after_promotion_seconds
    idle_since = run.story.stable_idle_since
    try:
        decision = watch_candidate(
            run.where,
            run.name,
            previous_slot,
            candidate,
            seconds,
            run.rules,
            run.expected,
            run.ctx.config.target.classes,
            stable_before=True,
            stable_ago=time.monotonic() - idle_since if idle_since is not None else 0.0,
        )
    except MlopsError as exc:  # the figures cannot be read: the bake cannot pass
        decision = Decision("rollback", f"the bake could not be watched: {exc}", (), 0.0, 0)
    decision = _answer_hold(run, "bake", decision)
    if decision.action != "pass":
        _roll_back_bake(run, previous_slot, previous, f"in the bake: {decision.reason}")
    _tell_steps(run)
    unwritten = run.audit.record_or_report(
        run.version,
        "release-baked",
        f"v{run.version} baked {seconds:g} s against v{previous}: {decision.reason}",
        analysis=_steps(run)[-1]["decision"],
    )
    if unwritten:  # the bake passed and the state is whole: say so, and keep the release
        get_run_logger().warning("%s v%s: %s", run.name, run.version, unwritten)


def _roll_back_bake(run: _Release, previous_slot: str, previous: int, reason: str) -> NoReturn:
    """The new champion breached in the bake: all traffic back on the previous version's slot
    (first, whatever MLflow does), then the alias, tags and audit entry as one act
    (``restore_champion``); the release fails with ``reason``."""
    try:
        route_all_to(run.where, run.name, previous_slot, None)
    except Exception as exc:  # the previous slot is gone too: nothing to roll back to
        said = (
            f"{reason}; it could not be rolled back to v{previous} ({type(exc).__name__}: "
            f"{exc}): v{run.version} keeps all traffic and stays champion"
        )
        _tell_steps(run)
        unwritten = run.audit.record_or_report(
            run.version, "release-failed", said, steps=_steps(run)
        )
        raise ReleaseFailed(
            f"{run.name} v{run.version}: {said}" + (f"; {unwritten}" if unwritten else "")
        ) from exc
    _tell_steps(run)
    steps = _steps(run)
    try:
        restore_champion(
            run.audit,
            previous,
            run.version,
            reason,
            analysis=steps[-1]["decision"] if steps else None,
            steps=steps,
        )
        unwritten = None
    except Exception as exc:  # MLflow away: traffic is back; the alias names the new one still
        unwritten = (
            f"the champion alias could not be moved back to v{previous} "
            f"({type(exc).__name__}: {exc}); it still names v{run.version}"
        )
        get_run_logger().error("%s: %s", run.name, unwritten)
    _tell_rolled_back(run, reason, previous, "bake")
    _tell_rollback(run, previous_slot, reason)
    raise ReleaseFailed(
        f"{run.name} v{run.version} rolled back to v{previous}: {reason}"
        + (f"; {unwritten}" if unwritten else "")
    )


def _tell_rolled_back(run: _Release, reason: str, back_to: int | None, phase: str) -> None:
    steps = _steps(run)
    tell_release_outcome(
        RELEASE_ROLLED_BACK,
        run.name,
        run.version,
        {
            "back_to": back_to,
            "phase": phase,
            "reason": reason,
            "release": run.release_id,
            "strategy": run.strategy,
            "target": run.where.name,
            "decision": steps[-1]["decision"] if steps else None,
        },
    )


def _roll_back(run: _Release, stable: str | None, reason: str, **evidence: object) -> NoReturn:
    """All traffic back on ``stable``, an audit entry (with ``evidence``), and the release fails
    with ``reason``."""
    roll_back_traffic(run.where, run.name, stable, reason)
    _tell_steps(run)
    if run.story.told:
        evidence.setdefault("steps", _steps(run))
    unwritten = run.audit.record_or_report(run.version, "release-rolled-back", reason, **evidence)
    _tell_rolled_back(run, reason, run.previous, "before promotion")
    _tell_rollback(run, stable, reason)
    raise ReleaseFailed(
        f"{run.name} v{run.version} rolled back: {reason}" + (f"; {unwritten}" if unwritten else "")
    )


def _hook_payload(
    run: _Release, phase: str, step: str, traffic: Traffic | None, reason: str | None = None
) -> HookPayload:
    last = run.decisions[-1].as_dict() if run.decisions else None
    return HookPayload(
        model=run.name,
        version=run.version,
        phase=phase,
        step=step,
        strategy=run.strategy,
        target=run.where.name,
        traffic=dict(traffic.weights) if traffic else {},
        decision=last,
        flow_run_url=run.audit.links.get("prefect_flow_run"),
        reason=reason,
    )


def _hook_secret(run: _Release) -> str | None:
    secret = run.ctx.settings.hook_secret
    return secret.get_secret_value() if secret else None


def _gate(run: _Release, phase: str, step: str, traffic: Traffic) -> None:
    """The policy's hooks of ``phase`` before ``traffic`` is set; a refusal raises
    ``HookRefused`` (the caller rolls back, naming the hook)."""
    if not hooks_at(run.rules.hooks, phase):
        return
    payload = _hook_payload(run, phase, step, traffic)
    refused = run_hooks(phase, run.rules.hooks, payload, _hook_secret(run))
    if refused is not None:
        raise HookRefused(phase, step, refused)


def _before_promotion(run: _Release, candidate: str, stable: str | None) -> None:
    """The gates before all traffic goes to ``candidate`` (a first release, with no stable slot
    to split with, meets its before-first-step hooks here too); a refusal rolls back."""
    switch = Traffic.only(candidate)
    try:
        if stable is None:
            _gate(run, "before-first-step", "promotion", switch)
        _gate(run, "before-promotion", "promotion", switch)
    except HookRefused as refused:
        _roll_back(run, stable, str(refused), hook=refused.evidence)


def _tell_rollback(run: _Release, stable: str | None, reason: str) -> None:
    """The after-rollback hooks are told why; they cannot refuse, and their failures are logged."""
    if not hooks_at(run.rules.hooks, AFTER_ROLLBACK):
        return
    now = Traffic.only(stable) if stable else None
    payload = _hook_payload(run, AFTER_ROLLBACK, "rollback", now, reason)
    run_hooks(AFTER_ROLLBACK, run.rules.hooks, payload, _hook_secret(run))
