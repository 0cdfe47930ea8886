"""Canary analysis, traffic validation and router configuration, on small inputs."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import cast

import pytest

from mlops.adapters.audit import Action, AuditEntry
from mlops.adapters.prediction_log import SYNTHETIC_HEADER
from mlops.adapters.registry import RUN_ID_TAG, RegisteredVersion
from mlops.core.files import write_atomic
from mlops.core.integrity import CHECKSUM_ALGORITHM, CHECKSUM_ALGORITHM_TAG, CHECKSUM_TAG
from mlops.core.lineage import FINGERPRINT_TAG
from mlops.core.policy import Policy, ReleasePolicy
from mlops.core.settings import Settings
from mlops.ml.prediction_shift import ExpectedPredictions
from mlops.release.approval import (
    APPROVAL_AT_TAG,
    APPROVAL_BY_TAG,
    APPROVAL_DECISION_TAG,
    APPROVAL_REASON_TAG,
    APPROVED,
    REFUSED,
)
from mlops.release.canary import ReleaseFailed, judge, quantile, traffic_steps
from mlops.release.promotion import (
    GATES_FAILED,
    GATES_PASSED,
    GATES_TAG,
    interrupted_release,
    release_eligibility,
    settlement_refusal,
)
from mlops.release.router import SLOTS, RouterError, Traffic, render_dynamic
from mlops.release.targets.base import SlotSample
from mlops.release.targets.local import LocalTarget, parse_router_metrics

pytestmark = pytest.mark.unit

BUCKETS = {0.005: 50.0, 0.01: 90.0, 0.05: 99.0, 0.1: 100.0, math.inf: 100.0}


def test_quantile_interpolates_like_prometheus() -> None:
    assert quantile(BUCKETS, 0.5) == pytest.approx(0.005 * 50 / 50)
    assert quantile(BUCKETS, 0.95) == pytest.approx(0.01 + 0.04 * (95 - 90) / 9)
    assert quantile({}, 0.99) is None
    assert quantile({0.1: 0.0, math.inf: 0.0}, 0.99) is None
    assert quantile({0.1: 1.0, math.inf: 10.0}, 0.99) == 0.1  # past the last finite bucket


def _sample(
    requests: float, errors: float, slow: bool = False, positive: float = 0.25
) -> SlotSample:
    scale = 10.0 if slow else 1.0
    buckets = {le * scale: c * requests / 100 for le, c in BUCKETS.items()}
    return SlotSample(
        requests, errors, buckets, {">50K": positive * requests, "<=50K": (1 - positive) * requests}
    )


def test_judge_passes_a_candidate_like_the_champion() -> None:
    verdict = judge(_sample(100, 0), _sample(1000, 1), ReleasePolicy())
    assert not verdict.breached and verdict.reasons == []


@pytest.mark.parametrize(
    ("candidate", "fragment"),
    [
        (_sample(100, 5), "error rate 5.0%"),
        (_sample(100, 0, slow=True), "p99 latency"),
        (_sample(100, 0, positive=0.6), "'>50K' predicted for 60.0% of requests against 25.0%"),
    ],
)
def test_judge_names_each_breach(candidate: SlotSample, fragment: str) -> None:
    verdict = judge(candidate, _sample(1000, 0), ReleasePolicy(latency_slack_ms=5))
    assert verdict.breached and fragment in "; ".join(verdict.reasons)


def test_few_requests_judge_errors_but_not_latency_or_predictions() -> None:
    few = _sample(5, 0, slow=True, positive=0.9)
    assert not judge(few, _sample(1000, 0), ReleasePolicy(min_requests=20)).breached
    assert judge(_sample(5, 2), _sample(1000, 0), ReleasePolicy(min_requests=20)).breached


@pytest.mark.parametrize(
    ("weights", "mirror", "fragment"),
    [
        ({"blue": 60, "green": 30}, None, "sum to 100"),
        ({"purple": 100}, None, "unknown slot"),
        ({"blue": 50, "green": 50}, "green", "cannot both take traffic and mirror"),
    ],
)
def test_bad_traffic_is_refused(weights: dict[str, int], mirror: str | None, fragment: str) -> None:
    with pytest.raises(RouterError, match=fragment):
        Traffic(weights, mirror)


def test_router_config_for_canary_and_shadow() -> None:
    backends = {"blue": "http://127.0.0.1:1", "green": "http://127.0.0.1:2"}
    canary = render_dynamic(backends, Traffic({"blue": 95, "green": 5}))["http"]["services"]
    assert canary["release"]["weighted"]["services"] == [
        {"name": "blue", "weight": 95},
        {"name": "green", "weight": 5},
    ]
    shadow = render_dynamic(backends, Traffic({"blue": 100}, mirror="green"))["http"]["services"]
    assert shadow["release"]["mirroring"] == {
        "service": "blue",
        "mirrors": [{"name": "green", "percent": 100}],
    }
    with pytest.raises(RouterError, match="no server"):
        render_dynamic({"blue": backends["blue"]}, Traffic({"blue": 50, "green": 50}))


def test_router_metrics_are_read_per_slot() -> None:
    text = "\n".join(
        [
            "# TYPE traefik_service_requests_total counter",
            'traefik_service_requests_total{code="200",method="POST",protocol="http",service="blue@file"} 90',
            'traefik_service_requests_total{code="502",method="POST",protocol="http",service="green@file"} 3',
            'traefik_service_requests_total{code="200",method="POST",protocol="http",service="green@file"} 7',
            'traefik_service_requests_total{code="200",method="GET",protocol="http",service="prometheus@internal"} 4',
        ]
    )
    samples = parse_router_metrics(text)
    assert samples["blue"].requests == 90 and samples["blue"].errors == 0
    assert samples["green"].requests == 10 and samples["green"].errors == 3
    assert set(samples) == {"blue", "green"}


def test_a_few_slow_requests_of_a_busy_machine_are_not_a_latency_breach() -> None:
    """Seen in the closed-loop demo: 3 of ~110 candidate requests over 1 s while the machine
    trained a model; the p99 of so few requests is those three, the champion's is 80 ms."""
    champion = SlotSample(
        5000,
        0,
        {
            0.01: 900,
            0.025: 4000,
            0.05: 4900,
            0.1: 4960,
            0.25: 4980,
            1: 4995,
            2.5: 5000,
            math.inf: 5000,
        },
    )
    outliers = SlotSample(
        110,
        0,
        {0.01: 30, 0.025: 70, 0.05: 100, 0.1: 106, 0.25: 107, 1: 107, 2.5: 110, math.inf: 110},
    )
    verdict = judge(outliers, champion, ReleasePolicy(min_requests=100))
    assert verdict.figures["candidate_p99_ms"] > 1000  # its p99 is the outliers ...
    assert not verdict.breached, verdict.reasons  # ... which a busy machine explains
    slow = SlotSample(
        110, 0, {0.01: 5, 0.025: 10, 0.05: 20, 0.1: 40, 0.25: 80, 1: 105, 2.5: 110, math.inf: 110}
    )
    verdict = judge(slow, champion, ReleasePolicy(min_requests=100))
    assert verdict.breached and "requests slower than" in verdict.reasons[0]


def test_after_the_world_changed_predictions_are_judged_against_production_labels() -> None:
    """A retraining after a label shift predicts fewer positives than the champion, as the
    labels production sent back do: judged against those, not against the champion."""
    candidate, champion = _sample(200, 0, positive=0.05), _sample(2000, 0, positive=0.25)
    assert judge(candidate, champion, ReleasePolicy()).breached
    labels = ExpectedPredictions(shares={"<=50K": 0.92, ">50K": 0.08}, rows=1000)
    verdict = judge(candidate, champion, ReleasePolicy(), expected=labels)
    assert not verdict.breached and verdict.figures["reference_share[>50K]"] == 0.08
    wrong = judge(_sample(200, 0, positive=0.6), champion, ReleasePolicy(), expected=labels)
    assert "against 8.0% in production labels" in wrong.reasons[0]


# release eligibility: one rule for every path to production ------------------------------------
def _version(**tags: str) -> RegisteredVersion:
    """A version whose registration is complete and that passed the gates, then ``tags``."""
    base = {
        GATES_TAG: GATES_PASSED,
        CHECKSUM_TAG: "ab" * 32,
        CHECKSUM_ALGORITHM_TAG: CHECKSUM_ALGORITHM,
        FINGERPRINT_TAG: "f" * 16,
        RUN_ID_TAG: "run",
    }
    return RegisteredVersion("m", 2, "run", base | tags, {}, False, "a model")


def _policy(require_approval: bool) -> Policy:
    return Policy(version=3, metrics={}, require_approval=require_approval)


def test_a_refused_version_is_not_eligible_and_the_reason_names_who_and_why() -> None:
    refused = _version(
        **{
            APPROVAL_DECISION_TAG: REFUSED,
            APPROVAL_BY_TAG: "ann",
            APPROVAL_AT_TAG: "2026-01-01T00:00:00+00:00",
            APPROVAL_REASON_TAG: "wait for Q3 data",
        }
    )
    reason = release_eligibility(refused, _policy(require_approval=True))
    assert reason == "m v2 was refused by ann at 2026-01-01T00:00:00+00:00: wait for Q3 data"


def test_no_recorded_approval_is_not_eligible_where_the_policy_requires_one() -> None:
    reason = release_eligibility(_version(), _policy(require_approval=True))
    assert reason is not None and "no recorded approval" in reason and "policy v3" in reason
    assert release_eligibility(_version(), _policy(require_approval=False)) is None


def test_an_approved_version_that_passed_the_gates_is_eligible() -> None:
    approved = _version(**{APPROVAL_DECISION_TAG: APPROVED, APPROVAL_BY_TAG: "bob"})
    assert release_eligibility(approved, _policy(require_approval=True)) is None


@pytest.mark.parametrize(
    ("tags", "fragment"),
    [
        ({GATES_TAG: GATES_FAILED}, "has not passed the gates (mlops.gates = failed)"),
        ({CHECKSUM_TAG: ""}, "not completely registered"),
    ],
)
def test_failed_gates_or_an_incomplete_registration_are_not_eligible(
    tags: dict[str, str], fragment: str
) -> None:
    approved = {APPROVAL_DECISION_TAG: APPROVED}
    reason = release_eligibility(_version(**tags, **approved), _policy(require_approval=False))
    assert reason is not None and fragment in reason


# the strategies and the repair of an alias a killed release left behind -----------------------
def test_each_strategy_watches_its_own_steps_before_all_traffic_moves() -> None:
    canary = traffic_steps("canary", (5, 25, 100), "blue", "green")
    assert canary == [
        ("at 5%", Traffic({"blue": 95, "green": 5})),
        ("at 25%", Traffic({"blue": 75, "green": 25})),
    ]
    assert traffic_steps("blue-green", (5, 100), "blue", "green") == [
        ("after the switch", Traffic.only("green"))
    ]
    assert traffic_steps("shadow", (5, 100), "blue", "green") == [
        ("in shadow", Traffic({"blue": 100}, mirror="green"))
    ]
    with pytest.raises(ReleaseFailed, match=r"unknown strategy 'big-bang' \(blue-green, canary"):
        traffic_steps("big-bang", (100,), "blue", "green")


def _entry(version: int, action: Action) -> AuditEntry:
    return AuditEntry(model="m", version=version, action=action, actor="a", trigger="t", reason="r")


def test_an_interrupted_release_is_one_started_and_never_ended() -> None:
    ended = [_entry(2, "release-started"), _entry(2, "released")]
    assert interrupted_release(ended, 2) is None
    started = [*ended, _entry(3, "release-started"), _entry(2, "release-started")]
    assert interrupted_release(started, 2) == started[-1]
    assert interrupted_release([*started, _entry(2, "gate-decision")], 2) == started[-1]
    assert interrupted_release(started, 4) is None


def test_the_alias_follows_the_traffic_only_for_an_eligible_interrupted_release() -> None:
    policy, started = _policy(require_approval=False), _entry(2, "release-started")
    assert settlement_refusal(None, policy, started, 2) == "it is not registered"
    assert settlement_refusal(_version(), policy, started, 3) is None
    assert settlement_refusal(_version(), policy, None, 2) is None  # the candidate itself
    unstarted = settlement_refusal(_version(), policy, None, 3)
    assert unstarted == "no release of it is recorded as started and unfinished"
    failed = settlement_refusal(_version(**{GATES_TAG: GATES_FAILED}), policy, started, 2)
    assert failed is not None and "has not passed the gates" in failed


# the router ------------------------------------------------------------------------------------
def test_the_router_deletes_a_callers_synthetic_mark() -> None:
    """A caller who sets the release's mark would hide its requests from monitoring."""
    config = render_dynamic({"blue": "http://127.0.0.1:1"}, Traffic.only("blue"))["http"]
    (middleware,) = config["routers"]["models"]["middlewares"]
    assert config["middlewares"][middleware] == {
        "headers": {"customRequestHeaders": {SYNTHETIC_HEADER: ""}}
    }


# state files -----------------------------------------------------------------------------------
def test_concurrent_state_writers_never_collide(tmp_path: Path) -> None:
    """Two writers of the local target's state (the release and its guard, two CLI commands) each
    replace it whole; with one shared temporary name, one renamed the other's file away."""
    target = LocalTarget(Settings(state_dir=tmp_path), "m")
    errors: list[BaseException] = []

    def write(slot: str) -> None:
        for _ in range(150):
            try:
                target.mark_stable(slot)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=write, args=(s,)) for s in SLOTS * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target._load().stable in SLOTS
    left = sorted(p.name for p in target.dir.iterdir())
    assert left == ["ports.json", "state.json"]  # no temporary file left (ports: the router's)


def test_write_atomic_leaves_the_old_file_when_the_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "guard.json"
    write_atomic(path, "old")
    with pytest.raises(TypeError):
        write_atomic(path, cast(str, b"not text"))
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["guard.json"]
