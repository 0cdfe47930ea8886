"""Content checksums of model artifacts: recorded at registration, verified before serving.

Kept free of Prefect and the MLflow client so the model server's image can import it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mlops.errors import MlopsError

CHECKSUM_TAG = "mlops.model.sha256"
IMAGE_TAG = "mlops.image"  # the model server image, repository:tag@sha256:digest (packaging)


class ModelIntegrityError(MlopsError):
    """The model's artifacts do not match the checksum recorded at registration."""


def artifact_checksum(folder: Path) -> str:
    """sha256 over every file of a model's artifacts (relative paths and contents, sorted)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def verify_artifacts(folder: Path, expected: str | None, what: str) -> None:
    """Refuse ``folder`` unless its checksum is ``expected``; ``what`` names it in the error."""
    if not expected:
        raise ModelIntegrityError(
            f"{what}: no {CHECKSUM_TAG} was recorded at registration; "
            "refusing to serve an unverifiable model"
        )
    actual = artifact_checksum(folder)
    if actual != expected:
        raise ModelIntegrityError(
            f"{what}: artifacts have sha256 {actual[:16]}…, "
            f"but {expected[:16]}… was recorded at registration; refusing to serve it"
        )
