"""The release flow on the targets beyond the local one, on real Prefect and MLflow servers:
KServe through an emulated Kubernetes API, AWS Lambda through moto's server (an emulation of AWS
over HTTP), and GitOps commits to a real bare git repository.

The model versions carry image references that these targets record but never pull: no image
registry, cluster or AWS account is reachable here."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import yaml
from mlflow import MlflowClient

from flows.release import release
from mlops.adapters.audit import AuditTrail
from mlops.adapters.registry import registry_client
from mlops.core.integrity import IMAGE_TAG
from mlops.core.settings import Settings
from mlops.release.canary import ReleaseFailed
from mlops.release.promotion import GATES_TAG
from tests.fixtures import trained_project
from tests.helpers import git
from tests.k8s_api import EmulatedKubernetes

pytestmark = pytest.mark.flows

REGION = "eu-west-1"


def image(name: str, version: int) -> str:
    return (
        f"123456789012.dkr.ecr.{REGION}.amazonaws.com/{name}:v{version}-test@sha256:{version:064d}"
    )


@pytest.fixture(scope="module")
def project(
    local_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Two trained versions of one model that passed the gates, each with its image reference."""
    policy = {
        "release": {
            "canary_steps": [5, 25, 50, 100],
            "bake_seconds": 1,
            "analysis_interval_seconds": 0.25,
            "ready_timeout_seconds": 20,
        }
    }
    with trained_project(
        tmp_path_factory.mktemp("cloud-release"), "cloud", policy=policy, versions=2
    ) as p:
        name, (v1, v2) = p.name, p.versions
        client = registry_client(p.settings.mlflow_tracking_uri)
        client.set_model_version_tag(name, str(v1), GATES_TAG, "passed")  # judged elsewhere
        for v in (v1, v2):
            client.set_model_version_tag(name, str(v), IMAGE_TAG, image(name, v))
        yield {"name": name, "pipeline": str(p.pipeline), "v1": v1, "v2": v2, "root": p.root}


def _release(project: dict[str, Any], version: int, target: str, **kw: Any) -> Any:
    return release(
        version=str(version), pipeline=project["pipeline"], target=target, trigger="test", **kw
    )


def _champion(name: str) -> int:
    uri = Settings().mlflow_tracking_uri
    return int(MlflowClient(uri, uri).get_model_version_by_alias(name, "champion").version)


def _last_audit(name: str) -> Any:
    return AuditTrail(Settings().mlflow_tracking_uri).entries(name, None)[-1]


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatedKubernetes]:
    with EmulatedKubernetes(ready_after=0.2) as api:
        monkeypatch.setenv("MLOPS_K8S_KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.setenv("MLOPS_K8S_NAMESPACE", f"ns-{uuid.uuid4().hex[:6]}")
        yield api


def _predictor_writes(api: EmulatedKubernetes, name: str) -> list[tuple[int | None, str]]:
    return [
        (
            w["spec"]["predictor"].get("canaryTrafficPercent"),
            w["spec"]["predictor"]["containers"][0]["image"],
        )
        for w in api.writes
        if w["metadata"]["name"] == name
    ]


def test_kserve_canary_steps_through_canary_traffic_percent(
    project: dict[str, Any], cluster: EmulatedKubernetes
) -> None:
    name, v1, v2 = project["name"], project["v1"], project["v2"]
    assert _release(project, v1, "kserve", strategy="canary").serving
    outcome = _release(project, v2, "kserve", strategy="canary")
    assert outcome.serving and outcome.previous_champion == v1
    writes = _predictor_writes(cluster, name)
    new = image(name, v2)
    # staged at 0 %, the policy's steps, all traffic, then the plain spec of the new champion
    assert writes[-6:] == [(0, new), (5, new), (25, new), (50, new), (100, new), (None, new)]
    assert _champion(name) == v2
    assert _last_audit(name).action == "released"


def test_kserve_candidate_that_never_becomes_ready_is_rolled_back_with_kserves_reason(
    project: dict[str, Any], cluster: EmulatedKubernetes
) -> None:
    name, v1, v2 = project["name"], project["v1"], project["v2"]
    _release(project, v2, "kserve")
    cluster.failing.add(image(name, v1))
    with pytest.raises(
        ReleaseFailed,
        match="before any traffic: v1 did not become ready: PredictorReady: RevisionFailed",
    ):
        _release(project, v1, "kserve")
    assert _predictor_writes(cluster, name)[-1] == (None, image(name, v2))  # the previous spec
    assert _champion(name) == v2
    last = _last_audit(name)
    assert last.action == "release-rolled-back" and "RevisionFailed" in last.reason


def test_kserve_refuses_the_shadow_strategy_and_keeps_the_champion(
    project: dict[str, Any], cluster: EmulatedKubernetes
) -> None:
    name, v1, v2 = project["name"], project["v1"], project["v2"]
    _release(project, v1, "kserve")
    with pytest.raises(ReleaseFailed, match="cannot mirror traffic"):
        _release(project, v2, "kserve", strategy="shadow")
    assert _predictor_writes(cluster, name)[-1] == (None, image(name, v1))
    assert _champion(name) == v1


@pytest.fixture
def aws_lambda(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    httpx.post(f"{aws}/moto-api/reset")
    iam = boto3.client("iam", region_name=REGION, endpoint_url=aws)
    role = iam.create_role(RoleName="model-server", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    for key, value in {
        "MLOPS_AWS_REGION": REGION,
        "MLOPS_AWS_ENDPOINT_URL": aws,
        "MLOPS_LAMBDA_ROLE_ARN": role,
    }.items():
        monkeypatch.setenv(key, value)
    yield {
        "lambda": boto3.client("lambda", region_name=REGION, endpoint_url=aws),
        "cloudwatch": boto3.client("cloudwatch", region_name=REGION, endpoint_url=aws),
    }


def test_lambda_canary_moves_the_alias_weights_then_the_alias(
    project: dict[str, Any], aws_lambda: dict[str, Any]
) -> None:
    name, v1, v2 = project["name"], project["v1"], project["v2"]
    _release(project, v1, "lambda")
    seen: list[dict[str, float]] = []
    stop = threading.Event()

    def watch() -> None:  # the alias's routing as callers would meet it, step by step
        while not stop.wait(0.1):
            weights = (
                aws_lambda["lambda"]
                .get_alias(FunctionName=name, Name="live")
                .get("RoutingConfig", {})
            )
            extra = weights.get("AdditionalVersionWeights") or {}
            if extra and (not seen or seen[-1] != extra):
                seen.append(extra)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert _release(project, v2, "lambda", strategy="canary").serving
    finally:
        stop.set()
        watcher.join()
    assert seen == [{"2": 0.05}, {"2": 0.25}, {"2": 0.5}]
    alias = aws_lambda["lambda"].get_alias(FunctionName=name, Name="live")
    assert alias["FunctionVersion"] == "2" and not alias.get("RoutingConfig", {}).get(
        "AdditionalVersionWeights"
    )
    assert aws_lambda["lambda"].get_function(FunctionName=name, Qualifier="2")["Code"][
        "ImageUri"
    ] == image(name, v2)
    assert _champion(name) == v2


def test_lambda_canary_whose_errors_breach_policy_rolls_back_the_alias(
    project: dict[str, Any], aws_lambda: dict[str, Any]
) -> None:
    name, v1, v2 = project["name"], project["v1"], project["v2"]
    _release(project, v1, "lambda")
    stop = threading.Event()

    def failing_candidate() -> None:
        """While the candidate takes traffic, CloudWatch shows 30 % of its invocations failing."""
        while not stop.wait(0.2):
            alias = aws_lambda["lambda"].get_alias(FunctionName=name, Name="live")
            for version in (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}:
                dims = [
                    {"Name": "FunctionName", "Value": name},
                    {"Name": "Resource", "Value": f"{name}:live"},
                    {"Name": "ExecutedVersion", "Value": version},
                ]
                now = datetime.now(UTC)
                aws_lambda["cloudwatch"].put_metric_data(
                    Namespace="AWS/Lambda",
                    MetricData=[
                        {
                            "MetricName": "Invocations",
                            "Dimensions": dims,
                            "Value": 10,
                            "Timestamp": now,
                        },
                        {"MetricName": "Errors", "Dimensions": dims, "Value": 3, "Timestamp": now},
                    ],
                )

    errors = threading.Thread(target=failing_candidate)
    errors.start()
    try:
        with pytest.raises(ReleaseFailed, match="rolled back: at 5%: error rate"):
            _release(project, v2, "lambda", strategy="canary")
    finally:
        stop.set()
        errors.join()
    alias = aws_lambda["lambda"].get_alias(FunctionName=name, Name="live")
    assert alias["FunctionVersion"] == "1" and not alias.get("RoutingConfig", {}).get(
        "AdditionalVersionWeights"
    )
    assert _champion(name) == v1
    last = _last_audit(name)
    assert last.action == "release-rolled-back" and "error rate" in last.reason


def test_lambda_without_its_settings_names_them(
    project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLOPS_LAMBDA_ROLE_ARN", raising=False)
    monkeypatch.setenv("MLOPS_AWS_REGION", REGION)
    with pytest.raises(Exception, match="the lambda release target needs MLOPS_LAMBDA_ROLE_ARN"):
        _release(project, project["v2"], "lambda")
    last = _last_audit(project["name"])
    assert last.action == "release-failed" and "MLOPS_LAMBDA_ROLE_ARN" in last.reason


def test_gitops_commits_one_step_at_a_time_as_a_cloud_run_service(
    project: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, v1, v2 = project["name"], project["v1"], project["v2"]
    remote = tmp_path / "deploy.git"
    subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(remote)], check=True)
    monkeypatch.setenv("MLOPS_GITOPS_REPO", str(remote))
    monkeypatch.setenv("MLOPS_GITOPS_FORMAT", "knative")
    _release(project, v1, "gitops")
    head = git(remote, "rev-parse", "main")
    assert _release(project, v2, "gitops", strategy="canary").serving
    assert git(remote, "log", "--reverse", "--format=%s", f"{head}..main").splitlines() == [
        f"{name}: deploy v{v2} in green (blue 100%)",
        f"{name}: traffic blue 95%, green 5%",
        f"{name}: traffic blue 75%, green 25%",
        f"{name}: traffic blue 50%, green 50%",
        f"{name}: traffic green 100%",
        f"{name}: green (v{v2}) is stable",
    ]
    service = yaml.safe_load(git(remote, "show", f"main:deploy/{name}.yaml"))
    assert service["kind"] == "Service"
    assert service["spec"]["traffic"] == [
        {"revisionName": f"{name}-v{v2}", "percent": 100, "tag": "stable"}
    ]
    assert _champion(name) == v2
