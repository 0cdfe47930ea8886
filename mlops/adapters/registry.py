"""The model registry: idempotent registration of model versions with their lineage tags, and
the one way a registered model is fetched for loading (downloaded, verified, then loaded)."""

from __future__ import annotations

import atexit
import logging
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlops.adapters.tracking import tracking_server
from mlops.core.errors import MlopsError
from mlops.core.integrity import (
    CHECKSUM_ALGORITHM,
    CHECKSUM_ALGORITHM_TAG,
    CHECKSUM_TAG,
    ModelIntegrityError,
    artifact_checksum,
    check_model_format,
    legacy_artifact_checksum,
    verify_artifacts,
)
from mlops.core.lineage import FINGERPRINT_TAG

logger = logging.getLogger(__name__)

RUN_ID_TAG = "mlops.mlflow.run_id"

# Set on a version whose registration could not be completed; its fingerprint tag is removed so
# that no training reuses it (kept rather than deleted: it is the evidence of what went wrong).
BROKEN_TAG = "mlops.registration.broken"

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int
    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]  # the holdout metrics logged on the version's run
    reused: bool  # True when an identical earlier run's version was found instead of registering
    description: str = ""


def _as_registered(client: MlflowClient, mv: ModelVersion, reused: bool) -> RegisteredVersion:
    metrics: dict[str, float] = {}
    if mv.run_id:
        logged = client.get_run(mv.run_id).data.metrics
        metrics = {
            k.removeprefix("holdout_"): v for k, v in logged.items() if k.startswith("holdout_")
        }
    return RegisteredVersion(
        name=mv.name,
        version=int(mv.version),
        run_id=mv.run_id or "",
        tags=dict(mv.tags),
        metrics=metrics,
        reused=reused,
        description=mv.description or "",
    )


def _checksum_problem(tags: dict[str, str]) -> str | None:
    """Why a version's recorded checksum cannot verify a load, or None."""
    checksum = tags.get(CHECKSUM_TAG)
    if not checksum:
        return f"no {CHECKSUM_TAG} was recorded"
    if not _SHA256_HEX.fullmatch(checksum):
        return f"its {CHECKSUM_TAG} {checksum[:20]!r} is not a sha256 digest"
    if tags.get(CHECKSUM_ALGORITHM_TAG) != CHECKSUM_ALGORITHM:
        return (
            f"its {CHECKSUM_TAG} was computed by an older algorithm "
            f"({CHECKSUM_ALGORITHM_TAG} is not {CHECKSUM_ALGORITHM!r}); train it again to upgrade"
        )
    return None


def registration_complete(version: RegisteredVersion) -> str | None:
    """Why ``version``'s registration is incomplete (no usable checksum, lineage or description),
    or None when it is whole. A version that is not whole may not be loaded or promoted."""
    if BROKEN_TAG in version.tags:
        return f"its registration is broken: {version.tags[BROKEN_TAG]}"
    if problem := _checksum_problem(version.tags):
        return problem
    for tag in (FINGERPRINT_TAG, RUN_ID_TAG):
        if not version.tags.get(tag):
            return f"no {tag} tag was recorded"
    if version.tags[RUN_ID_TAG] != version.run_id:
        return f"its {RUN_ID_TAG} tag names run {version.tags[RUN_ID_TAG]}, not {version.run_id}"
    if not version.description.strip():
        return "it has no description"
    return None


def version_record(mv: ModelVersion) -> RegisteredVersion:
    """The registry fields of ``mv`` that judge its registration (no run metrics fetched)."""
    return RegisteredVersion(
        mv.name, int(mv.version), mv.run_id or "", dict(mv.tags), {}, False, mv.description or ""
    )


def find_model_version(tracking_uri: str, name: str, fingerprint: str) -> RegisteredVersion | None:
    """The registered version of ``name`` that an identical run produced, if there is one; a
    half-registered one is completed first, or set aside as broken when it cannot be."""
    client = registry_client(tracking_uri)
    settled = _settle(client, tracking_uri, name, fingerprint, own=None)
    return _as_registered(client, settled, reused=True) if settled else None


def _settle(
    client: MlflowClient, tracking_uri: str, name: str, fingerprint: str, own: str | None
) -> ModelVersion | None:
    """Bring the versions holding ``fingerprint`` down to one whole version and return it.

    Incomplete versions are repaired or set aside; of the whole ones the earliest wins and later
    duplicates (two identical trainings that registered at once) are deleted, unless an alias
    points at one. Every process applies the same rule, so racing registrations agree on the
    winner without a lock that a killed process could leave held. ``own`` is a version this
    process just registered: deleted too when it loses."""
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}'"
    )
    whole: list[ModelVersion] = []
    for mv in sorted(found, key=lambda mv: int(mv.version)):
        if registration_complete(version_record(mv)) is None:
            whole.append(mv)
        elif repaired := _repair(client, tracking_uri, mv):
            whole.append(repaired)
    if not whole:
        return None
    winner, *duplicates = whole
    for mv in duplicates:
        if mv.aliases and str(mv.version) != own:
            continue  # someone points at it: not ours to remove
        logger.info("%s v%s duplicates v%s; deleting it", name, mv.version, winner.version)
        try:
            client.delete_model_version(name, mv.version)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # another process was first
                raise
    return winner


def _repair(client: MlflowClient, tracking_uri: str, mv: ModelVersion) -> ModelVersion | None:
    """Complete a half-registered version from its stored artifacts, or set it aside as broken.

    Completing trusts the artifacts as they are stored now, which is what registration itself
    does; a checksum recorded earlier must still match them, and the format check applies."""
    name, what = mv.name, f"{mv.name} v{mv.version}"
    reason = registration_complete(version_record(mv))
    if not mv.run_id or not mv.tags.get(RUN_ID_TAG) or mv.tags[RUN_ID_TAG] != mv.run_id:
        _set_aside(client, mv, f"{reason}; its lineage cannot be restored")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        folder = download_model(tracking_uri, name, int(mv.version), Path(tmp))
        try:
            check_model_format(folder, what)
            _check_recorded_checksum(folder, mv.tags, what)
        except ModelIntegrityError as exc:
            _set_aside(client, mv, str(exc))
            return None
        checksum = artifact_checksum(folder)
    client.set_model_version_tag(name, mv.version, CHECKSUM_TAG, checksum)
    client.set_model_version_tag(name, mv.version, CHECKSUM_ALGORITHM_TAG, CHECKSUM_ALGORITHM)
    if not (mv.description or "").strip():
        client.update_model_version(
            name,
            mv.version,
            description=f"Registered from MLflow run {mv.run_id} (completed on reuse).",
        )
    logger.warning("%s: registration was incomplete (%s); completed it", what, reason)
    return client.get_model_version(name, mv.version)


def _check_recorded_checksum(folder: Path, tags: dict[str, str], what: str) -> None:
    """A checksum recorded before the crash (by either algorithm) must match the stored files."""
    recorded = tags.get(CHECKSUM_TAG)
    if not recorded:
        return
    legacy = tags.get(CHECKSUM_ALGORITHM_TAG) != CHECKSUM_ALGORITHM
    actual = legacy_artifact_checksum(folder) if legacy else artifact_checksum(folder)
    if actual != recorded:
        raise ModelIntegrityError(
            f"{what}: stored artifacts do not match the {CHECKSUM_TAG} recorded at registration"
        )


def _set_aside(client: MlflowClient, mv: ModelVersion, reason: str) -> None:
    logger.warning(
        "%s v%s: registration is broken (%s); registering anew", mv.name, mv.version, reason
    )
    client.set_model_version_tag(mv.name, mv.version, BROKEN_TAG, reason[:4000])
    client.delete_model_version_tag(mv.name, mv.version, FINGERPRINT_TAG)


# MLflow (3.17) resolves a models:/ URI through a client of its default tracking URI whatever
# tracking_uri it is handed (ModelsArtifactRepository._get_model_uri_infos): where that default is
# not the server (a flow container has MLOPS_MLFLOW_TRACKING_URI only), the lookup goes to a SQLite
# file of its own. So those downloads run with the server as the default too.
def download_model(tracking_uri: str, name: str, version: int, dst: Path | None = None) -> Path:
    """The artifacts of one registered version, in a local folder (unverified: see
    `fetch_verified_model` before loading anything from it)."""
    with tracking_server(tracking_uri):
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}",
                dst_path=str(dst) if dst else None,
                tracking_uri=tracking_uri,
            )
        )


def register_model_version(
    tracking_uri: str, name: str, model_uri: str, tags: dict[str, str], description: str
) -> RegisteredVersion:
    """Register the logged model as a new version of ``name`` whole, in one call: lineage tags,
    description and the checksum of its stored artifacts. A version an identical run registered
    at the same time wins if it came first (see `_settle`), and this one is then removed."""
    client = registry_client(tracking_uri)
    if not model_uri.startswith("models:/"):
        raise MlopsError(f"{name}: register a logged model (models:/<model id>), not {model_uri!r}")
    model_id = model_uri.removeprefix("models:/")
    with tempfile.TemporaryDirectory() as tmp, tracking_server(tracking_uri):
        folder = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=tmp, tracking_uri=tracking_uri
            )
        )
        check_model_format(folder, f"{name} ({model_uri})")
        checksum = artifact_checksum(folder)
    run_id = tags.get(RUN_ID_TAG) or client.get_logged_model(model_id).source_run_id
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = client.create_model_version(
        name,
        source=model_uri,
        run_id=run_id,
        tags=tags
        | {RUN_ID_TAG: run_id, CHECKSUM_TAG: checksum, CHECKSUM_ALGORITHM_TAG: CHECKSUM_ALGORITHM},
        description=description,
        model_id=model_id,
    )
    fingerprint = tags.get(FINGERPRINT_TAG)
    winner = (
        _settle(client, tracking_uri, name, fingerprint, own=str(mv.version)) if fingerprint else mv
    )
    if winner is None:  # our own whole version vanished (deleted by hand meanwhile)
        raise ModelIntegrityError(f"{name} v{mv.version} disappeared while it was registered")
    reused = str(winner.version) != str(mv.version)
    return _as_registered(client, client.get_model_version(name, winner.version), reused=reused)


# loading ----------------------------------------------------------------------------------------
def fetch_verified_model(tracking_uri: str, version: RegisteredVersion, dst: Path) -> Path:
    """Download ``version`` into ``dst`` and verify it (checksum and format) before anyone loads
    it. Raises ModelIntegrityError naming the version and what is wrong."""
    what = f"{version.name} v{version.version}"
    if problem := _checksum_problem(version.tags):
        raise ModelIntegrityError(f"{what}: {problem}; refusing to load an unverifiable model")
    folder = download_model(tracking_uri, version.name, version.version, dst)
    verify_artifacts(folder, version.tags[CHECKSUM_TAG], what)
    return folder


_REGISTERED_URI = re.compile(r"models:/(?P<name>[^/]+)/(?P<version>[0-9]+)")


def parse_registered_uri(model_uri: str) -> tuple[str, int]:
    """(name, version) of ``models:/<name>/<version>``: the only form a gate may load, since
    only a registered version has a checksum to verify it by."""
    match = _REGISTERED_URI.fullmatch(model_uri)
    if match is None:
        raise ModelIntegrityError(
            f"{model_uri!r} is not a registered version (models:/<name>/<version>); "
            "only those are verified before loading"
        )
    return match["name"], int(match["version"])


_verified: dict[tuple[str, str, int, str], Path] = {}

_verified_lock = threading.Lock()


def verified_model_folder(tracking_uri: str, name: str, version: int) -> Path:
    """The verified local folder of one registered version, downloaded and verified once per
    process (per recorded checksum, so a re-created version of the same number is fetched anew)."""
    found = lookup_model_version(tracking_uri, name, str(version))
    if found is None:
        raise ModelVersionNotFound(
            f"{name}: no version {version} in the registry at {tracking_uri}"
        )
    key = (tracking_uri, name, found.version, found.tags.get(CHECKSUM_TAG, ""))
    with _verified_lock:
        if key not in _verified:
            dst = Path(tempfile.mkdtemp(prefix=f"{name}-v{version}-", dir=_cache_root()))
            _verified[key] = fetch_verified_model(tracking_uri, found, dst)
        return _verified[key]


_root: list[Path] = []


def _cache_root() -> Path:
    """This process's folder of verified models, made on first use and removed at exit."""
    if not _root:
        _root.append(Path(tempfile.mkdtemp(prefix="mlops-verified-models-")))
        atexit.register(shutil.rmtree, _root[0], ignore_errors=True)
    return _root[0]


class ModelVersionNotFound(MlopsError):
    """No model version answers to the given number or alias."""


def registry_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def artifact_location(tracking_uri: str, name: str, version: int) -> str | None:
    """Where MLflow keeps the version's artifacts, as MLflow names it: an s3:// or gs:// URL, or
    the server's ``mlflow-artifacts:/`` path when it proxies its store."""
    uri = registry_client(tracking_uri).get_model_version_download_uri(name, str(version))
    return str(uri) if uri else None


def lookup_model_version(tracking_uri: str, name: str, ref: str) -> RegisteredVersion | None:
    """The version ``ref`` (a number or an alias such as ``champion``) of ``name``, or None."""
    client = registry_client(tracking_uri)
    try:
        mv = (
            client.get_model_version(name, ref)
            if ref.isdigit()
            else client.get_model_version_by_alias(name, ref)
        )
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return _as_registered(client, mv, reused=False)


def resolve_model_version(tracking_uri: str, name: str, ref: str) -> RegisteredVersion:
    """The version ``ref`` of ``name``; an unknown one is an error that says what exists."""
    found = lookup_model_version(tracking_uri, name, ref)
    if found is None:
        client = registry_client(tracking_uri)
        try:
            aliases = sorted(client.get_registered_model(name).aliases)
        except MlflowException:
            raise ModelVersionNotFound(f"model {name!r} is not registered") from None
        raise ModelVersionNotFound(
            f"{name}: no version or alias {ref!r} (aliases: {', '.join(aliases) or 'none'})"
        )
    return found


def set_model_alias(tracking_uri: str, name: str, alias: str, version: int) -> None:
    """Point ``alias`` of ``name`` at ``version``."""
    registry_client(tracking_uri).set_registered_model_alias(name, alias, str(version))


def load_model_version(tracking_uri: str, name: str, version: int) -> Any:
    """The scikit-learn model of one registered version, for scoring it directly; loaded only
    from its verified folder."""
    import mlflow.sklearn

    return mlflow.sklearn.load_model(str(verified_model_folder(tracking_uri, name, version)))


def model_metadata(tracking_uri: str, name: str, version: int) -> dict[str, Any]:
    """The MLmodel metadata one registered version was saved with (its problem, explanation
    baseline, outlier detector...), read from its verified folder."""
    from mlflow.models import Model

    metadata = Model.load(str(verified_model_folder(tracking_uri, name, version))).metadata
    return dict(metadata or {})
