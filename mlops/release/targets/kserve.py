"""The KServe target: the release as an InferenceService applied through the Kubernetes API.

Canary traffic is KServe's ``canaryTrafficPercent`` (the candidate revision takes that share, the
previously rolled-out one the rest); promotion drops the field; a rollback restores the previous
spec. Every write replaces the object at the ``resourceVersion`` it was read at, so a change made
meanwhile by someone else is a conflict, not a silent overwrite. Readiness and failures come from
the InferenceService's status conditions.
"""

from __future__ import annotations

from typing import Any

from mlops.core.settings import Settings
from mlops.release.manifests import ReleaseSpec
from mlops.release.targets.base import Deployed, TargetError
from mlops.release.targets.declarative import DeclarativeTarget, custom_objects_api

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


class KServeTarget(DeclarativeTarget):
    name = "kserve"
    fmt = "kserve"

    def __init__(self, settings: Settings, model: str) -> None:
        super().__init__(settings, model)
        self.api = custom_objects_api(settings, self.name)
        self._version: str | None = None  # resourceVersion of the last read

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(GROUP, VERSION, self.settings.k8s_namespace, PLURAL, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 404 and what == "read":
                return None
            if exc.status == 409:
                raise TargetError(
                    f"InferenceService {self.settings.k8s_namespace}/{self.model} changed while "
                    "this release was changing it; nothing was overwritten"
                ) from None
            raise TargetError(
                f"the Kubernetes API refused to {what} InferenceService "
                f"{self.settings.k8s_namespace}/{self.model}: {exc.status} {exc.reason}: "
                f"{(exc.body or '')[:300]}"
            ) from None
        except HTTPError as exc:
            raise TargetError(f"the Kubernetes API cannot be reached: {exc}") from None

    def _object(self) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self._call(
            "read", self.api.get_namespaced_custom_object, self.model
        )
        self._version = obj["metadata"].get("resourceVersion") if obj else None
        return obj

    def _read(self) -> dict[str, Any] | None:
        return self._object()

    def _write(self, manifest: dict[str, Any], message: str) -> None:
        if self._version is None:
            self._call("create", self.api.create_namespaced_custom_object, manifest)
        else:
            manifest["metadata"]["resourceVersion"] = self._version
            self._call("replace", self.api.replace_namespaced_custom_object, self.model, manifest)

    def _url(self, spec: ReleaseSpec, slot: str) -> str | None:
        """The candidate's own URL (tag routing: ``latest``), once KServe reports it."""
        obj = self._object()
        traffic = (obj or {}).get("status", {}).get("components", {}).get("predictor", {})
        for route in traffic.get("traffic", []):
            if route.get("tag") == ("latest" if slot == spec.candidate else "prev"):
                url: str | None = route.get("url")
                return url
        return None

    def _status(self) -> tuple[bool, str | None]:
        """(ready, failure): ready once the latest spec runs; a failure names KServe's reason."""
        obj = self._object()
        if obj is None:
            raise TargetError(
                f"InferenceService {self.settings.k8s_namespace}/{self.model} is gone"
            )
        status = obj.get("status", {})
        if status.get("observedGeneration", 0) < obj["metadata"].get("generation", 0):
            return False, None
        predictor = status.get("components", {}).get("predictor", {})
        for cond in status.get("conditions", []):
            if cond.get("status") == "False" and cond.get("reason"):
                return False, f"{cond['type']}: {cond['reason']}: {cond.get('message', '')}"
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions", [])
        )
        latest = predictor.get("latestCreatedRevision")
        return ready and latest is not None and latest == predictor.get("latestReadyRevision"), None

    def wait_ready(self, deployed: Deployed, timeout: float) -> None:
        def status() -> tuple[bool, str | None]:
            ready, failure = self._status()
            return ready, failure and f"v{deployed.version} did not become ready: {failure}"

        self._poll(
            status,
            timeout,
            f"v{deployed.version} not ready on KServe within {timeout:.0f} s "
            f"(InferenceService {self.settings.k8s_namespace}/{self.model})",
        )

    def health(self) -> str | None:
        """A revision that fails while taking traffic is a breach (the status says why)."""
        _, failure = self._status()
        return f"KServe reports {failure}" if failure else None
