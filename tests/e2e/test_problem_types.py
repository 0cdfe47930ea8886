"""The whole loop for a regression and a multiclass model on real data, beside the Adult example's
(test_closed_loop.py): examples/diabetes (disease progression, 442 patients) and
examples/penguins (species, 344 birds), each through its own deployments of prefect.yaml (as
`mlops model add` wrote them) on the session's Prefect and MLflow servers, a worker on a work
pool of this module's own, and the model servers behind each model's router.

Per model: training to production (train, gates, release), answers of the model's type through
the router, labelled feedback, a monitoring run that finds no drift in an unshifted window, the
example's documented shift of production traffic (``examples/<name>/shift.py``: real rows with
their real labels, of another population), a monitoring run that detects the drift and emits
``mlops.model.drift-detected`` on the model's own resource, the model's retraining automation
running retraining with that event, the new version gated and released by a canary, and the new
champion answering all traffic. No step after the shift is taken by hand.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from examples.adult.demo import CALLER_RATE, run_deployment_and_wait
from examples.adult.traffic import TrafficReport, send_traffic
from examples.diabetes import shift as diabetes
from examples.penguins import shift as penguins
from mlops.adapters.audit import AuditEntry, AuditTrail
from mlops.adapters.prediction_window import SETTLE
from mlops.core.config import PipelineConfig, load_pipeline_config
from mlops.core.events import DRIFT_DETECTED, model_resource
from mlops.core.settings import Settings
from mlops.ml.contract import as_text_categories, conform
from mlops.ml.data import parse_dataset
from mlops.release.promotion import current_champion
from mlops.release.targets.local import LocalTarget
from mlops.stack.deployments import deployed_models, deployment_names, deployments_for
from mlops.stack.environments import deploy_all
from mlops.stack.local import WORKER, LocalStack, service_env, services
from mlops.stack.processes import free_port, spawn, stop_process_group

pytestmark = pytest.mark.e2e

#: Rows of the unshifted window: real rows of the data, enough for the policies' `min_rows` (100).
UNSHIFTED_ROWS = 120
#: Rows of the shifted window, drawn with replacement from the shifted population (172 patients,
#: 163 birds: the studies are small), so that the labels production sends back are mostly of the
#: new world, which is what the retrained version's canary expects it to predict.
SHIFTED_ROWS = 300
#: Shifted rows the callers keep sending while the retraining runs (the canary is judged on them).
BACKGROUND_ROWS = 4000
RETRAINING_TIMEOUT = 600
GATES = {
    "metric-thresholds",
    "champion-vs-challenger",
    "replay",
    "fairness",
    "training-data",
    "model-contract",
}


@dataclass(frozen=True)
class Example:
    name: str  # the pipeline's name: its deployments are "<flow>/<name>"
    shift: Callable[[pd.DataFrame], pd.DataFrame]
    shift_description: str

    @property
    def pipeline(self) -> Path:
        return Path("examples") / self.name / "pipeline.yaml"


EXAMPLES = [
    Example("diabetes", diabetes.shift, diabetes.DESCRIPTION),
    Example("penguins", penguins.shift, penguins.DESCRIPTION),
]


@pytest.fixture(scope="module")
def loop_stack(local_stack: Settings) -> Iterator[Settings]:
    """The session's servers with both examples' deployments and automations registered on a work
    pool of this module's own (no other test's flow run reaches its worker), a worker polling it,
    the examples' data in the workspace, and free router ports. The monitoring schedules are
    paused: each window here is judged by a run the test starts. Afterwards the worker and the
    examples' routers and model servers stop."""
    from prefect.client.orchestration import get_client

    from mlops.adapters.dvc import pull_dataset

    mp = pytest.MonkeyPatch()
    mp.setenv("MLOPS_WORK_POOL", f"e2e-problem-types-{uuid.uuid4().hex[:6]}")
    mp.setenv("MLOPS_ROUTER_PORT", str(free_port()))
    mp.setenv("MLOPS_ROUTER_ADMIN_PORT", str(free_port()))
    settings = Settings()
    env = dict(os.environ) | service_env(settings)
    deployed = {m.config.name for m in deployed_models(settings.project_dir) if m.config}
    assert {e.name for e in EXAMPLES} <= deployed, "run `mlops model add` for each example"
    names = []
    for example in EXAMPLES:
        cfg = load_pipeline_config(settings.project_dir / example.pipeline)
        pull_dataset(settings.project_dir, cfg.data.path, cfg.data.seed)
        names += deployment_names(deployments_for(example.pipeline, cfg))
    LocalStack(settings, out=lambda _line: None).ensure_work_pool()
    deploy_all(settings.project_dir, settings.work_pool, env, names)
    with get_client(sync_client=True) as client:
        for example in EXAMPLES:
            client.pause_deployment(client.read_deployment_by_name(f"monitoring/{example.name}").id)
    (worker,) = [s for s in services(settings) if s.name == WORKER]
    log = settings.state_dir / "logs" / f"{settings.work_pool}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = spawn(worker.argv, log, cwd=settings.project_dir, env=env)
    try:
        wait_for_worker(settings, proc.pid, log)
        yield settings
    finally:
        stop_process_group(proc.pid, timeout=15)
        for example in EXAMPLES:
            cfg = load_pipeline_config(settings.project_dir / example.pipeline)
            LocalTarget(settings, cfg.model_name).stop()
        mp.undo()


def wait_for_worker(settings: Settings, pid: int, log: Path, timeout: float = 300) -> None:
    from prefect.client.orchestration import get_client

    from mlops.stack.processes import process_alive, started_at

    started = started_at(pid)
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert process_alive(pid, started), f"the worker exited: {log.read_text()[-2000:]}"
            workers = client.read_workers_for_work_pool(settings.work_pool)
            if any(str(w.status).endswith("ONLINE") for w in workers):
                return
            time.sleep(0.5)
    raise AssertionError(f"the worker did not come online in {timeout:.0f} s; see {log}")


# the parts of one loop ------------------------------------------------------------------------
@dataclass
class Clock:
    """Seconds since the loop started, per step, printed at its end."""

    start: float = field(default_factory=time.monotonic)
    steps: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, step: str) -> None:
        self.steps.append((step, time.monotonic() - self.start))

    def lines(self, model: str) -> list[str]:
        total = time.monotonic() - self.start
        return [f"{model}: whole loop {total:.0f} s"] + [
            f"  +{at:5.0f} s  {step}" for step, at in self.steps
        ]


def caller_rows(cfg: PipelineConfig, project_dir: Path) -> pd.DataFrame:
    """The complete rows of the example's data, typed as its contract says (category codes as
    text, whole numbers as ints): the model's features and its target, as callers and their
    labels would come."""
    path = project_dir / cfg.data.path
    frame = parse_dataset(path.read_bytes(), cfg.data.path, cfg.data.na_values)
    typed = conform(as_text_categories(frame, cfg.contract), cfg.contract)
    return typed[[*cfg.features.columns, cfg.target.column]].dropna().reset_index(drop=True)


def plain(row: pd.Series) -> dict[str, Any]:
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}


def ask(router: str, row: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(f"{router}/predict", json={"row": row}, timeout=30)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def check_answer(body: dict[str, Any], cfg: PipelineConfig, version: int) -> None:
    """The answer of version ``version`` of the model, of the model's type: a class among the
    classes with a probability per class (the largest the class answered), or a number."""
    assert body["model"] == {"name": cfg.model_name, "version": version}, body
    assert body["problem"] == cfg.target.kind, body
    (prediction,) = body["predictions"]
    classes = list(cfg.target.classes)
    if cfg.target.kind == "regression":
        assert isinstance(prediction, float) and np.isfinite(prediction), body
        assert "probabilities" not in body and "classes" not in body, body
        return
    assert body["classes"] == classes and prediction in classes, body
    (probabilities,) = body["probabilities"]
    assert len(probabilities) == len(classes) and sum(probabilities) == pytest.approx(1.0), body
    assert classes[int(np.argmax(probabilities))] == prediction, body


def check_feedback_of_the_wrong_type_is_refused(router: str, request_id: str, kind: str) -> None:
    wrong: Any = (
        "a lot" if kind == "regression" else 2.5
    )  # a word for a number, a number for a class
    refused = httpx.post(
        f"{router}/feedback", json={"request_id": request_id, "label": wrong}, timeout=30
    )
    assert refused.status_code == 422 and "label" in refused.text, refused.text


def send(router: str, rows: pd.DataFrame, target: str) -> TrafficReport:
    """Rows sent with their labels; the prediction log has written them when this returns."""
    report = send_traffic(router, rows, target)
    assert report.answered == report.labelled == len(rows), report.failures
    time.sleep(6 + SETTLE.total_seconds())  # the servers flush their logs every 5 s
    return report


def last(entries: list[AuditEntry], action: str) -> AuditEntry:
    found = [e for e in entries if e.action == action]
    assert found, f"no audit entry {action!r} among {[e.action for e in entries]}"
    return found[-1]


def check_gates_passed(uri: str, model: str, version: int) -> None:
    decision = last(AuditTrail(uri).entries(model, version), "gate-decision")
    gates = {g["gate"]: g for g in decision.evidence["gates"]}
    assert set(gates) == GATES and all(g["passed"] for g in gates.values()), gates
    assert decision.reason == "all gates pass", decision.reason


def read_event(settings: Settings, event_id: str) -> dict[str, Any]:
    body = {"filter": {"id": {"id": [event_id]}}, "limit": 1}
    deadline = time.monotonic() + 30  # the server stores an event a moment after it arrives
    while time.monotonic() < deadline:
        r = httpx.post(f"{settings.prefect_api_url}/events/filter", json=body, timeout=10)
        r.raise_for_status()
        if events := r.json()["events"]:
            found: dict[str, Any] = events[0]
            return found
        time.sleep(1)
    raise AssertionError(f"event {event_id} is not on the Prefect server")


def release_steps(settings: Settings, model: str, since: datetime) -> list[tuple[str, str]]:
    """The release artifacts of ``model`` created after ``since``, oldest first: each one's
    title and its markdown."""
    r = httpx.post(
        f"{settings.prefect_api_url}/artifacts/filter",
        json={
            "artifacts": {"key": {"any_": [f"release-{model}"]}},
            "sort": "CREATED_DESC",
            "limit": 200,
        },
        timeout=10,
    )
    r.raise_for_status()
    made = [(datetime.fromisoformat(a["created"].replace("Z", "+00:00")), a) for a in r.json()]
    return [
        (str(a["description"]), str(a["data"]))
        for at, a in sorted(made, key=lambda m: m[0])
        if at >= since
    ]


def wait_for_retraining(deployment: str, since: datetime, timeout: float) -> Any:
    """The first flow run of ``deployment`` created after ``since``, once it has ended."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])
                )
            )
            runs = sorted(
                (r for r in runs if r.created and r.created >= since), key=lambda r: r.created
            )
            if runs and runs[0].state is not None and runs[0].state.is_final():
                return runs[0]
            time.sleep(2)
    raise AssertionError(f"no run of {deployment} ended within {timeout:.0f} s of the drift event")


# the loop -------------------------------------------------------------------------------------
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_train_serve_drift_retrain_and_a_new_champion(
    example: Example, loop_stack: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, clock = loop_stack, Clock()
    cfg = load_pipeline_config(settings.project_dir / example.pipeline)
    name, uri, target = cfg.model_name, str(settings.mlflow_tracking_uri), cfg.target.column
    rows = caller_rows(cfg, settings.project_dir)

    # 1. train, gates, release: the pipeline's training-to-production deployment, on the worker
    first = run_deployment_and_wait(settings, f"training/{example.name}-to-production")
    assert first.version == 1 and not first.reused
    assert current_champion(uri, name) == 1
    check_gates_passed(uri, name, 1)
    released = last(AuditTrail(uri).entries(name, 1), "released")
    assert released.reason.startswith("canary: all traffic on v1"), released.reason
    clock.mark("v1 trained, gated, released")

    # 2. served through the router: answers of the model's type; feedback of its type only
    router = LocalTarget(settings, name).router.url
    answer = ask(router, plain(rows.drop(columns=[target]).iloc[0]))
    check_answer(answer, cfg, 1)
    check_feedback_of_the_wrong_type_is_refused(router, answer["request_id"], cfg.target.kind)

    # 3. production as it was trained for: labelled traffic, judged without drift
    send(router, rows.sample(UNSHIFTED_ROWS, random_state=1), target)
    calm = run_deployment_and_wait(settings, f"monitoring/{example.name}")
    assert calm.version == 1 and calm.rows >= UNSHIFTED_ROWS, calm
    assert calm.skew.judged and not calm.skew.detected, calm.skew.reason
    assert calm.performance.judged and not calm.performance.degraded, calm.performance.reason
    assert calm.events == {}
    clock.mark(f"unshifted window judged: {calm.skew.reason}")

    # 4. the world shifts (examples/<name>/shift.py); monitoring sees it and says so on the model
    shift_at = datetime.now(UTC)
    population = example.shift(rows)
    send(router, population.sample(SHIFTED_ROWS, replace=True, random_state=2), target)
    moved = run_deployment_and_wait(settings, f"monitoring/{example.name}")
    assert moved.skew.judged and moved.skew.detected, moved.skew.reason
    event_id = moved.events[DRIFT_DETECTED]
    event = read_event(settings, event_id)
    assert event["event"] == DRIFT_DETECTED
    assert event["resource"]["prefect.resource.id"] == model_resource(name)["prefect.resource.id"]
    clock.mark(f"shifted ({example.shift_description}): {moved.skew.reason}")

    # 5. no hands: the model's automation runs retraining; the canary is judged on live traffic
    stop = threading.Event()
    callers = population.sample(BACKGROUND_ROWS, replace=True, random_state=3)

    def call() -> None:  # until the retraining ends: a canary step without traffic never passes
        send_traffic(router, callers, target, stop=stop, rate=CALLER_RATE)
        while not stop.is_set():  # the same rows again, without labels (no duplicated rows)
            send_traffic(router, callers, target, feedback=False, stop=stop, rate=CALLER_RATE)

    background = threading.Thread(target=call, daemon=True)
    background.start()
    try:
        run = wait_for_retraining(f"retraining/{example.name}", shift_at, RETRAINING_TIMEOUT)
    finally:
        stop.set()
        background.join(timeout=60)
    assert run.parameters["reason"] == DRIFT_DETECTED and run.parameters["event_id"] == event_id
    assert run.state.is_completed(), f"retraining ended {run.state.name}: {run.state.message}"
    outcome = run.state.result()
    assert (outcome.champion_before, outcome.trained, outcome.champion_after) == (1, 2, 2), outcome
    clock.mark(f"retrained: {outcome.note}")

    # 6. the trail: why it retrained, on what, the gates, the canary; the new champion serves all
    trail = AuditTrail(uri)
    triggered = last(trail.entries(name, 1), "retraining-triggered")
    assert triggered.evidence["event_id"] == event_id and triggered.actor == "automation"
    collected = last(trail.entries(name, 1), "production-data-collected")
    assert collected.evidence["kept_rows"] >= UNSHIFTED_ROWS + SHIFTED_ROWS, collected.reason
    check_gates_passed(uri, name, 2)
    released = last(trail.entries(name, 2), "released")
    assert released.reason.startswith("canary: all traffic on v2"), released.reason
    # one watched step, at 25%, whose predictions were judged (by the recent labels' quantiles
    # or class shares); the step to 100% is the promotion's
    steps = release_steps(settings, name, shift_at)
    titles = [title for title, _ in steps]
    moved = [t for t in titles if t.startswith("traffic: ")]
    assert len(moved) == 1, titles
    assert " 75%, " in moved[0] or moved[0].endswith(" 75%"), titles
    watched = [text for title, text in steps if "(at 25%): pass" in title]
    assert len(watched) == 1, titles
    assert "| predictions | pass |" in watched[0] and "every check passed" in watched[0], watched
    assert not any(": rollback after" in t or "rolled back" in t for t in titles), titles
    assert current_champion(uri, name) == 2
    state = LocalTarget(settings, name).state()
    assert state.stable is not None and state.stable.version == 2
    assert state.traffic is not None and state.traffic.weights.get(state.stable.slot) == 100
    for i in range(3):
        check_answer(ask(router, plain(population.drop(columns=[target]).iloc[i])), cfg, 2)
    clock.mark("v2 champion, serving 100%")
    with capsys.disabled():
        print("\n" + "\n".join(clock.lines(name)))
