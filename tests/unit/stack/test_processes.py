"""Stopping the stack's processes: an exited process counts as stopped before its parent reaps
it."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from functools import partial

import psutil
import pytest

from mlops.stack.processes import _wait_gone, process_alive, started_at, stop_process_group

pytestmark = pytest.mark.unit

# a parent that starts a child and never reaps it: the child, once killed, stays a zombie for as
# long as the parent lives (as a service does when init, its adoptive parent, reaps late)
NEGLECTFUL_PARENT = (
    "import subprocess, time\n"
    "child = subprocess.Popen(['sleep', '300'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(300)\n"
)


def test_a_killed_process_its_parent_has_not_reaped_yet_is_gone() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", NEGLECTFUL_PARENT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        child.send_signal(signal.SIGTERM)
        # psutil.wait_procs waits for the pid to disappear, i.e. for the parent: the whole timeout
        assert _wait_gone([child], timeout=30) == []
        assert child.status() == psutil.STATUS_ZOMBIE  # exited, not yet reaped
    finally:
        parent.kill()
        parent.wait()


def test_stopping_reaps_our_own_child_and_kills_one_that_ignores_sigterm() -> None:
    stubborn = subprocess.Popen(
        ["bash", "-c", "trap '' TERM; echo ready; sleep 300"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
    stop_process_group(stubborn.pid, timeout=0.5)
    assert not psutil.pid_exists(stubborn.pid)  # killed and reaped: no zombie of ours left


def test_a_running_process_is_still_known_after_the_wall_clock_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A virtual machine restored or forked from a snapshot steps its wall clock (dmesg: "crng
    reseeded due to virtual machine fork"), and psutil's create_time of every running process
    moves by the step. Seen here: `mlops demo --fresh` found the whole running stack "not
    running", left it running and moved its state away."""
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        started = started_at(sleeper.pid)
        wall_clock = psutil.Process(sleeper.pid).create_time()  # what an earlier mlops recorded
        assert process_alive(sleeper.pid, started) and process_alive(sleeper.pid, wall_clock)
        stepped = psutil.Process.create_time
        monkeypatch.setattr(psutil.Process, "create_time", lambda p: stepped(p) + 3600)
        assert process_alive(sleeper.pid, started)
        assert not process_alive(sleeper.pid, started + 5)  # another process given the pid
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not process_alive(sleeper.pid, started)


DRAWS = (
    "from mlops.stack.processes import free_port\n"
    "import sys\n"
    "sys.stdin.readline()\n"  # both start drawing at once
    "print(' '.join(str(free_port()) for _ in range(400)), flush=True)\n"
    "sys.stdin.readline()\n"  # alive until both have drawn: an ended process's claims are void
)


def test_two_processes_drawing_ports_at_once_are_never_handed_the_same_one() -> None:
    """The CI failure of stop 28: one test worker's stack had drawn a port, not yet bound, that the
    other worker was then handed. 2 x 400 draws from ~28,000 ephemeral ports would share a few
    without the claims (the birthday bound: about 6 expected)."""
    drawers = [
        subprocess.Popen(
            [sys.executable, "-c", DRAWS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for proc in drawers:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    lines = [proc.stdout.readline() for proc in drawers if proc.stdout is not None]
    for proc in drawers:
        proc.communicate("done\n", timeout=60)
    drawn = [set(map(int, line.split())) for line in lines]
    assert all(len(ports) == 400 for ports in drawn)
    assert drawn[0].isdisjoint(drawn[1])


def test_a_port_the_system_offers_again_is_not_handed_out_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlops.stack import processes

    system_port = processes._system_port
    offered = itertools.chain(
        [system_port("127.0.0.1")] * 3, iter(partial(system_port, "127.0.0.1"), 0)
    )
    monkeypatch.setattr(processes, "_system_port", lambda host: next(offered))
    first, second = processes.free_port(), processes.free_port()
    assert first != second


def test_a_claim_holds_while_its_process_lives_and_is_taken_over_once_it_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlops.stack import processes

    port = processes._system_port("127.0.0.1")
    holder = subprocess.Popen(["sleep", "60"])
    try:
        claim = processes.PORT_CLAIMS / str(port)
        processes.PORT_CLAIMS.mkdir(mode=0o700, exist_ok=True)
        claim.write_text(f"{holder.pid} {started_at(holder.pid)}")
        assert processes._claim(port) is False  # a live stranger holds it
    finally:
        holder.kill()
        holder.wait()
    assert processes._claim(port) is True  # its holder ended: the claim is void
    assert claim.read_text().split()[0] == str(os.getpid())
