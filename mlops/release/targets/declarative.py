"""What the cluster targets share: a release is a manifest (targets/manifests.py) that is read back,
changed one step at a time, validated and handed on, to the Kubernetes API (``kserve``) or to a
git repository (``gitops``). The manifest itself records where the release stands, so recovery
reads it from there."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any
from uuid import UUID

from mlops.core.settings import Settings
from mlops.release.guard import start_guard, stop_guard
from mlops.release.manifests import ReleaseSpec, SlotSpec, render_checked
from mlops.release.providers.prometheus import PrometheusProvider, server_series
from mlops.release.router import SLOTS, Traffic
from mlops.release.targets.base import Deployed, TargetError, TargetState, need_image


class DeclarativeTarget(ABC):
    name: str
    fmt: str  # manifest format: kserve or knative

    def __init__(self, settings: Settings, model: str) -> None:
        self.settings = settings
        self.model = model
        self.dir = settings.state_dir / "release" / model

    # what a subclass provides ------------------------------------------------------------------
    @abstractmethod
    def _read(self) -> dict[str, Any] | None:
        """The manifest as it stands (None if there is none)."""

    @abstractmethod
    def _write(self, manifest: dict[str, Any], message: str) -> None:
        """Hand on a validated manifest; ``message`` says what the step does."""

    def _url(self, spec: ReleaseSpec, slot: str) -> str | None:
        """Where ``slot`` answers directly, if that can be known from here."""
        return None

    @abstractmethod
    def wait_ready(self, deployed: Deployed, timeout: float) -> None: ...

    def metrics(self) -> PrometheusProvider:
        """The model servers' own metrics in the cluster's Prometheus (``settings.prometheus_url``):
        each revision's server labels its series with the model and its version."""
        spec = self.spec()
        series = {
            slot: server_series(f'model="{self.model}",version="{s.version}"')
            for slot, s in spec.slots.items()
        }
        assert self.settings.prometheus_url is not None
        return PrometheusProvider(self.settings.prometheus_url, series)

    def health(self) -> str | None:
        return None

    # the release interface ---------------------------------------------------------------------
    def spec(self) -> ReleaseSpec:
        return ReleaseSpec.of(self._read()) or ReleaseSpec()

    def _apply(self, spec: ReleaseSpec, message: str) -> None:
        self._write(
            render_checked(self.fmt, self.model, self.settings.k8s_namespace, spec),
            f"{self.model}: {message}",
        )

    def _deployed(self, spec: ReleaseSpec, slot: str | None) -> Deployed | None:
        if slot is None or slot not in spec.slots:
            return None
        return Deployed(slot, spec.slots[slot].version, self._url(spec, slot))

    def state(self) -> TargetState:
        spec = self.spec()
        idle = next((s for s in SLOTS if s != spec.stable), None) if spec.stable else None
        return TargetState(
            self._deployed(spec, spec.stable), self._deployed(spec, idle), spec.traffic
        )

    def recover(self) -> str | None:
        spec = self.spec()
        if spec.stable is None or spec.traffic is None:
            return None
        if spec.traffic == Traffic.only(spec.stable) and spec.candidate is None:
            return None
        left = spec.traffic.describe()
        self.set_traffic(Traffic.only(spec.stable))
        return (
            f"found {left} left by an unfinished release; restored {spec.stable} "
            f"(v{spec.slots[spec.stable].version}) to 100%"
        )

    def deploy(self, version: int, image: str | None) -> Deployed:
        spec = self.spec()
        slot = next(s for s in SLOTS if s != spec.stable)
        spec.slots[slot] = SlotSpec(version, need_image(self.model, version, image, self.name))
        spec.candidate = slot
        if spec.stable is None or spec.traffic is None:
            spec.traffic = Traffic.only(slot)  # the first version takes all traffic once ready
        self._apply(spec, f"deploy v{version} in {slot} ({spec.traffic.describe()})")
        return Deployed(slot, version, self._url(spec, slot))

    def set_traffic(self, traffic: Traffic) -> None:
        spec = self.spec()
        missing = set(traffic.serving) - set(spec.slots)
        if missing:
            raise TargetError(f"{self.model}: slot(s) {sorted(missing)} run no version")
        spec.traffic = traffic
        if spec.candidate is not None and spec.stable and not traffic.weights.get(spec.candidate):
            spec.candidate = None  # back to the stable spec alone: the rollback
        self._apply(spec, f"traffic {traffic.describe()}")

    def mark_stable(self, slot: str) -> None:
        spec = self.spec()
        spec.stable = slot
        if spec.candidate == slot:
            spec.candidate = None
        self._apply(spec, f"{slot} (v{spec.slots[slot].version}) is stable")

    def retire(self, slot: str) -> None:
        spec = self.spec()
        if spec.traffic and slot in spec.traffic.serving:
            raise TargetError(f"{self.model}: slot {slot} still takes traffic; not retiring it")
        if spec.slots.pop(slot, None) is not None:
            spec.candidate = None if spec.candidate == slot else spec.candidate
            self._apply(spec, f"retire {slot}")

    def guard(self, lease: UUID | None = None) -> None:
        start_guard(
            self.settings, self.model, self.name, self.dir / f"guard-{self.name}.json", lease
        )

    def unguard(self) -> None:
        stop_guard(self.dir / f"guard-{self.name}.json")
