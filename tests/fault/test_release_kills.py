"""Kill -9 the release at seeded random points while callers use the router: traffic always ends
wholly on one version, that version is the champion alias, and callers barely notice.

Each round starts `mlops release` (a real process, against the session's Prefect and MLflow and
the local target) and kills its process group at a random moment of a release's duration. What
the product offers then recovers: the guard (by itself), and the next round's release (recover,
then settle the champion alias). A last release runs to its end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from mlflow import MlflowClient

from flows.promotion import promotion
from flows.training import training
from mlops.core.settings import Settings
from mlops.release.router import Traffic
from mlops.release.targets.local import LocalTarget
from mlops.stack.local import free_port, process_alive
from tests.helpers import BIN, adult_frame, lenient_policy, make_project

pytestmark = pytest.mark.fault

KILLS = 20
SEED = 13
INTS = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
PROMOTED = ("mlops.promoted.at", "mlops.promoted.by", "mlops.promoted.previous")


@dataclass
class Callers:
    """Clients posting one row a request through the router until stopped (bounded)."""

    url: str
    clients: int = 2
    pause: float = 0.02
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # non-200 answers and transport errors
    unanswered: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, rows: list[dict[str, Any]]) -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not self._stop.is_set() and i < 200_000:
                try:
                    r = client.post(f"{self.url}/predict", json={"row": rows[i % len(rows)]})
                    self.statuses[r.status_code] += 1
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code}: {r.text[:120]}")
                except httpx.TransportError as exc:
                    self.unanswered += 1
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                i += 1
                self._stop.wait(self.pause)

    def __enter__(self) -> Callers:
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
            t.join(timeout=30)

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + self.unanswered


@pytest.fixture(scope="module")
def project(
    local_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One trained champion and a second version of the same artifacts (a release of either is
    a real release; training two models would only cost time)."""
    root = tmp_path_factory.mktemp("kill-project")
    name = f"kills-{uuid.uuid4().hex[:6]}"
    pipeline = make_project(root, adult_frame(1500), model_name=name)
    lenient_policy(
        pipeline,
        release={
            "strategy": "canary",
            "canary_steps": [50, 100],
            "bake_seconds": 1,
            "analysis_interval_seconds": 0.25,
            "warmup_requests": 5,
            # availability is judged here; latency and predictions are unit-tested
            "min_requests": 100_000,
        },
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("MLOPS_PROJECT_DIR", str(root))
    mp.setenv("MLOPS_ROUTER_PORT", str(free_port()))
    mp.setenv("MLOPS_ROUTER_ADMIN_PORT", str(free_port()))
    settings = Settings()
    target = LocalTarget(settings, name)
    try:
        v1 = training(pipeline=str(pipeline), trigger="test").version
        promotion(version=str(v1), pipeline=str(pipeline), trigger="test")
        client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
        mv = client.get_model_version(name, str(v1))
        tags = {k: v for k, v in mv.tags.items() if k not in PROMOTED}
        v2 = int(
            client.create_model_version(
                name,
                mv.source,
                mv.run_id,
                tags=tags,
                description=mv.description,
                model_id=mv.model_id or mv.source.removeprefix("models:/"),
            ).version
        )
        yield {"name": name, "pipeline": pipeline, "versions": (v1, v2), "target": target}
    finally:
        target.stop()
        _stop_orphans(name)
        mp.undo()


def _stop_orphans(model: str) -> None:
    """Model servers of this test's model that a kill left unrecorded (started, then the release
    died before writing the slot down): stopped by pid."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "serve" in cmdline and model in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.info["pid"], signal.SIGKILL)


def _champion(settings: Settings, name: str) -> int:
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    return int(client.get_model_version_by_alias(name, "champion").version)


def _start_release(pipeline: Path, version: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    argv = [str(BIN / "mlops"), "release", "--version", str(version), "--pipeline", str(pipeline)]
    return subprocess.Popen(
        argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _wait_for_guard(target: LocalTarget, timeout: float = 120) -> None:
    """Until the dead release's guard has acted (it exits when done)."""
    record = target.dir / "guard.json"
    if not record.exists():
        return
    info = json.loads(record.read_text())
    deadline = time.monotonic() + timeout
    while process_alive(info["pid"], info["started"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(info["pid"], info["started"]), "the guard never finished"


def _one_version(target: LocalTarget) -> int:
    state = target.state()
    assert state.stable is not None
    assert target.router.current() == Traffic.only(state.stable.slot), target.router.current()
    return state.stable.version


def test_killed_releases_end_on_the_champion_and_callers_are_served(
    project: dict[str, Any], local_stack: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    name, pipeline, target = project["name"], project["pipeline"], project["target"]
    rng = random.Random(SEED)
    started = time.monotonic()

    first = _start_release(pipeline, project["versions"][0])  # uninterrupted: how long one takes
    assert first.wait(timeout=600) == 0, first.stderr.read() if first.stderr else ""
    # kill points over a whole release: the first one had no canary to run (no champion served)
    duration = (time.monotonic() - started) * 1.25 + 3
    finished, kills, states = 0, 0, Counter[str]()
    with Callers(target.router.url) as callers:
        while kills < KILLS:
            assert time.monotonic() - started < 1500, f"only {kills} kills so far"
            champion = _champion(local_stack, name)
            other = next(v for v in project["versions"] if v != champion)
            proc = _start_release(pipeline, other)
            try:
                proc.wait(timeout=rng.uniform(0.0, duration))
                finished += 1  # it ended before its kill: the next round releases again
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
            _wait_for_guard(target)
            serving = _one_version(target)  # never split or mirrored once the guard is done
            states[
                "serving == champion"
                if serving == _champion(local_stack, name)
                else "alias behind (next release settles it)"
            ] += 1
        last = _start_release(pipeline, project["versions"][0])
        assert last.wait(timeout=600) == 0, last.stderr.read() if last.stderr else ""
    serving = _one_version(target)
    champion = _champion(local_stack, name)
    rate = callers.statuses[200] / callers.total
    with capsys.disabled():
        print(
            f"\nrelease kills: {kills} kills, {finished} releases ended before their kill, "
            f"one release {duration:.1f} s; after each kill {dict(states)}; "
            f"callers {callers.total} requests, {len(callers.failures)} failed "
            f"({rate:.4%} served), statuses {dict(callers.statuses)}; "
            f"final: v{serving} serves all traffic, champion v{champion}; "
            f"{time.monotonic() - started:.0f} s"
        )
    assert serving == champion
    assert callers.total > 1000
    assert rate >= 0.999, callers.failures[:10]
