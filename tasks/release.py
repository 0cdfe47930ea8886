"""Release steps: deploy, smoke-test, shift, watch, promote or roll back, the champion alias.

``promote_to_champion`` is the one act every path to a new champion takes (the promotion flow,
the release, the release's repair of an alias left behind by a killed release)."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import httpx
from mlflow.exceptions import MlflowException
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.input import RunInput
from prefect.transactions import Transaction, get_transaction, transaction
from pydantic import Field

from mlops.adapters.audit import Action, AuditEntry, AuditTrail
from mlops.adapters.charts import canary_figure, close_figure
from mlops.adapters.events import emit_model_event
from mlops.adapters.registry import download_model, lookup_model_version, registry_client
from mlops.adapters.tracking import artifact_url
from mlops.core.events import RELEASE_STEP, version_resource
from mlops.core.policy import HookPolicy, Policy, ReleasePolicy
from mlops.ml.prediction_shift import ExpectedPredictions
from mlops.release import promotion
from mlops.release.analysis import Decision, StepAnalysis, analyse
from mlops.release.hooks import AFTER_ROLLBACK, HookAnswer, HookPayload, call_webhook, hooks_at
from mlops.release.promotion import (
    CHAMPION,
    PROMOTION_TAGS,
    PromotionConflict,
    Settlement,
    current_champion,
    interrupted_release,
    settlement_refusal,
)
from mlops.release.providers.base import measure_window
from mlops.release.router import Traffic
from mlops.release.smoke import KnownBatch, SmokeTestFailed, check_answers, known_batch, warm_up
from mlops.release.targets.base import Deployed, ReleaseTarget
from tasks import ask_in_ui, step

#: Where a release writes its steps on the version's MLflow run: <folder>/<release id>/step-<n>.json
RELEASE_RUN_FOLDER = "release"

record_audit_entry = step(
    promotion.record_audit_entry,
    name="record-audit-entry",
    retries=4,
    retry_delay_seconds=[1, 4, 15, 40],
)


@step(name="move-champion-alias")
def move_champion_alias(tracking_uri: str, model: str, version: int, expected: int | None) -> None:
    """Point `champion` at ``version``, if it still points where the judgement assumed."""
    now = current_champion(tracking_uri, model)
    if now != expected:

        def label(v: int | None) -> str:
            return f"v{v}" if v is not None else "none"

        raise PromotionConflict(
            f"{model}: the champion is {label(now)} now, not {label(expected)} as when v{version} "
            "was judged; run the promotion again to judge it against the new champion"
        )
    txn = get_transaction()
    if txn is not None:
        txn.set("tracking_uri", tracking_uri)
        txn.set("model", model)
        txn.set("previous", expected)
    registry_client(tracking_uri).set_registered_model_alias(model, CHAMPION, str(version))


@move_champion_alias.on_rollback
def _restore_champion_alias(txn: Transaction) -> None:
    client = registry_client(txn.get("tracking_uri"))
    previous = txn.get("previous")
    if previous is None:
        client.delete_registered_model_alias(txn.get("model"), CHAMPION)
    else:
        client.set_registered_model_alias(txn.get("model"), CHAMPION, str(previous))


@step(name="tag-promoted-version")
def tag_promoted_version(
    tracking_uri: str, model: str, version: int, actor: str, previous: int | None
) -> None:
    """Record on the version when, by whom and over which champion it was promoted."""
    txn = get_transaction()
    if txn is not None:
        txn.set("tracking_uri", tracking_uri)
        txn.set("model", model)
        txn.set("version", version)
    client = registry_client(tracking_uri)
    values = (datetime.now(UTC).isoformat(), actor, str(previous or ""))
    for key, value in zip(PROMOTION_TAGS, values, strict=True):
        client.set_model_version_tag(model, str(version), key, value)


@tag_promoted_version.on_rollback
def _untag_promoted_version(txn: Transaction) -> None:
    client = registry_client(txn.get("tracking_uri"))
    for key in PROMOTION_TAGS:
        with contextlib.suppress(MlflowException):
            client.delete_model_version_tag(txn.get("model"), str(txn.get("version")), key)


@dataclass(frozen=True)
class AuditContext:
    """What every audit entry of one flow run shares; ``record`` adds the act itself."""

    tracking_uri: str
    model: str
    actor: str
    trigger: str
    previous_champion: int | None
    policy_version: int
    policy_digest: str
    links: dict[str, str] = field(default_factory=dict)
    evidence: dict[str, object] = field(default_factory=dict)

    def record_or_report(
        self, version: int, action: Action, reason: str, **evidence: object
    ) -> str | None:
        """``record``, for a path that is failing already: a write that fails after its retries
        is logged and returned as a sentence for the flow's error instead of hiding that error."""
        try:
            self.record(version, action, reason, **evidence)
        except Exception as exc:  # the store is down: the caller's error must still be raised
            note = f"the audit entry ({action}) could not be written: {type(exc).__name__}: {exc}"
            get_run_logger().error(
                "%s v%s: %s; it would have said: %s", self.model, version, note, reason
            )
            return note
        return None

    def record(self, version: int, action: Action, reason: str, **evidence: object) -> None:
        record_audit_entry(
            self.tracking_uri,
            AuditEntry(
                model=self.model,
                version=version,
                action=action,
                actor=self.actor,
                trigger=self.trigger,
                reason=reason,
                previous_champion=self.previous_champion,
                policy_version=self.policy_version,
                policy_digest=self.policy_digest,
                evidence=self.evidence | evidence,
                links=self.links,
            ),
        )


def promote_to_champion(
    audit: AuditContext,
    version: int,
    expected: int | None,
    action: Action,
    reason: str,
    actor: str | None = None,
    **evidence: object,
) -> None:
    """Make ``version`` the champion as one recorded act: the `champion` alias (if it still
    points at ``expected``; a conflict raises ``PromotionConflict``), the promotion tags (by
    ``actor``, default the audit's) and the audit entry ``action`` change together or not at all.

    Inside a caller's transaction (the release's, with the traffic switch) it is undone with it.
    """
    with transaction():
        if version != expected:
            move_champion_alias(audit.tracking_uri, audit.model, version, expected=expected)
            tag_promoted_version(
                audit.tracking_uri, audit.model, version, actor or audit.actor, expected
            )
        audit.record(version, action, reason, **evidence)


def _artifact(model: str, title: str, lines: list[str]) -> None:
    create_markdown_artifact(
        key=f"release-{model}".lower().replace("_", "-"),
        markdown="\n".join([f"## {title}", "", *lines]),
        description=title,
    )


@step(name="load-known-batch")
def load_known_batch(
    tracking_uri: str, model: str, version: int, checksum: str | None
) -> KnownBatch:
    """The rows the candidate must answer as it does in process, from its verified artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = download_model(tracking_uri, model, version, Path(tmp) / "model")
        return known_batch(folder, model, version, checksum)


@step(name="deploy-candidate")
def deploy_candidate(
    target: ReleaseTarget, model: str, version: int, image: str | None, ready_timeout: float
) -> Deployed:
    """Start the candidate in the idle slot and wait until it is ready; its URL as the target
    reports it once ready (a cluster's status names the new revision's URL only then: read at
    deploy time it was the previous revision's, whose answers the smoke test then refused)."""
    deployed = target.deploy(version, image)
    target.wait_ready(deployed, ready_timeout)
    ready = target.state().idle
    if ready is not None and ready.slot == deployed.slot and ready.version == version:
        deployed = ready
    where = f" at {deployed.url}" if deployed.url else ""
    _artifact(
        model,
        f"v{version} deployed",
        [f"{target.name} target, slot `{deployed.slot}`{where}, ready"],
    )
    return deployed


@step(name="smoke-test-candidate")
def smoke_test_candidate(
    model: str, deployed: Deployed, batch: KnownBatch, warmup: int, token: str | None = None
) -> None:
    """Health, readiness, the known batch answered as the model answers it in process, then
    ``warmup`` single-row requests so callers never meet the candidate cold."""
    if deployed.url is None:
        _artifact(
            model,
            f"v{deployed.version} smoke test: readiness only",
            ["the target gives no URL of the candidate alone that is reachable from here"],
        )
        return
    health = httpx.get(f"{deployed.url}/health", timeout=5)
    if health.status_code != 200:
        raise SmokeTestFailed(f"{deployed.url}/health answered {health.status_code}")
    check_answers(deployed.url, batch, token)
    slowest = warm_up(deployed.url, batch, warmup, token) if warmup else 0.0
    _artifact(
        model,
        f"v{deployed.version} smoke test passed",
        [
            f"{len(batch.rows)} known rows answered exactly as in process",
            f"warmed up with {warmup} single-row requests (slowest {slowest * 1000:.0f} ms)",
        ],
    )


@step(name="shift-traffic")
def shift_traffic(target: ReleaseTarget, model: str, traffic: Traffic) -> None:
    target.set_traffic(traffic)
    _artifact(model, f"traffic: {traffic.describe()}", [f"router confirms {traffic.describe()}"])


@step(name="watch-candidate")
def watch_candidate(
    target: ReleaseTarget,
    model: str,
    stable: str,
    candidate: str,
    seconds: float,
    policy: ReleasePolicy,
    expected: ExpectedPredictions | None = None,
    classes: Sequence[str] = (),
    stable_before: bool = False,
    stable_ago: float = 0.0,
) -> Decision:
    """Analyse the step every interval, over the step so far, until it decides
    (``mlops.release.analysis.StepAnalysis``): pass, roll back, or hold; an inconclusive end the
    policy extends goes on watching.

    ``expected`` and ``classes`` go to ``mlops.release.analysis.analyse``: the predictions
    expected of the candidate (default: the stable version's), and the target's classes in
    label order. ``stable_before``: the stable slot takes no traffic in this step (after a
    blue-green switch, in the bake), so its figures are those of a window as long as the step so
    far (at least ``seconds``) that ended when the step began, or, with ``stable_ago``, when it
    last took traffic that long before the step began (the bake after a blue-green switch).

    The flow tells the decision (``explain_step``): after a hold, with the person's answer."""
    provider = target.metrics()
    step = StepAnalysis(policy, seconds)
    started = time.monotonic()
    while True:
        # wait first: a window of no time holds nothing to judge; past the deadline (a failure
        # tolerated there) a whole interval, or the tolerated analyses would run back to back
        left = started + step.deadline - time.monotonic()
        interval = policy.analysis_interval_seconds
        time.sleep(min(interval, left) if left > 0 else interval)
        elapsed = time.monotonic() - started
        if (broken := target.health()) is not None:
            decision = Decision("rollback", broken, (), elapsed, step.failures + 1)
            break
        # the stable side as long as the candidate's watched so far (at least the step): an
        # extended step widens both, so a stable whose last seconds hold no scrape (a loaded
        # machine's late scrapes) is compared over more of its traffic, not judged forever on none
        before = (max(seconds, elapsed), elapsed + stable_ago) if stable_before else None
        window = measure_window(provider, candidate, stable, elapsed, policy.checks, before)
        decision = step.decide(analyse(window, policy, expected, classes), elapsed)
        if decision.action in ("pass", "rollback", "hold"):
            break
    return decision


@step(name="route-all-to-candidate")
def route_all_to(target: ReleaseTarget, model: str, slot: str, stable: str | None) -> None:
    """All traffic to ``slot``, which becomes stable; undone (back to ``stable``) on rollback."""
    txn = get_transaction()
    if txn is not None:
        txn.set("target", target)
        txn.set("stable", stable)
    target.set_traffic(Traffic.only(slot))
    target.mark_stable(slot)


@route_all_to.on_rollback
def _route_back(txn: Transaction) -> None:
    stable = txn.get("stable")
    if stable is not None:
        target: ReleaseTarget = txn.get("target")
        target.set_traffic(Traffic.only(stable))
        target.mark_stable(stable)


@step(name="roll-back-traffic")
def roll_back_traffic(target: ReleaseTarget, model: str, stable: str | None, reason: str) -> None:
    """All traffic back to the stable slot (if there is one); the candidate slot keeps running."""
    if stable is not None:
        target.set_traffic(Traffic.only(stable))
    _artifact(model, "rolled back", [reason, "", f"traffic: {stable or 'none'} 100%"])


def restore_champion(
    audit: AuditContext, back_to: int, rolled_back: int, reason: str, **evidence: object
) -> None:
    """Undo a promotion as one recorded act (the bake's rollback): the `champion` alias back on
    ``back_to`` (if it still points at ``rolled_back``), its promotion tags (promoted over
    ``rolled_back``, by the audit's actor) and the `release-rolled-back` entry of
    ``rolled_back`` change together or not at all."""
    undone = dataclasses.replace(audit, previous_champion=rolled_back)
    with transaction():
        move_champion_alias(audit.tracking_uri, audit.model, back_to, expected=rolled_back)
        tag_promoted_version(audit.tracking_uri, audit.model, back_to, audit.actor, rolled_back)
        undone.record(rolled_back, "release-rolled-back", reason, **evidence)


class HoldDecision(RunInput):
    """The form a person answers when a release step ended inconclusive and the policy holds."""

    action: Literal["continue", "rollback"] = Field(
        description="continue: the step counts as passed and the release goes on; rollback: "
        "all traffic back on the stable version."
    )
    by: str = Field(description="Who decides (name or e-mail).", min_length=1)
    reason: str = Field(
        description="Why: recorded with the step and in the audit trail.", min_length=1
    )


@dataclass(frozen=True)
class HoldAnswer:
    """What became of a held step: who let it go on or rolled it back, and why."""

    proceed: bool
    by: str
    reason: str
    waited_seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            "proceed": self.proceed,
            "by": self.by,
            "reason": self.reason,
            "waited_seconds": round(self.waited_seconds, 3),
        }


def hold_step(
    model: str,
    version: int,
    step_name: str,
    decision: Decision,
    timeout_seconds: float,
    poll_interval: int = 2,
) -> tuple[Decision, HoldAnswer]:
    """Pause this flow run with a form (``HoldDecision``) in the Prefect UI: a step that ended
    inconclusive under ``on_inconclusive: hold`` goes on (it passes) or rolls back as a person
    answers; no answer within ``timeout_seconds`` rolls back. Returns the step's final decision
    (its reason says who decided and why) and the answer.

    Must be called from a flow run (the pause is the flow run's state)."""
    timeout = max(1, round(timeout_seconds))
    description = (
        f"{model} v{version}, {step_name}: {decision.reason}. Continue (the step passes) or roll "
        f"back? With no answer within {timeout} s the release rolls back."
    )
    started = time.monotonic()
    form = ask_in_ui(
        HoldDecision,
        timeout,
        poll_interval,
        description=description,
        action="rollback",
        by="",
        reason="",
    )
    waited = time.monotonic() - started
    answer = (
        HoldAnswer(form.action == "continue", form.by, form.reason, waited)
        if form is not None
        else HoldAnswer(False, "(nobody)", f"no answer within {timeout} s", waited)
    )
    said = "continue" if answer.proceed else "roll back"
    reason = f"{decision.reason}; held: {answer.by} said {said}: {answer.reason}"
    final = dataclasses.replace(decision, action="pass" if answer.proceed else "rollback")
    return dataclasses.replace(final, reason=reason), answer


def _cell(value: object) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ") if value is not None else "–"


def step_markdown(decision: Decision, held: HoldAnswer | None = None) -> list[str]:
    """A step's decision for a person: the verdict, each check's figures and test statistic,
    and the queries each figure was read by."""
    lines = [f"**{decision.action}** after {decision.elapsed:.1f} s: {_cell(decision.reason)}", ""]
    if held is not None:
        lines += [f"held {held.waited_seconds:.0f} s; answered by {held.by}: {held.reason}", ""]
    lines += [
        "| check | outcome | candidate | stable | statistic | why |",
        "|---|---|---|---|---|---|",
    ]
    for r in decision.results:
        stats = ", ".join(f"{k} = {_cell(v)}" for k, v in r.statistic.items())
        lines.append(
            f"| {r.name} | {r.outcome} | {_cell(r.candidate)} | {_cell(r.stable)} | "
            f"{stats or '–'} | {_cell(r.reason)} |"
        )
    queries = [(r.name, side, q) for r in decision.results for side, q in r.query.items()]
    if queries:
        lines += ["", "queries:", *(f"- {name} {side}: `{q}`" for name, side, q in queries)]
    return lines


@step(name="explain-step", task_run_name="explain-{model}-step-{number}")
def explain_step(
    tracking_uri: str,
    model: str,
    version: int,
    run_id: str,
    release_id: str,
    number: int,
    step_name: str,
    decision: Decision,
    held: HoldAnswer | None = None,
    **context: object,
) -> dict[str, object]:
    """A watched step's decision, told where people and automations look: a markdown artifact,
    ``release/<release id>/step-<n>.json`` on the version's MLflow run and an
    ``mlops.release.step`` event about the model. Returns the document (the audit's evidence).

    A write that fails is logged, not raised: the release acts on the decision either way."""
    log = get_run_logger()
    document: dict[str, object] = {
        "model": model,
        "version": version,
        "release": release_id,
        "step": number,
        "name": step_name,
        "time": datetime.now(UTC).isoformat(),
        **context,
        "decision": decision.as_dict(),
        "held": held.as_dict() if held else None,
    }
    title = (
        f"v{version} step {number} ({step_name}): {decision.action} after {decision.elapsed:.0f} s"
    )
    try:
        _artifact(model, title, step_markdown(decision, held))
    except Exception as exc:  # Prefect's API refusing: the run and the event still tell it
        log.warning("%s v%s: step %s has no artifact: %s", model, version, number, exc)
    if run_id:
        try:
            path = f"{RELEASE_RUN_FOLDER}/{release_id}/step-{number}.json"
            registry_client(tracking_uri).log_dict(run_id, document, path)
        except Exception as exc:  # MLflow away: the artifact and the event still tell it
            log.warning(
                "%s v%s: step %s not logged to run %s: %s", model, version, number, run_id, exc
            )
    emit_model_event(RELEASE_STEP, model, document, related=[version_resource(model, version)])
    return document


#: The chart of a release's steps, on the version's run beside the steps' JSON.
RELEASE_CHART = "canary.png"


@step(name="chart-release-steps", task_run_name="chart-{model}-release")
def chart_release_steps(
    tracking_uri: str,
    model: str,
    version: int,
    run_id: str,
    release_id: str,
    steps: list[dict[str, object]],
) -> str | None:
    """The canary's checks at each step so far as a PNG on the version's MLflow run
    (``release/<release id>/canary.png``), linked and shown in a markdown artifact; its URL, or
    None where it could not be drawn or written (the release goes on either way)."""
    if not run_id:
        return None
    path = f"{RELEASE_RUN_FOLDER}/{release_id}/{RELEASE_CHART}"
    try:
        figure = canary_figure(steps)
        try:
            registry_client(tracking_uri).log_figure(run_id, figure, path)
        finally:
            close_figure(figure)
        url = artifact_url(tracking_uri, run_id, path)
        create_markdown_artifact(
            key=f"release-{model}-chart".lower().replace("_", "-"),
            markdown=f"## v{version}: the canary's checks at each step\n\n![canary]({url})\n",
            description=f"v{version} release {release_id}: {len(steps)} step(s)",
        )
    except Exception as exc:  # MLflow or Prefect away: the steps are told without the chart
        get_run_logger().warning("%s v%s: no release chart: %s", model, version, exc)
        return None
    return url


def tell_release_outcome(event: str, model: str, version: int, payload: dict[str, object]) -> None:
    """``mlops.release.promoted`` or ``mlops.release.rolled-back`` about the model (the version
    and the flow run as related resources), for the event feed and automations."""
    emitted = emit_model_event(
        event, model, payload | {"model": model, "version": version},
        related=[version_resource(model, version)],
    )  # fmt: skip
    if emitted is None:
        get_run_logger().warning("%s v%s: events are off; %s not emitted", model, version, event)


def settle_champion(
    audit: AuditContext, policy: Policy, serving: int, candidate: int, target: str
) -> Settlement:
    """Move the champion alias to ``serving``, the version all traffic goes to, if it is eligible
    and its release got that far before it died (or it is the ``candidate`` being released
    again); otherwise say why not (``settlement_refusal``). One act (``promote_to_champion``).

    Call it holding the model's promotion lock; ``audit.previous_champion`` is the alias now.
    """
    uri, name, champion = audit.tracking_uri, audit.model, audit.previous_champion
    where = f"the {target} target serves v{serving} but the champion alias is " + (
        f"v{champion}" if champion is not None else "unset"
    )
    try:
        version = lookup_model_version(uri, name, str(serving))
        started = interrupted_release(AuditTrail(uri).entries(name, serving), serving)
        refused = settlement_refusal(version, policy, started, candidate)
        if refused:
            return Settlement(False, f"{where}: not repaired, as {refused}", champion)
        finished = (
            f"finished its interrupted release ({started.reason}, by {started.actor})"
            if started
            else "finished its release"
        )
        reason = f"{where}: {finished}; champion v{champion} -> v{serving}"
        by = started.actor if started else None
        promote_to_champion(audit, serving, champion, "released", reason, by, repaired=True)
    except Exception as exc:  # MLflow refusing or away: report, the release goes on judging
        return Settlement(False, f"{where}: repair failed: {type(exc).__name__}: {exc}", champion)
    return Settlement(True, reason, champion)


class HookDecision(RunInput):
    """The form a person fills in at a release's manual gate: go on to the next step, or not."""

    proceed: bool = Field(description="Let the release take its next step?")
    by: str = Field(description="Who decides (name or e-mail).", min_length=1)
    reason: str = Field(description="Why: recorded in the audit trail.", min_length=1)


@step(name="call-webhook", task_run_name="hook-{hook.name}")
def call_hook_webhook(hook: HookPolicy, payload: HookPayload, secret: str | None) -> HookAnswer:
    """POST the release's state to the hook's webhook; its answer lets the step go on or not."""
    answer = call_webhook(hook, payload, secret)
    _artifact(payload.model, f"{payload.phase}: {answer.describe()}", [f"step: {payload.step}"])
    return answer


def ask_hook_person(hook: HookPolicy, payload: HookPayload, poll_interval: int = 2) -> HookAnswer:
    """Pause this flow run at a manual gate until a person answers the form (``HookDecision``)
    in the Prefect UI; no answer within the hook's ``timeout_seconds`` is a refusal.

    Must be called from a flow run (the pause is the flow run's state)."""
    description = (
        f"{payload.model} v{payload.version}, {payload.strategy} on {payload.target}: "
        f"{payload.phase} ({payload.step}). Proceed?"
    )
    timeout = max(1, round(hook.timeout_seconds))
    answer = ask_in_ui(
        HookDecision,
        timeout,
        poll_interval,
        description=description,
        proceed=False,
        by="",
        reason="",
    )
    if answer is None:
        return HookAnswer(hook.name, False, "(nobody)", f"no answer within {timeout} s")
    return HookAnswer(hook.name, answer.proceed, answer.by, answer.reason)


def run_hooks(
    phase: str, hooks: Sequence[HookPolicy], payload: HookPayload, secret: str | None = None
) -> HookAnswer | None:
    """Each hook of ``phase`` in the policy's order (a webhook is one task run named after it,
    a manual gate pauses the flow run); returns the first refusal, and the rest do not run.

    At ``after-rollback`` the hooks are told and cannot refuse: a refusal or a failure is logged,
    never raised (the rollback's own reason must reach the caller)."""
    log = get_run_logger()
    for hook in hooks_at(tuple(hooks), phase):
        try:
            if hook.kind == "webhook":
                answer = call_hook_webhook(hook, payload, secret)
            else:
                answer = ask_hook_person(hook, payload)
        except Exception as exc:
            if phase != AFTER_ROLLBACK:
                raise
            log.warning("hook %r (%s) failed: %s: %s", hook.name, phase, type(exc).__name__, exc)
            continue
        if answer.proceed:
            log.info("%s: %s", phase, answer.describe())
        elif phase == AFTER_ROLLBACK:
            log.warning("%s: %s (told only: the rollback stands)", phase, answer.describe())
        else:
            log.warning("%s: %s", phase, answer.describe())
            return answer
    return None
