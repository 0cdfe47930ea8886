"""The interface every release target offers the release flow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from uuid import UUID

from mlops.core.errors import MlopsError
from mlops.release.router import Traffic

if TYPE_CHECKING:
    from mlops.release.providers.base import MetricsProvider


class TargetError(MlopsError):
    """A target cannot be reached, is not configured, or refused a change."""


@dataclass(frozen=True)
class Deployed:
    """A model version running in a slot, not necessarily taking traffic."""

    slot: str
    version: int
    url: str | None  # where the slot answers directly (smoke tests); None where none is reachable


@dataclass(frozen=True)
class TargetState:
    stable: Deployed | None  # the slot production traffic belongs to
    idle: Deployed | None  # the other slot, if something runs there
    traffic: Traffic | None  # what the router does now


@dataclass(frozen=True)
class SlotSample:
    """Cumulative counters of one slot, as callers saw it (router) and as it answered (server).

    What the slot predicted is counted by problem type: ``labels`` per class name (classifiers;
    the server's ``mlops_predictions_total``), ``values`` as a cumulative histogram of the
    predicted numbers (regression; ``mlops_prediction_value``, bucketed by the model's
    ``value_buckets``)."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx, including the router's 502/504 when the slot fails to answer
    latency_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    labels: dict[str, float] = field(default_factory=dict)  # predicted class name -> count
    values: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    def since(self, before: SlotSample) -> SlotSample:
        return SlotSample(
            self.requests - before.requests,
            self.errors - before.errors,
            {le: c - before.latency_buckets.get(le, 0.0) for le, c in self.latency_buckets.items()},
            {k: v - before.labels.get(k, 0.0) for k, v in self.labels.items()},
            {le: c - before.values.get(le, 0.0) for le, c in self.values.items()},
        )


class ReleaseTarget(Protocol):
    name: str

    def state(self) -> TargetState: ...

    def recover(self) -> str | None:
        """Put all traffic back on the stable slot if a dead release left it split; say so."""
        ...

    def deploy(self, version: int, image: str | None) -> Deployed:
        """Start ``version`` (its server image, where the target runs images) in the idle slot,
        replacing what ran there, and return it."""
        ...

    def wait_ready(self, deployed: Deployed, timeout: float) -> None: ...

    def set_traffic(self, traffic: Traffic) -> None:
        """Route by ``traffic``; returns once the router does."""
        ...

    def guard(self, lease: UUID | None = None) -> None:
        """Make sure traffic returns to the stable slot if this process dies mid-release, and
        the promotion lock's ``lease`` is freed then."""
        ...

    def unguard(self) -> None: ...

    def mark_stable(self, slot: str) -> None:
        """Record ``slot`` as the one production traffic belongs to."""
        ...

    def metrics(self) -> MetricsProvider:
        """Where the analysis reads each slot's figures (``mlops.release.providers``), for the
        slots deployed now."""
        ...

    def health(self) -> str | None:
        """What the target itself reports wrong with a slot now (a revision KServe reports
        failed, a server process gone); None when nothing. Any answer rolls back at once."""
        ...

    def retire(self, slot: str) -> None:
        """Stop what runs in ``slot``."""
        ...


def need_image(model: str, version: int, image: str | None, target: str) -> str:
    """The version's server image, or an error saying how to build it (for targets that run images)."""
    if not image:
        raise TargetError(
            f"{model} v{version} has no server image (tag mlops.image), which the {target} target "
            f"runs: build and push it first with `mlops package --version {version}`"
        )
    return image


def missing_settings(target: str, names: list[str]) -> TargetError:
    """The error for a target whose settings ``names`` are unset."""
    return TargetError(f"the {target} release target needs {', '.join(names)} (unset)")
