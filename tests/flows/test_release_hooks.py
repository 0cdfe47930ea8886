"""Hooks between release steps on the local target, with real Prefect and MLflow servers, real
model-server processes, and a real local HTTP server as the webhook: a webhook that refuses a
step rolls the release back naming it, one that accepts is told the release's state at each
phase, and a manual gate is answered through the Prefect API as the UI's form does."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from mlflow import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter
from prefect.flow_runs import resume_flow_run

from flows.release import release
from mlops.adapters.audit import AuditTrail
from mlops.core.settings import Settings
from mlops.release.canary import ReleaseFailed
from mlops.release.hooks import SIGNATURE_HEADER
from mlops.release.router import Traffic
from tests.fixtures import Load, trained_project
from tests.helpers import edit_yaml

pytestmark = pytest.mark.flows

REFUSAL = '{"reason": "load test: p99 1.8 s over the 1 s budget"}'


@pytest.fixture(scope="module")
def project(
    local_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """v1 the champion, v2 trained with other parameters; canary steps 25 and 50."""
    policy = {
        "release": {
            "bake_seconds": 2,
            "canary_steps": [25, 50, 100],
            "analysis_interval_seconds": 0.25,
            "min_requests": 10,
            "max_p99_latency_ratio": 50,
            "max_prediction_shift": 0.5,
            "warmup_requests": 10,
        }
    }
    root = tmp_path_factory.mktemp("hooks-project")
    with trained_project(
        root, "hooks", policy=policy, versions=2, promote=True, router=True
    ) as built:
        v1, v2 = built.versions
        yield {
            "name": built.name,
            "pipeline": built.pipeline,
            "policy": built.pipeline.parent / "policy.yaml",
            "v1": v1,
            "v2": v2,
            "target": built.target,
        }


class _Receiver(BaseHTTPRequestHandler):
    """/ok answers 200, /refuse 409 with a reason, /broken 500; every request is kept."""

    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"path": self.path, "body": body, "headers": dict(self.headers)})
        status, text = {"/ok": (200, "ok"), "/refuse": (409, REFUSAL), "/broken": (500, "oops")}[
            self.path
        ]
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Handler", (_Receiver,), {"received": received})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def hooks(project: dict[str, Any]) -> Iterator[Any]:
    """Set the policy's hooks (after v1 serves alone); none again when the test ends."""

    def set_hooks(*items: dict[str, Any]) -> None:
        edit_yaml(project["policy"], release={"hooks": list(items)})

    with Load(project["target"].router.url):  # a canary back to v1 needs requests to judge
        release(version=str(project["v1"]), pipeline=str(project["pipeline"]))
    try:
        yield set_hooks
    finally:
        set_hooks()


def _champion(name: str) -> int:
    s = Settings()
    client = MlflowClient(s.mlflow_tracking_uri, s.mlflow_tracking_uri)
    return int(client.get_model_version_by_alias(name, "champion").version)


def _last_entry(name: str, version: int) -> Any:
    return AuditTrail(Settings().mlflow_tracking_uri).entries(name, version)[-1]


def test_a_webhook_that_refuses_a_traffic_increase_rolls_the_release_back_naming_it(
    project: dict[str, Any], webhook: tuple[str, list[dict[str, Any]]], hooks: Any
) -> None:
    url, received = webhook
    name, target, v1, v2 = project["name"], project["target"], project["v1"], project["v2"]
    stable = target.state().stable.slot
    hooks(
        {"name": "load-test", "phase": "before-traffic-increase", "kind": "webhook",
         "url": f"{url}/refuse", "timeout_seconds": 10},
        # told of the rollback; its 500 changes nothing
        {"name": "pager", "phase": "after-rollback", "kind": "webhook", "url": f"{url}/broken"},
    )  # fmt: skip
    with Load(target.router.url) as load, pytest.raises(ReleaseFailed) as failed:
        release(version=str(v2), pipeline=str(project["pipeline"]), strategy="canary")
    refusal = f"hook 'load-test' refused by webhook {url}/refuse: answered 409: {REFUSAL}"
    assert str(failed.value) == (
        f"{name} v{v2} rolled back: before-traffic-increase (at 50%): {refusal}"
    )
    assert target.router.current() == Traffic.only(stable)
    assert _champion(name) == v1
    assert load.success_rate >= 0.99, load.statuses
    entry = _last_entry(name, v2)
    assert entry.action == "release-rolled-back" and refusal in entry.reason
    assert entry.evidence["hook"] == {
        "phase": "before-traffic-increase",
        "step": "at 50%",
        "hook": "load-test",
        "proceed": False,
        "by": f"webhook {url}/refuse",
        "reason": f"answered 409: {REFUSAL}",
    }
    # asked once (before 50%: 25% was the first step), then the pager was told why
    assert [r["path"] for r in received] == ["/refuse", "/broken"]
    told = json.loads(received[1]["body"])
    assert told["phase"] == "after-rollback" and refusal in told["reason"]
    assert told["traffic"] == {stable: 100}


def test_a_webhook_that_accepts_lets_the_release_promote_and_is_told_each_phase(
    project: dict[str, Any],
    webhook: tuple[str, list[dict[str, Any]]],
    hooks: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, received = webhook
    name, target, v2 = project["name"], project["target"], project["v2"]
    stable = target.state().stable.slot
    monkeypatch.setenv("MLOPS_HOOK_SECRET", "hook-s3cret")
    hooks(*[
        {"name": f"check-{phase}", "phase": phase, "kind": "webhook", "url": f"{url}/ok"}
        for phase in ("before-first-step", "before-traffic-increase", "before-promotion")
    ])  # fmt: skip
    with Load(target.router.url):
        outcome = release(version=str(v2), pipeline=str(project["pipeline"]), strategy="canary")
    assert outcome.serving and _champion(name) == v2
    candidate = target.state().stable.slot
    assert candidate != stable and target.router.current() == Traffic.only(candidate)
    payloads = [json.loads(r["body"]) for r in received]
    assert [(p["phase"], p["step"], p["traffic"]) for p in payloads] == [
        ("before-first-step", "at 25%", {stable: 75, candidate: 25}),
        ("before-traffic-increase", "at 50%", {stable: 50, candidate: 50}),
        ("before-promotion", "promotion", {candidate: 100}),
    ]
    for p in payloads:
        assert (p["model"], p["version"], p["strategy"], p["target"]) == (
            name, v2, "canary", "local"
        )  # fmt: skip
        assert "/runs/flow-run/" in p["flow_run_url"]
    assert payloads[0]["decision"] is None  # nothing watched yet
    assert [p["decision"]["action"] for p in payloads[1:]] == ["pass", "pass"]
    assert len({p["flow_run_url"] for p in payloads}) == 1
    for r in received:
        signed = hmac.new(b"hook-s3cret", r["body"], hashlib.sha256).hexdigest()
        assert r["headers"][SIGNATURE_HEADER] == f"sha256={signed}"
    assert _last_entry(name, v2).action == "released"


def _paused_run(trigger: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for run in client.read_flow_runs(flow_run_filter=FlowRunFilter()):
                if run.state and run.state.is_paused() and run.parameters.get("trigger") == trigger:
                    return run
            time.sleep(0.5)
    raise AssertionError("no paused release appeared")


def _answer_form(trigger: str, answer: dict[str, Any]) -> dict[str, Any]:
    """Answer the paused release's form as the Prefect UI does: read the form's schema and its
    description from the run's input, then resume the run with the answer. Returns the schema."""
    run = _paused_run(trigger)
    keyset = run.state.state_details.run_input_keyset
    with get_client(sync_client=True) as client:
        schema = json.loads(client.read_flow_run_input(run.id, keyset["schema"]))
        description = json.loads(client.read_flow_run_input(run.id, keyset["description"]))
    resume_flow_run(run.id, run_input=answer)
    return {"schema": schema, "description": description}


def _manual_release(
    project: dict[str, Any], answer: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A canary of v2 under load, in a thread, whose before-promotion gate gets ``answer``."""
    trigger = f"gate-{uuid.uuid4().hex[:6]}"
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = release(
                version=str(project["v2"]),
                pipeline=str(project["pipeline"]),
                strategy="canary",
                trigger=trigger,
            )
        except ReleaseFailed as exc:
            outcome["error"] = str(exc)

    with Load(project["target"].router.url):
        worker = threading.Thread(target=run)
        worker.start()
        try:
            form = _answer_form(trigger, answer)
            assert _champion(project["name"]) == project["v1"], "nothing moves while it waits"
        finally:
            worker.join(timeout=300)
    return outcome, form


def test_a_manual_gate_before_promotion_answered_yes_in_the_form_continues(
    project: dict[str, Any], hooks: Any
) -> None:
    name, target, v2 = project["name"], project["target"], project["v2"]
    hooks({"name": "sign-off", "phase": "before-promotion", "kind": "manual",
           "timeout_seconds": 300})  # fmt: skip
    outcome, form = _manual_release(
        project, {"proceed": True, "by": "ann", "reason": "dashboards look fine"}
    )
    assert "result" in outcome, outcome
    assert set(form["schema"]["properties"]) >= {"proceed", "by", "reason"}
    fields = form["schema"]["properties"]
    assert fields["proceed"]["type"] == "boolean" and fields["proceed"]["default"] is False
    assert f"{name} v{v2}" in form["description"] and "before-promotion" in form["description"]
    assert _champion(name) == v2
    assert target.router.current() == Traffic.only(target.state().stable.slot)
    assert target.state().stable.version == v2


def test_a_manual_gate_before_promotion_answered_no_rolls_back_naming_who(
    project: dict[str, Any], hooks: Any
) -> None:
    name, target, v1, v2 = project["name"], project["target"], project["v1"], project["v2"]
    stable = target.state().stable.slot
    hooks({"name": "sign-off", "phase": "before-promotion", "kind": "manual",
           "timeout_seconds": 300})  # fmt: skip
    outcome, _ = _manual_release(
        project, {"proceed": False, "by": "bob", "reason": "wait for the Q3 data"}
    )
    refusal = "hook 'sign-off' refused by bob: wait for the Q3 data"
    assert outcome.get("error") == (
        f"{name} v{v2} rolled back: before-promotion (promotion): {refusal}"
    ), outcome
    assert _champion(name) == v1
    assert target.router.current() == Traffic.only(stable)
    entry = _last_entry(name, v2)
    assert entry.action == "release-rolled-back" and refusal in entry.reason
    assert entry.evidence["hook"]["by"] == "bob" and entry.evidence["hook"]["hook"] == "sign-off"


def test_no_answer_at_a_manual_gate_in_time_is_a_refusal(
    project: dict[str, Any], hooks: Any
) -> None:
    name, target, v1, v2 = project["name"], project["target"], project["v1"], project["v2"]
    stable = target.state().stable.slot
    hooks({"name": "sign-off", "phase": "before-first-step", "kind": "manual",
           "timeout_seconds": 3})  # fmt: skip
    with pytest.raises(ReleaseFailed) as failed:
        release(version=str(v2), pipeline=str(project["pipeline"]), strategy="canary")
    refusal = "hook 'sign-off' refused by (nobody): no answer within 3 s"
    assert str(failed.value) == f"{name} v{v2} rolled back: before-first-step (at 25%): {refusal}"
    assert target.router.current() == Traffic.only(stable)  # no traffic ever moved
    assert _champion(name) == v1
    entry = _last_entry(name, v2)
    assert entry.action == "release-rolled-back" and refusal in entry.reason
