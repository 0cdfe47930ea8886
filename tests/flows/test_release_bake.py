"""The bake after promotion, the hold, and every decision told, on the local target with real
Prefect and MLflow servers, real Prometheus, real model-server processes and load on loopback:
a new champion whose server dies in the bake is rolled back to the previous version (traffic,
alias, tags and audit); a healthy bake keeps it, and each step's decision reaches the release
artifact, the version's MLflow run, the audit trail and the Prefect event feed; a step that
ends inconclusive under ``on_inconclusive: hold`` pauses the run with a form answered through
the Prefect API as the UI does (continue, roll back), and no answer in time rolls back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter
from prefect.flow_runs import resume_flow_run

from flows.release import release
from mlops.adapters.audit import AuditEntry, AuditTrail
from mlops.adapters.tracking import artifact_url
from mlops.core.events import RELEASE_PROMOTED, RELEASE_ROLLED_BACK, RELEASE_STEP
from mlops.core.settings import Settings
from mlops.release.canary import ReleaseFailed
from mlops.release.router import Traffic
from tests.fixtures import Load, trained_project
from tests.helpers import edit_yaml

pytestmark = pytest.mark.flows

BASE = {
    "bake_seconds": 3,
    "canary_steps": [50, 100],
    "analysis_interval_seconds": 0.25,
    "min_requests": 10,
    "max_p99_latency_ratio": 50,
    "max_prediction_shift": 0.5,
    "warmup_requests": 10,
    "on_inconclusive": "extend",
    "max_extensions": 1,
    "hold_timeout_seconds": 300,
    "bake_after_promotion_seconds": 0,
}


@pytest.fixture(scope="module")
def project(
    local_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """v1 the champion, v2 trained with other parameters."""
    root = tmp_path_factory.mktemp("bake-project")
    with trained_project(
        root, "bake", policy={"release": BASE}, versions=2, promote=True, router=True
    ) as built:
        v1, v2 = built.versions
        yield {
            "name": built.name,
            "pipeline": built.pipeline,
            "policy": built.pipeline.parent / "policy.yaml",
            "v1": v1,
            "v2": v2,
            "target": built.target,
        }


@pytest.fixture
def rules(project: dict[str, Any]) -> Iterator[Callable[..., None]]:
    """One version serves alone under the base rules (the first test releases v1; each test
    then releases the version that does not serve); ``rules(**changes)`` sets this test's."""
    edit_yaml(project["policy"], release=BASE)
    if project["target"].state().stable is None:
        release(version=str(project["v1"]), pipeline=str(project["pipeline"]))
    try:
        yield lambda **changes: edit_yaml(project["policy"], release=changes)
    finally:
        edit_yaml(project["policy"], release=BASE)


def _client() -> MlflowClient:
    uri = Settings().mlflow_tracking_uri
    return MlflowClient(uri, uri)


def _champion(name: str) -> int:
    return int(_client().get_model_version_by_alias(name, "champion").version)


def _entries(name: str, version: int, since: int = 0) -> list[AuditEntry]:
    return AuditTrail(Settings().mlflow_tracking_uri).entries(name, version)[since:]


def _release_id(entry: AuditEntry) -> str:
    return entry.links["prefect_flow_run"].rsplit("/", 1)[-1]


def _events(name: str, event: str, release_id: str, count: int) -> list[dict[str, Any]]:
    """The ``event``s about model ``name`` of one release, read back from Prefect's API, oldest
    first (waiting up to 30 s for ``count`` of them: the client sends events in the background)."""
    body = {
        "filter": {"event": {"name": [event]}, "resource": {"id": [f"mlops.model.{name}"]}},
        "limit": 50,
    }
    deadline = time.monotonic() + 30
    while True:
        r = httpx.post(f"{Settings().prefect_api_url}/events/filter", json=body, timeout=10)
        r.raise_for_status()
        mine = [e for e in r.json()["events"] if e["payload"].get("release") == release_id]
        if len(mine) >= count or time.monotonic() > deadline:
            return sorted(mine, key=lambda e: e["occurred"])
        time.sleep(0.5)


def _sides(project: dict[str, Any]) -> tuple[int, int]:
    """The version serving now (the champion) and the other one, which a test releases."""
    serving = project["target"].state().stable.version
    assert _champion(project["name"]) == serving
    return serving, project["v2"] if serving == project["v1"] else project["v1"]


def _in_thread(
    project: dict[str, Any], version: int, strategy: str, trigger: str
) -> tuple[Any, dict[str, Any]]:
    """A release of ``version`` running in a thread; its outcome or failure goes to the dict."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = release(
                version=str(version),
                pipeline=str(project["pipeline"]),
                strategy=strategy,
                trigger=trigger,
            )
        except ReleaseFailed as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=run)
    worker.start()
    return worker, outcome


def test_a_breach_in_the_bake_rolls_back_to_the_previous_version(
    project: dict[str, Any], rules: Callable[..., None]
) -> None:
    (name, target), (v1, v2) = (project["name"], project["target"]), _sides(project)
    previous_slot = target.state().stable.slot
    rules(bake_after_promotion_seconds=60)
    before = len(_entries(name, v2))
    with Load(target.router.url) as load:
        time.sleep(2)  # figures of the previous version before the release
        worker, outcome = _in_thread(project, v2, "canary", f"bake-{uuid.uuid4().hex[:6]}")
        deadline = time.monotonic() + 180
        while _champion(name) != v2:  # promoted: all traffic on v2, the alias moved
            assert worker.is_alive() and time.monotonic() < deadline, outcome
            time.sleep(0.1)
        state = target.state()
        assert state.stable.version == v2 and target.router.current() == Traffic.only(
            state.stable.slot
        )
        assert state.idle is not None and state.idle.slot == previous_slot  # kept, ready
        assert httpx.get(f"{state.idle.url}/health", timeout=5).status_code == 200
        info = target._load().slots[state.stable.slot]
        os.killpg(os.getpgid(info["pid"]), signal.SIGKILL)  # the new champion dies in the bake
        worker.join(timeout=120)
        served_after = dict(load.versions)
        time.sleep(1)
    error = outcome.get("error", "")
    assert error.startswith(f"{name} v{v2} rolled back to v{v1}: in the bake: "), outcome
    assert f"server (v{v2}) exited" in error
    assert target.router.current() == Traffic.only(previous_slot)
    assert target.state().stable.version == v1
    assert _champion(name) == v1
    assert load.versions[v1] > served_after.get(v1, 0), "v1 answers again after the rollback"
    tags = _client().get_model_version(name, str(v1)).tags
    assert tags["mlops.promoted.previous"] == str(v2)  # promoted back over v2
    actions = [e.action for e in _entries(name, v2, before)]
    assert actions == ["release-started", "released", "release-rolled-back"], actions
    rolled = _entries(name, v2, before)[-1]
    assert rolled.previous_champion == v2 and "in the bake" in rolled.reason
    assert [s["name"] for s in rolled.evidence["steps"]] == ["at 50%", "bake"]
    assert rolled.evidence["analysis"]["action"] == "rollback"
    [event] = _events(name, RELEASE_ROLLED_BACK, _release_id(rolled), 1)
    assert event["payload"]["phase"] == "bake" and event["payload"]["back_to"] == v1
    assert event["payload"]["reason"] in error
    related = {r["prefect.resource.id"] for r in event["related"]}
    assert f"mlops.model.{name}.version.{v2}" in related
    assert any(r.startswith("prefect.flow-run.") for r in related)


# the hold ----------------------------------------------------------------------------------------
def _paused(trigger: str, seen: set[str], timeout: float = 180) -> Any:
    """The release run of ``trigger`` once it pauses with a form not in ``seen``."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for run in client.read_flow_runs(flow_run_filter=FlowRunFilter()):
                if run.parameters.get("trigger") != trigger or not run.state:
                    continue
                keyset = run.state.state_details.run_input_keyset
                if run.state.is_paused() and keyset and keyset["response"] not in seen:
                    seen.add(keyset["response"])
                    return run
            time.sleep(0.3)
    raise AssertionError("no paused release appeared")


def _answer(trigger: str, seen: set[str], answer: dict[str, Any]) -> dict[str, Any]:
    """Answer the paused release's form as the Prefect UI does: read its schema and
    description from the run's input, then resume the run with the answer."""
    run = _paused(trigger, seen)
    keyset = run.state.state_details.run_input_keyset
    with get_client(sync_client=True) as client:
        schema = json.loads(client.read_flow_run_input(run.id, keyset["schema"]))
        description = json.loads(client.read_flow_run_input(run.id, keyset["description"]))
    resume_flow_run(run.id, run_input=answer)
    return {"schema": schema, "description": description}


# no check can conclude: every step (and the bake) ends inconclusive
UNSURE = {"on_inconclusive": "hold", "min_requests": 10**9}


def test_a_held_step_and_bake_answered_continue_release_and_keep_the_new_version(
    project: dict[str, Any], rules: Callable[..., None]
) -> None:
    (name, target), (v1, v2) = (project["name"], project["target"]), _sides(project)
    rules(**UNSURE, bake_after_promotion_seconds=1)
    before = len(_entries(name, v2))
    trigger, seen = f"hold-{uuid.uuid4().hex[:6]}", set[str]()
    with Load(target.router.url):
        worker, outcome = _in_thread(project, v2, "blue-green", trigger)
        try:
            form = _answer(trigger, seen, {"action": "continue", "by": "ann", "reason": "fine"})
            assert _champion(name) == v1, "nothing moves while it waits"
            baked = _answer(trigger, seen, {"action": "continue", "by": "ann", "reason": "ok"})
        finally:
            worker.join(timeout=300)
    assert "result" in outcome, outcome
    assert outcome["result"].reason == "released and baked"
    assert set(form["schema"]["properties"]) >= {"action", "by", "reason"}
    assert form["schema"]["properties"]["action"]["enum"] == ["continue", "rollback"]
    assert f"{name} v{v2}, after the switch: inconclusive" in form["description"]
    assert f"{name} v{v2}, bake: inconclusive" in baked["description"]
    assert _champion(name) == v2 and target.state().stable.version == v2
    entries = _entries(name, v2, before)
    assert [e.action for e in entries] == ["release-started", "released", "release-baked"]
    [step] = entries[1].evidence["steps"]
    assert step["held"]["by"] == "ann" and step["held"]["proceed"] is True
    assert step["decision"]["action"] == "pass"
    assert "held: ann said continue: fine" in step["decision"]["reason"]
    assert "held: ann said continue: ok" in entries[2].reason


def test_a_held_step_answered_rollback_rolls_back_naming_who(
    project: dict[str, Any], rules: Callable[..., None]
) -> None:
    (name, target), (v1, v2) = (project["name"], project["target"]), _sides(project)
    stable = target.state().stable.slot
    rules(**UNSURE)
    trigger, seen = f"hold-{uuid.uuid4().hex[:6]}", set[str]()
    with Load(target.router.url):
        worker, outcome = _in_thread(project, v2, "canary", trigger)
        try:
            _answer(trigger, seen, {"action": "rollback", "by": "bob", "reason": "too quiet"})
        finally:
            worker.join(timeout=300)
    error = outcome.get("error", "")
    assert error.startswith(f"{name} v{v2} rolled back: at 50%: inconclusive: "), outcome
    assert error.endswith("held: bob said roll back: too quiet")
    assert _champion(name) == v1 and target.router.current() == Traffic.only(stable)
    last = _entries(name, v2)[-1]
    assert last.action == "release-rolled-back"
    assert last.evidence["steps"][-1]["held"]["by"] == "bob"


def test_a_held_step_nobody_answers_rolls_back_at_the_timeout(
    project: dict[str, Any], rules: Callable[..., None]
) -> None:
    (name, target), (v1, v2) = (project["name"], project["target"]), _sides(project)
    stable = target.state().stable.slot
    rules(**UNSURE, hold_timeout_seconds=3)
    with Load(target.router.url), pytest.raises(ReleaseFailed) as failed:
        release(version=str(v2), pipeline=str(project["pipeline"]), strategy="blue-green")
    assert str(failed.value).endswith("held: (nobody) said roll back: no answer within 3 s")
    assert _champion(name) == v1 and target.router.current() == Traffic.only(stable)
    last = _entries(name, v2)[-1]
    assert last.action == "release-rolled-back" and "no answer within 3 s" in last.reason
    [event] = _events(name, RELEASE_ROLLED_BACK, _release_id(last), 1)
    assert event["payload"]["phase"] == "before promotion"
    assert event["payload"]["decision"]["action"] == "rollback"


def test_killing_the_release_in_the_bake_leaves_the_new_champion_whole(
    project: dict[str, Any], rules: Callable[..., None]
) -> None:
    # killed after the promotion, the release has done one whole act: all traffic on the new
    # version, the alias on it, "released" recorded; the guard finds nothing to undo
    (name, target), (_, v2) = (project["name"], project["target"]), _sides(project)
    rules(bake_after_promotion_seconds=120)
    code = (
        "from flows.release import release; "
        f"release(version='{v2}', pipeline='{project['pipeline']}', strategy='blue-green')"
    )
    with Load(target.router.url) as load:
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            # in the bake: the promotion's act is whole once its audit entry is written (the
            # alias moves first, inside the same transaction)
            while _champion(name) != v2 or _entries(name, v2)[-1].action != "released":
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(1)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            time.sleep(2)  # the guard's poll and recovery
        finally:
            if proc.poll() is None:
                proc.kill()
    state = target.state()
    assert state.stable.version == v2 == _champion(name)
    assert target.router.current() == Traffic.only(state.stable.slot)
    assert load.success_rate >= 0.99, load.statuses
    assert _entries(name, v2)[-1].action == "released"


def test_a_healthy_bake_keeps_the_new_version_and_every_step_is_told(
    project: dict[str, Any], rules: Callable[..., None]
) -> None:
    (name, target), (v1, v2) = (project["name"], project["target"]), _sides(project)
    rules(bake_after_promotion_seconds=3)
    before = len(_entries(name, v2))
    with Load(target.router.url) as load:
        time.sleep(2)  # figures of the previous version before the release
        outcome = release(version=str(v2), pipeline=str(project["pipeline"]), strategy="canary")
    assert outcome.serving and outcome.reason == "released and baked"
    assert _champion(name) == v2 and target.state().stable.version == v2
    assert load.success_rate >= 0.99, load.statuses
    entries = _entries(name, v2, before)
    assert [e.action for e in entries] == ["release-started", "released", "release-baked"]
    released, baked = entries[1], entries[2]
    assert [s["name"] for s in released.evidence["steps"]] == ["at 50%"]
    assert baked.evidence["analysis"]["action"] == "pass"
    assert f"against v{v1}" in baked.reason
    rid = _release_id(released)

    # the version's MLflow run holds each step's whole decision
    run_id = _client().get_model_version(name, str(v2)).run_id
    stored = sorted(a.path for a in _client().list_artifacts(run_id, f"release/{rid}"))
    chart = f"release/{rid}/canary.png"  # the steps' checks over time, redrawn at each step
    assert stored == [chart, f"release/{rid}/step-1.json", f"release/{rid}/step-2.json"]
    png = httpx.get(artifact_url(Settings().mlflow_tracking_uri, run_id, chart), timeout=10)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), png.status_code
    stored.remove(chart)
    docs = [json.loads(Path(_client().download_artifacts(run_id, p)).read_text()) for p in stored]
    assert [(d["step"], d["name"], d["decision"]["action"]) for d in docs] == [
        (1, "at 50%", "pass"),
        (2, "bake", "pass"),
    ]
    for doc in docs:
        checks = {c["name"]: c for c in doc["decision"]["checks"]}
        assert set(checks) == {"error-rate", "latency", "predictions"}
        errors = checks["error-rate"]
        assert errors["outcome"] == "pass" and errors["statistic"]["requests"] >= 10
        assert errors["candidate"] == 0.0 and "p_value" in errors["statistic"]
        # the resolved PromQL of both sides, with the slots' selectors filled in
        assert set(errors["query"]) >= {"candidate.requests", "stable.requests"}
        assert "{selector}" not in json.dumps(errors["query"])
        cand, stab = errors["query"]["candidate.requests"], errors["query"]["stable.requests"]
        assert f'model="{name}"' in cand and f'model="{name}"' in stab and cand != stab
        assert doc["release"] == rid and doc["strategy"] == "canary"

    # the Prefect event feed tells the same story, and an automation can match it
    steps = _events(name, RELEASE_STEP, rid, 2)
    assert [(e["payload"]["step"], e["payload"]["name"]) for e in steps] == [
        (1, "at 50%"),
        (2, "bake"),
    ]
    assert steps[1]["payload"]["decision"] == docs[1]["decision"]
    [promoted] = _events(name, RELEASE_PROMOTED, rid, 1)
    assert promoted["payload"]["previous"] == v1 and promoted["payload"]["version"] == v2
    assert promoted["payload"]["steps"] == [{"name": "at 50%", "action": "pass"}]
    assert _events(name, RELEASE_ROLLED_BACK, rid, 0) == []

    # and the release's artifacts, one per step, readable
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"release-{name}"]))
        )
    found = sorted(found, key=lambda a: a.created)  # the module's earlier releases wrote some too
    texts = [str(a.data) for a in found if f"v{v2} step 2 (bake): pass" in str(a.data)]
    assert texts, [str(a.data)[:60] for a in found]
    assert "| error-rate | pass |" in texts[-1] and f'model="{name}"' in texts[-1]
    with get_client(sync_client=True) as client:
        charts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"release-{name}-chart"]))
        )
    shown = f"![canary]({artifact_url(Settings().mlflow_tracking_uri, run_id, chart)})"
    assert any(shown in str(a.data) for a in charts), [str(a.data) for a in charts]
