"""When a task may retry: a server that did not answer, not a request that was refused."""

from __future__ import annotations

from typing import Any

import httpx
import requests


def only_connection_errors(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry when the failure was reaching a server, never when
    the server (or our own code) refused the work: that fails the same way every time."""
    try:
        state.result()
    except (requests.ConnectionError, requests.Timeout, httpx.TransportError, ConnectionError):
        return True
    except Exception:
        return False
    return False
