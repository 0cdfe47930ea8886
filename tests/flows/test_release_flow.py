"""The release flow on the local target: real model-server processes behind the Traefik router,
real Prefect and MLflow servers, and a load generator on loopback while traffic moves."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from flows.promotion import promotion
from flows.release import release
from flows.training import training
from mlops.audit import AuditTrail
from mlops.settings import Settings
from mlops.stack import free_port
from serving.router import Traffic
from targets.local import LocalTarget
from tasks.registry import ModelVersionNotFound
from tasks.release import ReleaseFailed
from tests.helpers import adult_frame, edit_yaml, lenient_policy, make_project

pytestmark = pytest.mark.flows

INTS = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]


@dataclass
class Load:
    """Clients posting one row at a time through the router until stopped."""

    url: str
    clients: int = 3
    pause: float = 0.01
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: list[str] = field(default_factory=list)
    versions: Counter[int] = field(default_factory=Counter)
    first_error_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, rows: list[dict[str, Any]]) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self._stop.is_set():
                try:
                    r = client.post(f"{self.url}/predict", json={"row": rows[i % len(rows)]})
                    self.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        self.versions[r.json()["model"]["version"]] += 1
                    elif self.first_error_at is None:
                        self.first_error_at = time.monotonic()
                except httpx.TransportError as exc:
                    self.connection_errors.append(f"{type(exc).__name__}: {exc}")
                i += 1
                time.sleep(self.pause)

    def __enter__(self) -> Load:
        frame = adult_frame(200).drop(columns=["income"]).replace("?", None)
        frame[INTS] = frame[INTS].astype(int)
        rows = frame.to_dict("records")
        for _ in range(self.clients):
            t = threading.Thread(target=self._run, args=(rows,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + len(self.connection_errors)

    @property
    def success_rate(self) -> float:
        return self.statuses[200] / self.total if self.total else 0.0


@pytest.fixture(scope="module")
def project(
    local_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("release-project")
    name = f"release-{uuid.uuid4().hex[:6]}"
    pipeline = make_project(root, adult_frame(3000), model_name=name)
    lenient_policy(
        pipeline,
        # availability is what these tests judge; latency and prediction breaches are unit-tested
        # (p99 of a cold server on a busy 2-core machine is noise)
        release={
            "bake_seconds": 3,
            "analysis_interval_seconds": 0.25,
            "min_requests": 10,
            "max_p99_latency_ratio": 50,
            "max_positive_rate_shift": 0.5,
        },
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("MLOPS_PROJECT_DIR", str(root))
    mp.setenv("MLOPS_ROUTER_PORT", str(free_port()))
    mp.setenv("MLOPS_ROUTER_ADMIN_PORT", str(free_port()))
    settings = Settings()
    try:
        v1 = training(pipeline=str(pipeline), trigger="test").version
        promotion(version=str(v1), pipeline=str(pipeline), trigger="test")  # gates pass: champion
        edit_yaml(pipeline, model={"params": {"max_iter": 40}})
        v2 = training(pipeline=str(pipeline), trigger="test").version
        client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
        client.set_model_version_tag(name, str(v2), "mlops.gates", "passed")  # judged elsewhere
        target = LocalTarget(settings, name)
        yield {"name": name, "pipeline": pipeline, "v1": v1, "v2": v2, "target": target}
        target.stop()
    finally:
        mp.undo()


def _champion(name: str) -> int:
    s = Settings()
    client = MlflowClient(s.mlflow_tracking_uri, s.mlflow_tracking_uri)
    return int(client.get_model_version_by_alias(name, "champion").version)


def _wait_for_split(target: LocalTarget, running: Any = lambda: True) -> float:
    """Wait until the candidate takes its first share of traffic; returns a deadline for the rest."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = target.router.current()
        if now is not None and len(now.serving) == 2:
            return deadline
        assert running(), "the release ended before its canary"
        time.sleep(0.05)
    raise AssertionError("the canary never started")


def _canary_of_v2(project: dict[str, Any], outcome: dict[str, Any]) -> Any:
    """A canary release of v2, to run in a thread; its failure reason goes to outcome["error"]."""

    def run() -> None:
        try:
            release(
                version=str(project["v2"]), pipeline=str(project["pipeline"]), strategy="canary"
            )
        except ReleaseFailed as exc:
            outcome["error"] = str(exc)

    return run


def test_blue_green_and_canary_under_steady_load(project: dict[str, Any]) -> None:
    pipeline, name, target = str(project["pipeline"]), project["name"], project["target"]
    first = release(version=str(project["v1"]), pipeline=pipeline, strategy="canary")
    assert first.serving and target.state().stable.version == project["v1"]
    with Load(target.router.url) as load:
        time.sleep(1)
        switched = release(version=str(project["v2"]), pipeline=pipeline, strategy="blue-green")
        assert switched.serving and _champion(name) == project["v2"]
        assert target.router.current() == Traffic.only(target.state().stable.slot)
        time.sleep(1)
        back = release(version=str(project["v1"]), pipeline=pipeline, strategy="canary")
        assert back.serving and _champion(name) == project["v1"]
        time.sleep(1)
    assert load.connection_errors == []
    assert load.total > 300, load.statuses
    assert load.success_rate >= 0.999, load.statuses
    assert load.versions[project["v1"]] > 0 and load.versions[project["v2"]] > 0
    assert target.state().stable.version == project["v1"]
    actions = [e.action for e in AuditTrail(Settings().mlflow_tracking_uri).entries(name, None)]
    assert actions.count("released") >= 3


def test_a_failing_canary_rolls_back_by_itself_within_2_s(project: dict[str, Any]) -> None:
    pipeline, name, target = str(project["pipeline"]), project["name"], project["target"]
    release(version=str(project["v1"]), pipeline=pipeline, strategy="canary")
    stable = target.state().stable.slot
    edit_yaml(Path(pipeline).parent / "policy.yaml", release={"bake_seconds": 30})
    outcome: dict[str, Any] = {}
    run = _canary_of_v2(project, outcome)

    with Load(target.router.url, clients=3) as load:
        thread = threading.Thread(target=run)
        thread.start()
        deadline = _wait_for_split(target)
        time.sleep(1)
        candidate = target.state().idle
        assert candidate is not None and candidate.version == project["v2"]
        info = target._load().slots[candidate.slot]
        os.killpg(os.getpgid(info["pid"]), signal.SIGKILL)  # the candidate crashes
        while load.first_error_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert load.first_error_at is not None
        while target.router.current() != Traffic.only(stable) and time.monotonic() < deadline:
            time.sleep(0.01)
        held_after = time.monotonic() - load.first_error_at
        thread.join(timeout=60)
    edit_yaml(Path(pipeline).parent / "policy.yaml", release={"bake_seconds": 3})
    assert held_after < 2.0, held_after
    assert "rolled back" in outcome["error"] and "error rate" in outcome["error"]
    assert _champion(name) == project["v1"]
    last = AuditTrail(Settings().mlflow_tracking_uri).entries(name, None)[-1]
    assert last.action == "release-rolled-back" and "error rate" in last.reason


def test_an_unknown_version_ends_the_release_with_a_reason_and_an_audit_entry(
    project: dict[str, Any],
) -> None:
    name, target = project["name"], project["target"]
    before = target.router.current()
    with pytest.raises(ModelVersionNotFound, match="no version or alias 'nope'"):
        release(version="nope", pipeline=str(project["pipeline"]))
    assert target.router.current() == before
    last = AuditTrail(Settings().mlflow_tracking_uri).entries(name, None)[-1]
    assert last.action == "release-failed" and "nope" in last.reason


def test_killing_the_release_mid_canary_leaves_traffic_on_one_model(
    project: dict[str, Any],
) -> None:
    import subprocess
    import sys

    pipeline, target = str(project["pipeline"]), project["target"]
    release(version=str(project["v1"]), pipeline=pipeline, strategy="canary")
    stable = target.state().stable.slot
    edit_yaml(Path(pipeline).parent / "policy.yaml", release={"bake_seconds": 60})
    code = (
        "from flows.release import release; "
        f"release(version='{project['v2']}', pipeline='{pipeline}', strategy='canary')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        _wait_for_split(target, lambda: proc.poll() is None)
        os.killpg(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        while target.router.current() != Traffic.only(stable) and time.monotonic() < killed + 10:
            time.sleep(0.05)
        assert target.router.current() == Traffic.only(stable)
    finally:
        edit_yaml(Path(pipeline).parent / "policy.yaml", release={"bake_seconds": 3})
        if proc.poll() is None:
            proc.kill()
    assert _champion(project["name"]) == project["v1"]


def test_a_router_that_goes_away_mid_canary_ends_the_release_on_the_champion(
    project: dict[str, Any],
) -> None:
    pipeline, name, target = str(project["pipeline"]), project["name"], project["target"]
    release(version=str(project["v1"]), pipeline=pipeline, strategy="canary")
    stable = target.state().stable.slot
    edit_yaml(Path(pipeline).parent / "policy.yaml", release={"bake_seconds": 30})
    outcome: dict[str, Any] = {}
    run = _canary_of_v2(project, outcome)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        _wait_for_split(target, thread.is_alive)
        router = target._load().router
        assert router is not None
        os.killpg(os.getpgid(router["pid"]), signal.SIGKILL)
        thread.join(timeout=90)
    finally:
        edit_yaml(Path(pipeline).parent / "policy.yaml", release={"bake_seconds": 3})
    assert "cannot be reached" in outcome["error"], outcome
    # the rollback started a new router, on the champion alone
    assert target.router.current() == Traffic.only(stable)
    assert _champion(name) == project["v1"]
    last = AuditTrail(Settings().mlflow_tracking_uri).entries(name, None)[-1]
    assert last.action == "release-rolled-back" and "cannot be reached" in last.reason


def test_the_next_release_recovers_a_split_left_behind(project: dict[str, Any]) -> None:
    pipeline, name, target = str(project["pipeline"]), project["name"], project["target"]
    release(version=str(project["v1"]), pipeline=pipeline, strategy="canary")
    state = target.state()
    if state.idle is None:  # the other slot must run something for a split
        target.deploy(project["v2"])
        state = target.state()
    target.set_traffic(Traffic({state.stable.slot: 50, state.idle.slot: 50}))  # as if killed
    outcome = release(version=str(project["v1"]), pipeline=pipeline)
    assert outcome.reason == "already serving"
    assert target.router.current() == Traffic.only(state.stable.slot)
    entries = AuditTrail(Settings().mlflow_tracking_uri).entries(name, None)
    assert any("left by an unfinished release" in e.reason for e in entries[-3:])


def test_training_hands_a_passing_challenger_to_the_release(project: dict[str, Any]) -> None:
    """training(hand_over="release"): a new version goes through the gates into production."""
    pipeline, name, target = project["pipeline"], project["name"], project["target"]
    release(version=str(project["v1"]), pipeline=str(pipeline))
    edit_yaml(pipeline, model={"params": {"max_iter": 60}})
    try:
        v3 = training(pipeline=str(pipeline), trigger="test", hand_over="release").version
    finally:
        edit_yaml(pipeline, model={"params": {"max_iter": 40}})
    assert v3 not in (project["v1"], project["v2"])
    assert target.state().stable.version == v3
    assert target.router.current() == Traffic.only(target.state().stable.slot)
    assert _champion(name) == v3
    entries = AuditTrail(Settings().mlflow_tracking_uri).entries(name, v3)
    assert [e.action for e in entries][-3:] == ["gate-decision", "release-started", "released"]
    assert entries[-1].trigger == "promotion (training (test))"
