"""The release guard: a small process that watches a release flow's process and, if it dies while
traffic is split or mirrored, puts all traffic back on the stable slot.

Every target starts one when a release begins (``start_guard``) and stops it when the release ends
(``stop_guard``). A release killed at any point (SIGKILL included) thus leaves traffic on one
model; the next release also recovers (``ReleaseTarget.recover``) should the guard itself be gone.

    python -m mlops.release.guard STATE_DIR MODEL TARGET FLOW_PID FLOW_STARTED [LOCK_LEASE_ID]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from uuid import UUID

from mlops.adapters.locks import release_lock_lease
from mlops.core.files import write_atomic
from mlops.core.settings import Settings
from mlops.stack.local import service_env
from mlops.stack.processes import process_alive, spawn, started_at, stop_process_group


def start_guard(
    settings: Settings, model: str, target: str, record: Path, lease: UUID | None = None
) -> None:
    """Watch this process from a separate one; its pid goes to ``record``. ``lease``, the
    promotion lock this process holds, is freed when it dies (else the next release waits for
    the lease to run out)."""
    stop_guard(record)
    record.parent.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    proc = spawn(
        [
            sys.executable,
            "-m",
            "mlops.release.guard",
            str(settings.state_dir),
            model,
            target,
            str(me),
            str(started_at(me)),
            *([str(lease)] if lease else []),
        ],
        record.with_suffix(".log"),
        cwd=settings.project_dir,
        env=os.environ | service_env(settings),
    )
    write_atomic(record, json.dumps({"pid": proc.pid, "started": started_at(proc.pid)}))


def stop_guard(record: Path) -> None:
    if record.exists():
        info = json.loads(record.read_text())
        if process_alive(info["pid"], info["started"]):
            stop_process_group(info["pid"], timeout=5)
        record.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    state_dir, model, kind = Path(argv[0]), argv[1], argv[2]
    pid, started = int(argv[3]), float(argv[4])
    from mlops.release.targets import make_target

    while process_alive(pid, started):
        time.sleep(0.2)
    target = make_target(kind, Settings(state_dir=state_dir), model)
    what = target.recover()
    print(what or "the release ended with traffic on one slot; nothing to do", flush=True)
    if len(argv) > 5:  # traffic first: the lock only lets the next release in
        release_lock_lease(UUID(argv[5]))
        print(f"freed the promotion lock lease {argv[5]} of the dead release", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
