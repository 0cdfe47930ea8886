"""The closed-loop demo of the Adult example (`mlops demo`, `make demo`): the product's main job on
one machine.

A champion is trained, judged and released; production traffic flows through the router with
its labels arriving later; then the world shifts (``examples.adult.traffic.shift_adult``),
monitoring sees it, a Prefect automation launches retraining on the work pool, and the new
version goes through the gates and a canary into production, with no step taken by hand after
the shift.
Everything runs through the deployments of ``prefect.yaml`` on the local stack's worker.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from examples.adult.traffic import TrafficReport, send_traffic, shift_adult
from mlops.core.config import PipelineConfig, load_pipeline_config
from mlops.core.errors import MlopsError
from mlops.core.events import DRIFT_DETECTED, PERFORMANCE_DEGRADED
from mlops.core.policy import load_policy
from mlops.core.settings import Settings

Out = Callable[[str], None]

TRAINING = "training/adult-to-production"

MONITORING = "monitoring/adult"

RETRAINING = "retraining/adult"

#: Requests a second while the retraining runs and its canary is judged: production's pace, not
#: as fast as the server answers (unpaced callers took the cores the training needed and slowed
#: it 8x). At 10 % of traffic a canary step's 100 requests (the policy's `min_requests`) take 4 s.
CALLER_RATE = 250


@dataclass(frozen=True)
class LoopResult:
    model: str
    champion_before: int | None
    champion_after: int | None
    shift_at: datetime
    released_at: datetime | None  # the new champion took all traffic
    timeline: list[tuple[datetime, str]]

    @property
    def seconds_to_new_champion(self) -> float | None:
        if self.released_at is None:
            return None
        return (self.released_at - self.shift_at).total_seconds()


def run_deployment_and_wait(settings: Settings, name: str, timeout: float = 900) -> Any:
    """Run a deployment through the work pool, wait for its end, return its result."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    flow_run = run_deployment(name=name, timeout=timeout)
    assert isinstance(flow_run, FlowRun)  # the sync form, called outside an event loop
    return _result(settings, name, flow_run)


def _result(settings: Settings, name: str, flow_run: Any) -> Any:
    state = flow_run.state
    link = f"{settings.prefect_ui_url}/runs/flow-run/{flow_run.id}"
    if state is None or not state.is_completed():
        raise MlopsError(
            f"deployment {name}: flow run {flow_run.name} ended {state.name if state else 'unknown'}: "
            f"{state.message if state else ''}; see {link}"
        )
    try:
        return state.result()
    except Exception as exc:
        raise MlopsError(
            f"deployment {name}: flow run {flow_run.name} completed but its result cannot be read "
            f"({type(exc).__name__}: {exc}); see {link}"
        ) from None


def production_rows(cfg: PipelineConfig, project_dir: Path, count: int, seed: int) -> pd.DataFrame:
    """Rows of the example as callers would send them (typed, complete), sampled with ``seed``."""
    data = pd.read_csv(project_dir / cfg.data.path, na_values=list(cfg.data.na_values)).dropna()
    return data.sample(count, random_state=seed).reset_index(drop=True)


def wait_for_window(
    settings: Settings,
    cfg: PipelineConfig,
    since: datetime,
    rows: int,
    labelled: int = 0,
    timeout: float = 300,
) -> None:
    """Wait until the prediction log holds ``rows`` rows committed after ``since``, ``labelled``
    of them with their labels, that a monitoring run starting now would read (committed
    ``SETTLE`` before now, as its window ends). The servers commit a batch when it is full or
    aged (``PredictionLog``), so a fixed sleep either waits too long or reads too little; and a
    label still in a server's buffer would change what monitoring judges and what a retraining
    learns from."""
    from mlops.adapters.prediction_window import SETTLE, read_prediction_window

    log, features = settings.prediction_log(cfg.model_name), cfg.features.columns
    deadline = time.monotonic() + timeout
    while True:
        window = read_prediction_window(log, since, datetime.now(UTC) - SETTLE, features, rows)
        held = len(window.rows)
        labels = int(window.rows["label"].notna().sum()) if "label" in window.rows else 0
        if held >= rows and labels >= labelled:
            return
        if time.monotonic() > deadline:
            raise MlopsError(
                f"the prediction log at {log} holds {held} rows committed since "
                f"{since.isoformat()} ({labels} labelled), fewer than the {rows} ({labelled} "
                f"labelled) awaited after {timeout:.0f} s: are the model servers answering and "
                "writing their logs?"
            )
        time.sleep(0.5)


def _monitor(settings: Settings, out: Out) -> Any:
    outcome = run_deployment_and_wait(settings, MONITORING)
    out(f"   {outcome.rows} rows judged")
    for objective, line in outcome.verdicts().items():
        out(f"   {objective + ':':<13}{line}")
    for name, eid in outcome.events.items():
        out(f"   event {name} {eid}")
    return outcome


async def _runs_since(deployment: str, since: datetime) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        dep = await client.read_deployment_by_name(deployment)
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id={"any_": [dep.id]},
                expected_start_time=FlowRunFilterExpectedStartTime(after_=since),
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        )
    return [r for r in runs if r.created is None or r.created >= since]


def wait_for_retraining(settings: Settings, since: datetime, timeout: float, out: Out) -> Any:
    """The retraining flow run the automation created after ``since``, once it has ended."""
    deadline = time.monotonic() + timeout
    announced = None
    while time.monotonic() < deadline:
        runs = asyncio.run(_runs_since(RETRAINING, since))
        if runs:
            run = runs[0]
            if announced != run.id:
                out(
                    f"   automation launched {RETRAINING} run {run.name}; waiting for it on the worker"
                )
                announced = run.id
            if run.state is not None and run.state.is_final():
                return _result(settings, RETRAINING, run)
        time.sleep(2)
    raise MlopsError(
        f"no {RETRAINING} run ended within {timeout:.0f} s of the shift. If a retraining ran in "
        "the last 10 minutes, the automation's cool-down (`within: 600` in prefect.yaml) holds "
        "this episode back; see the Prefect UI's automations and events"
    )


def timeline(settings: Settings, model: str, since: datetime) -> list[tuple[datetime, str]]:
    """What happened after ``since``: events, automation firings, audit entries, release steps."""
    import httpx

    from mlops.adapters.audit import AuditTrail

    api = settings.prefect_api_url
    items: list[tuple[datetime, str]] = []
    body = {
        "filter": {
            "occurred": {"since": since.isoformat()},
            "event": {
                "name": [DRIFT_DETECTED, PERFORMANCE_DEGRADED, "prefect.automation.triggered"]
            },
        },
        "limit": 50,
    }
    for e in httpx.post(f"{api}/events/filter", json=body, timeout=10).json().get("events", []):
        what = e["event"]
        if what == "prefect.automation.triggered":
            name = e.get("payload", {}).get("triggering_event", {}).get("event", "")
            if not name.startswith("mlops."):
                continue
            what = f"automation triggered by {name}: run deployment {RETRAINING}"
        else:
            what = f"event {what}: {e.get('payload', {}).get('reason', '')}"
        items.append((datetime.fromisoformat(e["occurred"].replace("Z", "+00:00")), what))
    for entry in AuditTrail(str(settings.mlflow_tracking_uri)).entries(model, None):
        if entry.time >= since:
            items.append((entry.time, f"audit {entry.action} v{entry.version}: {entry.reason}"))
    artifacts = httpx.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [f"release-{model}"]}}, "limit": 100},
        timeout=10,
    ).json()
    for a in artifacts:
        created = datetime.fromisoformat(a["created"].replace("Z", "+00:00"))
        if created >= since:
            items.append((created, f"release step: {a.get('description')}"))
    return sorted(items)


def _detect(
    settings: Settings, cfg: PipelineConfig, shift_at: datetime, sent: TrafficReport, out: Out
) -> None:
    """Monitoring as soon as the log holds the shifted rows answered and their labels (at least
    the window's ``min_rows``, a floor the monitoring flow keeps too); it (or a scheduled run
    before it) must raise an event."""
    rows = max(sent.answered, load_policy(cfg.policy)[0].monitoring.min_rows)
    began = time.monotonic()
    wait_for_window(settings, cfg, shift_at, rows, sent.labelled)
    out(
        f"   the log holds the {rows} shifted rows ({time.monotonic() - began:.1f} s later); "
        f"deployment {MONITORING}:"
    )
    outcome = _monitor(settings, out)
    if not outcome.events:
        # the scheduled monitoring run may have judged the shifted window first
        earlier = [
            what
            for _, what in timeline(settings, cfg.model_name, shift_at)
            if what.startswith("event ")
        ]
        if not earlier:
            raise MlopsError("monitoring raised no event on the shifted window; nothing to answer")
        out(f"   (the scheduled {MONITORING} run judged it first: {earlier[0]})")


def _refuse_an_earlier_history(settings: Settings, name: str) -> None:
    """The loop starts from a new model. On a registry that already holds versions of it, the
    training step would reuse one, and the retraining would learn from the earlier runs' traffic
    too (its prediction log's labelled rows): another model, whose gates may refuse it, so not
    the demo's outcome."""
    from mlflow import MlflowClient

    versions = MlflowClient(str(settings.mlflow_tracking_uri)).search_model_versions(
        f"name = '{name}'"
    )
    if versions:
        numbers = sorted(int(v.version) for v in versions)
        raise MlopsError(
            f"{name} already has versions {', '.join(map(str, numbers))} in this stack's "
            f"registry ({settings.mlflow_tracking_uri}): the demo starts from a new model, and "
            "on an earlier history its retraining would learn from the earlier runs' traffic as "
            "well. `mlops demo --fresh` (what `make demo` runs) stops the stack and moves its "
            f"state folder {settings.state_dir} aside first; nothing is deleted"
        )


def closed_loop(settings: Settings, out: Out, retraining_timeout: float = 900) -> LoopResult:
    """The whole demo after the stack is up: see the module docstring."""
    from mlops.adapters.audit import AuditTrail
    from mlops.release.promotion import current_champion
    from mlops.release.targets.local import LocalTarget

    cfg = load_pipeline_config(settings.pipeline)
    name, uri = cfg.model_name, str(settings.mlflow_tracking_uri)
    target = cfg.target.column
    router = LocalTarget(settings, name).router.url

    _refuse_an_earlier_history(settings, name)
    out(f"\n== 1. train, judge and release: deployment {TRAINING} ==")
    before_demo = current_champion(uri, name)
    registered = run_deployment_and_wait(settings, TRAINING)
    verb = "reused" if registered.reused else "registered"
    out(f"{verb} {registered.name} version {registered.version}")
    for key in sorted(registered.tags):
        if key.startswith("mlops."):
            out(f"  {key} = {registered.tags[key]}")
    entries = AuditTrail(uri).entries(name, registered.version)
    gates = next((e for e in reversed(entries) if e.action == "gate-decision"), None)
    for gate in gates.evidence.get("gates", []) if gates else []:
        out(f"  {gate['gate']:<24} {'pass' if gate['passed'] else 'FAIL'}  {gate['reason']}")
    champion = current_champion(uri, name)
    out(
        f"{name} v{champion} is champion (was {f'v{before_demo}' if before_demo else 'none'}); "
        f"callers reach it at {router}/predict"
    )

    out(
        "\n== 2. production traffic: 1500 rows of the example, their labels sent back as feedback =="
    )
    before_traffic = datetime.now(UTC)
    report = send_traffic(router, production_rows(cfg, settings.project_dir, 1500, seed=1), target)
    out(
        f"   {report.answered}/{report.sent} answered, {report.labelled} labelled "
        f"({report.seconds:.1f} s)"
    )
    wait_for_window(settings, cfg, before_traffic, report.answered, report.labelled)
    out(f"   deployment {MONITORING}:")
    _monitor(settings, out)

    out(
        "\n== 3. the world shifts: everyone 8 years older, 15 % fewer hours, and nobody aged 45+ "
        "working under 40 hours earns >50K any more (examples/adult/traffic.py: shift_adult) =="
    )
    shift_at = datetime.now(UTC)
    shifted = shift_adult(production_rows(cfg, settings.project_dir, 6000, seed=2))
    report = send_traffic(router, shifted.iloc[:2000], target)
    out(
        f"   {report.answered}/{report.sent} shifted rows answered, {report.labelled} labelled "
        f"({report.seconds:.1f} s)"
    )
    _detect(settings, cfg, shift_at, report, out)

    out("\n== 4. no hands: the automation retrains, the gates judge, a canary releases ==")
    stop = threading.Event()

    def callers() -> None:
        """Callers keep calling while the canary is judged (a step without traffic is
        inconclusive, never promoted): the rest of the shifted rows, over and over, without
        labels. The retraining learns from the 3,500 rows labelled before it started, however
        fast these calls are answered: a label sent now would reach its data or not by the
        prediction log's flush, and a different v2 (one failed the fairness gate) by timing."""
        while not stop.is_set():
            send_traffic(
                router, shifted.iloc[2000:], target, feedback=False, stop=stop, rate=CALLER_RATE
            )

    background = threading.Thread(target=callers, daemon=True)
    background.start()
    try:
        retrained = wait_for_retraining(settings, shift_at, retraining_timeout, out)
    finally:
        stop.set()
        background.join(timeout=30)
    out(f"   {retrained.note}")

    events = timeline(settings, name, shift_at)
    out("\n== timeline (seconds after the shift) ==")
    for when, what in events:
        out(f"  +{(when - shift_at).total_seconds():6.1f}s  {what}")
    released = next(
        (
            w
            for w, what in events
            if what.startswith("audit released") and f"v{retrained.trained}" in what
        ),
        None,
    )
    state = LocalTarget(settings, name).state()
    after = current_champion(uri, name)
    if state.stable is not None and state.traffic is not None:
        share = state.traffic.weights.get(state.stable.slot, 0)
        out(
            f"\n{name} v{after} is champion, serving {share}% of traffic at {router}/predict "
            f"(was v{retrained.champion_before})"
        )
    return LoopResult(name, retrained.champion_before, after, shift_at, released, events)
