"""Release steps: deploy, smoke-test, shift, watch, promote or roll back, the champion alias.

``promote_to_champion`` is the one act every path to a new champion takes (the promotion flow,
the release, the release's repair of an alias left behind by a killed release)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from mlflow.exceptions import MlflowException
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.transactions import Transaction, get_transaction, transaction

from mlops.adapters.audit import Action, AuditEntry, AuditTrail
from mlops.adapters.registry import download_model, lookup_model_version, registry_client
from mlops.core.policy import Policy, ReleasePolicy
from mlops.ml.prediction_shift import ExpectedPredictions
from mlops.release import promotion
from mlops.release.analysis import Decision, StepAnalysis, analyse
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
from tasks import step

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
    """Start the candidate in the idle slot and wait until it is ready."""
    deployed = target.deploy(version, image)
    target.wait_ready(deployed, ready_timeout)
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
) -> Decision:
    """Analyse the step every interval, over the step so far, until it decides
    (``mlops.release.analysis.StepAnalysis``): pass, roll back, or hold; an inconclusive end the
    policy extends goes on watching.

    ``expected`` and ``classes`` go to ``mlops.release.analysis.analyse``: the predictions
    expected of the candidate (default: the stable version's), and the target's classes in
    label order. ``stable_before``: the stable slot takes no traffic in this step (after a
    blue-green switch, in the bake), so its figures are those of the ``seconds`` before the step
    began."""
    provider = target.metrics()
    step = StepAnalysis(policy, seconds)
    started = time.monotonic()
    while True:
        # wait first: a window of no time holds nothing to judge
        left = max(0.0, started + step.deadline - time.monotonic())
        time.sleep(min(policy.analysis_interval_seconds, left))
        elapsed = time.monotonic() - started
        if (broken := target.health()) is not None:
            decision = Decision("rollback", broken, (), elapsed, step.failures + 1)
            break
        before = (seconds, elapsed) if stable_before else None
        window = measure_window(provider, candidate, stable, elapsed, policy.checks, before)
        decision = step.decide(analyse(window, policy, expected, classes), elapsed)
        if decision.action in ("pass", "rollback", "hold"):
            break
    rows = [f"| {r.name} | {r.outcome} | {r.reason} |" for r in decision.results]
    _artifact(
        model,
        f"{candidate}: {decision.action} after {decision.elapsed:.0f} s",
        [decision.reason, "", "| check | outcome | why |", "|---|---|---|", *rows],
    )
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
