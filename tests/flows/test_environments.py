"""Deployment environments on a real Prefect server: each environment's work pool is created from
its base job template, and `prefect deploy --all` registers every deployment of prefect.yaml on
the pool the environment names."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops.core.settings import Settings
from mlops.stack.environments import (
    DeploymentEnvironmentError,
    available,
    base_job_template,
    deploy_environment,
    ensure_pool,
    load_environment,
)
from tests.helpers import needs_workers, run_with_workers

pytestmark = pytest.mark.flows

PROJECT = Path(__file__).resolve().parents[2]
CLOUD = ["azure", "docker", "kubernetes", "prod", "staging", "vertex"]


def flow_name(entrypoint: str) -> str:
    """The name of the flow at a prefect.yaml entrypoint (``flows/training.py:training``)."""
    import importlib

    module, func = entrypoint.split(":")
    return str(
        getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func).name
    )


def values(name: str) -> dict[str, str]:
    """Every setting the environment names, with a recognisable value."""
    env = load_environment(PROJECT, name)
    return dict(os.environ) | {v: f"value-of-{v}" for v in env.missing(dict(os.environ))}


def test_every_environment_is_shipped_and_names_a_pool_of_its_type() -> None:
    assert available(PROJECT) == sorted(["local", *CLOUD])
    types = {name: load_environment(PROJECT, name).pool_type for name in available(PROJECT)}
    assert types == {
        "local": "process",
        "docker": "docker",
        "kubernetes": "kubernetes",
        "staging": "ecs",
        "prod": "ecs",
        "vertex": "vertex-ai",
        "azure": "azure-container-instance",
    }


@pytest.mark.parametrize("name", CLOUD)
def test_the_pool_is_created_from_its_template_with_the_environment_defaults(
    local_stack: Settings, name: str
) -> None:
    from prefect.client.orchestration import get_client

    env = load_environment(PROJECT, name)
    environ = values(name)
    assert ensure_pool(PROJECT, env, environ, create=True).endswith("created")
    assert ensure_pool(PROJECT, env, environ, create=True).endswith("exists")  # safe twice
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(env.pool)
    assert pool.type == env.pool_type
    variables = pool.base_job_template["variables"]["properties"]
    assert variables["image"]["default"] == "value-of-MLOPS_FLOW_IMAGE"
    expected = base_job_template(PROJECT, env, environ)
    assert pool.base_job_template == expected  # the server kept the template as sent


@pytest.mark.parametrize("name", ["staging", "vertex", "azure"])
def test_deploying_to_an_environment_registers_every_deployment_on_its_pool(
    local_stack: Settings, name: str
) -> None:
    from prefect.client.orchestration import get_client

    env = load_environment(PROJECT, name)
    environ = values(name)
    done = deploy_environment(PROJECT, name, create_pool=True, environ=environ)
    assert done[-1] == f"deployments of prefect.yaml: registered on work pool {env.pool!r}"
    if name == "staging":  # results on S3 (prefect-aws); the others keep none
        assert done[1] == (
            "result storage s3-bucket/mlops-staging-results: created "
            "(s3://value-of-MLOPS_RESULTS_BUCKET/results)"
        )
    else:
        assert len(done) == 2
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    names = {f"{flow_name(d['entrypoint'])}/{d['name']}" for d in spec["deployments"]}
    assert len(names) == len(spec["deployments"])
    with get_client(sync_client=True) as client:
        for deployment_name in names:
            deployment = client.read_deployment_by_name(deployment_name)
            assert deployment.work_pool_name == env.pool, deployment_name
            step = deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"]
            assert step["directory"] == "/opt/mlops/project"  # the image's project folder


def test_a_missing_setting_is_named_before_anything_is_touched(local_stack: Settings) -> None:
    from prefect.client.orchestration import get_client

    def state() -> tuple[object, ...]:
        with get_client(sync_client=True) as client:
            pools = sorted((p.name, p.updated) for p in client.read_work_pools())
            deployments = sorted((d.name, d.updated) for d in client.read_deployments())
        return tuple(pools), tuple(deployments)

    environ = {k: v for k, v in values("prod").items() if k != "MLOPS_ECS_CLUSTER"}
    environ.pop("PREFECT_API_KEY")
    before = state()
    with pytest.raises(DeploymentEnvironmentError) as err:
        deploy_environment(PROJECT, "prod", create_pool=True, environ=environ)
    assert "environment prod needs PREFECT_API_KEY, MLOPS_ECS_CLUSTER" in str(err.value)
    assert "nothing was deployed" in str(err.value)
    assert state() == before


def test_a_pool_that_does_not_exist_is_reported_with_the_command_that_creates_it(
    local_stack: Settings,
) -> None:
    env = load_environment(PROJECT, "kubernetes")
    with pytest.raises(DeploymentEnvironmentError) as err:
        ensure_pool(PROJECT, env.__class__(**(env.__dict__ | {"pool": "nowhere"})), values("kubernetes"), create=False)  # fmt: skip
    message = str(err.value)
    assert "work pool 'nowhere' (kubernetes) of environment kubernetes does not exist" in message
    assert "mlops deploy --env kubernetes --create-pool" in message
    assert (
        "prefect work-pool create nowhere --type kubernetes "
        "--base-job-template deployments/work-pools/kubernetes.json" in message
    )


def test_a_default_for_a_variable_the_template_lacks_is_refused(tmp_path: Path) -> None:
    env = load_environment(PROJECT, "docker")
    wrong = env.__class__(**(env.__dict__ | {"defaults": {"imagee": "x"}}))
    with pytest.raises(DeploymentEnvironmentError, match=r"default for 'imagee'.*no variable"):
        base_job_template(PROJECT, wrong, {})
    with pytest.raises(DeploymentEnvironmentError, match=r"no environment 'qa'.*environments: "):
        load_environment(PROJECT, "qa")


def test_flow_results_persist_to_the_s3_block_the_environment_names(
    local_stack: Settings, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against moto's server (an EMULATION of S3): the result of a flow run lands in the bucket of
    the environment's result storage block, and reads back."""
    import uuid

    import boto3
    from prefect import flow
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from mlops.stack.environments import ensure_result_storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"results-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    env = load_environment(PROJECT, "prod")
    environ = values("prod") | {"MLOPS_RESULTS_BUCKET": bucket}
    assert ensure_result_storage(env, environ) == (
        f"result storage s3-bucket/mlops-prod-results: created (s3://{bucket}/results)"
    )
    assert (
        ensure_result_storage(env, environ) == "result storage s3-bucket/mlops-prod-results: exists"
    )
    block = S3Bucket.load("mlops-prod-results")
    assert (block.bucket_name, block.bucket_folder) == (bucket, "results")
    # here the emulation's endpoint is given explicitly; in the cloud the task role is enough
    block.credentials = AwsCredentials(
        aws_client_parameters=AwsClientParameters(endpoint_url=aws), region_name="us-east-1"
    )

    @flow(result_storage=block, persist_result=True)
    def answer() -> dict[str, int]:
        return {"answer": 42}

    state = answer(return_state=True)
    stored = (
        boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="results/").get("Contents", [])
    )
    assert len(stored) == 1, stored
    assert state.result() == {"answer": 42}


# auth (docs/security.md): the cluster and container environments carry credentials by reference
SECRET = "mlops:not-in-any-manifest"


def flow_run_config(pool_type: str, template: dict[str, object]) -> dict[str, object]:
    """What the worker of ``pool_type`` would start for a flow run of a pool with ``template``,
    the worker itself holding SECRET as its auth string, as it does in these environments."""
    import asyncio
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings
    from prefect_docker.worker import DockerWorkerJobConfiguration
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    kind = {"docker": DockerWorkerJobConfiguration, "kubernetes": KubernetesWorkerJobConfiguration}

    async def prepare() -> dict[str, object]:
        async with get_client() as client:
            config = await kind[pool_type].from_template_and_values(template, {}, client=client)
        with temporary_settings({PREFECT_API_AUTH_STRING: SECRET}):
            config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="auth-check"))
        return config.model_dump(mode="json")

    return asyncio.run(prepare())


def test_a_kubernetes_job_reads_the_credentials_from_secrets_never_as_literals(
    local_stack: Settings,
) -> None:
    env = load_environment(PROJECT, "kubernetes")
    template = base_job_template(PROJECT, env, values("kubernetes"))
    job = flow_run_config("kubernetes", template)
    container = job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    by_name = {e["name"]: e for e in container["env"]}
    assert by_name["PREFECT_API_AUTH_STRING"] == {
        "name": "PREFECT_API_AUTH_STRING",
        "valueFrom": {"secretKeyRef": {"name": "mlops-prefect-auth", "key": "auth-string"}},
    }
    assert "valueFrom" in by_name["MLFLOW_TRACKING_PASSWORD"]
    assert [e["name"] for e in container["env"]].count("PREFECT_API_AUTH_STRING") == 1
    assert SECRET not in json.dumps(job)  # the worker's own string went into no Job


def test_a_docker_flow_container_gets_the_credentials_the_pool_only_refers_to(
    local_stack: Settings,
) -> None:
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    Secret(value="mlflow-password-of-the-test").save("mlops-mlflow-password", overwrite=True)
    env = load_environment(PROJECT, "docker")
    environ = values("docker")
    ensure_pool(PROJECT, env, environ, create=True)
    with get_client(sync_client=True) as client:
        stored = client.read_work_pool(env.pool).base_job_template
    assert "mlflow-password-of-the-test" not in json.dumps(stored)  # a reference only
    container = flow_run_config("docker", stored)
    assert container["env"]["MLFLOW_TRACKING_PASSWORD"] == "mlflow-password-of-the-test"  # type: ignore[index]
    assert container["env"]["PREFECT_API_AUTH_STRING"] == SECRET  # type: ignore[index]


def test_the_self_hosted_servers_take_every_secret_from_a_secret() -> None:
    """infra/k8s/prefect-server.yaml and infra/docker/compose.yaml: no credential is a literal."""
    secretish = ("AUTH_STRING", "PASSWORD", "SECRET_KEY", "BACKEND_STORE_URI")
    manifests = list(yaml.safe_load_all((PROJECT / "infra/k8s/prefect-server.yaml").read_text()))
    containers = [
        c
        for m in manifests
        if m["kind"] == "Deployment"
        for c in m["spec"]["template"]["spec"]["containers"]
    ]
    assert {c["name"] for c in containers} == {"prefect-server", "prefect-worker", "mlflow"}
    for container in containers:
        for var in container.get("env", []):
            if any(word in var["name"] for word in secretish):
                assert "value" not in var and "secretKeyRef" in var["valueFrom"], var
    server = next(c for c in containers if c["name"] == "prefect-server")
    assert "PREFECT_SERVER_API_AUTH_STRING" in {v["name"] for v in server["env"]}
    compose = yaml.safe_load((PROJECT / "infra/docker/compose.yaml").read_text())["services"]
    secrets = "${MLOPS_SECRETS_DIR:-./secrets}"
    assert compose["prefect-server"]["env_file"] == [f"{secrets}/prefect-server.env"]
    assert compose["prefect-services"]["env_file"] == [f"{secrets}/prefect-server.env"]
    assert compose["worker"]["env_file"] == [f"{secrets}/clients.env"]
    assert "basic-auth" in compose["mlflow"]["command"]
    for name, service in compose.items():
        literal = [v for v in service.get("environment", {}) if any(w in v for w in secretish)]
        assert not literal, (name, literal)


# vertex and azure: no emulator of either runs here; the job each worker would submit is built by
# the worker's own code and checked by the cloud SDK's own models (tests/flows/cloud_jobs.py)
workers = needs_workers("the vertex and azure workers' packages are not in .tools/workers")


def cloud_job(name: str, **environ: str) -> dict[str, Any]:
    """The environment's pool created on the real Prefect server, and the job its worker would
    submit for a flow run of it (the MLflow password's Secret block resolved), the worker's
    process having ``environ`` besides the test's own."""
    from prefect.blocks.system import Secret

    Secret(value="mlflow-password-of-the-test").save("mlops-mlflow-password", overwrite=True)
    env = load_environment(PROJECT, name)
    ensure_pool(PROJECT, env, values(name), create=True)
    done = run_with_workers(
        str(PROJECT / "tests/flows/cloud_jobs.py"), env.pool_type, env.pool, **environ
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@workers
def test_a_vertex_flow_run_is_a_custom_job_the_sdk_accepts(
    local_stack: Settings, tmp_path: Path
) -> None:
    built = cloud_job("vertex", GOOGLE_APPLICATION_CREDENTIALS=str(service_account_key(tmp_path)))
    assert built["region"] == "value-of-MLOPS_GCP_REGION"
    spec = built["custom_job"]["jobSpec"]
    assert spec["serviceAccount"] == "value-of-MLOPS_VERTEX_SERVICE_ACCOUNT"
    assert spec["scheduling"]["timeout"] == "7200s"  # maximum_run_time_hours: 2
    (pool_spec,) = spec["workerPoolSpecs"]
    assert pool_spec["machineSpec"]["machineType"] == "n1-standard-4"
    assert pool_spec["diskSpec"] == {"bootDiskType": "pd-ssd", "bootDiskSizeGb": 100}
    container = pool_spec["containerSpec"]
    assert container["imageUri"] == "value-of-MLOPS_FLOW_IMAGE"
    assert container["command"] == ["prefect", "flow-run", "execute"]
    env = {e["name"]: e["value"] for e in container["env"]}
    given = values("vertex")
    for name in ("MLOPS_MLFLOW_TRACKING_URI", "MLOPS_DVC_REMOTE_URL", "MLOPS_PREDICTION_LOG_URL"):
        assert env[name] == given[name]
    assert env["MLFLOW_TRACKING_PASSWORD"] == "mlflow-password-of-the-test"  # resolved at start
    assert env["PREFECT__FLOW_RUN_ID"]  # the job runs this flow run
    assert env["PREFECT_API_KEY"] == "pnu_api-key-of-the-worker"  # plain, as docs/security.md says
    assert built["custom_job"]["displayName"].startswith("spec-check-")


@workers
def test_an_azure_flow_run_is_an_arm_deployment_of_a_container_group_azure_mgmt_accepts(
    local_stack: Settings,
) -> None:
    built = cloud_job("azure")
    assert built["resource_group"] == "value-of-MLOPS_AZURE_RESOURCE_GROUP"
    assert built["deployment_missing"] == [] and built["group_missing"] == []
    group = built["group"]
    assert group["type"] == "Microsoft.ContainerInstance/containerGroups"
    # nothing in the group that azure-mgmt's ContainerGroup does not know (a round trip keeps all
    # but the ARM template's apiVersion)
    arm = {k: v for k, v in group.items() if k != "apiVersion"}
    assert drop_nulls(built["group_as_modelled"]) == drop_nulls(arm)
    assert group["identity"] == {
        "type": "UserAssigned",
        "userAssignedIdentities": {"value-of-MLOPS_AZURE_IDENTITY_ID": {}},
    }
    (container,) = group["properties"]["containers"]
    props = container["properties"]
    assert props["image"] == "value-of-MLOPS_FLOW_IMAGE"
    assert props["command"] == ["prefect", "flow-run", "execute"]  # no Prefect entrypoint script
    assert props["resources"]["requests"] == {"cpu": 2.0, "memoryInGB": 8.0}
    env = {e["name"]: e for e in props["environmentVariables"]}
    assert env["PREFECT_API_KEY"] == {
        "name": "PREFECT_API_KEY",
        "secureValue": "pnu_api-key-of-the-worker",  # tests/flows/cloud_jobs.py: the worker's
    }
    tracking = values("azure")["MLOPS_MLFLOW_TRACKING_URI"]
    assert env["MLOPS_MLFLOW_TRACKING_URI"] == {
        "name": "MLOPS_MLFLOW_TRACKING_URI",
        "value": tracking,
    }
    # a plain value of the group, as docs/security.md warns
    assert env["MLFLOW_TRACKING_PASSWORD"]["value"] == "mlflow-password-of-the-test"


def drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def service_account_key(folder: Path) -> Path:
    """A Google service account key of a made-up account, its RSA key made here: what the worker's
    Application Default Credentials would be on Google Cloud. Read offline; never sent anywhere."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = folder / "worker-key.json"
    account = {
        "type": "service_account",
        "project_id": "mlops-test-project",
        "private_key_id": "0" * 40,
        "private_key": pem,
        "client_email": "worker@mlops-test-project.iam.gserviceaccount.com",
        "client_id": "1" * 21,
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    path.write_text(json.dumps(account))
    return path
