"""Smoke tests of a running model server: ready, and the model's input example answered exactly
as the model answers it in process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from mlops.adapters.prediction_log import SYNTHETIC_HEADER
from mlops.core.errors import MlopsError


class SmokeTestFailed(MlopsError):
    """A model server did not become ready or did not answer as its model does."""


@dataclass(frozen=True)
class KnownBatch:
    """Rows with the answers the model gives them in process."""

    name: str
    version: int
    rows: list[dict[str, Any]]
    labels: list[int]
    probabilities: list[float]


def known_batch(model_dir: Path, name: str, version: int, sha256: str | None) -> KnownBatch:
    """The model's logged input example and its in-process answers (the folder is verified)."""
    from mlops.serving.model import load_model_folder

    example = model_dir / "input_example.json"
    if not example.is_file():
        raise SmokeTestFailed(f"{model_dir}: no input_example.json to smoke-test with")
    data = json.loads(example.read_text())
    frame = pd.DataFrame(data["data"], columns=data["columns"])
    labels, proba = load_model_folder(model_dir, name, version, sha256).predict(frame)
    rows = [
        {k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records")
    ]
    return KnownBatch(name, version, rows, [int(x) for x in labels], [float(p) for p in proba])


def wait_until_ready(
    base: str, timeout: float, alive: Callable[[], str | None] = lambda: None, path: str = "/ready"
) -> None:
    """Wait until ``path`` answers 200; ``alive`` returns why the server is gone (then stop
    waiting), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gone = alive()
        if gone:
            raise SmokeTestFailed(gone)
        try:
            if httpx.get(f"{base}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SmokeTestFailed(f"{base} was not ready within {timeout:.0f} s")


def check_answers(base: str, batch: KnownBatch, token: str | None = None) -> None:
    """POST the batch; the server must name the right model and give the in-process answers."""
    headers = {SYNTHETIC_HEADER: "smoke-test"} | (
        {"Authorization": f"Bearer {token}"} if token else {}
    )
    answer = httpx.post(f"{base}/predict", json={"rows": batch.rows}, headers=headers, timeout=30)
    if answer.status_code != 200:
        raise SmokeTestFailed(f"{base}/predict answered {answer.status_code}: {answer.text}")
    body = answer.json()
    if body["model"] != {"name": batch.name, "version": batch.version}:
        raise SmokeTestFailed(f"{base} serves {body['model']}, not {batch.name} v{batch.version}")
    if body["predictions"] != batch.labels or any(
        abs(a - b) > 1e-9 for a, b in zip(body["probabilities"], batch.probabilities, strict=True)
    ):
        raise SmokeTestFailed(
            f"{base}: answers differ from the model's in-process predictions "
            f"({body['predictions']} vs {batch.labels})"
        )


def warm_up(base: str, batch: KnownBatch, requests: int, token: str | None = None) -> float:
    """Single-row predictions of the known batch, one after another, so the candidate's first
    production requests do not pay its cold start (lazy imports, first allocations, thread pools).
    Returns the slowest answer's seconds."""
    headers = {SYNTHETIC_HEADER: "warm-up"} | (
        {"Authorization": f"Bearer {token}"} if token else {}
    )
    slowest = 0.0
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for i in range(requests):
            started = time.perf_counter()
            answer = client.post("/predict", json={"row": batch.rows[i % len(batch.rows)]})
            if answer.status_code != 200:
                raise SmokeTestFailed(
                    f"{base}/predict answered {answer.status_code} while warming up"
                )
            slowest = max(slowest, time.perf_counter() - started)
    return slowest
