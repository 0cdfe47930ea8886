"""Schemathesis against a real model server process: generated requests from its own OpenAPI.

The server is ``mlops serve`` (uvicorn, its own process, a bearer token as outside local mode)
for the small model the session trains and registers once (``registered_model``). Cases are
drawn from the document the server publishes, both schema-valid (must be answered) and
schema-breaking (must be refused with a 4xx), with a fixed seed and a fixed budget per
operation. Every response goes through schemathesis's checks (no 5xx, status, content type and
body as documented, valid data accepted, invalid data refused) and this project's own (a 4xx
names the problem and each bad field). Afterwards the server still answers, and once it has
stopped, its prediction log holds exactly the rows the 200s answered and the labels the 202s
accepted.

Why schemathesis's Python API and not its CLI: the test must count the rows each answer
returned and compare them with the log; here every response passes through this code.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import Case, GenerationMode, Response
from schemathesis.specs.openapi.checks import ignored_auth

from mlops.adapters.prediction_log import FEEDBACK, PREDICTIONS
from mlops.adapters.prediction_window import read_log
from mlops.core.settings import Settings
from mlops.release.smoke import wait_until_ready
from mlops.stack.local import service_env
from mlops.stack.processes import console_script, free_port, spawn, stop_process_group, tail
from tests.fixtures import TrainedProject

pytestmark = [
    pytest.mark.fuzz,
    # schemathesis's own strategies draw from `random` (its concern, not this project's)
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

SEED = 20_13  # issue 13
#: Cases per operation, half schema-valid and half schema-breaking: 4,000 in all (170 s for 6,000
#: beside a loaded CI run, of its 45 minutes; 10,000 found nothing 6,000 did not).
BUDGET = {"/predict": 2_400, "/feedback": 1_600}
TOKEN = "fuzz-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# ignored_auth re-sends every case twice without the token (the ctx that would remember an
# operation is enforced is built per call here): it would triple the requests. The token is
# checked once below, and on every case that schemathesis sends with a broken header.
EXCLUDED = [ignored_auth]
# What the document promises, no more: valid data is answered (schemathesis would also take a
# 5xx or 404 as "accepted"), invalid data gets one of the refusals the server documents (413 for
# a batch over the row limit is one; schemathesis's default list lacks it and allows 5xx).
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2xx"]},
            "negative_data_rejection": {"expected-statuses": ["400", "401", "413", "422"]},
        }
    }
)


@dataclass
class Tally:
    """What the server answered, by operation and status, and what it should have logged."""

    statuses: Counter[str] = field(default_factory=Counter)
    rows_answered: int = 0
    request_ids: set[str] = field(default_factory=set)
    labels_accepted: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def cases(self) -> int:
        return sum(self.statuses.values())

    def by_class(self, digit: str) -> int:
        return sum(n for key, n in self.statuses.items() if key.rsplit(" ", 1)[1][0] == digit)


@pytest.fixture(scope="module")
def model_server(
    local_stack: Settings,
    registered_model: TrainedProject,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The session's registered model, served by ``mlops serve`` in its own process."""
    name, version, root = registered_model.name, registered_model.versions[0], registered_model.root
    work = tmp_path_factory.mktemp("fuzz-server")
    port, log_root, out = free_port(), str(work / "log"), work / "server.log"
    env = os.environ | service_env(local_stack) | {"MLOPS_ENV": "local"}
    argv = ["serve", name, "--version", str(version), "--port", str(port), "--log-root", log_root]
    proc = spawn(
        [console_script("mlops"), *argv],
        out,
        cwd=root,
        env=env | {"MLOPS_SERVING_TOKEN": TOKEN},
    )
    base = f"http://127.0.0.1:{port}"
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:  # SIGTERM: uvicorn shuts down and the app closes (flushes) its log
            stop_process_group(proc.pid, timeout=30)
            stopped = True

    def alive() -> str | None:
        return None if proc.poll() is None else f"the server exited:\n{tail(out)}"

    try:
        wait_until_ready(base, 120, alive)
        yield {"base": base, "log": log_root, "stop": stop, "out": out}
    finally:
        stop()


def _names_the_problem(response: Response) -> str | None:
    """Why a 4xx body fails to say what is wrong, or None: each has an error message, a 422
    names each bad field or the body's wrong shape, and every field named is a real path."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return f"{response.status_code} body is not JSON: {response.text[:200]!r}"
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"]:
        return f"{response.status_code} without an error message: {response.text[:200]!r}"
    fields = body.get("fields") or []
    shape = body["error"].startswith(("rows:", "the body must be"))
    if response.status_code == 422 and not fields and not shape:
        return f"422 naming neither a field nor the body's shape: {response.text[:200]!r}"
    if any(not f.get("field") or not f.get("message") for f in fields):
        return f"{response.status_code} with an unnamed field: {response.text[:200]!r}"
    return None


def _fuzz(op: Any, mode: GenerationMode, budget: int, tally: Tally, base: str) -> None:
    """``budget`` cases of ``mode`` through ``op``, each sent, checked and counted."""
    session = requests.Session()
    label = f"{op.path} {mode.value}"

    @seed(SEED)
    @settings(
        max_examples=budget,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: a failure is recorded with its reproduction
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def one(case: Case) -> None:
        response = case.call(base_url=base, session=session, headers=AUTH, timeout=30)
        tally.statuses[f"{label} {response.status_code}"] += 1
        try:
            case.validate_response(
                response,
                excluded_checks=EXCLUDED,
                headers=AUTH,
                transport_kwargs={"base_url": base, "session": session, "headers": AUTH},
            )
        except (Exception, BaseExceptionGroup) as failure:  # FailureGroup: a BaseExceptionGroup
            tally.failures.append(f"{label}: {failure}")
        if 400 <= response.status_code < 500:
            problem = _names_the_problem(response)
            if problem:
                tally.failures.append(f"{label}: {problem}\n  body sent: {case.body!r:.300}")
        if response.status_code == 200 and op.path == "/predict":
            answer = json.loads(response.content)
            tally.rows_answered += len(answer["predictions"])
            tally.request_ids.add(answer["request_id"])
        if response.status_code == 202 and op.path == "/feedback":
            tally.labels_accepted += 1

    one()


def test_generated_requests_are_answered_or_refused_and_the_log_holds_the_answered_rows(
    model_server: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    base = model_server["base"]
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", config=CONFIG)
    tally = Tally()
    for path, budget in BUDGET.items():
        op = schema[path]["POST"]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(op, mode, budget // 2, tally, base)
    fuzzed = time.monotonic() - started

    # Still serving, and still refusing a caller without the token.
    assert httpx.get(f"{base}/health").json()["status"] == "ok"
    assert httpx.post(f"{base}/predict", json={"row": {}}).status_code == 401
    assert httpx.post(f"{base}/feedback", json={}).status_code == 401
    model_server["stop"]()  # the log is complete once the server has closed it
    predictions = read_log(model_server["log"], PREDICTIONS)
    feedback = read_log(model_server["log"], FEEDBACK)
    logged = len(predictions)
    with capsys.disabled():
        print(
            f"\nfuzz (seed {SEED}): {tally.cases} cases in {fuzzed:.0f} s: "
            f"{tally.by_class('2')} 2xx, {tally.by_class('4')} 4xx, {tally.by_class('5')} 5xx; "
            f"{tally.rows_answered} rows answered in {len(tally.request_ids)} answers, "
            f"{logged} rows logged; {tally.labels_accepted} labels accepted, "
            f"{len(feedback)} logged; {len(tally.failures)} check failures"
        )
        for key, n in sorted(tally.statuses.items()):
            print(f"  {key}: {n}")
    assert not tally.failures, "\n\n".join(tally.failures[:5])
    assert tally.cases >= sum(BUDGET.values())
    assert tally.by_class("5") == 0
    assert tally.by_class("2") > 0 and tally.by_class("4") > 0
    assert logged == tally.rows_answered
    assert set(predictions["request_id"]) == tally.request_ids if logged else not tally.request_ids
    assert len(feedback) == tally.labels_accepted
    assert "Traceback" not in Path(model_server["out"]).read_text(), tail(model_server["out"], 40)
