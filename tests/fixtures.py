"""The trained-project builder and the load generator that the flows, fault, fuzz and integration
tiers share (one copy each, so a change of how a project is trained or loaded is made once)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from mlops.core.settings import Settings
from mlops.release.promotion import GATES_PASSED, GATES_TAG, PROMOTION_TAGS
from tests.helpers import (
    adult_frame,
    caller_rows,
    copy_version,
    edit_yaml,
    lenient_policy,
    make_project,
    replace_sections,
)


@dataclass(frozen=True)
class TrainedProject:
    """A throw-away project and what was trained in it."""

    name: str
    root: Path
    pipeline: Path
    versions: tuple[int, ...]
    settings: Settings  # read while the project's environment was set (its router ports too)

    @property
    def target(self) -> Any:
        """The local release target of the project's model (the router on its own ports)."""
        from mlops.release.targets.local import LocalTarget

        return LocalTarget(self.settings, self.name)


@contextmanager
def trained_project(
    root: Path,
    prefix: str,
    *,
    rows: int = 3000,
    policy: Mapping[str, Any] | None = None,
    versions: int = 1,
    second: Literal["retrain", "copy"] = "retrain",
    promote: bool = False,
    router: bool = False,
    env: Mapping[str, str] | None = None,
    sections: Mapping[str, Any] | None = None,
) -> Iterator[TrainedProject]:
    """A git + DVC project under ``root``, its model trained ``versions`` times (0 to 2).

    Args:
        prefix: the model name's start; a random suffix keeps names apart in the session's MLflow.
        policy: changes on top of the lenient policy (``{}``: lenient only); None keeps the
            example's policy.
        second: how v2 is made: trained again with ``max_iter`` 40 (and tagged as having passed
            the gates, which are judged elsewhere), or a new version of v1's artifacts.
        promote: v1 goes through the promotion flow (gates pass: it becomes the champion).
        router: free router ports, and the local target stopped when the block ends.
        env: more variables, set with ``MLOPS_PROJECT_DIR`` for as long as the block runs.
        sections: top-level sections of the pipeline config in place of the example's
            (``{"model": {"family": "xgboost"}}``).
    """
    from mlflow import MlflowClient

    from flows.promotion import promotion
    from flows.training import training
    from mlops.stack.processes import free_port

    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    pipeline = make_project(root, adult_frame(rows), model_name=name)
    if sections:
        replace_sections(pipeline, **sections)
    if policy is not None:
        lenient_policy(pipeline, **policy)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLOPS_PROJECT_DIR", str(root))
    if router:
        mp.setenv("MLOPS_ROUTER_PORT", str(free_port()))
        mp.setenv("MLOPS_ROUTER_ADMIN_PORT", str(free_port()))
    for key, value in (env or {}).items():
        mp.setenv(key, value)
    settings = Settings()
    trained: list[int] = []
    try:
        if versions >= 1:
            trained.append(training(pipeline=str(pipeline), trigger="test").version)
            if promote:
                promotion(version=str(trained[0]), pipeline=str(pipeline), trigger="test")
        if versions >= 2:
            client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
            if second == "copy":
                trained.append(
                    copy_version(client, name, trained[0], drop=PROMOTION_TAGS)
                )  # v2 was never promoted itself
            else:
                edit_yaml(pipeline, model={"params": {"max_iter": 40}})
                trained.append(training(pipeline=str(pipeline), trigger="test").version)
                client.set_model_version_tag(name, str(trained[1]), GATES_TAG, GATES_PASSED)
        yield TrainedProject(name, root, pipeline, tuple(trained), settings)
    finally:
        if router:
            TrainedProject(name, root, pipeline, (), settings).target.stop()
        mp.undo()


@dataclass
class Load:
    """Clients posting one row a request to ``url`` until stopped (``limit`` requests each at most).

    Every non-200 answer and transport error is in ``failures``; transport errors also in
    ``connection_errors``; the versions that answered are counted from the 200s' bodies.
    """

    url: str
    clients: int = 3
    pause: float = 0.01
    timeout: float = 10
    limit: int | None = None
    statuses: Counter[int] = field(default_factory=Counter)
    versions: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    connection_errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, rows: list[dict[str, Any]]) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            i = 0
            while not self._stop.is_set() and (self.limit is None or i < self.limit):
                try:
                    r = client.post(f"{self.url}/predict", json={"row": rows[i % len(rows)]})
                    self.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        self.versions[r.json()["model"]["version"]] += 1
                    else:
                        self.failures.append(f"{r.status_code}: {r.text[:120]}")
                except httpx.TransportError as exc:
                    self.connection_errors.append(f"{type(exc).__name__}: {exc}")
                    self.failures.append(self.connection_errors[-1])
                i += 1
                self._stop.wait(self.pause)

    def __enter__(self) -> Load:
        rows = caller_rows()
        for _ in range(self.clients):
            t = threading.Thread(target=self._run, args=(rows,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 5)

    @property
    def unanswered(self) -> int:
        return len(self.connection_errors)

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + self.unanswered

    @property
    def success_rate(self) -> float:
        return self.statuses[200] / self.total if self.total else 0.0
