"""The release flow on the targets beyond the local one, on real Prefect and MLflow servers:
KServe through an emulated Kubernetes API, AWS Lambda through moto's server (an emulation of AWS
over HTTP), and GitOps commits to a real bare git repository.

The model versions carry image references that these targets record but never pull: no image
registry, cluster or AWS account is reachable here."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
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
from mlops.core.files import write_atomic
from mlops.core.integrity import IMAGE_TAG
from mlops.core.settings import Settings
from mlops.release.canary import ReleaseFailed
from mlops.release.manifests import ReleaseSpec
from mlops.release.promotion import GATES_TAG
from mlops.release.smoke import wait_until_ready
from mlops.release.targets.aws_lambda import LambdaTarget
from mlops.stack.local import service_env
from mlops.stack.processes import console_script, free_port, spawn, stop_process_group
from mlops.stack.prometheus import scrape_targets_dir
from tests.fixtures import trained_project
from tests.helpers import caller_rows, git
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
            # each step judged on what the emulated ingress or Lambda's figures bring in 3 s
            "bake_seconds": 3,
            "min_requests": 5,
            # availability is judged here; a 5 % step's handful of predictions is no sample of
            # their distribution (the prediction check is tested on the local target)
            "max_prediction_shift": 0.6,
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


@pytest.fixture(scope="module")
def servers(
    project: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[int, str]]:
    """A real model server per version, playing its revision on the cluster targets, in the
    stack's Prometheus file discovery (scraped every second, as a cluster's Prometheus scrapes
    the revisions' pods): version -> its URL."""
    settings = Settings()
    logs = tmp_path_factory.mktemp("revisions")
    started: dict[int, tuple[Any, str]] = {}
    try:
        for v in (project["v1"], project["v2"]):
            port = free_port(settings.host)
            proc = spawn(
                [
                    console_script("mlops"),
                    "serve",
                    project["name"],
                    "--version",
                    str(v),
                    "--port",
                    str(port),
                    "--log-root",
                    str(logs / f"log-{v}"),
                ],
                logs / f"v{v}.log",
                cwd=settings.project_dir,
                env=os.environ | service_env(settings),
            )
            started[v] = (proc, f"http://{settings.host}:{port}")
        for _, url in started.values():
            wait_until_ready(url, 300, lambda: None)
        folder = scrape_targets_dir(settings)
        revisions = [
            {"targets": [url.split("://", 1)[1]], "labels": {"cluster": "emulated"}}
            for _, url in started.values()
        ]
        before = json.loads((folder / "slots.json").read_text())
        write_atomic(folder / "slots.json", json.dumps([*before, *revisions]))
        yield {v: url for v, (_, url) in started.items()}
    finally:
        for proc, _ in started.values():
            stop_process_group(proc.pid, timeout=10)


class Ingress:
    """The cluster's ingress, EMULATED (no cluster runs here): each caller's request goes to the
    real server of one revision, picked by the split ``routes`` reports right now ((version,
    percent) pairs: KServe's status, or the manifest Argo CD would sync)."""

    def __init__(self, routes: Any, backends: dict[int, str], clients: int = 2) -> None:
        self.routes, self.backends, self.clients = routes, backends, clients
        self.answered: Counter[int] = Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self, seed: int) -> None:
        rng, rows, i = random.Random(seed), caller_rows(), 0
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                split = [(v, w) for v, w in self.routes() if w > 0 and v in self.backends]
                if not split:
                    self._stop.wait(0.05)
                    continue
                (version,) = rng.choices([v for v, _ in split], weights=[w for _, w in split])
                try:
                    r = client.post(
                        f"{self.backends[version]}/predict", json={"row": rows[i % len(rows)]}
                    )
                    self.answered[version] += r.status_code == 200
                except httpx.TransportError:
                    pass
                i += 1
                self._stop.wait(0.01)

    def __enter__(self) -> Ingress:
        for k in range(self.clients):
            t = threading.Thread(target=self._run, args=(k,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)


def _kserve_routes(api: EmulatedKubernetes, name: str, versions: tuple[int, ...]) -> Any:
    by_image = {image(name, v): v for v in versions}
    return lambda: [(by_image[i], w) for i, w in api.routes(name) if i in by_image]


def _analysed(entry: Any) -> list[dict[str, Any]]:
    """The checks of every step of a release, from its closing audit entry."""
    return [c for step in entry.evidence.get("steps", []) for c in step["decision"]["checks"]]


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
    project: dict[str, Any], cluster: EmulatedKubernetes, servers: dict[int, str]
) -> None:
    """Each step judged by the cluster's Prometheus: the revisions' real servers, scraped, their
    series told apart by model and version."""
    name, v1, v2 = project["name"], project["v1"], project["v2"]
    cluster.urls = {image(name, v): url for v, url in servers.items()}  # smoke-tested for real
    assert _release(project, v1, "kserve", strategy="canary").serving
    with Ingress(_kserve_routes(cluster, name, (v1, v2)), servers) as ingress:
        outcome = _release(project, v2, "kserve", strategy="canary")
    assert outcome.serving and outcome.previous_champion == v1
    assert ingress.answered[v1] > 0 and ingress.answered[v2] > 0
    checks = _analysed(_last_audit(name))
    errors = [c for c in checks if c["name"] == "error-rate"]
    assert len(errors) == 3 and all(c["outcome"] == "pass" for c in errors), errors
    for c in errors:  # PromQL over the servers' own series, each side by its version
        assert (
            f'mlops_requests_total{{model="{name}",version="{v2}"'
            in c["query"]["candidate.requests"]
        )
        assert (
            f'mlops_requests_total{{model="{name}",version="{v1}"' in c["query"]["stable.requests"]
        )
        assert c["statistic"]["requests"] >= 1
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
    # moto computes no extended statistics (it answers p99 with a 500): the latency check reads
    # Duration's SampleCount and Maximum alone here
    monkeypatch.setattr(LambdaTarget, "percentiles", ())
    yield {
        "lambda": boto3.client("lambda", region_name=REGION, endpoint_url=aws),
        "cloudwatch": boto3.client("cloudwatch", region_name=REGION, endpoint_url=aws),
    }


class LambdaService:
    """An EMULATION of what Lambda's service publishes (moto runs no functions): while running,
    every 0.2 s each version the alias routes to gets AWS/Lambda Invocations, Errors and Duration
    by its weight, and the model server's prediction counts (namespace ``mlops``). ``errors`` is
    the candidate's (the alias's extra version's) share of failing invocations."""

    def __init__(self, clients: dict[str, Any], name: str, errors: float = 0.0) -> None:
        self.clients, self.name, self.errors = clients, name, errors
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def __enter__(self) -> LambdaService:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            alias = self.clients["lambda"].get_alias(FunctionName=self.name, Name="live")
            record = json.loads(alias.get("Description") or "{}")
            model_version = {lv: mv for mv, lv in record.get("slots", {}).values()}
            extra = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
            weights = {alias["FunctionVersion"]: 1 - sum(extra.values()), **extra}
            for version, weight in weights.items():
                calls = round(200 * weight)
                if not calls or version not in model_version:
                    continue
                failed = round(calls * self.errors) if version in extra else 0
                self._publish(version, model_version[version], calls, failed)

    def _publish(self, version: str, model_version: int, calls: int, failed: int) -> None:
        dims = [
            {"Name": "FunctionName", "Value": self.name},
            {"Name": "Resource", "Value": f"{self.name}:live"},
            {"Name": "ExecutedVersion", "Value": version},
        ]
        now = datetime.now(UTC)
        cw = self.clients["cloudwatch"]
        cw.put_metric_data(
            Namespace="AWS/Lambda",
            MetricData=[
                {"MetricName": "Invocations", "Dimensions": dims, "Value": calls, "Timestamp": now},
                {"MetricName": "Errors", "Dimensions": dims, "Value": failed, "Timestamp": now},
                {
                    "MetricName": "Duration",
                    "Dimensions": dims,
                    "Values": [20.0, 25.0, 30.0],
                    "Counts": [calls // 2, calls - calls // 2 - 1, 1],
                    "Unit": "Milliseconds",
                    "Timestamp": now,
                },
            ],
        )
        answered = calls - failed
        model = [
            {"Name": "model", "Value": self.name},
            {"Name": "version", "Value": str(model_version)},
        ]
        cw.put_metric_data(
            Namespace="mlops",
            MetricData=[
                {
                    "MetricName": "Predictions",
                    "Dimensions": [*model, {"Name": "label", "Value": label}],
                    "Value": n,
                    "Timestamp": now,
                }
                for label, n in (
                    ("<=50K", answered * 3 // 4),
                    (">50K", answered - answered * 3 // 4),
                )
            ],
        )


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
        with LambdaService(aws_lambda, name):  # both versions' figures alike
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
    # 30 % of the candidate's invocations fail, CloudWatch says
    with (
        LambdaService(aws_lambda, name, errors=0.3),
        pytest.raises(ReleaseFailed, match="rolled back: at 5%: error rate"),
    ):
        _release(project, v2, "lambda", strategy="canary")
    alias = aws_lambda["lambda"].get_alias(FunctionName=name, Name="live")
    assert alias["FunctionVersion"] == "1" and not alias.get("RoutingConfig", {}).get(
        "AdditionalVersionWeights"
    )
    assert _champion(name) == v1
    last = _last_audit(name)
    assert last.action == "release-rolled-back" and "error rate" in last.reason
    checks = {c["name"]: c for c in last.evidence["analysis"]["checks"]}
    rate = checks["error-rate"]
    assert rate["outcome"] == "fail" and rate["candidate"] > rate["stable"]
    query = json.loads(rate["query"]["candidate.errors"])["MetricDataQueries"][0]["MetricStat"]
    assert (
        query["Metric"]["Namespace"] == "AWS/Lambda" and query["Metric"]["MetricName"] == "Errors"
    )
    assert {"Name": "ExecutedVersion", "Value": "2"} in query["Metric"]["Dimensions"]


def test_lambda_canary_without_figures_is_inconclusive_and_rolls_back(
    project: dict[str, Any], aws_lambda: dict[str, Any]
) -> None:
    """No CloudWatch figures at all: never a silent pass; extended, then rolled back."""
    name, v1, v2 = project["name"], project["v1"], project["v2"]
    _release(project, v1, "lambda")
    with pytest.raises(ReleaseFailed, match="rolled back"):
        _release(project, v2, "lambda", strategy="canary")
    alias = aws_lambda["lambda"].get_alias(FunctionName=name, Name="live")
    assert alias["FunctionVersion"] == "1"
    assert _champion(name) == v1
    checks = _last_audit(name).evidence["analysis"]["checks"]
    assert checks and all(c["outcome"] == "inconclusive" for c in checks)


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
    project: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    servers: dict[int, str],
) -> None:
    name, v1, v2 = project["name"], project["v1"], project["v2"]
    remote = tmp_path / "deploy.git"
    subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(remote)], check=True)
    monkeypatch.setenv("MLOPS_GITOPS_REPO", str(remote))
    monkeypatch.setenv("MLOPS_GITOPS_FORMAT", "knative")
    _release(project, v1, "gitops")
    head = git(remote, "rev-parse", "main")

    def synced() -> list[tuple[int, int]]:  # what Argo CD would sync: the branch's manifest
        shown = subprocess.run(
            ["git", "-C", str(remote), "show", f"main:deploy/{name}.yaml"],
            capture_output=True,
            text=True,
            check=False,
        )
        spec = ReleaseSpec.of(yaml.safe_load(shown.stdout)) if shown.returncode == 0 else None
        if spec is None or spec.traffic is None:
            return []
        return [
            (spec.slots[s].version, w) for s, w in spec.traffic.weights.items() if s in spec.slots
        ]

    with Ingress(synced, servers):
        assert _release(project, v2, "gitops", strategy="canary").serving
    checks = [c for c in _analysed(_last_audit(name)) if c["name"] == "error-rate"]
    assert checks and all(c["outcome"] == "pass" for c in checks), checks
    assert all(f'version="{v2}"' in c["query"]["candidate.requests"] for c in checks)
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


# Seldon Core 2: Models and the Experiment through the emulated Kubernetes API; callers through an
# emulated Seldon router and agent (tests/seldon_mesh.py) in front of the versions' real servers
ARTIFACTS = "s3://mlops-emulated-artifacts"  # where the stack's artifact store would be


@pytest.fixture
def seldon(
    project: dict[str, Any],
    cluster: EmulatedKubernetes,
    servers: dict[int, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    """The MLflow server's artifacts taken to be in ARTIFACTS (the target reads the versions'
    storage URIs from there; nothing fetches them), and the mesh, scraped by the stack's
    Prometheus as a cluster's scrapes Seldon's agents."""
    from mlops.release.targets.declarative import seldon_storage_uri
    from tests.seldon_mesh import SeldonMesh

    monkeypatch.setenv("MLOPS_MLFLOW_ARTIFACTS_URL", ARTIFACTS)
    name, settings = project["name"], Settings()
    uris = {v: seldon_storage_uri(settings, name, v) for v in (project["v1"], project["v2"])}
    with SeldonMesh(
        partial(cluster.seldon_split, name), {uris[v]: servers[v] for v in uris}
    ) as mesh:
        folder = scrape_targets_dir(settings)
        before = json.loads((folder / "slots.json").read_text())
        target = {"targets": [mesh.url.split("://", 1)[1]], "labels": {"cluster": "seldon"}}
        write_atomic(folder / "slots.json", json.dumps([*before, target]))
        yield {"mesh": mesh, "uris": uris, "api": cluster}


class Callers:
    """Callers of the Experiment, through the mesh, until the block ends."""

    def __init__(self, url: str, clients: int = 2) -> None:
        self.url, self._stop = url, threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        rows, i = caller_rows(), 0
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                with contextlib.suppress(httpx.TransportError):
                    client.post(f"{self.url}/infer", json={"row": rows[i % len(rows)]})
                i += 1
                self._stop.wait(0.01)

    def __enter__(self) -> Callers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)


def _experiment_writes(api: EmulatedKubernetes, name: str) -> list[Any]:
    """The Experiment's spec as written, each write: (candidates, mirror)."""
    return [
        (
            [(c["name"].rsplit("-", 1)[1], c["weight"]) for c in w["spec"]["candidates"]],
            w["spec"].get("mirror", {}).get("name", "").rsplit("-", 1)[-1] or None,
        )
        for w in api.writes
        if w.get("kind") == "Experiment" and w["metadata"]["name"] == name
    ]


def test_seldon_canary_steps_through_the_experiments_weights_judged_on_seldons_metrics(
    project: dict[str, Any], seldon: dict[str, Any]
) -> None:
    name, v1, v2 = project["name"], project["v1"], project["v2"]
    api, mesh = seldon["api"], seldon["mesh"]
    assert _release(project, v1, "seldon", strategy="canary").serving
    first = api.objects[
        ("mlops.seldon.io", "models", os.environ["MLOPS_K8S_NAMESPACE"], f"{name}-blue")
    ]
    assert first["spec"]["storageUri"] == seldon["uris"][v1]
    assert first["spec"]["requirements"] == ["mlflow"]
    with Callers(mesh.url):
        outcome = _release(project, v2, "seldon", strategy="canary")
    assert outcome.serving and outcome.previous_champion == v1
    assert mesh.answered[f"{name}-blue"] > 0 and mesh.answered[f"{name}-green"] > 0
    checks = _analysed(_last_audit(name))
    errors = [c for c in checks if c["name"] == "error-rate"]
    assert len(errors) == 3 and all(c["outcome"] == "pass" for c in errors), errors
    for c in errors:  # Seldon's agent's series, each side by its Model
        assert f'seldon_model_infer_total{{model="{name}-green"' in c["query"]["candidate.requests"]
        assert f'seldon_model_infer_total{{model="{name}-blue"' in c["query"]["stable.requests"]
    shown = {c["outcome"] for c in checks if c["name"] == "predictions"}
    assert shown == {"not-measured"}, checks
    steps = [w for w, _ in _experiment_writes(api, name)]
    assert steps[-6:] == [
        [("blue", 100)],  # v2 deployed beside, no traffic yet
        [("blue", 95), ("green", 5)],
        [("blue", 75), ("green", 25)],
        [("blue", 50), ("green", 50)],
        [("green", 100)],
        [("green", 100)],  # green is stable
    ], steps
    assert _champion(name) == v2
    assert _last_audit(name).action == "released"


def test_seldon_model_that_fails_to_load_is_rolled_back_with_seldons_reason(
    project: dict[str, Any], seldon: dict[str, Any]
) -> None:
    name, v1, v2 = project["name"], project["v1"], project["v2"]
    api = seldon["api"]
    _release(project, v2, "seldon")
    api.failing.add(seldon["uris"][v1])
    with pytest.raises(
        ReleaseFailed, match="v1 did not load on Seldon: ModelReady: ScheduleFailed"
    ):
        _release(project, v1, "seldon")
    candidates, mirror = _experiment_writes(api, name)[-1]
    assert (candidates, mirror) == ([("blue", 100)], None)  # v2's slot alone, as before
    assert _champion(name) == v2
    last = _last_audit(name)
    assert last.action == "release-rolled-back" and "ScheduleFailed" in last.reason
    # retiring the failed slot deletes its Model; the Experiment no longer names it
    from mlops.release.targets import make_target

    make_target("seldon", Settings(), name).retire("green")
    assert api.deleted[-1] == f"{name}-green"
    assert ReleaseSpec.of(api.writes[-1]).slots.keys() == {"blue"}  # type: ignore[union-attr]


def test_seldon_shadow_mirrors_every_request_to_the_candidate_then_promotes_it(
    project: dict[str, Any], seldon: dict[str, Any]
) -> None:
    name, v1, v2 = project["name"], project["v1"], project["v2"]
    api, mesh = seldon["api"], seldon["mesh"]
    _release(project, v1, "seldon")
    with Callers(mesh.url):
        outcome = _release(project, v2, "seldon", strategy="shadow")
    assert outcome.serving, outcome
    writes = _experiment_writes(api, name)
    assert ([("blue", 100)], "green") in writes, writes  # the stable answers, green mirrors
    assert mesh.answered[f"{name}-green"] > 0
    assert _champion(name) == v2


def test_gitops_commits_seldons_models_and_experiment_as_one_list(
    project: dict[str, Any],
    seldon: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What Argo CD or Flux would sync for Seldon: the slots' Models and the Experiment, one v1
    List in the model's file, checked against Seldon's CRDs before the commit."""
    from mlops.release.manifests import validate_manifest
    from tests.seldon_mesh import split_of

    name, v1 = project["name"], project["v1"]
    remote = tmp_path / "deploy.git"
    subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(remote)], check=True)
    monkeypatch.setenv("MLOPS_GITOPS_REPO", str(remote))
    monkeypatch.setenv("MLOPS_GITOPS_FORMAT", "seldon")

    def branch() -> Any:  # what the sync tool applies: the branch's List
        shown = subprocess.run(
            ["git", "-C", str(remote), "show", f"main:deploy/{name}.yaml"],
            capture_output=True,
            text=True,
            check=False,
        )
        return yaml.safe_load(shown.stdout) if shown.returncode == 0 else None

    mesh = seldon["mesh"]
    mesh.split = lambda: split_of(branch())
    with Callers(mesh.url):
        assert _release(project, v1, "gitops", strategy="canary").serving
    synced = branch()
    validate_manifest(synced)
    *models, experiment = synced["items"]
    assert {m["kind"] for m in models} == {"Model"} and experiment["kind"] == "Experiment"
    spec = ReleaseSpec.of(synced)
    assert spec is not None and spec.slots[spec.stable or ""].version == v1
    assert experiment["spec"]["candidates"] == [{"name": f"{name}-{spec.stable}", "weight": 100}]
    by_name = {m["metadata"]["name"]: m for m in models}
    assert set(by_name) == {f"{name}-{slot}" for slot in spec.slots}
    assert by_name[f"{name}-{spec.stable}"]["spec"]["storageUri"] == seldon["uris"][v1]
