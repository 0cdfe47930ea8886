"""A training run in its own process, imported ahead and started on a word, so that tests can
start several at one instant (a race) or kill one at a chosen moment of the flow itself.

Run as ``python -m tests.training_worker PIPELINE``: it imports the flow, prints READY, waits
for a line on stdin, runs ``training(pipeline=PIPELINE)`` and prints DONE with the version.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import PROJECT

READY = "@@training-worker-ready"
DONE = "@@training-worker-done"


class TrainingWorker:
    """One ``training`` flow run in a child process of its own process group."""

    def __init__(self, project: Path, pipeline: str, log: Path) -> None:
        env = os.environ | {"MLOPS_PROJECT_DIR": str(project)}
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.training_worker", pipeline],
            cwd=PROJECT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == READY:
                return
        raise AssertionError(f"the training worker exited ({self.proc.wait()}) before it was ready")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self) -> bool:
        """SIGKILL the whole process group; False when the run had already ended."""
        ended = self.proc.poll() is not None
        if not ended:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()
        return not ended

    def result(self, timeout: float = 300) -> int:
        """The version the run registered or reused; fails the test if it did not finish."""
        out, _ = self.proc.communicate(timeout=timeout)
        self._log.close()
        done = [line for line in out.splitlines() if line.startswith(DONE)]
        assert self.proc.returncode == 0 and done, f"training worker failed: {self._log.name}"
        return int(done[-1].split()[-1])


def main() -> None:
    from flows.training import training

    print(READY, flush=True)
    sys.stdin.readline()
    version = training(pipeline=sys.argv[1])
    print(DONE, version.version, flush=True)


if __name__ == "__main__":
    main()
