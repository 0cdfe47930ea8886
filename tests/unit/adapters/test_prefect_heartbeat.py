"""Flow-run heartbeats that stop at once: the thread is woken by its stop, not by the end of a
sleep; and the replacement goes into Prefect's engine only while that has the shape it replaces.

The engine here is a simple stand-in with the members ``send_heartbeats`` reads of Prefect's
flow-run engine; tests/flows/test_flow_overhead.py runs it inside real flow runs.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from mlops.adapters.prefect_heartbeat import (
    THREAD_NAME,
    send_heartbeats,
    shape_problems,
    use_waking_heartbeats,
)

pytestmark = pytest.mark.unit

#: An interval no test could wait out: a thread still alive after the exit slept instead.
FOREVER = 10**6


class Engine:
    """The members of Prefect's flow-run engine that ``send_heartbeats`` uses; counts beats."""

    def __init__(self, seconds: int | None, final: bool = False) -> None:
        self.heartbeat_seconds = seconds
        self.flow_run = SimpleNamespace(state=SimpleNamespace(is_final=lambda: final))
        self.logger = logging.getLogger("test-engine")
        self.beats = 0
        self.beaten = threading.Event()

    def _build_heartbeat_event_template(self) -> tuple[dict[str, str], list[Any]]:
        return {"prefect.resource.id": "prefect.flow-run.test"}, []

    def _emit_flow_run_heartbeat(self, resource: dict[str, str], related: list[Any]) -> None:
        assert resource == {"prefect.resource.id": "prefect.flow-run.test"}
        self.beats += 1
        self.beaten.set()


def heartbeat_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == THREAD_NAME}


def test_the_exit_wakes_and_joins_the_heartbeat_thread() -> None:
    engine = Engine(FOREVER)
    before = heartbeat_threads()
    with send_heartbeats(engine):
        assert engine.beaten.wait(timeout=60), "no heartbeat at the start of the run"
        [thread] = heartbeat_threads() - before
    assert not thread.is_alive(), "the heartbeat thread outlived the exit: it sleeps, not waits"
    assert engine.beats == 1


def test_without_join_the_stop_still_ends_the_thread() -> None:
    """The async engine does not join (it would block its event loop); the stop wakes it."""
    engine = Engine(FOREVER)
    before = heartbeat_threads()
    with send_heartbeats(engine, join_on_exit=False):
        assert engine.beaten.wait(timeout=60)
        [thread] = heartbeat_threads() - before
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_no_heartbeat_for_a_run_already_final() -> None:
    engine = Engine(FOREVER, final=True)
    with send_heartbeats(engine):
        pass
    assert engine.beats == 0


def test_heartbeats_off_start_no_thread() -> None:
    before = heartbeat_threads()
    with send_heartbeats(Engine(None)):
        assert heartbeat_threads() == before


def test_installed_in_prefect_as_the_engine_has_the_shape_it_replaces() -> None:
    """Fails when a Prefect upgrade changes what the replacement relies on: read the problems."""
    from prefect import flow_engine

    assert use_waking_heartbeats()
    assert shape_problems(flow_engine) == []
    assert flow_engine._send_heartbeats is send_heartbeats
    assert use_waking_heartbeats(), "a second call is not a no-op"


@contextmanager
def _send_heartbeats(engine: Any, join_on_exit: bool = True) -> Any:
    """Prefect's signature, for a stand-in engine module."""
    yield


def stand_in_engine(calls_it: bool = True) -> ModuleType:
    """A module with the shape of ``prefect.flow_engine`` that the replacement relies on."""
    module = ModuleType("stand_in_flow_engine")
    module._send_heartbeats = _send_heartbeats  # type: ignore[attr-defined]

    class BaseFlowRunEngine:
        heartbeat_seconds = 30

        def _build_heartbeat_event_template(self) -> None: ...

        def _emit_flow_run_heartbeat(self) -> None: ...

    class FlowRunEngine(BaseFlowRunEngine):
        @contextmanager
        def run_context(self) -> Any:
            with _send_heartbeats(self):
                yield self

    class BeatlessEngine(BaseFlowRunEngine):
        @contextmanager
        def run_context(self) -> Any:
            yield self

    module.BaseFlowRunEngine = BaseFlowRunEngine  # type: ignore[attr-defined]
    module.FlowRunEngine = FlowRunEngine if calls_it else BeatlessEngine  # type: ignore[attr-defined]
    module.AsyncFlowRunEngine = FlowRunEngine  # type: ignore[attr-defined]
    return module


def test_an_engine_of_that_shape_gets_the_replacement() -> None:
    module = stand_in_engine()
    assert use_waking_heartbeats(module)
    assert module._send_heartbeats is send_heartbeats  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("signature", "_send_heartbeats takes ['engine'], not ['engine', 'join_on_exit']"),
        ("missing", "stand_in_flow_engine has no _send_heartbeats"),
        ("members", "BaseFlowRunEngine has no _emit_flow_run_heartbeat"),
        ("caller", "FlowRunEngine.run_context does not call _send_heartbeats"),
    ],
)
def test_a_changed_engine_is_left_alone_with_a_warning(
    change: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    module = stand_in_engine(calls_it=change != "caller")
    if change == "signature":
        module._send_heartbeats = lambda engine: None  # type: ignore[attr-defined]
    elif change == "missing":
        del module._send_heartbeats  # type: ignore[attr-defined]
    elif change == "members":
        del module.BaseFlowRunEngine._emit_flow_run_heartbeat  # type: ignore[attr-defined]
    before = getattr(module, "_send_heartbeats", None)
    with caplog.at_level(logging.WARNING, logger="mlops.adapters.prefect_heartbeat"):
        assert not use_waking_heartbeats(module)
    assert getattr(module, "_send_heartbeats", None) is before
    assert problem in caplog.text
    assert "each waits up to 1 s" in caplog.text
