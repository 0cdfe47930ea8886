"""Release steps: deploy beside the champion, smoke-test, shift traffic while watching, promote or
roll back. Each leaves a Prefect artifact so the UI shows where a release stands."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import httpx
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction, transaction
from scipy.stats import binomtest

from mlops.audit import AuditEntry, AuditTrail
from mlops.errors import MlopsError
from mlops.policy import Policy, ReleasePolicy
from serving.router import Traffic
from targets.base import Deployed, ReleaseTarget, SlotSample
from tasks.promotion import (
    AuditContext,
    move_champion_alias,
    release_eligibility,
    tag_promoted_version,
)
from tasks.registry import lookup_model_version
from tasks.smoke import KnownBatch, SmokeTestFailed, check_answers, warm_up


class ReleaseFailed(MlopsError):
    """The release ended without the candidate taking production traffic; the reason says why."""


@dataclass(frozen=True)
class ReleaseOutcome:
    model: str
    version: int
    serving: bool
    previous_champion: int | None
    reason: str
    strategy: str


@dataclass(frozen=True)
class Verdict:
    breached: bool
    reasons: list[str]
    figures: dict[str, float] = field(default_factory=dict)


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram (Prometheus' histogram_quantile), in seconds."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # beyond the largest finite bucket: its bound is all that is known
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1)
        lower, below = le, count
    return lower


def cumulative_at(buckets: dict[float, float], x: float) -> float:
    """Requests at or below ``x`` seconds, interpolated within a cumulative histogram's bucket."""
    lower, below = 0.0, 0.0
    for le in sorted(buckets):
        count = buckets[le]
        if x <= le:
            if math.isinf(le):
                return below
            return below + (count - below) * (x - lower) / (le - lower) if le > lower else count
        lower, below = le, count
    return below


#: How unlikely, for a candidate as fast as the champion, its count of slow requests must be.
LATENCY_SIGNIFICANCE = 0.001


def positive_rate(sample: SlotSample) -> float | None:
    total = sum(sample.labels.values())
    return sample.labels.get("1", 0.0) / total if total > 0 else None


def judge(
    candidate: SlotSample,
    champion: SlotSample,
    policy: ReleasePolicy,
    expected_positive_rate: float | None = None,
) -> Verdict:
    """Compare the candidate's traffic since a step began with the champion's over the same time.

    The candidate's share of positive predictions is compared with ``expected_positive_rate``
    when one is given (a retraining after the world changed passes the rate of positives in the
    labels production sent back: there the champion's own rate is what is wrong), else with the
    champion's."""
    reasons: list[str] = []
    figures: dict[str, float] = {"candidate_requests": candidate.requests}
    cand_err = candidate.errors / candidate.requests if candidate.requests else 0.0
    champ_err = champion.errors / champion.requests if champion.requests else 0.0
    figures |= {"candidate_error_rate": cand_err, "champion_error_rate": champ_err}
    if candidate.errors and cand_err > champ_err + policy.max_error_rate_increase:
        reasons.append(
            f"error rate {cand_err:.1%} against the champion's {champ_err:.1%} "
            f"(allowed +{policy.max_error_rate_increase:.1%})"
        )
    if candidate.requests >= max(policy.min_requests, 1):
        c99, h99 = (
            quantile(candidate.latency_buckets, 0.99),
            quantile(champion.latency_buckets, 0.99),
        )
        if c99 is not None and h99 is not None:
            # Not "candidate p99 > champion p99": over a few hundred requests a p99 is the
            # slowest two or three, and one pause of a busy machine decides it. Instead: how many
            # candidate requests are slower than the allowed limit, against the 1 % the champion
            # has above its own p99 (a one-sided binomial test).
            limit = max(h99 * policy.max_p99_latency_ratio, h99 + policy.latency_slack_ms / 1000)
            total = max(candidate.latency_buckets.values())
            slow = max(0.0, total - cumulative_at(candidate.latency_buckets, limit))
            p = binomtest(round(slow), round(total), 0.01, alternative="greater").pvalue
            figures |= {
                "candidate_p99_ms": c99 * 1000,
                "champion_p99_ms": h99 * 1000,
                "candidate_slower_than_limit": slow,
            }
            if p < LATENCY_SIGNIFICANCE:
                reasons.append(
                    f"p99 latency {c99 * 1000:.0f} ms against the champion's {h99 * 1000:.0f} ms: "
                    f"{slow:.0f} of {total:.0f} requests slower than {limit * 1000:.0f} ms where "
                    f"1% would be (allowed x{policy.max_p99_latency_ratio:g})"
                )
        cp, hp = positive_rate(candidate), positive_rate(champion)
        against = "the champion's"
        if expected_positive_rate is not None:
            hp, against = expected_positive_rate, "production labels'"
        if cp is not None and hp is not None:
            figures |= {"candidate_positive_rate": cp, "reference_positive_rate": hp}
            if abs(cp - hp) > policy.max_positive_rate_shift:
                reasons.append(
                    f"positive predictions {cp:.1%} against the {against} {hp:.1%} "
                    f"(allowed ±{policy.max_positive_rate_shift:.0%})"
                )
    return Verdict(bool(reasons), reasons, figures)


def _artifact(model: str, title: str, lines: list[str]) -> None:
    create_markdown_artifact(
        key=f"release-{model}".lower().replace("_", "-"),
        markdown="\n".join([f"## {title}", "", *lines]),
        description=title,
    )


@task(name="deploy-candidate", cache_policy=NO_CACHE, persist_result=False)
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


@task(name="smoke-test-candidate", cache_policy=NO_CACHE, persist_result=False)
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


@task(name="shift-traffic", cache_policy=NO_CACHE, persist_result=False)
def shift_traffic(target: ReleaseTarget, model: str, traffic: Traffic) -> None:
    target.set_traffic(traffic)
    _artifact(model, f"traffic: {traffic.describe()}", [f"router confirms {traffic.describe()}"])


@task(name="watch-candidate", cache_policy=NO_CACHE, persist_result=False)
def watch_candidate(
    target: ReleaseTarget,
    model: str,
    stable: str,
    candidate: str,
    seconds: float,
    policy: ReleasePolicy,
    expected_positive_rate: float | None = None,
) -> Verdict:
    """Read both slots' metrics every interval for ``seconds``; return at the first breach."""
    start = target.sample()
    deadline = time.monotonic() + seconds
    verdict = Verdict(False, [])
    while True:
        # wait first: a sample taken right after ``start`` would only compare it with itself
        time.sleep(min(policy.analysis_interval_seconds, max(0.0, deadline - time.monotonic())))
        now = target.sample()
        verdict = judge(
            now.get(candidate, SlotSample()).since(start.get(candidate, SlotSample())),
            now.get(stable, SlotSample()).since(start.get(stable, SlotSample())),
            policy,
            expected_positive_rate,
        )
        if verdict.breached or time.monotonic() >= deadline:
            break
    figures = [f"| {k} | {v:.4g} |" for k, v in sorted(verdict.figures.items())]
    _artifact(
        model,
        f"{candidate}: {'BREACH' if verdict.breached else 'healthy'} after {seconds:g} s",
        [
            "; ".join(verdict.reasons) or "within policy",
            "",
            "| figure | value |",
            "|---|---|",
            *figures,
        ],
    )
    return verdict


@task(name="route-all-to-candidate", cache_policy=NO_CACHE, persist_result=False)
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


@task(name="roll-back-traffic", cache_policy=NO_CACHE, persist_result=False)
def roll_back_traffic(target: ReleaseTarget, model: str, stable: str | None, reason: str) -> None:
    """All traffic back to the stable slot (if there is one); the candidate slot keeps running."""
    if stable is not None:
        target.set_traffic(Traffic.only(stable))
    _artifact(model, "rolled back", [reason, "", f"traffic: {stable or 'none'} 100%"])


@dataclass(frozen=True)
class Settlement:
    """What became of a champion alias that disagreed with the version serving all traffic."""

    repaired: bool
    reason: str
    previous: int | None  # the champion before


def _interrupted_release(entries: list[AuditEntry], version: int) -> AuditEntry | None:
    """The `release-started` entry of ``version``'s last release, if that release never ended."""
    ends = ("release-started", "released", "release-rolled-back")
    mine = [e for e in entries if e.version == version and e.action in ends]
    return mine[-1] if mine and mine[-1].action == "release-started" else None


def settle_champion(
    context: AuditContext, policy: Policy, serving: int, candidate: int, target: str
) -> Settlement:
    """Move the champion alias to ``serving``, the version all traffic goes to, if it is eligible
    and its release got that far before it died (or it is the ``candidate`` being released
    again); otherwise say why not. Alias, tags and audit entry move together or not at all.

    Call it holding the model's promotion lock; ``context.previous_champion`` is the alias now.
    """
    uri, name, champion = context.tracking_uri, context.model, context.previous_champion
    where = f"the {target} target serves v{serving} but the champion alias is " + (
        f"v{champion}" if champion is not None else "unset"
    )
    started: AuditEntry | None = None
    try:
        version = lookup_model_version(uri, name, str(serving))
        refused = release_eligibility(version, policy) if version else "it is not registered"
        started = _interrupted_release(AuditTrail(uri).entries(name, serving), serving)
        if refused is None and started is None and serving != candidate:
            refused = "no release of it is recorded as started and unfinished"
        if refused:
            return Settlement(False, f"{where}: not repaired, as {refused}", champion)
        finished = (
            f"finished its interrupted release ({started.reason}, by {started.actor})"
            if started
            else "finished its release"
        )
        reason = f"{where}: {finished}; champion v{champion} -> v{serving}"
        with transaction():
            move_champion_alias(uri, name, serving, expected=champion)
            tag_promoted_version(
                uri, name, serving, started.actor if started else context.actor, champion
            )
            context.record(serving, "released", reason, repaired=True)
    except Exception as exc:  # MLflow refusing or away: report, the release goes on judging
        return Settlement(False, f"{where}: repair failed: {type(exc).__name__}: {exc}", champion)
    return Settlement(True, reason, champion)
