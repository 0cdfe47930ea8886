"""Flow-run heartbeats that stop the moment the flow run does.

Prefect 3.9 sends a flow run's heartbeats (``prefect.flow-run.heartbeat`` events, every
``flows.heartbeat_frequency`` seconds, at least 30) from a daemon thread that
``prefect.flow_engine._send_heartbeats`` starts around the flow function. That thread waits out
its interval in ``time.sleep(1)`` steps, and the synchronous engine joins it at exit, so every
flow run, and every subflow inside it, ended up to a second after its work: about 1.1 s of
fixed cost per run, paid by each subflow of the closed loop and each flow run of the tests.
Setting the frequency cannot help (it is at least 30 s, and None turns heartbeats off, which
would blind Prefect's zombie-flow automation to a worker-run process that dies).

``use_waking_heartbeats`` puts ``send_heartbeats`` in that context manager's place: the same
events, at the same interval, from the same kind of thread, with the same "no heartbeat once the
run's state is final" rule, but the thread waits on its stop event, so stopping it wakes it at
once and the join returns at once. Crash detection is untouched: a worker-run flow process
still beats until it exits, and the process worker still reports a process killed with SIGKILL
as Crashed from its exit code.

It is a replacement of a private name, so it is installed only when Prefect's engine has the
shape it was written against (checked each time); otherwise it logs a warning and leaves Prefect
as it is (flow runs then pay the second again, and tests/flows/test_flow_overhead.py fails).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

#: The heartbeat thread's name (in thread dumps, and how the tests tell it from Prefect's own).
THREAD_NAME = "mlops-flow-run-heartbeat"
#: What ``send_heartbeats`` uses of a flow-run engine (Prefect's ``BaseFlowRunEngine``).
ENGINE_MEMBERS = (
    "heartbeat_seconds",
    "_build_heartbeat_event_template",
    "_emit_flow_run_heartbeat",
)
#: The engines whose ``run_context`` must look ``_send_heartbeats`` up by its module-level name,
#: or replacing that name changes nothing.
ENGINES = ("FlowRunEngine", "AsyncFlowRunEngine")

logger = logging.getLogger(__name__)


@contextmanager
def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
    """Heartbeats of ``engine``'s flow run every ``engine.heartbeat_seconds`` while the body runs,
    from a daemon thread that the exit wakes and (with ``join_on_exit``) joins: Prefect's
    ``_send_heartbeats`` without its one-second sleep steps. The async engine passes
    ``join_on_exit=False`` so as not to block its event loop."""
    seconds = engine.heartbeat_seconds  # None: heartbeats are off in the settings
    if seconds is None:
        yield
        return
    resource, related = engine._build_heartbeat_event_template()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            run = engine.flow_run
            if run and run.state and run.state.is_final():
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            stop.wait(seconds)

    # With the caller's context the thread sees the caller's Prefect settings (its API URL), as
    # Prefect's own thread does; without, an event could start an ephemeral server at teardown.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(beat,), name=THREAD_NAME, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        if join_on_exit:
            thread.join(timeout=2)  # bounded as Prefect's: an emit stuck in the client


def use_waking_heartbeats(flow_engine: ModuleType | None = None) -> bool:
    """Install ``send_heartbeats`` as ``flow_engine._send_heartbeats`` (default: Prefect's
    ``prefect.flow_engine``); safe to call twice. False, with a warning and the module left as
    it is, when the module no longer has the shape ``send_heartbeats`` was written against."""
    if flow_engine is None:
        from prefect import flow_engine as prefect_flow_engine

        flow_engine = prefect_flow_engine
    if getattr(flow_engine, "_send_heartbeats", None) is send_heartbeats:
        return True
    problems = shape_problems(flow_engine)
    if problems:
        from prefect import __version__

        logger.warning(
            "Prefect %s: flow runs keep Prefect's own heartbeat thread, so each waits up to 1 s "
            "at its end (%s): %s",
            __version__,
            __name__,
            "; ".join(problems),
        )
        return False
    flow_engine._send_heartbeats = send_heartbeats  # type: ignore[attr-defined]
    return True


def shape_problems(flow_engine: ModuleType) -> list[str]:
    """What ``flow_engine`` lacks of the shape ``send_heartbeats`` replaces (empty: none)."""
    current = getattr(flow_engine, "_send_heartbeats", None)
    if current is None:
        return [f"{flow_engine.__name__} has no _send_heartbeats"]
    problems = []
    params = list(inspect.signature(current).parameters)
    if params != ["engine", "join_on_exit"]:
        problems.append(f"_send_heartbeats takes {params}, not ['engine', 'join_on_exit']")
    base = getattr(flow_engine, "BaseFlowRunEngine", None)
    missing = [m for m in ENGINE_MEMBERS if not hasattr(base, m)]
    if missing:
        problems.append(f"BaseFlowRunEngine has no {', '.join(missing)}")
    for name in ENGINES:
        run_context = getattr(getattr(flow_engine, name, None), "run_context", None)
        code = getattr(inspect.unwrap(run_context), "__code__", None) if run_context else None
        if code is None or "_send_heartbeats" not in code.co_names:
            problems.append(f"{name}.run_context does not call _send_heartbeats")
    return problems
