"""Which registered version `mlops serve` loads: the registry side of serving, kept out of the
model server (it imports only core and the prediction log)."""

from __future__ import annotations

from pathlib import Path

from mlops.core.errors import MlopsError
from mlops.core.integrity import CHECKSUM_TAG
from mlops.serving.model import ServedModel, load_model_folder


def load_served_model(tracking_uri: str, name: str, ref: str, workdir: Path) -> ServedModel:
    """Download version or alias ``ref`` of ``name``, verify it (checksum and format) and load it,
    through the same verified fetch as every other loader (mlops.adapters.registry)."""
    from mlops.adapters.registry import fetch_verified_model, lookup_model_version

    found = lookup_model_version(tracking_uri, name, ref)
    if found is None:
        raise MlopsError(f"{name}: no version or alias {ref!r} in the registry at {tracking_uri}")
    folder = fetch_verified_model(tracking_uri, found, workdir / f"{name}-v{found.version}")
    # Checked again as it is loaded: the server's one way in is a folder it verifies itself.
    return load_model_folder(folder, name, found.version, found.tags.get(CHECKSUM_TAG))
