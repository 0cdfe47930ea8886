"""What the cluster targets share: a release is a manifest (targets/manifests.py) that is read back,
changed one step at a time, validated and handed on, to the Kubernetes API (``kserve``) or to a
git repository (``gitops``). The manifest itself records where the release stands, so recovery
reads it from there."""

from __future__ import annotations

import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any
from uuid import UUID

from mlops.core.settings import Settings
from mlops.release.guard import start_guard, stop_guard
from mlops.release.manifests import ReleaseSpec, SlotSpec, render_checked, seldon_model_name
from mlops.release.providers.prometheus import (
    PrometheusProvider,
    seldon_series,
    server_series,
)
from mlops.release.router import SLOTS, Traffic
from mlops.release.targets.base import (
    Deployed,
    TargetError,
    TargetState,
    missing_settings,
    need_image,
)

#: where Seldon's agent (rclone) can fetch a model folder from
BUCKET_SCHEMES = ("s3", "gs", "gcs", "az", "azureblob")


def bucket_uri(download_uri: str, artifacts_url: str | None) -> str | None:
    """The bucket URI of a version's artifacts: MLflow's ``mlflow-artifacts:/path`` (the server
    proxies its artifact store) is ``<artifacts_url>/path``; None where no bucket holds them."""
    parsed = urllib.parse.urlparse(download_uri)
    if parsed.scheme == "mlflow-artifacts":
        if not artifacts_url or urllib.parse.urlparse(artifacts_url).scheme not in BUCKET_SCHEMES:
            return None
        return f"{artifacts_url.rstrip('/')}/{parsed.path.lstrip('/')}"
    return download_uri if parsed.scheme in BUCKET_SCHEMES else None


def seldon_storage_uri(settings: Settings, model: str, version: int) -> str:
    """Where Seldon's Server loads ``model`` v``version`` from: its MLflow folder in the bucket."""
    from mlops.adapters.registry import artifact_location

    download = str(artifact_location(str(settings.mlflow_tracking_uri), model, version))
    uri = bucket_uri(download, settings.mlflow_artifacts_url)
    if uri is None:
        raise TargetError(
            f"{model} v{version}: Seldon loads a model from a bucket, but its artifacts are at "
            f"{download}; run the MLflow server with its artifacts in s3:// or gs:// "
            "(MLOPS_MLFLOW_ARTIFACTS_URL)"
        )
    return uri


def custom_objects_api(settings: Settings, target: str) -> Any:
    """The Kubernetes API's custom objects (the kubernetes client's ``CustomObjectsApi``), from the
    pod's service account or the kubeconfig the settings name."""
    from kubernetes import client, config

    try:
        if settings.k8s_in_cluster:
            config.load_incluster_config()
            api = client.ApiClient()
        elif settings.k8s_kubeconfig is not None:
            api = config.new_client_from_config(
                config_file=str(settings.k8s_kubeconfig), context=settings.k8s_context
            )
        else:
            raise missing_settings(target, ["MLOPS_K8S_KUBECONFIG (or MLOPS_K8S_IN_CLUSTER=true)"])
    except (config.ConfigException, OSError) as exc:
        raise TargetError(f"the {target} target cannot load its cluster config: {exc}") from None
    return client.CustomObjectsApi(api)


class DeclarativeTarget(ABC):
    name: str
    fmt: str  # manifest format: kserve, knative or seldon

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

    def _runs(self, version: int, image: str | None) -> str:
        """What a slot runs for ``version``: its image, or on Seldon its model folder."""
        if self.fmt == "seldon":
            return seldon_storage_uri(self.settings, self.model, version)
        return need_image(self.model, version, image, self.name)

    @abstractmethod
    def wait_ready(self, deployed: Deployed, timeout: float) -> None: ...

    @staticmethod
    def _poll(status: Callable[[], tuple[bool, str | None]], timeout: float, late: str) -> None:
        """Until ``status()`` says ready; its failure (why not) is an error at once, and so is
        ``late`` once ``timeout`` has passed."""
        deadline = time.monotonic() + timeout
        while True:
            ready, failure = status()
            if failure:
                raise TargetError(failure)
            if ready:
                return
            if time.monotonic() > deadline:
                raise TargetError(late)
            time.sleep(0.5)

    def metrics(self) -> PrometheusProvider:
        """The model servers' own metrics in the cluster's Prometheus (``settings.prometheus_url``):
        each revision's server labels its series with the model and its version; on Seldon, its
        agent's by each slot's Model."""
        spec = self.spec()
        series = {
            slot: (
                seldon_series(seldon_model_name(self.model, slot))
                if self.fmt == "seldon"
                else server_series(f'model="{self.model}",version="{s.version}"')
            )
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
        spec.slots[slot] = SlotSpec(version, self._runs(version, image))
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
