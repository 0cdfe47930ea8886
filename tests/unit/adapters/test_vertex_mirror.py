"""The Vertex AI registry mirror's plan and the SDK calls it makes. No emulator of Vertex AI runs
here, so no call reaches a registry: the plan is checked on what Vertex could hold, and the calls'
arguments are bound to the installed google-cloud-aiplatform's own signatures (in .tools/workers,
where `make tools` installs it with the workers' packages)."""

from __future__ import annotations

import json

import pytest

from mlops.adapters.mirrors import vertex
from mlops.adapters.mirrors.vertex import DEFAULT, Held, Plan, plan, upload_arguments
from mlops.adapters.registry import RegisteredVersion
from mlops.core.errors import MlopsError
from mlops.core.integrity import CHECKSUM_TAG, IMAGE_TAG
from mlops.core.settings import Settings
from tests.helpers import needs_workers, run_with_workers

pytestmark = pytest.mark.unit


def version(n: int, **tags: str) -> RegisteredVersion:
    return RegisteredVersion(
        name="Adult Income", version=n, run_id=f"run{n}ABC", tags=tags, metrics={}, reused=False
    )


def test_a_first_champion_is_uploaded_as_the_default() -> None:
    assert plan(version(1), []) == Plan(upload=True, make_default=None, note=None)
    held = [Held("1", "1", (DEFAULT,))]
    assert plan(version(2), held) == Plan(upload=True, make_default=None, note=None)


def test_the_champion_already_default_changes_nothing() -> None:
    held = [Held("1", "1", ()), Held("2", "2", (DEFAULT, "v2"))]
    assert plan(version(2), held) == Plan(upload=False, make_default=None, note=None)


def test_a_rollback_moves_default_back_to_the_version_mlflow_put_back() -> None:
    held = [Held("1", "3", ()), Held("2", "4", (DEFAULT,))]  # Vertex numbers its own versions
    assert plan(version(3), held) == Plan(upload=False, make_default="1", note=None)


def test_no_champion_keeps_vertexs_default_and_says_so() -> None:
    decided = plan(None, [Held("1", "5", (DEFAULT,))])
    assert not decided.upload and decided.make_default is None
    assert decided.note == "no champion in MLflow; Vertex AI keeps a default version (v5)"


def test_lineage_labels_fit_vertexs_rules() -> None:
    champion = version(
        7,
        **{
            "mlops.git_commit": "ABC123",
            "mlops.family": "Gradient Boosting",
            CHECKSUM_TAG: "f" * 64,
        },
    )
    found = vertex.labels(champion)
    assert found["mlflow-version"] == "7" and found["mlflow-run-id"] == "run7abc"
    assert found["git_commit"] == "abc123" and found["family"] == "gradient-boosting"
    assert all(len(k) <= 63 and len(v) <= 63 for k, v in found.items())
    assert not any("sha256" in k for k in found)  # 64 characters: no label holds it


def test_a_champion_vertex_cannot_serve_is_named_not_uploaded() -> None:
    settings = Settings(gcp_project="p", gcp_region="europe-west4")
    with pytest.raises(MlopsError, match=r"v7 has no model server image recorded"):
        upload_arguments(settings, "m", version(7), "gs://b/m", None)
    with pytest.raises(MlopsError, match=r"at s3://b/m, not gs://"):
        upload_arguments(settings, "m", version(7, **{IMAGE_TAG: "img"}), "s3://b/m", None)


@needs_workers("google-cloud-aiplatform is not in .tools/workers")
def test_the_calls_bind_to_the_installed_sdks_signatures() -> None:
    settings = Settings(gcp_project="p", gcp_region="europe-west4")
    champion = version(7, **{IMAGE_TAG: "europe-west4-docker.pkg.dev/p/r/serve:7"})
    arguments = upload_arguments(settings, "m", champion, "gs://bucket/models/m/7", None)
    script = f"""
import inspect, json
from google.cloud import aiplatform
arguments = json.loads({json.dumps(json.dumps(arguments))})
inspect.signature(aiplatform.Model.upload).bind(**arguments)
inspect.signature(aiplatform.Model.list).bind(filter='display_name="m"')
inspect.signature(aiplatform.models.ModelRegistry.add_version_aliases).bind(
    None, [{DEFAULT!r}], version="1"
)
inspect.signature(aiplatform.models.ModelRegistry.list_versions).bind(None)
inspect.signature(aiplatform.models.ModelRegistry.get_model).bind(None, version="1")
print("bound")
"""
    done = run_with_workers("-c", script)
    assert done.stdout.strip() == "bound", done.stderr[-2000:]
