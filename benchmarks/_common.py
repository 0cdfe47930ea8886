"""Shared by the benchmarks: a private local stack and throw-away copies of the example config.

Import this before anything imports Prefect: it points Prefect at the private stack's state.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
EXAMPLE = PROJECT / "examples" / "adult"


from mlops.settings import Settings  # noqa: E402
from mlops.stack import LocalStack, use_private_stack  # noqa: E402

STATE = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
SETTINGS: Settings = use_private_stack(PROJECT, STATE)


@contextmanager
def local_stack() -> Iterator[Settings]:
    """Prefect and MLflow servers on free ports for the benchmark's lifetime; data pulled."""
    from mlops.config import load_pipeline_config
    from tasks.data import pull_dataset

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


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.args}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} never answered")
