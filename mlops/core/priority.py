"""Work that yields the machine's cores to what matters more.

Monitoring's reports for people (Evidently's HTML, the charts) are drawn after its events are
out, at the very moment the retraining those events started is training on the same cores: on a
2-core machine the two split the cores evenly and the training, the loop's critical path, took a
third longer. ``yielding`` runs such work on a thread of its own at a lower scheduling priority
(a nice value of +10: the kernel gives it about a tenth of a core another process wants, and all
of an idle one). On Linux a thread's nice value is its own; elsewhere the work runs unchanged.
The thread ends with the work, so the caller's priority never changes (an unprivileged process
cannot raise it back).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: How much lower than its caller the work runs (nice(2)'s scale: 0 to 19)
NICENESS = 10


def yielding(work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``work(*args, **kwargs)`` at NICENESS lower priority, its result or exception as its own;
    the caller's context (Prefect's run, logging) goes with it."""
    if not sys.platform.startswith("linux"):
        return work(*args, **kwargs)
    context = contextvars.copy_context()
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        with contextlib.suppress(OSError):  # a priority we cannot lower: run as we are
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
        try:
            result.append(context.run(work, *args, **kwargs))
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"yielding-{getattr(work, '__name__', 'work')}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
