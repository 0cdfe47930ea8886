"""The Seldon Core 2 target: the release as Seldon ``Model`` objects, one per slot, and the
``Experiment`` named after the model, applied through the Kubernetes API.

Seldon runs a model as an artifact its Server loads, not as a container of ours: each slot's Model
points MLServer's MLflow runtime at the version's MLflow folder in the artifact store (an s3://,
gs:// or Azure URI; ``MLOPS_MLFLOW_ARTIFACTS_URL``). Callers use the Experiment
(``Seldon-Model: <model>.experiment``): its candidates are the slots taking traffic with their
weights, its mirror the shadow, so canary, shadow and rollback are edits of the Experiment, and a
retired slot's Model is deleted. The Experiment carries the release's state (``mlops.dev/release``)
and is replaced at the ``resourceVersion`` it was read at, so a change made meanwhile is a
conflict. The canary is judged on Seldon's own metrics (``seldon_model_infer_total`` and
``seldon_model_infer_api_seconds`` by model): MLServer exports no predictions, so the prediction
check is ``not-measured`` there and says so. Seldon Core 2 is under the Business Source Licence
1.1 (see the README).
"""

from __future__ import annotations

from typing import Any

from mlops.core.settings import Settings
from mlops.release.manifests import seldon_model_name
from mlops.release.targets.base import Deployed, TargetError
from mlops.release.targets.declarative import DeclarativeTarget, custom_objects_api

GROUP, VERSION = "mlops.seldon.io", "v1alpha1"


class SeldonTarget(DeclarativeTarget):
    name = "seldon"
    fmt = "seldon"

    def __init__(self, settings: Settings, model: str) -> None:
        super().__init__(settings, model)
        self.api = custom_objects_api(settings, self.name)
        self._version: str | None = None  # resourceVersion of the Experiment last read

    def _call(self, what: str, plural: str, name: str, fn: Any, *args: Any, **kw: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kind = {"models": "Model", "experiments": "Experiment"}[plural]
        where = f"{kind} {self.settings.k8s_namespace}/{name}"
        try:
            return fn(GROUP, VERSION, self.settings.k8s_namespace, plural, *args, **kw)
        except ApiException as exc:
            if exc.status == 404 and what in ("read", "delete"):
                return None
            if exc.status == 409:
                raise TargetError(
                    f"{where} changed while this release was changing it; nothing was overwritten"
                ) from None
            raise TargetError(
                f"the Kubernetes API refused to {what} {where}: {exc.status} {exc.reason}: "
                f"{(exc.body or '')[:300]}"
            ) from None
        except HTTPError as exc:
            raise TargetError(f"the Kubernetes API cannot be reached: {exc}") from None

    def _get(self, plural: str, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._call(
            "read", plural, name, self.api.get_namespaced_custom_object, name
        )
        return found

    def _put(self, plural: str, obj: dict[str, Any], version: str | None) -> None:
        name = obj["metadata"]["name"]
        if version is None:
            self._call("create", plural, name, self.api.create_namespaced_custom_object, obj)
        else:
            obj["metadata"]["resourceVersion"] = version
            self._call(
                "replace", plural, name, self.api.replace_namespaced_custom_object, name, obj
            )

    # the declarative target's store --------------------------------------------------------
    def _read(self) -> dict[str, Any] | None:
        experiment = self._get("experiments", self.model)
        self._version = experiment["metadata"].get("resourceVersion") if experiment else None
        return experiment

    def _write(self, manifest: dict[str, Any], message: str) -> None:
        """The slots' Models first (each at the version it is read at), then the Experiment (at
        the version the step read), then the Models of retired slots deleted."""
        *models, experiment = manifest["items"]
        for model in models:
            current = self._get("models", model["metadata"]["name"])
            self._put("models", model, current["metadata"]["resourceVersion"] if current else None)
        self._put("experiments", experiment, self._version)
        kept = {m["metadata"]["name"] for m in models}
        listed = self._call(
            "list",
            "models",
            self.model,
            self.api.list_namespaced_custom_object,
            label_selector=f"app.kubernetes.io/name={self.model},app.kubernetes.io/part-of=mlops",
        )
        for item in listed.get("items", []):
            name = item["metadata"]["name"]
            if name not in kept:
                self._call("delete", "models", name, self.api.delete_namespaced_custom_object, name)

    # readiness and health --------------------------------------------------------------------
    def _failure(self, obj: dict[str, Any]) -> str | None:
        for cond in obj.get("status", {}).get("conditions", []):
            if cond.get("status") == "False" and cond.get("reason"):
                return f"{cond['type']}: {cond['reason']}: {cond.get('message', '')}".rstrip(": ")
        return None

    def _ready(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        status = obj.get("status", {})
        if status.get("observedGeneration", 0) < obj["metadata"].get("generation", 0):
            return False
        return any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions", [])
        )

    def wait_ready(self, deployed: Deployed, timeout: float) -> None:
        name = seldon_model_name(self.model, deployed.slot)
        where = f"Model {self.settings.k8s_namespace}/{name}"

        def status() -> tuple[bool, str | None]:
            model = self._get("models", name)
            if model is None:
                return False, f"{where} is gone"
            failure = self._failure(model)
            if failure:
                return False, f"v{deployed.version} did not load on Seldon: {failure}"
            return self._ready(model) and self._ready(self._get("experiments", self.model)), None

        self._poll(
            status,
            timeout,
            f"v{deployed.version} not ready on Seldon within {timeout:.0f} s ({where})",
        )

    def health(self) -> str | None:
        """A Model that fails while its slot takes traffic is a breach (its status says why)."""
        spec = self.spec()
        for slot in spec.traffic.serving if spec.traffic else []:
            model = self._get("models", seldon_model_name(self.model, slot))
            failure = self._failure(model) if model else "its Model is gone"
            if failure:
                return f"Seldon reports {slot}: {failure}"
        return None
