"""The Vertex AI Model Registry as a mirror of MLflow's: one Vertex model per registered model, one
model version per MLflow version that has been champion, its lineage in the version's labels,
and Vertex's ``default`` alias following MLflow's ``champion``.

UNTESTED against Google Cloud: no emulator of Vertex AI runs here. What is tested is the plan
(`plan`: which version to upload, where to move ``default``) from MLflow's champion and the
versions Vertex holds, and that the calls `sync` makes bind to the installed SDK's signatures
(tests/unit/adapters/test_vertex_mirror.py, and in .tools/workers with google-cloud-aiplatform).

Vertex needs a serving container for every model version: a champion is uploaded only when
packaging recorded its model server image (``mlops.image``, pushed to Artifact Registry) and MLflow
keeps its artifacts in ``gs://``; otherwise the sync says why and changes nothing. Vertex always
has one default version, so a model with no champion in MLflow keeps its last default (said so);
a rollback moves ``default`` back to the version MLflow put back. The SDK is google-cloud-aiplatform
(pyproject's `gcp` extra), imported only when this mirror syncs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mlops.adapters.mirrors import LINEAGE_PREFIX, artifact_source
from mlops.adapters.registry import RegisteredVersion
from mlops.core.errors import MlopsError
from mlops.core.integrity import CHECKSUM_TAG, IMAGE_TAG
from mlops.core.settings import Settings

DEFAULT = "default"  # Vertex AI's alias of a model's default version
VERSION_LABEL = "mlflow-version"
_LABEL = re.compile(r"[^a-z0-9_-]")


def display_name(model: str) -> str:
    """The Vertex model's display name for an MLflow model name (128 characters at most)."""
    return model[:128]


def label(text: str) -> str:
    """A Vertex label key or value: lowercase letters, digits, ``_`` and ``-``, 63 characters."""
    return _LABEL.sub("-", text.lower())[:63]


def labels(champion: RegisteredVersion) -> dict[str, str]:
    """The version's lineage as labels: its MLflow version and run, and its ``mlops.*`` tags whose
    values fit a label (a commit, a data version, a model family; a sha256 does not fit)."""
    found = {VERSION_LABEL: str(champion.version), "mlflow-run-id": label(champion.run_id)}
    for key, value in sorted(champion.tags.items()):
        if key.startswith(LINEAGE_PREFIX) and value and len(value) <= 63 and len(found) < 64:
            found[label(key.removeprefix(LINEAGE_PREFIX))] = label(value)
    return {k: v for k, v in found.items() if k and v}


@dataclass(frozen=True)
class Held:
    """A version Vertex holds: its Vertex version id, the MLflow version it mirrors, its aliases."""

    version_id: str
    mlflow_version: str | None
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    upload: bool  # the champion is not in Vertex yet: upload it as the default version
    make_default: str | None  # the Vertex version id to move ``default`` to
    note: str | None  # what is left as it is, and why


def plan(champion: RegisteredVersion | None, held: list[Held]) -> Plan:
    """What makes Vertex say what MLflow says, from what it holds."""
    current = next((h for h in held if DEFAULT in h.aliases), None)
    if champion is None:
        kept = f"v{current.mlflow_version}" if current else "none"
        why = f"no champion in MLflow; Vertex AI keeps a default version ({kept})"
        return Plan(upload=False, make_default=None, note=why)
    mine = next((h for h in held if h.mlflow_version == str(champion.version)), None)
    if mine is None:
        return Plan(upload=True, make_default=None, note=None)
    if DEFAULT in mine.aliases:
        return Plan(upload=False, make_default=None, note=None)
    return Plan(upload=False, make_default=mine.version_id, note=None)


def upload_arguments(
    settings: Settings, model: str, champion: RegisteredVersion, source: str | None, parent: Any
) -> dict[str, Any]:
    """The arguments of ``aiplatform.Model.upload`` for the champion, or why it cannot be."""
    image = champion.tags.get(IMAGE_TAG)
    if not image:
        raise MlopsError(f"v{champion.version} has no model server image recorded ({IMAGE_TAG})")
    if not source or not source.startswith("gs://"):
        raise MlopsError(
            f"v{champion.version}'s artifacts are at {source or 'an unknown place'}, not gs://: "
            "Vertex AI reads a model's artifacts from Cloud Storage"
        )
    return {
        "display_name": display_name(model),
        "parent_model": parent.resource_name if parent is not None else None,
        "is_default_version": True,
        "artifact_uri": source,
        "serving_container_image_uri": image,
        "serving_container_predict_route": "/predict",
        "serving_container_health_route": "/health",
        "serving_container_ports": [8080],
        "description": (
            f"{model} v{champion.version} (MLflow), model sha256 "
            f"{champion.tags.get(CHECKSUM_TAG, 'unrecorded')}"
        )[:2048],
        "version_description": f"MLflow version {champion.version}, run {champion.run_id}",
        "labels": labels(champion),
        "project": settings.gcp_project,
        "location": settings.gcp_region,
        "sync": True,
    }


def _held(parent: Any) -> list[Held]:
    from google.cloud import aiplatform

    registry = aiplatform.models.ModelRegistry(parent)
    found: list[Held] = []
    for info in registry.list_versions():
        version = registry.get_model(version=info.version_id)
        found.append(
            Held(
                version_id=str(info.version_id),
                mlflow_version=(version.labels or {}).get(VERSION_LABEL),
                aliases=tuple(info.version_aliases or ()),
            )
        )
    return found


def sync(settings: Settings, model: str, champion: RegisteredVersion | None) -> list[str]:
    """Make the Vertex model say what MLflow says; what changed, one line each."""
    from google.cloud import aiplatform

    if not settings.gcp_project or not settings.gcp_region:
        raise MlopsError("the vertex mirror needs gcp_project and gcp_region in the settings")
    aiplatform.init(project=settings.gcp_project, location=settings.gcp_region)
    name = display_name(model)
    found = aiplatform.Model.list(filter=f'display_name="{name}"')
    parent = found[0] if found else None
    todo = plan(champion, _held(parent) if parent is not None else [])
    changed: list[str] = []
    if todo.note:
        changed.append(f"{name}: {todo.note}")
    if todo.upload:
        assert champion is not None
        source = artifact_source(settings, champion)
        uploaded = aiplatform.Model.upload(
            **upload_arguments(settings, model, champion, source, parent)
        )
        changed.append(
            f"{name}: version {uploaded.version_id} for v{champion.version}, the {DEFAULT}"
        )
    if todo.make_default is not None:
        assert champion is not None and parent is not None
        aiplatform.models.ModelRegistry(parent).add_version_aliases(
            [DEFAULT], version=todo.make_default
        )
        changed.append(
            f"{name}: {DEFAULT} moved to version {todo.make_default} (v{champion.version}, the "
            "champion in MLflow)"
        )
    return changed
