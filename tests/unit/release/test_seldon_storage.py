"""Where Seldon's Server loads a version from: its MLflow folder's bucket URI, never a folder only
the MLflow server can read."""

from __future__ import annotations

import pytest

from mlops.release.targets.declarative import bucket_uri

pytestmark = pytest.mark.unit


def test_a_proxied_artifact_is_the_same_path_under_the_servers_artifact_store() -> None:
    proxied = "mlflow-artifacts:/3/models/m-1f2e/artifacts"
    assert bucket_uri(proxied, "s3://team-mlflow/artifacts/") == (
        "s3://team-mlflow/artifacts/3/models/m-1f2e/artifacts"
    )
    assert bucket_uri(proxied, "gs://team-mlflow") == "gs://team-mlflow/3/models/m-1f2e/artifacts"


def test_a_bucket_uri_is_kept_and_what_no_bucket_holds_is_refused() -> None:
    assert bucket_uri("s3://b/1/run/artifacts/model", None) == "s3://b/1/run/artifacts/model"
    assert bucket_uri("mlflow-artifacts:/3/models/m", None) is None  # where is the store?
    assert bucket_uri("mlflow-artifacts:/3/models/m", "/var/lib/mlflow/artifacts") is None
    assert bucket_uri("file:///var/lib/mlflow/artifacts/3", None) is None
    assert bucket_uri("/var/lib/mlflow/artifacts/3", None) is None
