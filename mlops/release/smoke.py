"""Smoke tests of a running model server: ready, and the model's input example answered as the
registered model answers it in process. When the model compiles (``mlops.serving.fast_path``),
the server answers by its compiled path, and the probe rows (missing values, unseen and known
categories) are checked too: the compiled path is held to the registered model loaded here,
within the compiled path's tolerance, a differing row named with both answers."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from mlops.adapters.prediction_log import SYNTHETIC_HEADER
from mlops.core.errors import MlopsError
from mlops.serving.fast_path import TOLERANCE

#: Most rows the smoke test posts (one batch, well under the server's batch limit): the example,
#: then probe rows, each text column's categories taken in turn.
SMOKE_ROWS = 100


class SmokeTestFailed(MlopsError):
    """A model server did not become ready or did not answer as its model does."""


@dataclass(frozen=True)
class KnownBatch:
    """Rows with the answers the model gives them in process: a prediction per row (a class name,
    or a number) and, for classifiers, the classes and a probability per class per row."""

    name: str
    version: int
    problem: str
    rows: list[dict[str, Any]]
    predictions: list[Any]
    classes: list[str] | None = None
    probabilities: list[list[float]] | None = None


def known_batch(model_dir: Path, name: str, version: int, sha256: str | None) -> KnownBatch:
    """The model's logged input example with the registered model's in-process answers (the
    folder is verified); for a model the server answers by its compiled path, the probe rows a
    server accepts too, so the smoke test holds that path to the registered model."""
    from mlops.serving.model import input_example, load_model_folder

    if not (model_dir / "input_example.json").is_file():
        raise SmokeTestFailed(f"{model_dir}: no input_example.json to smoke-test with")
    model = load_model_folder(model_dir, name, version, sha256)
    example = input_example(model_dir)
    compiled = model.path.name == "compiled"
    rows = model.probe_rows(example, servable=True, limit=SMOKE_ROWS) if compiled else example
    answers = model.predict(pd.DataFrame(rows, columns=[c.name for c in model.columns]))
    classifier = answers.probabilities is not None
    return KnownBatch(
        name,
        version,
        model.problem.kind,
        rows,
        list(answers.predictions),
        list(model.problem.classes) if classifier else None,
        answers.probabilities.tolist() if answers.probabilities is not None else None,
    )


def _close(a: Any, b: Any) -> bool:
    return (
        isinstance(a, (int, float))
        and not isinstance(a, bool)
        and math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
    )


def answer_differences(body: dict[str, Any], batch: KnownBatch) -> list[str]:
    """How a /predict answer to the batch differs from the model's in-process answers (empty:
    it does not): the problem type, each prediction, the classes and each probability."""
    problems: list[str] = []
    if body.get("problem") != batch.problem:
        problems.append(f"problem {body.get('problem')!r}, not {batch.problem!r}")
    predictions = body.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(batch.predictions):
        return [*problems, f"predictions {predictions!r:.200} for {len(batch.rows)} rows"]
    for i, (got, want) in enumerate(zip(predictions, batch.predictions, strict=True)):
        same = got == want if batch.classes is not None else _close(got, want)
        if not same:
            problems.append(f"row {i}: predicted {got!r}, in process {want!r}")
    if batch.classes is not None:
        if body.get("classes") != batch.classes:
            problems.append(f"classes {body.get('classes')!r}, not {batch.classes!r}")
        served = body.get("probabilities")
        expected = batch.probabilities or []
        if not isinstance(served, list) or len(served) != len(expected):
            problems.append(f"probabilities {served!r:.200} for {len(batch.rows)} rows")
        else:
            for i, (got_row, want_row) in enumerate(zip(served, expected, strict=True)):
                if (
                    not isinstance(got_row, list)
                    or len(got_row) != len(want_row)
                    or not all(_close(g, w) for g, w in zip(got_row, want_row, strict=False))
                ):
                    problems.append(f"row {i}: probabilities {got_row!r}, in process {want_row}")
    return problems


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
    differences = answer_differences(body, batch)
    if differences:
        raise SmokeTestFailed(
            f"{base} (answering by its {_served_path(base)} path): answers differ from the "
            "registered model's in-process predictions: " + "; ".join(differences[:5])
        )


def _served_path(base: str) -> str:
    """The inference path the server's /ready names (compiled, registered), or "unknown"."""
    try:
        path = httpx.get(f"{base}/ready", timeout=5).json().get("path")
    except (httpx.HTTPError, ValueError, AttributeError):
        return "unknown"
    return str(path.get("name")) if isinstance(path, dict) else "unknown"


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
