"""Content checksums and format checks of model artifacts: recorded at registration, verified
before anything deserializes a model (the gates, retraining and the server alike).

Kept free of Prefect and the MLflow client so the model server's image can import it.
"""

from __future__ import annotations

import hashlib
import json
import sys
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

# skops refuses to load a type it does not know unless told to trust it; MLflow reads the list from
# the MLmodel file itself, so a model asking to trust anything the project did not decide to trust
# is refused before it loads. The lists are per built-in family (mlops.ml.training.FAMILIES), each
# the minimum skops.io.get_untrusted_types finds in a fitted classifier and regressor of the family
# behind the default feature pipeline (tests/unit/ml/test_training_registry.py keeps them so):
# XGBoost and LightGBM store their boosters through the libraries' own state (XGBoost's binary
# model buffer, LightGBM's text model), which skops hands back to the booster's __setstate__: no
# pickle, no import of anything else.
FEATURE_TRUSTED_TYPES: tuple[str, ...] = ("numpy.dtype",)  # the default feature pipeline's

FAMILY_TRUSTED_TYPES: dict[str, tuple[str, ...]] = {
    "logistic_regression": (),
    "linear_regression": (),
    "random_forest": ("sklearn.tree._tree.Tree",),
    "gradient_boosting": ("sklearn.tree._tree.Tree",),
    "hist_gradient_boosting": ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",),
    "xgboost": ("xgboost.core.Booster", "xgboost.sklearn.XGBClassifier",
                "xgboost.sklearn.XGBRegressor"),
    "lightgbm": ("collections.OrderedDict", "lightgbm.basic.Booster",
                 "lightgbm.sklearn.LGBMClassifier", "lightgbm.sklearn.LGBMRegressor"),
}  # fmt: skip

#: Every type a model of a built-in family may ask skops to trust.
SKOPS_TRUSTED_TYPES: list[str] = sorted(
    {*FEATURE_TRUSTED_TYPES, *(t for types in FAMILY_TRUSTED_TYPES.values() for t in types)}
)

# A user's own code (model.factory, features.factory) may bring its own classes. Their types are
# trusted only when they come from the user's own top-level packages, which the model records in
# its MLmodel metadata under this key ({"packages": [...]}); the standard library and the
# libraries whose types are listed above by name can never be a user's own package, so a model
# cannot widen the trust to `builtins`, `os`, `numpy` or `sklearn` this way. The metadata is
# covered by the checksum like every other byte of the model folder.
CODE_METADATA = "mlops_code"

LIBRARY_PACKAGES = frozenset(
    {"numpy", "scipy", "pandas", "pyarrow", "sklearn", "skops", "joblib", "cloudpickle", "dill",
     "mlflow", "mlops", "xgboost", "lightgbm", "threadpoolctl"}
)  # fmt: skip


def is_own_package(package: str) -> bool:
    """Whether ``package`` (a top-level name) can be a user's own code package: an identifier
    that is neither in the standard library nor one of the LIBRARY_PACKAGES."""
    return (
        package.isidentifier()
        and package not in sys.stdlib_module_names
        and package not in LIBRARY_PACKAGES
        and package != "builtins"
    )


def untrusted_types(types: list[str], own_packages: tuple[str, ...] | list[str]) -> list[str]:
    """The ``types`` skops would be asked to trust that the project does not: neither a built-in
    family's (SKOPS_TRUSTED_TYPES) nor from one of ``own_packages`` (only own ones count)."""
    own = {p for p in own_packages if is_own_package(p)}
    return sorted(
        t for t in set(types) if t not in SKOPS_TRUSTED_TYPES and t.split(".", 1)[0] not in own
    )


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
    packages = _own_packages(conf)
    foreign = [p for p in packages if not is_own_package(p)]
    if foreign:
        problems.append(
            f"it names {', '.join(map(repr, foreign))} as its own code, which cannot be"
        )
    asked = [str(t) for t in sklearn.get("skops_trusted_types") or []]
    untrusted = untrusted_types(asked, packages)
    if untrusted:
        problems.append(f"it asks skops to trust {', '.join(untrusted)}")
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


def _own_packages(conf: dict[str, Any]) -> list[str]:
    """The user's own code packages a model records (CODE_METADATA), as strings."""
    metadata = conf.get("metadata")
    code = metadata.get(CODE_METADATA) if isinstance(metadata, dict) else None
    packages = code.get("packages") if isinstance(code, dict) else None
    return [str(p) for p in packages] if isinstance(packages, list) else []


def _file_inside(folder: Path, name: object) -> bool:
    if not isinstance(name, str) or not name:
        return False
    path = (folder / name).resolve()
    return path.is_relative_to(folder.resolve()) and path.is_file()
