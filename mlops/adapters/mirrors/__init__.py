"""Registry mirrors: other model registries that follow MLflow's, which stays the source of
truth. After every release (promoted, refused or rolled back) each mirror the settings name
(``registry_mirrors``) is made to match MLflow's champion: the champion there, with its lineage;
the versions it replaced no longer approved.

A mirror is one module here with a ``sync(settings, champion) -> list[str]`` (what it changed) and
one line in `MIRRORS`. A mirror that fails does not fail the release (MLflow already says what
is in production); the release's log says so, and the next sync, which reconciles from MLflow's
state rather than replaying events, catches up.
"""

from __future__ import annotations

import importlib
import logging
from typing import Protocol

from mlops.adapters.registry import RegisteredVersion, lookup_model_version
from mlops.core.errors import MlopsError
from mlops.core.lineage import CHAMPION_ALIAS
from mlops.core.settings import Settings

log = logging.getLogger(__name__)

#: MLflow's lineage tags a mirror carries with the champion (its metadata, its labels)
LINEAGE_PREFIX = "mlops."

#: mirror name (as ``registry_mirrors`` says it) -> the module that syncs it
MIRRORS = {
    "sagemaker": "mlops.adapters.mirrors.sagemaker",
    "vertex": "mlops.adapters.mirrors.vertex",
}


class Mirror(Protocol):
    def sync(self, settings: Settings, model: str, champion: RegisteredVersion | None) -> list[str]:
        """Make the mirror say what MLflow says of ``model``: ``champion`` (None: no champion)."""
        ...


def mirror(name: str) -> Mirror:
    if name not in MIRRORS:
        raise MlopsError(f"registry mirror {name!r} is not one of {sorted(MIRRORS)}")
    module: Mirror = importlib.import_module(MIRRORS[name])
    return module


def sync_mirrors(settings: Settings, model: str) -> dict[str, list[str] | str]:
    """Each configured mirror synced to MLflow's champion of ``model``: what it changed, or why
    it could not (logged, not raised)."""
    if not settings.registry_mirrors:
        return {}
    try:  # read once for every mirror
        champion = lookup_model_version(str(settings.mlflow_tracking_uri), model, CHAMPION_ALIAS)
    except Exception as exc:  # MLflow away as the release ends: nothing to sync to
        why = f"not synced: the champion could not be read: {type(exc).__name__}: {exc}"
        log.warning("registry mirrors of %s %s", model, why)
        return dict.fromkeys(settings.registry_mirrors, why)
    done: dict[str, list[str] | str] = {}
    for name in settings.registry_mirrors:
        try:
            done[name] = mirror(name).sync(settings, model, champion)
        except Exception as exc:  # any failure of another service: MLflow stays the truth
            done[name] = f"not synced: {type(exc).__name__}: {exc}"
            log.warning("registry mirror %s of %s %s", name, model, done[name])
    return done


def artifact_source(settings: Settings, champion: RegisteredVersion) -> str | None:
    """Where MLflow keeps the version's artifacts (an s3:// or gs:// URL in the cloud)."""
    from mlops.adapters.registry import artifact_location

    return artifact_location(str(settings.mlflow_tracking_uri), champion.name, champion.version)
