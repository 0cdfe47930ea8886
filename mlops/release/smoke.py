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
    check_explanations(base, batch, headers)


#: Rows of the known batch the smoke test asks the server to explain (Tree SHAP is slow a row).
EXPLAIN_ROWS = 5

#: How far an explanation's output may be from the in-process answer: the trees of XGBoost and
#: LightGBM add up in float32, and a probability is compared after the log-odds turned back.
EXPLAIN_TOLERANCE = 1e-3


def explanation_differences(body: dict[str, Any], batch: KnownBatch) -> list[str]:
    """How an /explain answer for the first rows of the batch differs from the model's
    in-process answers (empty: it does not): each row's base value and attributions must add up
    to its output value, and that output, read in its space, must be the answer."""
    problems: list[str] = []
    explanations, outputs, space = body.get("explanations"), body.get("outputs"), body.get("space")
    rows = min(EXPLAIN_ROWS, len(batch.rows))
    if not isinstance(explanations, list) or len(explanations) != rows:
        return [f"explanations {explanations!r:.200} for {rows} rows"]
    if not isinstance(outputs, list) or not outputs:
        return [f"outputs {outputs!r:.100}"]
    for i, e in enumerate(explanations):
        try:
            values = [float(e["output_value"][o]) for o in outputs]
            sums = [e["base_value"][o] + sum(e["attributions"][o].values()) for o in outputs]
        except (KeyError, TypeError, AttributeError) as exc:
            problems.append(f"row {i}: explanation without {exc}")
            continue
        if not _all_close(sums, values):
            problems.append(f"row {i}: base and attributions add up to {sums}, not {values}")
        want = _in_space(batch, i, space, outputs)
        if space == "logit":  # logits are known up to a constant: held to the probabilities
            top = max(values)
            weights = [math.exp(v - top) for v in values]
            values = [w / sum(weights) for w in weights]
        if want is None:
            problems.append(f"row {i}: an output space {space!r} for outputs {outputs}")
        elif not _all_close(values, want):
            problems.append(f"row {i}: explains the output {values} ({space}), in process {want}")
    return problems


def _all_close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, abs_tol=EXPLAIN_TOLERANCE) for x, y in zip(a, b, strict=True)
    )


def _in_space(batch: KnownBatch, i: int, space: Any, outputs: list[str]) -> list[float] | None:
    """The in-process answer to row i as an explanation in ``space`` gives it, or None."""
    if batch.classes is None:
        return [float(batch.predictions[i])] if space == "value" else None
    proba = dict(zip(batch.classes, (batch.probabilities or [])[i], strict=True))
    if not set(outputs) <= set(proba):
        return None
    if space == "probability" or (space == "logit" and len(outputs) == len(batch.classes)):
        return [proba[o] for o in outputs]
    if space == "log_odds" and len(outputs) == 1:
        p = min(max(proba[outputs[0]], 1e-12), 1 - 1e-12)
        return [math.log(p / (1 - p))]
    return None


def check_explanations(base: str, batch: KnownBatch, headers: dict[str, str]) -> str:
    """POST the first rows of the batch to /explain: a model with an explainer must explain its
    own answers; one without answers 501 with the reason, which is returned (the release goes on:
    explanations are not served for it)."""
    rows = batch.rows[:EXPLAIN_ROWS]
    answer = httpx.post(f"{base}/explain", json={"rows": rows}, headers=headers, timeout=60)
    if answer.status_code == 501:
        return str(answer.json().get("error"))
    if answer.status_code != 200:
        raise SmokeTestFailed(f"{base}/explain answered {answer.status_code}: {answer.text:.300}")
    body = answer.json()
    differences = explanation_differences(body, batch)
    if differences:
        raise SmokeTestFailed(
            f"{base}/explain: the explanations do not add up to the registered model's "
            "in-process answers: " + "; ".join(differences[:5])
        )
    return f"explained {len(rows)} rows by {body.get('method')} in {body.get('space')}"


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
