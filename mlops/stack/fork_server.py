"""A stack's fork server: one zygote (`mlops.stack.zygote`) per state folder that imported the
model server's libraries once and forks each local model server from them.

A fresh ``mlops serve`` spends about 5 s of CPU importing MLflow, scikit-learn, skops (whose
trusted-type list walks every scikit-learn module) and the server before it loads a model, and a
release starts one per candidate. Forked from the zygote it starts in a fraction of that; the
model itself (and any code of the user's it imports) is loaded in the child, so each server
reads its own version as a fresh process would.

The zygote is started on demand by the first server asked for, recorded in
``<state>/fork-server/zygote.json`` (pid, start, socket, the library's sources), and stopped by
`stop` (``mlops down``). It exits by itself once that record no longer names it (the state folder
removed, or a newer zygote recorded). Its socket lives in a short temporary folder: a Unix socket's
path may not exceed 107 bytes, and state folders can be deep. A server asked for while it is
importing waits for it (a plain process would import the same modules beside it, on the same
cores); when it cannot fork (it refused, it is not ready within `IMPORT_WAIT`, the library's
files changed since it imported them: it is replaced for the next one), `fork` answers None and
the caller starts a plain process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlops.core.files import write_atomic
from mlops.stack.processes import process_alive, spawn, started_at, stop_process_group
from mlops.stack.zygote import read_line

IMPORT_WAIT = 60.0
#: what `mlops serve` imports before it loads a model (by name: the stack does not import the CLI)
SERVER_MODULES = (
    "mlops.cli",
    "mlops.cli.serving",
    "mlops.adapters.registry",
    "mlops.adapters.prediction_log",
    "mlops.serving.app",
    "mlops.serving.model",
    "mlops.serving.fast_path",
    "mlflow.sklearn",
    "skops.io",
    "uvicorn",
    "uvicorn.loops.auto",
    "uvicorn.protocols.http.auto",
    "uvicorn.lifespan.on",
)


def library_sources() -> str:
    """A digest of the library's Python files (path, modification time, size): the zygote's
    modules are the code it imported, so a change of them means a new zygote."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        with contextlib.suppress(OSError):
            stat = path.stat()
            digest.update(
                f"{path.relative_to(root)}\0{stat.st_mtime_ns}\0{stat.st_size}\n".encode()
            )
    return digest.hexdigest()


class ForkServer:
    """The zygote of the stack whose state folder is ``state_dir``."""

    def __init__(self, state_dir: Path, modules: tuple[str, ...] = SERVER_MODULES) -> None:
        self.folder = state_dir / "fork-server"
        self.record = self.folder / "zygote.json"
        self.log = self.folder / "zygote.log"
        self.modules = modules

    # the record ----------------------------------------------------------------------------
    def _read(self) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        return found

    def _alive(self, record: dict[str, Any] | None) -> bool:
        return record is not None and process_alive(record["pid"], record["started"])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One caller at a time starts, replaces or stops the zygote (two releases at once)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # starting and stopping -----------------------------------------------------------------
    def start(self, project_dir: Path) -> dict[str, Any]:
        """The running zygote's record; a new zygote (importing in ``project_dir``) when none
        runs or the library changed."""
        with self._locked():
            record = self._read()
            sources = library_sources()
            same = record is not None and record["sources"] == sources
            if same and record is not None and (record.get("refused") or self._alive(record)):
                return record  # a refusal is not tried again until the library changes
            if record is not None:
                self._stop(record)
            socket_path = Path(tempfile.mkdtemp(prefix="mlops-fork-")) / "zygote.sock"
            log_from = self.log.stat().st_size if self.log.exists() else 0
            proc = spawn(
                [
                    sys.executable,
                    "-m",
                    "mlops.stack.zygote",
                    str(socket_path),
                    "--preload",
                    ",".join(self.modules),
                    "--record",
                    str(self.record),
                ],
                self.log,
                cwd=project_dir,
                env=os.environ | {"MLOPS_PROJECT_DIR": str(project_dir)},
            )
            record = {
                "pid": proc.pid,
                "started": started_at(proc.pid),
                "socket": str(socket_path),
                "sources": sources,
                "log_from": log_from,
            }
            write_atomic(self.record, json.dumps(record))
            return record

    def stop(self) -> bool:
        """Stop the zygote (the servers it forked run on); whether one was running."""
        if not self.record.exists():
            return False
        with self._locked():
            record = self._read()
            running = self._alive(record)
            if record is not None:
                self._stop(record)
            self.record.unlink(missing_ok=True)
        return running

    def _stop(self, record: dict[str, Any]) -> None:
        if self._alive(record):
            stop_process_group(record["pid"], timeout=10)
        with contextlib.suppress(OSError):
            Path(record["socket"]).unlink()
            Path(record["socket"]).parent.rmdir()

    def _refused(self, record: dict[str, Any]) -> bool:
        """Whether the zygote, gone, said it will not fork (`ZygoteError`, exit `REFUSED`)."""
        try:
            with self.log.open("rb") as handle:
                handle.seek(record.get("log_from", 0))
                return b"forking now is unsafe" in handle.read()
        except OSError:
            return False

    # forking -------------------------------------------------------------------------------
    def _ready(self, record: dict[str, Any], wait: float) -> str | None:
        """None once the zygote listens; else why it cannot fork (after up to ``wait`` s)."""
        deadline = time.monotonic() + wait
        socket_path = Path(record["socket"])
        while not socket_path.exists():
            if record.get("refused"):
                return "the fork server refused to fork: its imports started threads"
            if not process_alive(record["pid"], record["started"]):
                if self._refused(record):
                    with self._locked():
                        write_atomic(self.record, json.dumps(record | {"refused": True}))
                    return "the fork server refused to fork: its imports started threads"
                return f"the fork server exited (see {self.log})"
            if time.monotonic() > deadline:
                return f"the fork server is still importing after {wait:.0f} s"
            time.sleep(0.05)
        return None

    def fork(
        self,
        module: str,
        args: list[str],
        log: Path,
        cwd: Path,
        env: dict[str, str],
        wait: float = IMPORT_WAIT,
    ) -> tuple[int | None, str | None]:
        """``python -m module args`` forked from the zygote in a session of its own, its output
        appended to ``log``: (its pid, None), or (None, why not) for the caller to start it as a
        plain process."""
        record = self.start(cwd)
        if reason := self._ready(record, wait):
            return None, reason
        request = {
            "module": module,
            "args": args,
            "log": str(log),
            "cwd": str(cwd),
            "env": env,
            "session": True,
            "stream_output": False,
        }
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(30)
                connection.connect(record["socket"])
                connection.sendall(json.dumps(request).encode() + b"\n")
                answer = read_line(connection)
        except OSError as exc:
            return None, f"the fork server did not answer ({exc})"
        if answer is None:
            return None, "the fork server closed the connection before it forked"
        return int(answer["pid"]), None
