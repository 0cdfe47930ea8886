"""The Prefect project layer: thin ``@task`` wrappers over the library, one module per stage.

Not installed: flows import it from the project folder (Prefect loads flows from there too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FailedRun, FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from mlops.adapters.prefect_heartbeat import use_waking_heartbeats
from mlops.adapters.prefect_tls import reuse_tls_contexts
from mlops.core.retries import only_connection_errors

# Here because every flow module imports this package, in every process that runs a flow: a
# worker loads a deployment's flow file by path, so flows/__init__ is not always imported. From
# here on a flow run (and each subflow) ends when its work does, not up to a second later, and
# its Prefect client does not parse the certificate bundle again.
use_waking_heartbeats()
reuse_tls_contexts()

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=RunInput)

#: What every step does unless it says otherwise: no cache, no persisted result.
DEFAULTS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


@overload
def step(fn: Callable[P, R], **options: Any) -> Task[P, R]: ...
@overload
def step(fn: None = None, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...
def step(fn: Callable[P, R] | None = None, **options: Any) -> Any:
    """A pipeline step: ``fn`` as a Prefect task with the project's defaults (``DEFAULTS``),
    overridden by ``options``; as ``step(fn, name=...)`` or as a decorator ``@step(name=...)``."""
    merged = DEFAULTS | options
    return task(fn, **merged) if fn is not None else task(**merged)


def on_connection_errors(*delays: float) -> dict[str, Any]:
    """Step options that retry, once per delay (in seconds), a run that could not reach a
    service (``only_connection_errors``); any other failure fails at once."""
    return {
        "retries": len(delays),
        "retry_delay_seconds": list(delays),
        "retry_condition_fn": only_connection_errors,
    }


def ask_in_ui(form: type[F], timeout_seconds: int, poll_interval: int, **initial: Any) -> F | None:
    """Pause this flow run with ``form`` (filled in with ``initial``) in the Prefect UI until a
    person answers it; None when nobody does within ``timeout_seconds``: the client gives up at
    the timeout (``FlowPauseTimeout``), or finds the server already failed the paused run for
    it (``FailedRun``). The approval, a held step and a manual hook ask this way.

    Must be called from a flow run (the pause is the flow run's state)."""
    try:
        answer: F = pause_flow_run(
            wait_for_input=form.with_initial_data(**initial),
            timeout=timeout_seconds,
            poll_interval=poll_interval,
        )
    except (FlowPauseTimeout, FailedRun):
        return None
    return answer
