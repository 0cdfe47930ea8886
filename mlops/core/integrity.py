"""Content checksums and format checks of model artifacts: recorded at registration, verified
before anything deserializes a model (the gates, retraining and the server alike).

Kept free of Prefect and the MLflow client so the model server's image can import it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from mlops.core.errors import MlopsError

CHECKSUM_TAG = "mlops.model.sha256"

# How CHECKSUM_TAG was computed. Versions registered before the manifest digest carry none: their
# digest is honoured once, when a training run reuses them and upgrades the record (mlops.adapters.registry).
CHECKSUM_ALGORITHM_TAG = "mlops.model.sha256.algorithm"

CHECKSUM_ALGORITHM = "manifest-v1"

IMAGE_TAG = "mlops.image"  # the model server image, repository:tag@sha256:digest (packaging)

# The one way the project serializes a model (mlops.adapters.tracking logs it so). Pickle formats run any
# code the file names when loaded, so a model in any other format is refused, never loaded.
SERIALIZATION_FORMAT = "skops"

PYFUNC_LOADER = "mlflow.sklearn"

# skops refuses to load types it does not know. These are the node stores of the tree models in
# mlops.ml.training.ESTIMATORS and numpy dtypes. MLflow reads the list from the MLmodel file itself,
# so a model asking to trust anything beyond it is refused.
SKOPS_TRUSTED_TYPES = [
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
    "numpy.dtype",
]

# MLflow's client writes this file into the folder after downloading models:/<name>/<version>
# (the name and version it was asked for); it is not a stored artifact, so it is not digested.
_WRITTEN_BY_DOWNLOAD = frozenset({"registered_model_meta"})


class ModelIntegrityError(MlopsError):
    """The model's artifacts do not match the checksum recorded at registration."""


class ModelFormatError(ModelIntegrityError):
    """The model is stored in a form the project never writes (a pickle, foreign code)."""


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def artifact_manifest(folder: Path) -> dict[str, str]:
    """{relative path: sha256 of the file} for every stored artifact of a model folder."""
    return {
        rel: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in _files(folder)
        if (rel := path.relative_to(folder).as_posix()) not in _WRITTEN_BY_DOWNLOAD
    }


def artifact_checksum(folder: Path) -> str:
    """sha256 of the sorted JSON manifest of a model's artifacts: each file is digested on its
    own, so no bytes can move across a file boundary (or into a name) without changing it."""
    manifest = json.dumps(artifact_manifest(folder), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(manifest.encode()).hexdigest()


def legacy_artifact_checksum(folder: Path) -> str:
    """The digest versions registered before CHECKSUM_ALGORITHM carry: paths and bytes run
    together. Only for checking such a record before it is upgraded; never to verify a load."""
    digest = hashlib.sha256()
    for path in _files(folder):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def verify_artifacts(folder: Path, expected: str | None, what: str) -> None:
    """Refuse ``folder`` unless its checksum is ``expected`` and it is stored in the project's
    format; ``what`` names it in the error."""
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
    check_model_format(folder, what)


def check_model_format(folder: Path, what: str) -> None:
    """Refuse a model folder whose MLmodel would make MLflow deserialize anything but a skops
    file of trusted types through mlflow.sklearn, or put shipped code on the import path."""
    problems = _format_problems(_read_mlmodel(folder, what), folder)
    if problems:
        raise ModelFormatError(f"{what}: refusing to load it: {'; '.join(problems)}")


def _read_mlmodel(folder: Path, what: str) -> dict[str, Any]:
    try:
        conf = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelFormatError(f"{what}: its MLmodel file cannot be read: {exc}") from None
    if not isinstance(conf, dict) or not isinstance(conf.get("flavors"), dict):
        raise ModelFormatError(f"{what}: its MLmodel file lists no flavors")
    return conf


def _format_problems(conf: dict[str, Any], folder: Path) -> list[str]:
    sklearn, pyfunc = conf["flavors"].get("sklearn"), conf["flavors"].get("python_function")
    if not isinstance(sklearn, dict) or not isinstance(pyfunc, dict):
        return ["it lacks the sklearn or the python_function flavor the project writes"]
    problems = []
    fmt = sklearn.get("serialization_format")
    if fmt != SERIALIZATION_FORMAT:
        problems.append(
            f"serialization format {fmt!r} (the project writes {SERIALIZATION_FORMAT!r})"
        )
    untrusted = sorted(set(sklearn.get("skops_trusted_types") or []) - set(SKOPS_TRUSTED_TYPES))
    if untrusted:
        problems.append(f"it asks skops to trust {', '.join(map(str, untrusted))}")
    if pyfunc.get("loader_module") != PYFUNC_LOADER:
        problems.append(
            f"pyfunc loader module {pyfunc.get('loader_module')!r} (not {PYFUNC_LOADER!r})"
        )
    if sklearn.get("code") or pyfunc.get("code"):
        problems.append("it ships code to put on the import path")
    for key, value in (("pickled_model", sklearn.get("pickled_model")),
                       ("model_path", pyfunc.get("model_path"))):  # fmt: skip
        if not _file_inside(folder, value):
            problems.append(f"{key} {value!r} is not a file inside the model folder")
    return problems


def _file_inside(folder: Path, name: object) -> bool:
    if not isinstance(name, str) or not name:
        return False
    path = (folder / name).resolve()
    return path.is_relative_to(folder.resolve()) and path.is_file()
