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
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow import MlflowClient

from mlops.core.settings import Settings
from mlops.release.router import Traffic
from mlops.release.targets.local import LocalTarget
from mlops.stack.processes import process_alive
from tests.fixtures import Load, trained_project
from tests.helpers import BIN

pytestmark = pytest.mark.fault

KILLS = 6  # a fixed budget: each round is a real `mlops release` process (~20 s alone)
SEED = 13


#: Callers of the router during the kills: slow and patient, and bounded.
Callers = partial(Load, clients=2, pause=0.02, timeout=30, limit=200_000)


@pytest.fixture(scope="module")
def project(
    local_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One trained champion and a second version of the same artifacts (a release of either is
    a real release; training two models would only cost time)."""
    policy = {
        "release": {
            "strategy": "canary",
            "canary_steps": [50, 100],
            "bake_seconds": 1,
            "analysis_interval_seconds": 0.25,
            "warmup_requests": 5,
            # availability is judged here; latency and predictions are unit-tested
            "min_requests": 100_000,
        }
    }
    root = tmp_path_factory.mktemp("kill-project")
    with trained_project(
        root, "kills", rows=1500, policy=policy, versions=2, second="copy", promote=True,
        router=True,
    ) as built:  # fmt: skip
        target = built.target
        try:
            yield {
                "name": built.name,
                "pipeline": built.pipeline,
                "versions": built.versions,
                "target": target,
            }
        finally:
            target.stop()
            _stop_orphans(built.name)  # after the target has stopped the servers it recorded


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
