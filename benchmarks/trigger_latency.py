"""Time from a drift event to the retraining flow running, over repeated trials.

A private local stack with its process worker and the deployments of prefect.yaml. Each trial
emits `mlops.model.drift-detected` for a fresh resource (`mlops.model.bench-<k>`), which an
automation shaped like prefect.yaml's (reactive, threshold 1, per resource) answers by running
the `retraining/adult` deployment on the stack's worker (mlops.stack.worker: flow runs forked
from a zygote that imported the pipeline; the script waits until it listens, and counts the runs
that started as plain subprocesses all the same); the trial measures the event's time to the flow
run's start (state Running), then cancels the run. The baseline, in the same run, is the same
deployment started directly (`run_deployment`, no event, no automation) to Running.

The Prefect server runs on a private Postgres cluster (mlops.stack.postgres) where PostgreSQL is
installed, as a team's shared stack would; ``--database sqlite`` measures the local stack's SQLite
file, where the automation's flow-run insert meets the trigger service's write lock and Prefect's
client retries after 2 s (README, Figures).

Prints p95 then p50 of the event path, the baseline's, and their ratio; the last line's first
number is the event path's p95 in seconds (goal: under 2 s).

    .venv/bin/python benchmarks/trigger_latency.py [--trials 6] [--database sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import SETTINGS, STATE, database_option, prefect_database

if TYPE_CHECKING:
    from mlops.core.settings import Settings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _wait_running(client: object, deployment_id: uuid.UUID, after: float) -> object:
    from prefect.client.schemas.filters import FlowRunFilter

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = await client.read_flow_runs(  # type: ignore[attr-defined]
            flow_run_filter=FlowRunFilter(deployment_id={"any_": [deployment_id]})
        )
        for run in runs:
            if (
                run.start_time
                and run.start_time.timestamp() >= after - 1
                and run.state.is_running()
            ):
                return run
        await asyncio.sleep(0.1)
    raise TimeoutError("no flow run reached Running within 120 s")


async def _phases(client: object, run: object, sent: float) -> tuple[float, float, float]:
    """Seconds from ``sent`` to the run's creation (the automation), from creation to Pending
    (the worker's poll) and from Pending to Running (process start and loading the flow)."""
    states = await client.read_flow_run_states(run.id)  # type: ignore[attr-defined]
    at = {s.type.value: s.timestamp.timestamp() for s in states}
    created = run.created.timestamp()  # type: ignore[attr-defined]
    return created - sent, at["PENDING"] - created, at["RUNNING"] - at["PENDING"]


async def _cancel(client: object, run: object) -> None:
    from prefect.states import Cancelling

    await client.set_flow_run_state(run.id, Cancelling(), force=True)  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = await client.read_flow_run(run.id)  # type: ignore[attr-defined]
        if now.state.is_final():
            return
        await asyncio.sleep(0.2)


async def trials(n: int) -> tuple[list[float], list[float], list[tuple[float, float, float]]]:
    from prefect import get_client
    from prefect.events import emit_event
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    from mlops.core.events import DRIFT_DETECTED

    async with get_client() as client:
        deployment = await client.read_deployment_by_name("retraining/adult")
        await client.create_automation(
            AutomationCore(
                name="bench-trigger-latency",
                trigger=EventTrigger(
                    match={"prefect.resource.id": "mlops.model.bench-*"},
                    for_each={"prefect.resource.id"},
                    expect={DRIFT_DETECTED},
                    posture=Posture.Reactive,
                    threshold=1,
                    within=timedelta(seconds=600),
                ),
                actions=[
                    RunDeployment(
                        source="selected",
                        deployment_id=deployment.id,
                        parameters={
                            "reason": DRIFT_DETECTED,
                            "event_id": "{{ event.id | string }}",
                        },
                    )
                ],
            )
        )
        await asyncio.sleep(2)  # the server loads new automations
        via_event: list[float] = []
        phases: list[tuple[float, float, float]] = []
        for k in range(n):
            event = emit_event(
                event=DRIFT_DETECTED,
                resource={"prefect.resource.id": f"mlops.model.bench-{k}-{uuid.uuid4().hex[:6]}"},
                payload={"reason": "benchmark"},
            )
            assert event is not None
            sent = event.occurred.timestamp()
            run = await _wait_running(client, deployment.id, sent)
            via_event.append(run.start_time.timestamp() - sent)  # type: ignore[attr-defined]
            phases.append(await _phases(client, run, sent))
            await _cancel(client, run)
        direct: list[float] = []
        for _ in range(n):
            sent = time.time()
            created = await client.create_flow_run_from_deployment(deployment.id)
            run = await _wait_running(client, deployment.id, sent)
            assert run.id == created.id  # type: ignore[attr-defined]
            direct.append(run.start_time.timestamp() - sent)  # type: ignore[attr-defined]
            await _cancel(client, run)
    return via_event, direct, phases


# what mlops.stack.worker logs when a flow run is not forked from its zygote
PLAIN_NOTES = ("starts as a plain subprocess", "did not fork the flow run")
ZYGOTE_READY = "forking flow runs from"


def wait_zygote(worker_log: Path, timeout: float = 300) -> str:
    """The zygote's line in the worker log once it listens (it imports for a few seconds after
    the worker is online; runs before that start as plain subprocesses), or why there is none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = worker_log.read_text(errors="replace") if worker_log.exists() else ""
        ready = [line for line in text.splitlines() if ZYGOTE_READY in line]
        if ready:
            return ready[0].strip()
        if "flow runs start as plain subprocesses" in text:
            return "no zygote (it refused to fork, see the worker log)"
        time.sleep(0.2)
    return f"no zygote listening after {timeout:.0f} s"


def measured(settings: Settings, trials_: int) -> tuple[Any, Any, Any, str, str]:
    """The trials on a stack started for them (worker included), then stopped."""
    from mlops.stack.local import LocalStack

    stack = LocalStack(settings, out=lambda _m: None)
    try:
        stack.up(with_worker=True, deploy=True)
        worker_log = stack.logs / "worker.log"
        zygote = wait_zygote(worker_log)
        via_event, direct, phases = asyncio.run(trials(trials_))
        return via_event, direct, phases, zygote, worker_log.read_text(errors="replace")
    finally:
        stack.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    database_option(parser)
    args = parser.parse_args()

    import shutil

    try:
        with prefect_database(SETTINGS, args.database) as settings:
            via_event, direct, phases, zygote, log = measured(settings, args.trials)
    finally:
        shutil.rmtree(STATE, ignore_errors=True)
    print(f"the Prefect server's database: {args.database}")
    plain = sum(log.count(note) for note in PLAIN_NOTES)
    print(f"worker: {zygote}; {plain} of {2 * args.trials} flow runs started as plain subprocesses")
    print("event -> running: " + ", ".join(f"{v:.2f}" for v in via_event) + " s")
    for name, k in (("automation", 0), ("worker poll", 1), ("process start", 2)):
        values = [p[k] for p in phases]
        print(f"  {name}: p50 {percentile(values, 0.5):.2f} s, max {max(values):.2f} s")
    print("direct -> running: " + ", ".join(f"{v:.2f}" for v in direct) + " s")
    e95, e50 = percentile(via_event, 0.95), percentile(via_event, 0.5)
    d95, d50 = percentile(direct, 0.95), percentile(direct, 0.5)
    print(
        f"baseline (run_deployment, no event): p95 {d95:.2f} s, p50 {d50:.2f} s; "
        f"the event path takes {e50 / d50:.2f}x the direct one at p50"
    )
    print(
        f"{e95:.2f} s p95, {e50:.2f} s p50: drift event to the retraining flow running (goal p95 < 2 s)"
    )


if __name__ == "__main__":
    main()
