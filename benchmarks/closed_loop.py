"""The closed loop's wall time, from the shift of the world to the new champion at 100 % of traffic.

Runs the demo's loop (examples.adult.demo.closed_loop) on a private local stack with its
worker: the champion is trained and released, traffic flows, the world shifts, and monitoring,
the Prefect automation, retraining, the gates and the canary do the rest. Prints the demo's
output, what each flow and task run after the shift took (Prefect's own records), how many
candidate requests each canary step judged, each phase, and the work the pipeline does
(training, gates, release) against the time spent detecting and reacting; ends with the
headline: seconds from the shift to the new champion serving all traffic (goal: under 60 s on
2 cores). The Prefect server runs on a private Postgres cluster where PostgreSQL is installed,
as in benchmarks/trigger_latency.py; ``--database sqlite`` runs it on the local stack's file,
as `make demo` does.

    .venv/bin/python benchmarks/closed_loop.py [--database sqlite]
"""

from __future__ import annotations

import os
import socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# the router of this private stack, not a user's on 8000
os.environ["MLOPS_ROUTER_PORT"] = str(_free_port())
os.environ["MLOPS_ROUTER_ADMIN_PORT"] = str(_free_port())

import re  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from _common import SETTINGS, STATE, database_option, prefect_database  # noqa: E402

from mlops.core.settings import Settings  # noqa: E402

if TYPE_CHECKING:
    from examples.adult.demo import LoopResult

GOAL = 60.0


def measured(settings: Settings) -> LoopResult:
    """The demo's loop on a stack started for it (worker and deployments), then stopped; prints
    the loop's output, the flow and task runs after the shift and each canary step's requests."""
    import asyncio

    from examples.adult.demo import closed_loop
    from mlops.adapters.dvc import pull_dataset
    from mlops.core.config import load_pipeline_config
    from mlops.release.targets.local import LocalTarget
    from mlops.stack.local import LocalStack

    stack = LocalStack(settings, out=lambda _m: None)
    cfg = load_pipeline_config(SETTINGS.pipeline)
    try:
        stack.up(with_worker=True, deploy=True)
        pull_dataset(settings.project_dir, cfg.data.path, cfg.data.seed)
        result = closed_loop(settings, out=print)
        print("\n== flow and task runs after the shift (Prefect's start and end) ==")
        for line in asyncio.run(_runs_after(result.shift_at)):
            print(line)
        print("\n== requests judged per canary step ==")
        for line in _requests_per_step(str(settings.mlflow_tracking_uri), result):
            print(line)
        return result
    finally:
        LocalTarget(settings, cfg.model_name).stop()
        stack.down()


def main() -> None:
    import argparse
    import shutil

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    database_option(parser)
    args = parser.parse_args()
    try:
        with prefect_database(Settings(), args.database) as settings:
            result = measured(settings)
    finally:
        shutil.rmtree(STATE, ignore_errors=True)
    print(f"the Prefect server's database: {args.database}")

    def first(prefix: str) -> float | None:
        for when, what in result.timeline:
            if what.startswith(prefix):
                return (when - result.shift_at).total_seconds()
        return None

    marks = {
        "drift event": first("event mlops.model.drift-detected"),
        "automation fired": first("automation triggered"),
        "retraining running": first("audit retraining-triggered"),
        "gates decided": first("audit gate-decision"),
        "canary started": first("audit release-started"),
        "new champion at 100%": first("audit released"),
    }
    for name, at in marks.items():
        print(f"{name:<22} +{at:6.1f} s" if at is not None else f"{name:<22} (not seen)")
    total = result.seconds_to_new_champion
    if total is None:
        print("nan s: no new champion took all traffic (see the demo's output)")
        return
    detect = marks["drift event"] or 0.0
    react = (marks["retraining running"] or detect) - detect
    work = total - (marks["retraining running"] or 0.0)
    print(
        f"detecting {detect:.1f} s (traffic, log flush, the monitoring run), reacting {react:.1f} s "
        f"(event -> automation -> worker -> flow running), pipeline {work:.1f} s (train, gates, "
        f"canary): {work / total:.2f} of the loop is the pipeline's own work"
    )
    print(
        f"{total:.1f} s from the shift to v{result.champion_after} at 100% of traffic "
        f"({total / GOAL:.2f} of the {GOAL:.0f} s goal)"
    )


async def _runs_after(since: datetime) -> list[str]:
    """Every flow run and task run that started after ``since``, in start order, each with its
    offset from ``since`` and its duration: where the retraining's working time went."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        TaskRunFilter,
        TaskRunFilterStartTime,
    )

    async with get_client() as client:
        flows = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
            limit=200,
        )
        tasks = await client.read_task_runs(
            task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since)),
            limit=200,
        )
    names = {f.id: f.name for f in flows}
    rows = [(f.start_time, f.end_time, f"flow {f.name}") for f in flows if f.start_time]
    for t in tasks:
        if t.start_time is not None:
            flow_name = names.get(t.flow_run_id, "?") if t.flow_run_id else "?"
            rows.append((t.start_time, t.end_time, f"  task {t.name} ({flow_name})"))
    lines = []
    for start, end, what in sorted(rows, key=lambda r: r[0]):
        took = f"{(end - start).total_seconds():6.1f} s" if end is not None else "   (open)"
        lines.append(f"  +{(start - since).total_seconds():6.1f} s  {took}  {what}")
    return lines


def _requests_per_step(uri: str, result: LoopResult) -> list[str]:
    """The candidate requests each watched step judged, from the release's audit entry (the
    checks' own counts: the error rate's requests, the latency's timed, the predictions')."""
    from mlops.adapters.audit import AuditTrail

    released = [
        e
        for e in AuditTrail(uri).entries(result.model, result.champion_after)
        if e.action == "released"
        and e.version == result.champion_after
        and e.time >= result.shift_at
    ]
    if not released:
        return ["  (no release of the new champion recorded)"]
    lines = []
    for step in released[-1].evidence.get("steps", []):
        decision = step.get("decision", {})
        counts = ", ".join(
            f"{c['name']} {_judged(c)}"
            for c in decision.get("checks", [])
            if _judged(c) is not None
        )
        lines.append(
            f"  {step.get('name')}: {decision.get('action')} after "
            f"{decision.get('elapsed_seconds', 0):.1f} s; candidate requests judged: {counts}"
        )
    return lines


def _judged(check: dict[str, Any]) -> int | None:
    """How many candidate requests one check judged: its statistics' count, or for the
    prediction check (which keeps shares, not counts) the count its reason names."""
    if "requests" in check["statistic"]:
        return round(float(check["statistic"]["requests"]))
    said = re.search(r"(\d+) requests", str(check["reason"]))
    return int(said[1]) if said else None


if __name__ == "__main__":
    main()
