"""Shared by the benchmarks: a private local stack and throw-away copies of the example config.

Import this before anything imports Prefect: it points Prefect at the private stack's state.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
EXAMPLE = PROJECT / "examples" / "adult"


from mlops.core.settings import Settings  # noqa: E402
from mlops.stack.local import LocalStack, use_private_stack  # noqa: E402

STATE = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
SETTINGS: Settings = use_private_stack(PROJECT, STATE)


@contextmanager
def local_stack() -> Iterator[Settings]:
    """Prefect and MLflow servers on free ports for the benchmark's lifetime; data pulled."""
    from mlops.adapters.dvc import pull_dataset
    from mlops.core.config import load_pipeline_config

    stack = LocalStack(SETTINGS, out=lambda _m: None)
    try:
        stack.up(with_worker=False, deploy=False)
        cfg = load_pipeline_config(SETTINGS.pipeline)
        pull_dataset(SETTINGS.project_dir, cfg.data.path, cfg.data.seed)
        yield SETTINGS
    finally:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        stack.down()
        shutil.rmtree(STATE, ignore_errors=True)


def database_option(parser: argparse.ArgumentParser) -> None:
    """``--database``: the Prefect server's database for a benchmark's stack (prefect_database)."""
    from mlops.stack.postgres import postgres_bin

    parser.add_argument(
        "--database",
        choices=("postgres", "sqlite"),
        default="postgres" if postgres_bin() else "sqlite",
        help="the Prefect server's database: a private Postgres cluster (the default where "
        "PostgreSQL is installed: `make postgres`) or the local stack's SQLite file",
    )


@contextmanager
def prefect_database(settings: Settings, database: str) -> Iterator[Settings]:
    """``settings`` with the Prefect server on a private Postgres cluster (``postgres``: started
    here, stopped afterwards) or on the local stack's SQLite file (``sqlite``)."""
    if database == "sqlite":
        yield settings
        return
    from pydantic import SecretStr

    from mlops.stack.postgres import PrivatePostgres

    server = PrivatePostgres().start()
    try:
        url = SecretStr(server.url("prefect"))
        yield settings.model_copy(update={"prefect_database_url": url})
    finally:
        server.stop()


def example_copy(model_name: str) -> Path:
    """The example's pipeline config under a fresh model name (so no registered version matches)."""
    folder = STATE / "configs" / model_name
    folder.mkdir(parents=True)
    for name in ("contract.yaml", "policy.yaml", "adult.csv.gz"):
        (folder / name).symlink_to(EXAMPLE / name)
    raw = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    raw.update(model_name=model_name, experiment=model_name)
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    return folder / "pipeline.yaml"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def exited(proc: subprocess.Popen) -> Callable[[], str | None]:
    """For ``mlops.release.smoke.wait_until_ready``: why ``proc`` is gone, or None while it runs."""
    return lambda: None if proc.poll() is None else f"server exited: {proc.args}"


# One row of the example, the same in every serving benchmark.
ROW = {
    "age": 39,
    "workclass": "State-gov",
    "fnlwgt": 77516,
    "education": "Bachelors",
    "education_num": 13,
    "marital_status": "Never-married",
    "occupation": "Adm-clerical",
    "relationship": "Not-in-family",
    "race": "White",
    "sex": "Male",
    "capital_gain": 2174,
    "capital_loss": 0,
    "hours_per_week": 40,
    "native_country": "United-States",
}
