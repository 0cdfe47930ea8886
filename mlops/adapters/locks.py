"""Prefect global concurrency limits of one, used as locks: one holder per name at a time across
every process that reaches the Prefect server.

Two holders of the same kind of lock: ``held`` for a holder that frees its slot itself (or when
its lease runs out), and ``held_lease`` for one that another process must be able to free (the
release, whose guard frees the lock when the release is killed).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from uuid import UUID

#: Prefect's shortest lease: a holder killed with nobody to free its slot blocks the next this long.
LEASE_SECONDS = 60


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
def held(
    name: str, timeout_seconds: float = 120, lease_seconds: float = LEASE_SECONDS
) -> Iterator[None]:
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


@contextlib.contextmanager
def held_lease(
    name: str, timeout_seconds: float = 120, lease_seconds: float = LEASE_SECONDS
) -> Iterator[UUID]:
    """As ``held`` (strict, the lease renewed while held and released at the end), but yields the
    lease's id, so that another process can free the slot (``release_lock_lease``) as soon as
    this one dies instead of after the lease runs out."""
    # Prefect's public ``concurrency()`` keeps the lease id to itself; these are the two calls it
    # makes inside, the only place this project reaches into Prefect's private modules.
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease

    acquired = acquire_concurrency_slots_with_lease(
        [ensure_limit(name)],
        1,
        timeout_seconds=timeout_seconds,
        strict=True,
        lease_duration=lease_seconds,
    )
    try:
        with maintain_concurrency_lease(
            acquired.lease_id, lease_seconds, raise_on_lease_renewal_failure=True
        ):
            yield acquired.lease_id
    finally:
        release_lock_lease(acquired.lease_id)


def release_lock_lease(lease: UUID) -> None:
    """Free the slot held under ``lease`` (the server ignores a lease that is gone already)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease)
