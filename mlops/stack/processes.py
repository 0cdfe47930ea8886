"""Child processes of the local stack, the router and the release guard, and the ports they use.

A process is known by its pid and start time together: the start time tells it from a later
process the system gave the same pid, so stopping one never stops a stranger.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil


def console_script(name: str) -> str:
    """A console script of this environment (the venv's bin next to the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


#: Ports handed out by free_port and not yet bound, one file each, across this user's processes
PORT_CLAIMS = Path(tempfile.gettempdir()) / f"mlops-ports-{os.getuid()}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on right now and no other caller of this function
    has been handed while its process lives.

    The system's free port is only free until someone binds it, and a port is drawn well before
    its server binds it (a stack draws all its ports, then starts its servers one by one): two
    processes drawing at once (two test workers, two stacks) could be handed the same one. Each
    port handed out is claimed by a file under ``PORT_CLAIMS`` naming the claiming process (pid
    and start time); a claim is void once that process has ended."""
    for _ in range(200):
        port = _system_port(host)
        if _claim(port):
            return port
    raise OSError(f"no free port on {host} that another process has not claimed ({PORT_CLAIMS})")


def _system_port(host: str) -> int:
    """A port the system says is free on ``host`` this instant."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _claim(port: int) -> bool:
    """Claim ``port`` for this process; False when a live process holds it. Claims are read and
    written under one lock on the folder, so two processes never both take over a void claim."""
    PORT_CLAIMS.mkdir(mode=0o700, exist_ok=True)
    path = PORT_CLAIMS / str(port)
    with open(PORT_CLAIMS / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pid, started = path.read_text().split()
            if process_alive(int(pid), float(started)):
                return False
        except (FileNotFoundError, ValueError):
            pass  # unclaimed, or garbage a crash left: void
        path.write_text(f"{os.getpid()} {started_at(os.getpid())}")
        return True


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` on ``host`` can be bound now (a server of ours may start there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def healthy(url: str) -> bool:
    """Whether ``url`` answers 200 within two seconds."""
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` of a process's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def spawn(
    argv: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (so it outlives this process), output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def started_at(pid: int) -> float:
    """The process's start time: with the pid, what tells it from a later process given that pid.

    On Linux, seconds after boot (``/proc/<pid>/stat``'s starttime), not the wall clock: psutil's
    ``create_time`` is the boot time plus that, and the boot time is derived from the wall clock,
    so a step of the clock (a virtual machine restored from a snapshot, or forked) moves every
    running process's ``create_time`` by the step, and each would look like a stranger."""
    try:
        after_paren = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(after_paren[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5)
    except (OSError, IndexError, ValueError):
        return float(psutil.Process(pid).create_time())


#: Start times at or past this are wall-clock seconds (create_time): of another platform, or
#: recorded by an earlier mlops; seconds after boot stay far below it.
_WALL_CLOCK = 1e9


def process_alive(pid: int, started: float) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (not a recycled pid)."""
    try:
        proc = psutil.Process(pid)
        now = proc.create_time() if started >= _WALL_CLOCK else started_at(pid)
        return abs(now - started) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return False


def stop_process_group(pid: int, timeout: float) -> None:
    """SIGTERM the process's session group, then SIGKILL what is left after ``timeout``."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    procs = [psutil.Process(pid)]
    with contextlib.suppress(psutil.Error):
        procs += procs[0].children(recursive=True)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    alive = _wait_gone(procs, timeout)
    if alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        _wait_gone(alive, 5)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process has exited; return those still running after ``timeout``.

    An exited process whose parent is not this one stays a zombie until that parent reaps it:
    for the stack's services (their parent, ``mlops up``, exited, so init adopted them) that took
    1.5 s here, which ``psutil.wait_procs`` waits out. Exited is enough: a zombie holds no port,
    file or memory. This process's own children are reaped."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        running = []
        for proc in procs:
            try:
                proc.wait(timeout=0)  # reaps a child of ours; raises while it runs
            except psutil.TimeoutExpired:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        running.append(proc)
            except psutil.NoSuchProcess:
                pass
        procs = running
        if not procs or time.monotonic() >= deadline:
            return procs
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
