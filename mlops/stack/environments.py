"""Deployment environments: the same flows of prefect.yaml on the work pool each environment names.

An environment file (``deployments/environments/<name>.yaml``) says which work pool runs the
flows, of which type, from which base job template, with which defaults for that template's
variables (an image, a cluster, roles), and which settings must be present before anything is
touched. ``prefect.yaml`` names its pool as ``{{ $MLOPS_WORK_POOL }}``; deploying to an
environment registers every deployment with that variable set to the environment's pool.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlops.core.errors import MlopsError

ENVIRONMENTS = Path("deployments") / "environments"

_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")


class DeploymentEnvironmentError(MlopsError):
    """An environment that cannot be deployed to, with what is missing."""


@dataclass(frozen=True)
class Environment:
    name: str
    pool: str
    pool_type: str
    template: Path | None  # base job template (JSON), relative to the project
    defaults: dict[str, Any] = field(default_factory=dict)  # template variable defaults
    needs: list[str] = field(default_factory=list)  # environment variables that must be set
    description: str = ""
    concurrency_limit: int | None = None
    run_dir: str | None = None  # where the project is where flows run (an image's folder)
    # the S3 bucket block flow runs persist results to: block name, bucket, folder
    results: dict[str, str] = field(default_factory=dict)

    def missing(self, environ: dict[str, str]) -> list[str]:
        """The settings this environment needs that ``environ`` lacks, in the file's order."""
        referenced = _referenced(self.defaults) + _referenced(self.results)
        named = list(self.needs) + [v for v in dict.fromkeys(referenced) if v not in self.needs]
        return [v for v in named if not environ.get(v)]

    def resolved_defaults(self, environ: dict[str, str]) -> dict[str, Any]:
        """The template defaults with ``${VAR}`` references read from ``environ``."""
        return _substitute(self.defaults, environ)

    def create_command(self) -> str:
        template = f" --base-job-template {self.template}" if self.template else ""
        return f"prefect work-pool create {self.pool} --type {self.pool_type}{template}"


def _referenced(value: Any) -> list[str]:
    if isinstance(value, str):
        return _VAR.findall(value)
    if isinstance(value, dict):
        return [v for item in value.values() for v in _referenced(item)]
    if isinstance(value, list):
        return [v for item in value for v in _referenced(item)]
    return []


def _substitute(value: Any, environ: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: environ[m[1]], value)
    if isinstance(value, dict):
        return {k: _substitute(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, environ) for v in value]
    return value


def available(project_dir: Path) -> list[str]:
    return sorted(p.stem for p in (project_dir / ENVIRONMENTS).glob("*.yaml"))


def load_environment(project_dir: Path, name: str) -> Environment:
    path = project_dir / ENVIRONMENTS / f"{name}.yaml"
    if not path.exists():
        raise DeploymentEnvironmentError(
            f"no environment {name!r}: {path} does not exist "
            f"(environments: {', '.join(available(project_dir)) or 'none'})"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    pool = raw.get("work_pool") or {}
    for key in ("name", "type"):
        if not pool.get(key):
            raise DeploymentEnvironmentError(f"{path}: work_pool.{key} is required")
    template = Path(pool["base_job_template"]) if pool.get("base_job_template") else None
    if template is not None and not (project_dir / template).exists():
        raise DeploymentEnvironmentError(f"{path}: base_job_template {template} does not exist")
    return Environment(
        name=name,
        pool=str(pool["name"]),
        pool_type=str(pool["type"]),
        template=template,
        defaults=dict(pool.get("defaults") or {}),
        needs=[str(v) for v in raw.get("needs") or []],
        description=str(raw.get("description", "")).strip(),
        concurrency_limit=pool.get("concurrency_limit"),
        run_dir=str(raw["run_dir"]) if raw.get("run_dir") else None,
        results={k: str(v) for k, v in (raw.get("results") or {}).items()},
    )


def base_job_template(
    project_dir: Path, env: Environment, environ: dict[str, str]
) -> dict[str, Any]:
    """The environment's base job template with its variable defaults filled in."""
    if env.template is None:
        from prefect.workers.process import ProcessWorker

        template: dict[str, Any] = ProcessWorker.get_default_base_job_template()
    else:
        template = json.loads((project_dir / env.template).read_text())
    properties = template["variables"]["properties"]
    for key, value in env.resolved_defaults(environ).items():
        if key not in properties:
            raise DeploymentEnvironmentError(
                f"environment {env.name}: default for {key!r}, which the {env.pool_type} "
                f"template {env.template} has no variable for (it has {', '.join(properties)})"
            )
        properties[key]["default"] = value
    return template


def ensure_pool(project_dir: Path, env: Environment, environ: dict[str, str], create: bool) -> str:
    """Make sure the environment's pool exists on the Prefect API; with ``create``, create it from
    its template (an existing pool is left as it is). Returns what was done."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(env.pool)
        except ObjectNotFound:
            if not create:
                raise DeploymentEnvironmentError(
                    f"work pool {env.pool!r} ({env.pool_type}) of environment {env.name} does not "
                    f"exist on the Prefect API: create it with `mlops deploy --env {env.name} "
                    f"--create-pool`, or `{env.create_command()}`"
                ) from None
            client.create_work_pool(
                WorkPoolCreate(
                    name=env.pool,
                    type=env.pool_type,
                    base_job_template=base_job_template(project_dir, env, environ),
                    description=env.description or None,
                    concurrency_limit=env.concurrency_limit,
                )
            )
            return f"work pool {env.pool!r} ({env.pool_type}): created"
        if pool.type != env.pool_type:
            raise DeploymentEnvironmentError(
                f"work pool {env.pool!r} exists with type {pool.type!r}, but environment "
                f"{env.name} needs type {env.pool_type!r}"
            )
        return f"work pool {env.pool!r} ({env.pool_type}): exists"


def ensure_result_storage(env: Environment, environ: dict[str, str]) -> str | None:
    """The S3 bucket block flow runs persist results and artifacts to (prefect-aws), saved under
    the name the pool's PREFECT_DEFAULT_RESULT_STORAGE_BLOCK gives; an existing block is kept.
    Credentials are not stored in it: flow runs use their task role."""
    if not env.results:
        return None
    from prefect_aws import S3Bucket

    spec = _substitute(env.results, environ)
    name = spec["block"]
    try:
        S3Bucket.load(name)
        return f"result storage s3-bucket/{name}: exists"
    except ValueError:
        pass
    S3Bucket(bucket_name=spec["bucket"], bucket_folder=spec.get("folder", "")).save(name)
    return (
        f"result storage s3-bucket/{name}: created (s3://{spec['bucket']}/{spec.get('folder', '')})"
    )


def deploy_all(
    project_dir: Path, pool: str, environ: dict[str, str], names: list[str] | None = None
) -> str:
    """``prefect deploy --all`` of the project's prefect.yaml onto ``pool``, or only the
    deployments ``names`` (``flow/deployment``): Prefect's CLI is the only API that reads
    prefect.yaml. Returns Prefect's output."""
    from mlops.stack.processes import console_script

    which = [arg for name in names for arg in ("--name", name)] if names else ["--all"]
    result = subprocess.run(
        [console_script("prefect"), "--no-prompt", "deploy", *which],
        cwd=project_dir,
        env=environ | {"MLOPS_WORK_POOL": pool},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DeploymentEnvironmentError(
            f"prefect deploy {' '.join(which)} failed:\n" + (result.stdout + result.stderr)[-3000:]
        )
    return result.stdout


def deploy_environment(
    project_dir: Path, name: str, create_pool: bool = False, environ: dict[str, str] | None = None
) -> list[str]:
    """Deploy every flow of prefect.yaml to environment ``name``; fails before touching anything
    if a setting it needs is missing. Returns what was done, line by line."""
    env = load_environment(project_dir, name)
    environ = dict(os.environ if environ is None else environ)
    missing = env.missing(environ)
    if missing:
        raise DeploymentEnvironmentError(
            f"environment {name} needs {', '.join(missing)} (set in the shell or CI secrets); "
            "nothing was deployed"
        )
    done = [ensure_pool(project_dir, env, environ, create_pool)]
    storage = ensure_result_storage(env, environ)
    if storage:
        done.append(storage)
    if env.run_dir:  # prefect.yaml's pull step changes into the project where the flows run
        environ["MLOPS_PROJECT_DIR"] = env.run_dir
    deploy_all(project_dir, env.pool, environ)
    done.append(f"deployments of prefect.yaml: registered on work pool {env.pool!r}")
    return done
