"""The Prefect project layer: thin ``@task`` wrappers over the library, one module per stage.

Not installed: flows import it from the project folder (Prefect loads flows from there too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from mlops.core.retries import only_connection_errors

P = ParamSpec("P")
R = TypeVar("R")

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
