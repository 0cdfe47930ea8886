"""Prefect global concurrency limits of one, used as locks: one holder per name at a time across
every process that reaches the Prefect server."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator


def lock_name(kind: str, model: str) -> str:
    """The limit's name for ``kind`` of work on ``model`` (Prefect allows few characters)."""
    return f"mlops-{kind}-" + re.sub(r"[^A-Za-z0-9_.-]", "_", model)


def ensure_limit(name: str) -> str:
    """Create the limit of one named ``name`` if it does not exist yet; returns the name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


@contextlib.contextmanager
def held(name: str, timeout_seconds: float = 120, lease_seconds: float = 60) -> Iterator[None]:
    """Hold the one slot of limit ``name`` (created on first use). Strict: a limit deleted
    meanwhile fails the holder instead of letting it run unserialized. A holder killed outright
    frees the slot when its lease runs out."""
    from prefect.concurrency.sync import concurrency

    with concurrency(
        ensure_limit(name),
        occupy=1,
        timeout_seconds=timeout_seconds,
        lease_duration=lease_seconds,
        strict=True,
    ):
        yield
