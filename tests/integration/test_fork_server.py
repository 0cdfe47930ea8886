"""The stack's fork server (mlops.stack.fork_server): real zygote processes forking real children,
each in a session of its own with its output in its log; replaced when the library changes, gone
when its record is, and a plain process's reason when it cannot fork."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from mlops.stack import fork_server
from mlops.stack.fork_server import SERVER_MODULES, ForkServer
from mlops.stack.processes import process_alive, stop_process_group
from tests.helpers import PROJECT

pytestmark = pytest.mark.integration

SERVE = ["0", "--bind", "127.0.0.1"]  # python -m http.server on a free port, until stopped


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def _wait_for(path: Path, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = path.read_text() if path.exists() else ""
        if text in found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_the_model_servers_modules_preload_and_a_forked_command_runs_with_its_arguments(
    tmp_path: Path,
) -> None:
    """With the real server's module list (no import of it starts a thread, or it would refuse):
    ``python -m mlops.cli --help`` forked, its output in its log, its session its own."""
    server = ForkServer(tmp_path / "state", SERVER_MODULES)
    log = tmp_path / "help.log"
    try:
        pid, why_not = server.fork("mlops.cli", ["--help"], log, PROJECT, dict(os.environ))
        assert why_not is None and pid is not None
        assert _gone(pid), "the forked `mlops.cli --help` did not exit"
        assert "Usage" in log.read_text() and "serve" in log.read_text()
        record = server._read()
        assert record is not None and record["pid"] != pid
    finally:
        assert server.stop()
    assert not server.record.exists() and _gone(record["pid"])


def test_the_zygote_is_reused_replaced_when_the_library_changes_and_gone_with_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forked server (``python -m http.server``) runs in a session of its own and stops with
    its process group; the zygote forks the next one too, is replaced when the library's files
    change, and leaves once its record is gone (its state folder removed)."""
    server = ForkServer(tmp_path / "state", ("http.server",))
    log = tmp_path / "child.log"
    child, why_not = server.fork("http.server", SERVE, log, tmp_path, {})
    assert why_not is None and child is not None
    _wait_for(log, "Serving HTTP")
    first = server._read()
    assert first is not None and psutil.Process(child).ppid() == first["pid"]
    assert os.getsid(child) == child, "the forked server is not in a session of its own"
    other, _ = server.fork("http.server", SERVE, tmp_path / "other.log", tmp_path, {})
    assert other is not None and server._read() == first, "a second zygote was started"
    for pid in (child, other):
        stop_process_group(pid, timeout=10)
        assert _gone(pid), "the forked server outlived its process group's SIGTERM"

    monkeypatch.setattr(fork_server, "library_sources", lambda: "edited")
    second = server.start(tmp_path)
    assert second["pid"] != first["pid"] and _gone(first["pid"]), "the old zygote runs on"
    assert server._ready(second, 60) is None

    server.record.unlink()  # the state folder removed: the zygote notices and leaves
    assert _gone(second["pid"]), "the zygote outlived its record"


def test_a_zygote_still_importing_is_not_waited_for_past_the_bound(tmp_path: Path) -> None:
    server = ForkServer(tmp_path / "state", SERVER_MODULES)
    try:
        pid, why_not = server.fork("http.server", SERVE, tmp_path / "x.log", tmp_path, {}, wait=0.1)
        assert pid is None and why_not is not None and "still importing" in why_not
        record = server._read()
        assert record is not None and process_alive(record["pid"], record["started"])
    finally:
        server.stop()
