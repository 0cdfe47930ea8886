"""Load on a team's shared stack: 50 flow runs (training and monitoring) submitted at once
through the work pool, on PostgreSQL and on SQLite.

Each database runs in a child process of its own with a private stack (`mlops up`'s servers, the
process worker and the deployments of prefect.yaml): ``postgres`` puts the Prefect server and the
MLflow server (runs, registry) on a private PostgreSQL cluster with one ``database_url``, as a
team's stack would; ``sqlite`` keeps each on its SQLite file, as one person's does. The work
pool's limit is raised to ``--concurrency`` (8: a team's host, not the laptop's 2), then half the
runs are `training/diabetes` and half `monitoring/diabetes`, all created at once. The child waits
until every run is final or ``--timeout`` passes and counts: completed, failed or crashed (with
their messages), stuck (not final at the deadline), lost (created, then not found), and the
database errors in the servers' logs (`database is locked`, SQLAlchemy's OperationalError).

    .venv/bin/python benchmarks/shared_stack_load.py [--runs 50] [--concurrency 8]

Prints each database's figures and the elapsed time as a ratio of SQLite's; the last line's first
number is how many of the runs on PostgreSQL did not complete (goal: 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

FLOWS = ("training/diabetes", "monitoring/diabetes")
DB_ERRORS = re.compile(r"database is locked|OperationalError|deadlock detected|QueuePool limit")


def child(database: str, runs: int, concurrency: int, timeout: float) -> dict[str, Any]:
    """One database's load, on a private stack started and stopped here."""
    from _common import SETTINGS, STATE

    from mlops.adapters.dvc import pull_dataset
    from mlops.core.config import load_pipeline_config
    from mlops.stack.local import LocalStack
    from mlops.stack.postgres import PrivatePostgres

    # the server logs each retry of a `database is locked` (silent by default): counted below
    os.environ["PREFECT_API_LOG_RETRYABLE_ERRORS"] = "true"
    server = PrivatePostgres(databases=()).start() if database == "postgres" else None
    settings = SETTINGS
    if server is not None:
        from pydantic import SecretStr

        url = f"postgresql://mlops@{server.host}:{server.port}"
        settings = SETTINGS.model_copy(update={"database_url": SecretStr(url)})
    stack = LocalStack(settings, out=lambda _m: None)
    try:
        cfg = load_pipeline_config(settings.project_dir / "examples/diabetes/pipeline.yaml")
        pull_dataset(settings.project_dir, cfg.data.path, cfg.data.seed)
        stack.up(with_worker=True, deploy=True)
        result = asyncio.run(_load(settings.work_pool, runs, concurrency, timeout))
        logs = {
            name: len(
                DB_ERRORS.findall((STATE / "logs" / f"{name}.log").read_text(errors="replace"))
            )
            for name in ("prefect", "mlflow", "worker")
        }
        return result | {"database": database, "database_errors_in_logs": logs}
    finally:
        stack.down()
        if server is not None:
            server.stop()


async def _load(pool: str, runs: int, concurrency: int, timeout: float) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    async with get_client() as client:
        await client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=concurrency))
        deployments = [await client.read_deployment_by_name(name) for name in FLOWS]
        began = time.monotonic()
        created = await asyncio.gather(
            *(
                client.create_flow_run_from_deployment(deployments[i % len(FLOWS)].id)
                for i in range(runs)
            ),
            return_exceptions=True,
        )
        submitted = time.monotonic() - began
        ids = [r.id for r in created if not isinstance(r, BaseException)]
        refused = [repr(r)[:300] for r in created if isinstance(r, BaseException)]
        final: dict[Any, Any] = {}
        deadline = began + timeout
        while len(final) < len(ids) and time.monotonic() < deadline:
            for run_id in [i for i in ids if i not in final]:
                try:
                    run = await client.read_flow_run(run_id)
                except Exception:  # read again next round; still missing at the end: lost
                    continue
                if run.state is not None and run.state.is_final():
                    final[run_id] = (run.state.type.value, run.state.message or "")
            await asyncio.sleep(1)
        elapsed = time.monotonic() - began
        lost = 0
        stuck = 0
        for run_id in [i for i in ids if i not in final]:
            try:
                await client.read_flow_run(run_id)
                stuck += 1
            except Exception:
                lost += 1
    states = [state for state, _ in final.values()]
    failures = [f"{s}: {m[:200]}" for s, m in final.values() if s != "COMPLETED"]
    return {
        "runs": runs,
        "concurrency": concurrency,
        "submitted_seconds": round(submitted, 2),
        "elapsed_seconds": round(elapsed, 1),
        "completed": states.count("COMPLETED"),
        "failed": len(states) - states.count("COMPLETED"),
        "refused_at_submission": refused,
        "stuck": stuck,
        "lost": lost,
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--database", choices=("postgres", "sqlite"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.database:  # the child: one database, its figures as the last line
        figures = child(args.database, args.runs, args.concurrency, args.timeout)
        print(json.dumps(figures))
        return

    from mlops.stack.postgres import postgres_bin

    if postgres_bin() is None:
        sys.exit("shared_stack_load: needs PostgreSQL (`make postgres`)")
    found: dict[str, dict[str, Any]] = {}
    for database in ("sqlite", "postgres"):
        done = subprocess.run(
            [sys.executable, __file__, "--database", database, "--runs", str(args.runs),
             "--concurrency", str(args.concurrency), "--timeout", str(args.timeout)],
            capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        last = (done.stdout.strip().splitlines() or [""])[-1]
        if done.returncode != 0 or not last.startswith("{"):
            sys.exit(
                f"{database}: the load did not run ({done.returncode}):\n{done.stderr[-3000:]}"
            )
        found[database] = json.loads(last)
    for database, f in found.items():
        print(
            f"{database:9} {f['completed']}/{f['runs']} completed in {f['elapsed_seconds']} s "
            f"(all {f['runs']} created in {f['submitted_seconds']} s, pool limit "
            f"{f['concurrency']}); failed {f['failed']}, stuck {f['stuck']}, lost {f['lost']}, "
            f"refused at submission {len(f['refused_at_submission'])}; database errors in the "
            f"logs: {f['database_errors_in_logs']}"
        )
        seen = Counter(line[:160] for line in f["failures"] + f["refused_at_submission"])
        for line, times in seen.most_common():
            print(f"          {times} x {line}")
    pg, lite = found["postgres"], found["sqlite"]
    not_done = pg["runs"] - pg["completed"]
    ratio = pg["elapsed_seconds"] / lite["elapsed_seconds"]
    print(
        f"{not_done} of {pg['runs']} runs on PostgreSQL did not complete ({pg['elapsed_seconds']} s,"
        f" {ratio:.2f}x SQLite's {lite['elapsed_seconds']} s, where {lite['runs'] - lite['completed']}"
        f" did not)"
    )


if __name__ == "__main__":
    main()
