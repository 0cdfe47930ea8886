"""Deployment environments on a real Prefect server: each environment's work pool is created from
its base job template, and `prefect deploy --all` registers every deployment of prefect.yaml on
the pool the environment names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from mlops.environments import (
    DeploymentEnvironmentError,
    available,
    base_job_template,
    deploy_environment,
    ensure_pool,
    load_environment,
)
from mlops.settings import Settings

pytestmark = pytest.mark.flows

PROJECT = Path(__file__).resolve().parents[2]
CLOUD = ["docker", "kubernetes", "prod", "staging"]


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


def test_deploying_to_an_environment_registers_every_deployment_on_its_pool(
    local_stack: Settings,
) -> None:
    from prefect.client.orchestration import get_client

    environ = values("staging")
    done = deploy_environment(PROJECT, "staging", create_pool=True, environ=environ)
    assert done[-1] == "deployments of prefect.yaml: registered on work pool 'mlops-staging'"
    assert done[1] == (
        "result storage s3-bucket/mlops-staging-results: created "
        "(s3://value-of-MLOPS_RESULTS_BUCKET/results)"
    )
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    names = {f"{flow_name(d['entrypoint'])}/{d['name']}" for d in spec["deployments"]}
    assert len(names) == len(spec["deployments"])
    with get_client(sync_client=True) as client:
        for name in names:
            deployment = client.read_deployment_by_name(name)
            assert deployment.work_pool_name == "mlops-staging", name
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

    from mlops.environments import ensure_result_storage

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
