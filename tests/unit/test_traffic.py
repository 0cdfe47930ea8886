"""The example's traffic (examples/adult/traffic.py) against a real HTTP server on this machine:
every row is posted and answered, and with a rate the requests start no faster than it, over all
clients together (production comes at a rate; unpaced callers take a small machine's cores)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pandas as pd
import pytest

from examples.adult.traffic import send_traffic

pytestmark = pytest.mark.unit


class _Answers(BaseHTTPRequestHandler):
    starts: ClassVar[list[float]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.starts.append(time.monotonic())
        body = json.dumps(
            {"request_id": "r", "problem": "binary", "model": {"name": "m", "version": 1}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Answers.starts = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


ROWS = pd.DataFrame({"age": range(40), "income": ["<=50K"] * 40})


def test_a_rate_spaces_the_requests_over_all_clients(server: str) -> None:
    began = time.monotonic()
    report = send_traffic(server, ROWS, "income", clients=4, feedback=False, rate=100)
    took = time.monotonic() - began
    assert report.answered == len(ROWS) == len(_Answers.starts) and not report.failures
    # 40 starts at most 100 a second over the four clients: the last starts at least 39 intervals
    # of 10 ms after the first was due (a pace per client would take 9). Timed on the client: the
    # server's arrival times carry the first connection's setup, which shortens their span.
    assert took >= 0.39, took


def test_without_a_rate_every_row_is_sent_and_a_rate_must_be_positive(server: str) -> None:
    report = send_traffic(server, ROWS, "income", clients=2, feedback=False)
    assert report.answered == len(ROWS) == len(_Answers.starts)
    with pytest.raises(ValueError, match="rate must be positive"):
        send_traffic(server, ROWS, "income", rate=0)
