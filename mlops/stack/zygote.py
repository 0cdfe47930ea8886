"""A zygote for flow-run processes: one interpreter that imports Prefect and the pipeline once,
then forks a child per flow run that runs Prefect's engine for it; or, given the modules to import,
any module as ``python -m`` runs it (the local target's model servers: mlops.stack.fork_server).

A fresh ``python -m prefect.engine`` spends seconds importing Prefect, scikit-learn, pandas, MLflow
and the project's flows before the flow starts (most of an event's way to a running retraining).
The zygote pays that once. It forks only while it has started no thread (forking a process with
threads can copy a lock some other thread held); it checks that after its imports and refuses
to serve otherwise, so the worker falls back to plain subprocesses.

Protocol, one connection per flow run on the Unix socket given as argument (JSON lines):
the worker sends ``{"env": {...}, "cwd": "...", "stream_output": bool}`` (and, for another module
than Prefect's engine, ``"module"``, ``"args"``, ``"log"``, ``"session"``); the zygote answers
``{"pid": N}`` once the child is forked and ``{"returncode": R}`` when it exits (R as
`subprocess` reports it: negative for a signal). The child is an ordinary child of the zygote
(same process group as the worker, like Prefect's process worker's children), so the worker can
signal it by pid; only the zygote can reap it, hence the second message.

    python -m mlops.stack.zygote SOCKET_PATH [--preload MODULES --record FILE]
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pkgutil
import runpy
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# what a flow run of this project imports anyway: Prefect's engine, the libraries, the pipeline
PRELOAD = (
    "prefect",
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.deployments.steps",
    "prefect.deployments.steps.core",
    "prefect.client.orchestration",
    "prefect.logging.handlers",
    "prefect.events.worker",
    "pandas",
    "sklearn",
    "mlflow",
    "mlops.ml",
    # imported inside the steps that need them, each a second or more in every fresh process:
    # skops (saving and loading a model), Evidently (drift), shap (explanations), matplotlib
    "skops.io",
    "evidently",
    "shap",
    "matplotlib.pyplot",
)
PACKAGES = ("tasks", "flows")  # every module of the project's tasks and flows

# set after preloading: module name -> id() of the module object the zygote imported, so a flow
# run can tell its modules are the zygote's (not imported again), and when the zygote was ready
PRELOADED: dict[str, int] = {}
PRELOADED_AT: float | None = None
REQUEST_SECONDS = 10.0  # how long the zygote waits for a connected worker's request
REFUSED = 3  # the exit status of a zygote that will not fork: the worker does not restart it
RECORD_SECONDS = 1.0  # how often a zygote with a record file checks that it still names it


class ZygoteError(RuntimeError):
    """The zygote cannot fork safely (a thread is running) or cannot import what it preloads."""


def preload(project_dir: Path, modules: list[str] | None = None) -> dict[str, int]:
    """Import ``modules`` (a flow run's: `PRELOAD` and every module of `PACKAGES` under
    ``project_dir``); fail if any import started a thread."""
    global PRELOADED_AT
    if str(project_dir) not in sys.path:
        sys.path.insert(0, str(project_dir))
    names = list(PRELOAD) if modules is None else list(modules)
    for package in PACKAGES if modules is None else ():
        folder = project_dir / package
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(folder)])]
    for name in names:
        importlib.import_module(name)
    _read_installed_distributions()
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads:
        raise ZygoteError(
            f"zygote: importing the flow-run modules started threads {threads}; forking now is "
            "unsafe, so flow runs start as plain subprocesses"
        )
    PRELOADED.update({name: id(module) for name, module in sys.modules.items()})
    PRELOADED_AT = time.time()
    return PRELOADED


def _read_installed_distributions() -> None:
    """MLflow checks a model's requirements against the installed distributions each time it
    saves one, and reads every distribution's metadata for that once a process (0.75 to 1.5 s
    of the first training run): read them here, once for every forked run. MLflow's own
    function (not a documented one): if it goes, only this warm-up goes with it."""
    with contextlib.suppress(Exception):
        from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

        warn_dependency_requirement_mismatches(["scikit-learn"])


ENGINE = "prefect.engine"


@dataclass(frozen=True)
class ChildRun:
    """What a forked child runs once it has left the zygote's loop: ``module`` as ``python -m``
    would run it, with ``args`` (a flow run: Prefect's engine, no arguments)."""

    env: dict[str, str]
    cwd: str
    stream_output: bool
    module: str = ENGINE
    args: tuple[str, ...] = ()
    log: str | None = None  # the file its output is appended to (else stream_output says)
    session: bool = False  # a session (and process group) of its own, as `spawn` starts one

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> ChildRun:
        return cls(
            request["env"],
            request["cwd"],
            bool(request.get("stream_output", False)),
            request.get("module", ENGINE),
            tuple(request.get("args", ())),
            request.get("log"),
            bool(request.get("session", False)),
        )

    def run(self) -> None:
        """Become the process asked for: its session, environment, folder and output, then the
        module (a flow run's engine reads Prefect's settings from that environment first)."""
        if self.session:
            os.setsid()
        os.environ.clear()
        os.environ.update(self.env)
        os.chdir(self.cwd)
        if self.log is not None:
            out = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            for fd, to in ((out, 1), (out, 2), (null, 0)):
                os.dup2(fd, to)
            os.close(out)
            os.close(null)
            with contextlib.suppress(AttributeError, ValueError):  # a log is read as it grows
                sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        elif not self.stream_output:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.close(devnull)
        if self.module == ENGINE:
            from prefect.context import refresh_global_settings_context
            from prefect.logging.configuration import setup_logging

            refresh_global_settings_context()
            setup_logging()
        # what a fresh interpreter would differ in: the job's PYTHONPATH ahead of the zygote's
        # path (which keeps the project folder), and numpy's global generator, which a fork
        # copies (every child would draw the same numbers; `random` reseeds itself at fork)
        extra = [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:0] = [p for p in extra if p not in sys.path]
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        sys.argv = [sys.executable, *self.args]
        runpy.run_module(self.module, run_name="__main__", alter_sys=True)


class Zygote:
    """The accept-fork-reap loop on one listening Unix socket."""

    def __init__(self, listener: socket.socket, record: Path | None = None) -> None:
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.children: dict[int, socket.socket] = {}  # pid -> the connection that asked for it
        self.record = record
        self.checked = time.monotonic()

    def serve(self) -> ChildRun:
        """Serve until this process is a forked child; return what the child runs. The zygote
        itself loops until it is signalled, or until its ``record`` no longer names it."""
        while True:
            if self.record is not None and time.monotonic() - self.checked > RECORD_SECONDS:
                self.checked = time.monotonic()
                if not _names(self.record, os.getpid()):
                    raise SystemExit(0)  # its state folder is gone, or another replaced it
            for key, _ in self.selector.select(timeout=0.1):
                if key.fileobj is self.listener:
                    connection, _ = self.listener.accept()
                    child = self._fork(connection)
                    if child is not None:
                        return child
            self._reap()

    def _fork(self, connection: socket.socket) -> ChildRun | None:
        # bounded: a worker that connected and never asks must not stall the forks of others
        connection.settimeout(REQUEST_SECONDS)
        try:
            request = read_line(connection)
        except TimeoutError:
            request = None
        connection.settimeout(None)
        if request is None:  # the worker gave up before asking
            connection.close()
            return None
        pid = os.fork()
        if pid == 0:
            self.selector.close()
            self.listener.close()
            for other in self.children.values():
                other.close()
            connection.close()
            return ChildRun.from_request(request)
        self.children[pid] = connection
        _send(connection, {"pid": pid})
        return None

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            connection = self.children.pop(pid, None)
            if connection is not None:
                _send(connection, {"returncode": os.waitstatus_to_exitcode(status)})
                connection.close()


def _names(record: Path, pid: int) -> bool:
    """Whether the record file (JSON with a "pid") names this zygote."""
    try:
        return bool(json.loads(record.read_text()).get("pid") == pid)
    except (OSError, ValueError, AttributeError):
        return False


def read_line(connection: socket.socket) -> dict[str, Any] | None:
    """One JSON line of the protocol; None when the other side closed before its end."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            return None
        data += chunk
    request: dict[str, Any] = json.loads(data)
    return request


def _send(connection: socket.socket, message: dict[str, int]) -> None:
    # a worker gone away is no reason to stop: the child runs on and reports through Prefect
    with contextlib.suppress(OSError):
        connection.sendall(json.dumps(message).encode() + b"\n")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mlops.stack.zygote")
    parser.add_argument("socket", type=Path, help="the Unix socket it accepts requests on")
    parser.add_argument(
        "--preload", help="comma-separated modules to import (default: a flow run's)"
    )
    parser.add_argument(
        "--record", type=Path, help="a JSON file naming its pid: it exits once the file does not"
    )
    args = parser.parse_args(argv)
    socket_path: Path = args.socket
    project_dir = Path(os.environ.get("MLOPS_PROJECT_DIR", os.getcwd()))
    try:
        preload(project_dir, args.preload.split(",") if args.preload else None)
    except ZygoteError as exc:
        print(exc, file=sys.stderr, flush=True)
        sys.exit(REFUSED)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    socket_path.unlink(missing_ok=True)
    # bound to a temporary name and renamed: the path appears only when the zygote accepts
    listener.bind(str(socket_path.with_suffix(".binding")))
    listener.listen(64)
    os.replace(socket_path.with_suffix(".binding"), socket_path)
    print(
        f"zygote {os.getpid()}: {len(PRELOADED)} modules preloaded, forking flow runs "
        f"from {socket_path}",
        flush=True,
    )
    child = Zygote(listener, args.record).serve()
    child.run()  # only a forked child gets here; it exits as the engine's interpreter would


if __name__ == "__main__":
    # run as the imported module, so a flow run reads PRELOADED from `mlops.stack.zygote`
    from mlops.stack import zygote

    zygote.main()
