"""Kubernetes manifests for the cluster targets: a KServe InferenceService, a Knative Service
(the form Google Cloud Run deploys), or Seldon Core 2's Models and Experiment, rendered from the
templates in ``infra/k8s/`` for one release step, and checked against the resources' published CRD
schemas before anything is applied or committed.

A release is described by a :class:`ReleaseSpec` (which model version runs in which logical slot,
which slot is stable, which one is the candidate, and the traffic split). The spec is written into
the manifest as an annotation, so the cluster (or the GitOps repository) is the one record of
where a release stands: a later run reads it back from there, never from a local file.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator

from mlops.core.errors import MlopsError
from mlops.release.router import Traffic

K8S_DIR = Path(__file__).resolve().parents[2] / "infra" / "k8s"

SPEC_ANNOTATION = "mlops.dev/release"

KSERVE_CRD = K8S_DIR / "crds" / "serving.kserve.io_inferenceservices.yaml"

KNATIVE_CRD = K8S_DIR / "crds" / "services.serving.knative.dev.yaml"

SELDON_CRDS = {
    "Model": K8S_DIR / "crds" / "seldon" / "mlops.seldon.io_models.yaml",
    "Experiment": K8S_DIR / "crds" / "seldon" / "mlops.seldon.io_experiments.yaml",
}

FORMATS = ("kserve", "knative", "seldon")


class ManifestError(MlopsError):
    """A release step cannot be expressed as a manifest, or the rendered manifest is invalid."""


@dataclass(frozen=True)
class SlotSpec:
    version: int
    image: str  # what runs the version: its image, or on Seldon its model folder's storage URI


@dataclass
class ReleaseSpec:
    """Where a release stands: the versions in the slots, the stable slot, the split."""

    slots: dict[str, SlotSpec] = field(default_factory=dict)
    stable: str | None = None
    candidate: str | None = None  # deployed beside the stable slot, not yet stable
    traffic: Traffic | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "slots": {
                    s: {"version": v.version, "image": v.image} for s, v in self.slots.items()
                },
                "stable": self.stable,
                "candidate": self.candidate,
                "traffic": (
                    {"weights": self.traffic.weights, "mirror": self.traffic.mirror}
                    if self.traffic
                    else None
                ),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ReleaseSpec:
        data = json.loads(text)
        traffic = data.get("traffic")
        return cls(
            {s: SlotSpec(int(v["version"]), v["image"]) for s, v in data["slots"].items()},
            data.get("stable"),
            data.get("candidate"),
            Traffic(traffic["weights"], traffic.get("mirror")) if traffic else None,
        )

    @classmethod
    def of(cls, manifest: dict[str, Any] | None) -> ReleaseSpec | None:
        """The spec a rendered manifest carries, or None for one mlops did not render."""
        if not manifest:
            return None
        if manifest.get("kind") == "List":  # Seldon's objects: the Experiment carries the spec
            found = (cls.of(item) for item in manifest.get("items", []))
            return next((spec for spec in found if spec is not None), None)
        text = manifest.get("metadata", {}).get("annotations", {}).get(SPEC_ANNOTATION)
        return cls.from_json(text) if text else None

    def shown(self) -> str:
        """The one slot whose version the manifest's main spec carries."""
        if self.candidate is not None:
            return self.candidate
        serving = self.traffic.serving if self.traffic else []
        if len(serving) != 1:
            raise ManifestError(
                f"traffic {self.traffic.describe() if self.traffic else 'none'} splits between "
                "slots but no candidate is deployed"
            )
        return serving[0]


def revision_name(model: str, version: int) -> str:
    return f"{model}-v{version}"


def _template(name: str, model: str, namespace: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((K8S_DIR / name).read_text())
    manifest["metadata"]["name"] = model
    manifest["metadata"]["namespace"] = namespace
    manifest["metadata"]["labels"]["app.kubernetes.io/name"] = model
    return manifest


def _check_renderable(spec: ReleaseSpec, what: str, mirrors: bool = False) -> None:
    if spec.traffic is None or not spec.slots:
        raise ManifestError(f"{what}: nothing deployed yet")
    if spec.traffic.mirror and not mirrors:
        raise ManifestError(
            f"{what} cannot mirror traffic (the shadow strategy): it has no request mirroring; "
            "use the local target for shadow releases, or canary"
        )
    unknown = ({*spec.traffic.serving, spec.candidate, spec.stable} - {None}) - set(spec.slots)
    if unknown:
        raise ManifestError(f"{what}: slot(s) {sorted(map(str, unknown))} run no version")


def render_inference_service(model: str, namespace: str, spec: ReleaseSpec) -> dict[str, Any]:
    """KServe: the predictor runs the candidate (if any) with ``canaryTrafficPercent`` its share;
    KServe keeps the previously rolled-out revision (the stable one) serving the rest. With one
    slot serving and no candidate, the predictor is that slot's spec: a rollback restores the
    previous spec."""
    _check_renderable(spec, "KServe InferenceService")
    assert spec.traffic is not None
    manifest = _template("inferenceservice.yaml", model, namespace)
    shown = spec.shown()
    predictor = manifest["spec"]["predictor"]
    predictor["containers"][0]["image"] = spec.slots[shown].image
    if spec.candidate is not None:
        other = set(spec.traffic.serving) - {spec.candidate}
        if other and other != {spec.stable}:
            raise ManifestError(
                f"KServe splits only between the stable slot and the candidate, not {other}"
            )
        predictor["canaryTrafficPercent"] = spec.traffic.weights.get(spec.candidate, 0)
    version = spec.slots[shown].version
    manifest["metadata"]["labels"]["mlops.dev/version"] = str(version)
    manifest["metadata"]["annotations"][SPEC_ANNOTATION] = spec.to_json()
    return manifest


def render_knative_service(model: str, namespace: str, spec: ReleaseSpec) -> dict[str, Any]:
    """Knative / Cloud Run: one named revision per version, and an explicit traffic list: the
    stable revision tagged ``stable``, the candidate tagged ``candidate`` (at 0 % until traffic
    moves, so it has its own URL for smoke tests)."""
    _check_renderable(spec, "Knative Service")
    assert spec.traffic is not None
    manifest = _template("knative-service.yaml", model, namespace)
    shown = spec.shown()
    template = manifest["spec"]["template"]
    template["metadata"]["name"] = revision_name(model, spec.slots[shown].version)
    template["spec"]["containers"][0]["image"] = spec.slots[shown].image
    routes = []
    for slot in sorted(spec.slots):
        weight = spec.traffic.weights.get(slot, 0)
        if weight == 0 and slot != spec.candidate:
            continue
        route: dict[str, Any] = {
            "revisionName": revision_name(model, spec.slots[slot].version),
            "percent": weight,
        }
        route["tag"] = "candidate" if slot == spec.candidate else "stable"
        routes.append(route)
    manifest["spec"]["traffic"] = routes
    manifest["metadata"]["annotations"] = {SPEC_ANNOTATION: spec.to_json()}
    return manifest


def seldon_model_name(model: str, slot: str) -> str:
    return f"{model}-{slot}"


def render_seldon(model: str, namespace: str, spec: ReleaseSpec) -> dict[str, Any]:
    """Seldon Core 2: a ``Model`` per slot that runs a version (MLServer loads its MLflow folder
    from the storage URI), and the ``Experiment`` named after the model, the endpoint callers
    use: its candidates are the slots that take traffic with their weights, its mirror the
    shadow. A v1 ``List`` of them, Models first, so that the Experiment names loaded Models."""
    _check_renderable(spec, "Seldon Experiment", mirrors=True)
    assert spec.traffic is not None
    items = []
    for slot in sorted(spec.slots):
        manifest = _template("seldon-model.yaml", model, namespace)
        manifest["metadata"]["name"] = seldon_model_name(model, slot)
        manifest["metadata"]["labels"]["mlops.dev/version"] = str(spec.slots[slot].version)
        manifest["spec"]["storageUri"] = spec.slots[slot].image
        items.append(manifest)
    experiment = _template("seldon-experiment.yaml", model, namespace)
    experiment["spec"]["candidates"] = [
        {"name": seldon_model_name(model, slot), "weight": weight}
        for slot, weight in sorted(spec.traffic.weights.items())
        if weight
    ]
    if spec.traffic.mirror:  # every request, copied; its answers are discarded
        name = seldon_model_name(model, spec.traffic.mirror)
        experiment["spec"]["mirror"] = {"name": name, "percent": 100}
    experiment["metadata"]["annotations"] = {SPEC_ANNOTATION: spec.to_json()}
    return {"apiVersion": "v1", "kind": "List", "items": [*items, experiment]}


def render(fmt: str, model: str, namespace: str, spec: ReleaseSpec) -> dict[str, Any]:
    if fmt == "kserve":
        return render_inference_service(model, namespace, spec)
    if fmt == "knative":
        return render_knative_service(model, namespace, spec)
    if fmt == "seldon":
        return render_seldon(model, namespace, spec)
    raise ManifestError(f"unknown manifest format {fmt!r} (known: {', '.join(FORMATS)})")


# validation --------------------------------------------------------------------------------------
@cache
def _crd(path: Path) -> dict[str, Any]:
    loader = getattr(
        yaml, "CSafeLoader", yaml.SafeLoader
    )  # the C loader reads the 2 MB CRD in 0.6 s
    with path.open() as fh:
        crd: dict[str, Any] = yaml.load(fh, Loader=loader)
    return crd


def crd_schema(path: Path, version: str) -> dict[str, Any]:
    """The OpenAPI v3 schema of one version of a CustomResourceDefinition file."""
    for v in _crd(path)["spec"]["versions"]:
        if v["name"] == version:
            schema: dict[str, Any] = v["schema"]["openAPIV3Schema"]
            return schema
    raise ManifestError(f"{path.name} defines no version {version!r}")


def _unknown_fields(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    """Fields the schema does not declare: what the API server's strict field validation rejects
    (JSON Schema alone lets any extra property through, so a misspelt field would pass)."""
    found: list[str] = []
    if isinstance(value, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return found
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            at = f"{where}.{key}" if where else key
            if props is not None and key in props:
                found += _unknown_fields(item, props[key], at)
            elif isinstance(extra, dict):
                found += _unknown_fields(item, extra, at)
            elif props is not None and not extra:
                found.append(at)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += _unknown_fields(item, schema["items"], f"{where}[{i}]")
    return found


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Check a rendered manifest against its resource's CRD schema; raise naming each bad field."""
    api, kind = manifest.get("apiVersion", ""), manifest.get("kind", "")
    if (api, kind) == ("v1", "List"):
        for item in manifest.get("items", []):
            validate_manifest(item)
        return
    group, _, version = api.partition("/")
    crds = {
        ("serving.kserve.io", "InferenceService"): KSERVE_CRD,
        ("serving.knative.dev", "Service"): KNATIVE_CRD,
        **{("mlops.seldon.io", k): path for k, path in SELDON_CRDS.items()},
    }
    path = crds.get((group, kind))
    if path is None:
        raise ManifestError(f"no schema for {api} {kind}")
    schema = crd_schema(path, version)
    problems = [
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in Draft7Validator(schema).iter_errors(manifest)
    ]
    problems += [f"{f}: unknown field" for f in _unknown_fields(manifest, schema, "")]
    if problems:
        name = manifest.get("metadata", {}).get("name", "?")
        raise ManifestError(
            f"{kind} {name} does not match the {api} schema: " + "; ".join(problems)
        )


def render_checked(fmt: str, model: str, namespace: str, spec: ReleaseSpec) -> dict[str, Any]:
    """Render and validate; a manifest that fails its schema is never returned."""
    manifest = render(fmt, model, namespace, spec)
    validate_manifest(copy.deepcopy(manifest))
    return manifest
