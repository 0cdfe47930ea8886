"""Work that yields the cores: it runs at a lower priority on a thread of its own, its result and
exceptions are the caller's, and the caller's own priority never changes."""

from __future__ import annotations

import contextvars
import os
import sys
import threading

import pytest

from mlops.core.priority import NICENESS, yielding

pytestmark = pytest.mark.unit

WHO = contextvars.ContextVar("who", default="nobody")


def _priority() -> tuple[int, str, int]:
    return (
        os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
        WHO.get(),
        threading.get_native_id(),
    )


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's"
)
def test_the_work_runs_lower_with_the_callers_context_and_the_caller_stays_as_it_was() -> None:
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    WHO.set("the monitoring run")
    nice, who, thread = yielding(_priority)
    assert nice == min(before + NICENESS, 19)
    assert who == "the monitoring run"
    assert thread != threading.get_native_id()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_the_works_exception_is_the_callers() -> None:
    def fails() -> None:
        raise ValueError("the report could not be drawn")

    with pytest.raises(ValueError, match="could not be drawn"):
        yielding(fails)
