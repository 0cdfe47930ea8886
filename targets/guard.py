"""The release guard: a small process that watches a release flow's process and, if it dies while
traffic is split or mirrored, puts all traffic back on the stable slot.

Started by the local target when a release begins, stopped when it ends. A release killed at any
point (SIGKILL included) thus leaves traffic on one model; the next release also recovers
(``LocalTarget.recover``) should the guard itself be gone.

    python -m targets.guard STATE_DIR MODEL FLOW_PID FLOW_STARTED
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mlops.stack import process_alive


def main(argv: list[str]) -> int:
    state_dir, model, pid, started = Path(argv[0]), argv[1], int(argv[2]), float(argv[3])
    from mlops.settings import Settings
    from targets.local import LocalTarget

    while process_alive(pid, started):
        time.sleep(0.2)
    target = LocalTarget(Settings(state_dir=state_dir), model)
    what = target.recover()
    print(what or "the release ended with traffic on one slot; nothing to do", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
