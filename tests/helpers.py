"""Small builders shared by the tests: a throw-away git + DVC project with its own dataset."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

if TYPE_CHECKING:
    from mlflow import MlflowClient

PROJECT = Path(__file__).resolve().parent.parent
EXAMPLE = PROJECT / "examples" / "adult"


def adult_frame(rows: int = 1500) -> pd.DataFrame:
    """The first ``rows`` rows of the shipped example, as the CSV holds them."""
    return pd.read_csv(EXAMPLE / "adult.csv.gz", nrows=rows, dtype=str, keep_default_na=False)


INTS = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]


def typed_frame(rows: int = 1500) -> pd.DataFrame:
    """The first ``rows`` rows of the example with their label, typed as a caller sends them
    (integers as numbers, missing values "?" as None)."""
    frame = adult_frame(rows).replace("?", None)
    frame[INTS] = frame[INTS].astype(int)
    return frame


def caller_rows(n: int = 200) -> list[dict[str, Any]]:
    """Rows of the example as a caller posts them (no label, no missing values as "?")."""
    return typed_frame(n).drop(columns=["income"]).to_dict("records")


def copy_version(client: MlflowClient, name: str, version: int, drop: Iterable[str] = ()) -> int:
    """A new version of ``name`` made of ``version``'s artifacts, run and tags (less ``drop``)."""
    mv = client.get_model_version(name, str(version))
    left_out = set(drop)
    return int(
        client.create_model_version(
            name,
            mv.source,
            mv.run_id,
            tags={k: v for k, v in mv.tags.items() if k not in left_out},
            description=mv.description,
            model_id=mv.model_id or mv.source.removeprefix("models:/"),
        ).version
    )


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_project(
    root: Path,
    frame: pd.DataFrame | None = None,
    raw: bytes | None = None,
    model_name: str = "adult-test",
    min_rows: int = 100,
) -> Path:
    """A git + DVC project under ``root`` with data/adult.csv tracked and the example's configs.

    Returns the pipeline config path. ``raw`` writes the data file byte for byte instead of ``frame``.
    """
    from dvc.repo import Repo

    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    git(root, "config", "user.email", "tests@mlops.invalid")
    git(root, "config", "user.name", "mlops tests")
    repo = Repo.init(str(root))
    with repo.config.edit("repo") as conf:
        conf["core"]["analytics"] = False
    (root / "data").mkdir()
    target = root / "data" / "adult.csv"
    if raw is not None:
        target.write_bytes(raw)
    else:
        (frame if frame is not None else adult_frame()).to_csv(target, index=False)
    repo.add(str(target))
    conf_dir = root / "conf"
    conf_dir.mkdir()
    contract = yaml.safe_load((EXAMPLE / "contract.yaml").read_text())
    contract["min_rows"] = min_rows
    (conf_dir / "contract.yaml").write_text(yaml.safe_dump(contract))
    shutil.copy(EXAMPLE / "policy.yaml", conf_dir / "policy.yaml")
    # each canary step lasts its bake, as in production: the release tests inject their faults
    # into a step that is still running (the example's steps end on evidence, for the demo)
    edit_yaml(conf_dir / "policy.yaml", release={"end_on_evidence": False})
    pipeline = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    pipeline.update(model_name=model_name, experiment=model_name)
    pipeline["data"].pop("seed")
    pipeline["model"]["params"]["max_iter"] = 20
    (conf_dir / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    for layer in ("flows", "tasks"):  # the project layer: the CLI runs the project's own flows
        (root / layer).symlink_to(PROJECT / layer, target_is_directory=True)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "data v1")
    return conf_dir / "pipeline.yaml"


def edit_yaml(path: Path, **changes: object) -> None:
    """Merge ``changes`` into a YAML file (nested dicts merge; other values replace)."""

    def merge(into: dict, new: dict) -> dict:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value
        return into

    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()) or {}, changes)))


def replace_sections(path: Path, **sections: object) -> None:
    """Replace whole top-level sections of a YAML file (``edit_yaml`` merges them instead)."""
    path.write_text(yaml.safe_dump((yaml.safe_load(path.read_text()) or {}) | sections))


def lenient_policy(pipeline: Path, **changes: object) -> None:
    """Thresholds a small model on a few thousand rows can meet, then ``changes`` merged in."""
    path = pipeline.parent / "policy.yaml"
    edit_yaml(
        path,
        metrics={"roc_auc": {"min": 0.75}, "f1": {"min": 0.25}, "brier": {"max": 0.2}},
        fairness={
            "min_group_size": 60,
            "max_demographic_parity_difference": 0.25,
            "max_equal_opportunity_difference": 0.25,
        },
        comparison={"bootstrap_samples": 200},
    )
    edit_yaml(path, **changes)


# the `mlops` command as a user runs it -----------------------------------------------------------
BIN = Path(sys.executable).parent


def run_command(
    env: dict[str, str], *argv: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    try:
        return subprocess.run(
            argv, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    finally:
        # in the captured output of a failed or timed-out test: where its minutes went
        print(f"{' '.join(Path(a).name for a in argv[:3])}: {time.monotonic() - started:.1f} s")


def mlops(
    env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return run_command(env, str(BIN / "mlops"), *args, timeout=timeout)


def assert_clean(out: subprocess.CompletedProcess[str]) -> None:
    """No traceback and no ERROR log line in a command's output."""
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert not [
        line for line in text.splitlines() if "| ERROR" in line or line.startswith("ERROR")
    ], text


def stack_processes(state: Path) -> Iterator[tuple[int, list[str], dict[str, str]]]:
    """(pid, command line, environment) of every process of the stack at ``state``: each one it
    starts carries MLOPS_STATE_DIR; processes that end or cannot be read are passed over."""
    import psutil

    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline, environ = proc.info["cmdline"] or [], proc.info["environ"] or {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if environ.get("MLOPS_STATE_DIR") == str(state):
            yield proc.pid, cmdline, environ


def service_processes(state: Path) -> dict[str, list[Any]]:
    """Each service recorded in the stack's ``stack.json`` at ``state``: its process (psutil's)
    and all its descendants."""
    import json

    import psutil

    recorded = json.loads((state / "stack.json").read_text())["services"]
    found = {}
    for service in recorded:
        proc = psutil.Process(service["pid"])
        found[service["name"]] = [proc, *proc.children(recursive=True)]
    return found


#: the vertex-ai and azure workers' packages, beside the project's environment (`make tools`;
#: pyproject.toml's `workers` extra says why they are not in it)
WORKERS = PROJECT / ".tools" / "workers"


def needs_workers(reason: str) -> Any:
    """Skip a test whose subprocess imports the workers' packages where `make tools` has not
    installed them, saying which of them it needs."""
    import pytest

    return pytest.mark.skipif(
        not (WORKERS / ".installed").exists(), reason=f"{reason} (`make tools`)"
    )


def run_with_workers(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` with the workers' packages on PYTHONPATH and ``environ`` besides the
    test's own."""
    import os

    return subprocess.run(
        [sys.executable, *args],
        env=dict(os.environ) | environ | {"PYTHONPATH": str(WORKERS)},
        capture_output=True,
        text=True,
        check=False,
    )


class ThreadedServer:
    """An ASGI ``app`` served by uvicorn on ``port`` of the loopback, in a daemon thread of this
    process: the tests' emulations and in-process servers."""

    def __init__(self, app: Any, port: int, what: str) -> None:
        import threading

        import uvicorn

        self.what = what
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self, timeout: float = 15) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.what} did not start within {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
