"""The interface every release target offers the release flow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

from mlops.core.errors import MlopsError
from mlops.core.settings import Settings
from mlops.release.router import Traffic


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
    """Cumulative counters of one slot, as callers saw it (router) and as it answered (server)."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx, including the router's 502/504 when the slot fails to answer
    latency_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    labels: dict[str, float] = field(default_factory=dict)  # predicted label -> count

    def since(self, before: SlotSample) -> SlotSample:
        return SlotSample(
            self.requests - before.requests,
            self.errors - before.errors,
            {le: c - before.latency_buckets.get(le, 0.0) for le, c in self.latency_buckets.items()},
            {k: v - before.labels.get(k, 0.0) for k, v in self.labels.items()},
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

    def sample(self) -> dict[str, SlotSample]:
        """Cumulative counters per slot, now."""
        ...

    def retire(self, slot: str) -> None:
        """Stop what runs in ``slot``."""
        ...


TARGETS = ("local", "kserve", "gitops", "lambda")


def make_target(kind: str, settings: Settings, model: str) -> ReleaseTarget:
    """The target named ``kind``; one without its settings is an error naming them."""
    if kind == "local":
        from mlops.release.targets.local import LocalTarget

        return LocalTarget(settings, model)
    if kind == "kserve":
        from mlops.release.targets.kserve import KServeTarget

        return KServeTarget(settings, model)
    if kind == "gitops":
        from mlops.release.targets.gitops import GitOpsTarget

        return GitOpsTarget(settings, model)
    if kind == "lambda":
        from mlops.release.targets.aws_lambda import LambdaTarget

        return LambdaTarget(settings, model)
    raise TargetError(f"unknown release target {kind!r} (known: {', '.join(TARGETS)})")


def need_image(model: str, version: int, image: str | None, target: str) -> str:
    if not image:
        raise TargetError(
            f"{model} v{version} has no server image (tag mlops.image), which the {target} target "
            f"runs: build and push it first with `mlops package --version {version}`"
        )
    return image


def missing_settings(target: str, names: list[str]) -> TargetError:
    return TargetError(f"the {target} release target needs {', '.join(names)} (unset)")
