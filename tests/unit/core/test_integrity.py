"""Artifact digests with file boundaries, the format check and what makes a registration whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlops.adapters.registry import (
    BROKEN_TAG,
    RUN_ID_TAG,
    RegisteredVersion,
    parse_registered_uri,
    registration_complete,
)
from mlops.core.integrity import (
    CHECKSUM_ALGORITHM,
    CHECKSUM_ALGORITHM_TAG,
    CHECKSUM_TAG,
    ModelFormatError,
    artifact_checksum,
    check_model_format,
    verify_artifacts,
)
from mlops.core.lineage import FINGERPRINT_TAG

pytestmark = pytest.mark.unit


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_moving_bytes_across_a_file_boundary_changes_the_digest(tmp_path: Path) -> None:
    """Defect 10: paths and contents ran together, so ("a", "bc") and ("ab", "c") collided."""
    one = _folder(tmp_path / "one", {"a": b"bc"})
    two = _folder(tmp_path / "two", {"ab": b"c"})
    assert artifact_checksum(one) != artifact_checksum(two)
    three = _folder(tmp_path / "three", {"a": b"x", "b": b"yz"})
    four = _folder(tmp_path / "four", {"a": b"xb", "b": b"yz"})
    assert artifact_checksum(three) != artifact_checksum(four)


def test_the_digest_ignores_the_file_mlflow_writes_on_download(tmp_path: Path) -> None:
    plain = _folder(tmp_path / "plain", {"MLmodel": b"x"})
    fetched = _folder(tmp_path / "fetched", {"MLmodel": b"x", "registered_model_meta": b"v: 3"})
    assert artifact_checksum(plain) == artifact_checksum(fetched)


def _mlmodel(**sklearn: object) -> dict:
    return {
        "flavors": {
            "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.skops"},
            "sklearn": {
                "pickled_model": "model.skops",
                "serialization_format": "skops",
                "code": None,
                "skops_trusted_types": ["numpy.dtype"],
            }
            | sklearn,
        }
    }


def _model_folder(root: Path, conf: dict) -> Path:
    folder = _folder(root, {"model.skops": b"\0", "model.pkl": b"\0"})
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))
    return folder


def test_the_format_the_project_writes_passes(tmp_path: Path) -> None:
    check_model_format(_model_folder(tmp_path / "m", _mlmodel()), "adult v1")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"serialization_format": "pickle", "pickled_model": "model.pkl"}, "format 'pickle'"),
        ({"serialization_format": "cloudpickle"}, "format 'cloudpickle'"),
        ({"skops_trusted_types": ["builtins.eval"]}, "trust builtins.eval"),
        ({"code": "code"}, "ships code"),
        ({"pickled_model": "../outside.skops"}, "not a file inside"),
    ],
)
def test_any_other_format_is_refused_naming_the_version_and_the_format(
    tmp_path: Path, change: dict, named: str
) -> None:
    folder = _model_folder(tmp_path / "m", _mlmodel(**change))
    with pytest.raises(ModelFormatError, match=f"adult v7: refusing to load it: .*{named}"):
        check_model_format(folder, "adult v7")


def test_a_foreign_pyfunc_loader_is_refused(tmp_path: Path) -> None:
    conf = _mlmodel()
    conf["flavors"]["python_function"]["loader_module"] = "mlflow.pyfunc.model"
    with pytest.raises(ModelFormatError, match=r"loader module 'mlflow\.pyfunc\.model'"):
        check_model_format(_model_folder(tmp_path / "m", conf), "adult v7")


def test_verify_checks_the_format_after_the_checksum(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "m", _mlmodel(serialization_format="pickle"))
    with pytest.raises(ModelFormatError, match="pickle"):
        verify_artifacts(folder, artifact_checksum(folder), "adult v2")


def _version(**tags: str | None) -> RegisteredVersion:
    base = {
        CHECKSUM_TAG: "ab" * 32,
        CHECKSUM_ALGORITHM_TAG: CHECKSUM_ALGORITHM,
        FINGERPRINT_TAG: "f" * 64,
        RUN_ID_TAG: "run1",
    }
    merged = {k: v for k, v in (base | tags).items() if v is not None}
    return RegisteredVersion("adult", 3, "run1", merged, {}, False, "a card")


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({CHECKSUM_TAG: None}, f"no {CHECKSUM_TAG}"),
        ({CHECKSUM_TAG: "not-a-digest"}, "is not a sha256 digest"),
        ({CHECKSUM_ALGORITHM_TAG: None}, "older algorithm"),
        ({RUN_ID_TAG: None}, f"no {RUN_ID_TAG}"),
        ({RUN_ID_TAG: "run2"}, "names run run2"),
        ({FINGERPRINT_TAG: None}, f"no {FINGERPRINT_TAG}"),
        ({BROKEN_TAG: "stored as a pickle"}, "broken: stored as a pickle"),
    ],
)
def test_registration_complete_says_what_is_missing(tags: dict, reason: str) -> None:
    assert registration_complete(_version()) is None
    found = registration_complete(_version(**tags))
    assert found is not None and reason in found


def test_a_version_without_description_is_incomplete() -> None:
    v = _version()
    assert registration_complete(RegisteredVersion(v.name, 3, "run1", v.tags, {}, False, "")) == (
        "it has no description"
    )


def test_only_registered_versions_may_be_loaded_by_uri() -> None:
    assert parse_registered_uri("models:/adult-income/12") == ("adult-income", 12)
    for uri in ("runs:/abc/model", "models:/adult/champion", "/tmp/model", "models:/m-123"):
        with pytest.raises(Exception, match="not a registered version"):
            parse_registered_uri(uri)
