"""Release hooks: the webhook's call against a real local HTTP server (accepting, refusing, slow,
gone), the payload it is sent and its signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError

from mlops.core.policy import HookPolicy, ReleasePolicy
from mlops.release.hooks import (
    SIGNATURE_HEADER,
    HookAnswer,
    HookPayload,
    HookRefused,
    call_webhook,
    hooks_at,
    refusal,
    sign,
)


class _Hook(BaseHTTPRequestHandler):
    """/ok answers 200, /refuse 409 with a reason, /slow after 3 s, /big 500 with a long body."""

    received: list[dict[str, Any]]
    released: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"path": self.path, "body": body, "headers": dict(self.headers)})
        if self.path == "/slow":
            self.released.wait(3)
        status, text = {
            "/ok": (200, "go ahead"),
            "/refuse": (409, '{"reason": "load test: p99 1.8 s over 1 s"}'),
            "/slow": (200, "too late"),
            "/big": (500, "x" * 5000),
        }[self.path]
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    released = threading.Event()
    handler = type("Handler", (_Hook,), {"received": received, "released": released})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    finally:
        released.set()
        httpd.shutdown()
        httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hook(url: str, timeout: float = 5, name: str = "load-test") -> HookPolicy:
    return HookPolicy(
        name=name, phase="before-traffic-increase", kind="webhook", url=url, timeout_seconds=timeout
    )


PAYLOAD = HookPayload(
    model="adult-income",
    version=3,
    phase="before-traffic-increase",
    step="at 25%",
    strategy="canary",
    target="local",
    traffic={"blue": 75, "green": 25},
    decision={"action": "pass", "reason": "all checks passed"},
    flow_run_url="http://127.0.0.1:4200/runs/flow-run/abc",
)


def test_a_2xx_answer_lets_the_step_go_on_and_the_hook_got_the_release_state(
    server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = server
    answer = call_webhook(_hook(f"{url}/ok"), PAYLOAD)
    assert answer == HookAnswer("load-test", True, f"webhook {url}/ok", "answered 200: go ahead")
    (request,) = received
    assert request["headers"]["Content-Type"] == "application/json"
    assert SIGNATURE_HEADER not in request["headers"]
    assert json.loads(request["body"]) == {
        "model": "adult-income",
        "version": 3,
        "phase": "before-traffic-increase",
        "step": "at 25%",
        "strategy": "canary",
        "target": "local",
        "traffic": {"blue": 75, "green": 25},
        "decision": {"action": "pass", "reason": "all checks passed"},
        "flow_run_url": "http://127.0.0.1:4200/runs/flow-run/abc",
        "reason": None,
    }


def test_another_status_refuses_naming_the_hook_the_status_and_the_body(
    server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, _ = server
    answer = call_webhook(_hook(f"{url}/refuse"), PAYLOAD)
    assert not answer.proceed
    assert answer.describe() == (
        f"hook 'load-test' refused by webhook {url}/refuse: "
        'answered 409: {"reason": "load test: p99 1.8 s over 1 s"}'
    )
    big = call_webhook(_hook(f"{url}/big"), PAYLOAD)
    assert not big.proceed and big.reason.startswith("answered 500: xxx")
    assert len(big.reason) < 250  # a short excerpt, not the whole page


def test_no_answer_within_the_timeout_refuses(server: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = server
    answer = call_webhook(_hook(f"{url}/slow", timeout=0.5), PAYLOAD)
    assert not answer.proceed
    assert answer.reason == "no answer within 0.5 s (timed out)"
    assert len(received) == 1  # it was asked, and gave up before the answer (after 3 s)


def test_a_closed_port_refuses_as_unreachable() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/hook"
    answer = call_webhook(_hook(url), PAYLOAD)
    assert not answer.proceed
    assert answer.by == f"webhook {url}"
    assert answer.reason.startswith("could not be reached: ConnectError")


def test_with_a_secret_the_body_is_signed(server: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = server
    assert call_webhook(_hook(f"{url}/ok"), PAYLOAD, secret="s3cret").proceed
    (request,) = received
    expected = hmac.new(b"s3cret", request["body"], hashlib.sha256).hexdigest()
    assert request["headers"][SIGNATURE_HEADER] == f"sha256={expected}"
    assert sign(request["body"], "other") != request["headers"][SIGNATURE_HEADER]


def test_a_manual_hook_is_not_called_as_a_webhook() -> None:
    manual = HookPolicy(name="sign-off", phase="before-promotion", kind="manual")
    with pytest.raises(ValueError, match="'sign-off' is manual, not a webhook"):
        call_webhook(manual, PAYLOAD)


def test_the_hooks_of_a_phase_in_order_and_the_first_refusal() -> None:
    hooks = ReleasePolicy(
        hooks=(
            _hook("http://a", name="a"),
            HookPolicy(name="b", phase="before-promotion", kind="manual"),
            _hook("http://c", name="c"),
        )
    ).hooks
    assert [h.name for h in hooks_at(hooks, "before-traffic-increase")] == ["a", "c"]
    assert hooks_at(hooks, "after-rollback") == []
    yes, no = HookAnswer("a", True, "x", "ok"), HookAnswer("c", False, "y", "no")
    assert refusal([yes, no]) is no and refusal([yes]) is None


def test_a_refusal_names_the_phase_the_step_and_who_refused() -> None:
    refused = HookRefused(
        "before-promotion", "promotion", HookAnswer("sign-off", False, "ann", "Q3")
    )
    assert str(refused) == "before-promotion (promotion): hook 'sign-off' refused by ann: Q3"
    assert refused.evidence == {
        "phase": "before-promotion",
        "step": "promotion",
        "hook": "sign-off",
        "proceed": False,
        "by": "ann",
        "reason": "Q3",
    }


def test_the_policy_refuses_a_manual_hook_after_rollback_and_a_webhook_without_url() -> None:
    with pytest.raises(ValidationError, match="after-rollback hooks are told, not asked"):
        HookPolicy(name="x", phase="after-rollback", kind="manual")
    with pytest.raises(ValidationError, match="a webhook needs `url`"):
        HookPolicy(name="x", phase="before-promotion", kind="webhook")
