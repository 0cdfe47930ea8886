"""One typed settings object for the whole product, read once at the edge (CLI, flow entry)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where services run and where state lives.

    Every field can be set by an environment variable with the ``MLOPS_`` prefix
    (``MLOPS_MLFLOW_PORT=5001``) or in an optional ``.env`` file in the project folder.
    """

    model_config = SettingsConfigDict(
        env_prefix="MLOPS_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # an error names the setting and the problem, never the values given: those hold secrets
        hide_input_in_errors=True,
    )

    env: Literal["local", "staging", "prod"] = Field(
        "local", description="Active environment; selects work pools and storage."
    )
    project_dir: Path = Field(
        default_factory=Path.cwd, description="Root of the project (holds prefect.yaml, .dvc/)."
    )
    state_dir: Path = Field(
        Path(".mlops"), description="Local stack state: databases, logs, pids, DVC remote."
    )
    host: str = Field("127.0.0.1", description="Interface the local services bind to.")
    prefect_port: int = Field(4200, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)
    prefect_api_url: str | None = Field(
        None, description="Prefect API; derived from host and prefect_port when unset."
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking server; derived from host and mlflow_port when unset."
    )
    work_pool: str = Field("local", description="Work pool the local worker serves.")
    pipeline: Path = Field(
        Path("examples/adult/pipeline.yaml"), description="Pipeline config of the active example."
    )
    dvc_remote_url: str | None = Field(
        None,
        description="DVC remote (local folder or s3://bucket/prefix); the repo's default when unset.",
    )
    dvc_remote_endpoint_url: str | None = Field(
        None, description="S3 endpoint for the DVC remote (an S3-compatible store)."
    )
    mlflow_artifacts_url: str | None = Field(
        None,
        description="MLflow server's artifact store (s3://bucket/prefix); a folder of the state "
        "directory when unset.",
    )
    dask_address: str | None = Field(
        None,
        description="Scheduler of an existing Dask cluster (tcp://host:8786) for the search's "
        "fan-out; a local cluster when unset.",
    )
    dask_workers: int = Field(2, ge=1, description="Workers of the local Dask cluster.")
    router_port: int = Field(
        8000, ge=1, le=65535, description="Local release target: where callers reach the model."
    )
    router_admin_port: int = Field(
        8001, ge=1, le=65535, description="Local router's API and health (Traefik)."
    )
    image_registry: str | None = Field(
        None,
        description="Where model server images are pushed: host[:port][/namespace] "
        "(e.g. 127.0.0.1:5050/mlops or an ECR registry); images stay local when unset.",
    )
    image_registry_insecure: bool = Field(
        False, description="The image registry speaks plain HTTP (a local registry)."
    )
    base_image: str = Field(
        "python:3.11-slim",
        description="Base of the model server image; pin it by digest in production. "
        "Build a local one with infra/docker/build-base-image.sh where no hub is reachable.",
    )
    startup_timeout: float = Field(90.0, gt=0, description="Seconds to wait for a service.")
    prediction_log_url: str | None = Field(
        None,
        description="Where model servers log predictions and monitoring reads them: a folder or "
        "an fsspec URL (s3://bucket/prefix); <state_dir>/prediction-log when unset.",
    )
    pushgateway_url: str | None = Field(
        None, description="Prometheus Pushgateway the monitoring flow pushes its figures to."
    )
    pushgateway_port: int = Field(
        9091,
        ge=1,
        le=65535,
        description="The local stack's Pushgateway (when pushgateway_url is unset).",
    )
    prometheus_port: int = Field(
        9090, ge=1, le=65535, description="The local stack's Prometheus (mlops up starts it)."
    )
    registry_webhook_port: int = Field(
        9766,
        ge=1,
        le=65535,
        description="The local stack's receiver of MLflow registry webhooks (mlops up starts it).",
    )
    prometheus_url: str | None = Field(
        None,
        description="The Prometheus the release's analysis queries (local, kserve, seldon and "
        "gitops targets); derived from host and prometheus_port when unset.",
    )

    # release targets beyond the local one (targets/): each is used only when a release names it
    k8s_kubeconfig: Path | None = Field(
        None,
        description="kserve and seldon targets: kubeconfig of the cluster (or k8s_in_cluster).",
    )
    k8s_context: str | None = Field(
        None, description="kserve and seldon targets: kubeconfig context."
    )
    k8s_in_cluster: bool = Field(
        False,
        description="kserve and seldon targets: use the pod's service account (in-cluster).",
    )
    k8s_namespace: str = Field(
        "mlops", description="Namespace of the InferenceServices (Seldon: Models, Experiments)."
    )
    gitops_repo: str | None = Field(
        None, description="gitops target: the git repository Argo CD or Flux syncs from."
    )
    gitops_branch: str = Field("main", description="gitops target: branch to commit to.")
    gitops_path: str = Field("deploy", description="gitops target: folder for the manifests.")
    gitops_format: Literal["kserve", "knative", "seldon"] = Field(
        "kserve",
        description="gitops target: KServe InferenceService, Knative Service (Cloud Run) or "
        "Seldon Core 2's Models and Experiment (a v1 List).",
    )
    aws_region: str | None = Field(None, description="AWS region (lambda target, S3).")
    aws_endpoint_url: str | None = Field(
        None, description="AWS API endpoint override: an emulation such as moto's server."
    )
    lambda_role_arn: str | None = Field(
        None, description="lambda target: execution role of the model's function."
    )
    lambda_alias: str = Field("live", description="lambda target: the alias callers invoke.")
    sagemaker_role_arn: str | None = Field(
        None, description="Managed training: the role SageMaker training jobs run with."
    )
    sagemaker_image: str | None = Field(
        None, description="Managed training: the project's flow image in ECR."
    )
    registry_mirrors: list[Literal["sagemaker", "vertex"]] = Field(
        default_factory=list,
        description="Other model registries that follow MLflow's champion after every release "
        "(mlops.adapters.mirrors), as JSON: '[\"sagemaker\"]' (the SageMaker Model Registry in "
        "aws_region, at aws_endpoint_url when set), '[\"vertex\"]' (the Vertex AI Model Registry "
        "of gcp_project in gcp_region; the `gcp` extra).",
    )
    gcp_project: str | None = Field(None, description="Google Cloud project (the vertex mirror).")
    gcp_region: str | None = Field(None, description="Google Cloud region (the vertex mirror).")
    sagemaker_bucket: str | None = Field(
        None, description="Managed training: bucket for the jobs' input and model output."
    )
    sagemaker_instance_type: str = Field("ml.m5.xlarge", description="Managed training: instance.")

    # authentication of the stack's servers (docs/security.md): secrets stay out of command lines
    prefect_auth_string: SecretStr | None = Field(
        None,
        description="Prefect server's API auth string (user:password): the server requires it "
        "and every client of the stack sends it.",
    )
    prefect_auth_string_file: Path | None = Field(
        None, description="A file holding prefect_auth_string (a mounted secret)."
    )
    database_url: SecretStr | None = Field(
        None,
        description="A PostgreSQL server for a team's shared stack "
        "(postgresql://user:password@host:port): `mlops up` keeps the Prefect server's state in "
        "its database `prefect` and the MLflow server's (runs, registry, users) in `mlflow`, "
        "creating them where missing. Default: SQLite files under state_dir. Only the servers "
        "get it.",
    )
    database_url_file: Path | None = Field(
        None, description="A file holding database_url (a mounted secret)."
    )
    prefect_database_url: SecretStr | None = Field(
        None,
        description="The Prefect server's database, as SQLAlchemy's async URL "
        "(postgresql+asyncpg://user:password@host:port/db), instead of database_url's `prefect`.",
    )
    mlflow_database_url: SecretStr | None = Field(
        None,
        description="The MLflow server's database (its backend store and its users), as "
        "SQLAlchemy's URL (postgresql+psycopg://user:password@host:port/db), instead of "
        "database_url's `mlflow`.",
    )
    mlflow_username: str = Field(
        "admin", min_length=1, description="MLflow basic-auth admin user (with mlflow_password)."
    )
    mlflow_password: SecretStr | None = Field(
        None,
        description="MLflow basic-auth password (at least 12 characters): the MLflow server runs "
        "its basic-auth app and every client of the stack logs in with it.",
    )
    mlflow_password_file: Path | None = Field(
        None, description="A file holding mlflow_password (a mounted secret)."
    )
    serving_token: SecretStr | None = Field(
        None,
        description="Bearer token the model servers require; the local target's servers keep it "
        "and the release's smoke test and metric reads send it.",
    )
    hook_secret: SecretStr | None = Field(
        None,
        description="Release webhooks are signed with it: X-Mlops-Signature: sha256=<HMAC of "
        "the body> (mlops.release.hooks).",
    )

    registry_webhook_secret: SecretStr | None = Field(
        None,
        description="Secret MLflow signs its registry webhooks with (HMAC-SHA256); one is "
        "generated into <state_dir>/registry-webhooks/secret (mode 0600) when unset.",
    )

    @model_validator(mode="after")
    def _read_secret_files(self) -> Settings:
        for name in ("prefect_auth_string", "mlflow_password", "database_url"):
            path: Path | None = getattr(self, f"{name}_file")
            if path is not None:
                setattr(self, name, _secret_from_file(name, path, getattr(self, name)))
        if self.mlflow_password is not None and len(self.mlflow_password.get_secret_value()) < 12:
            # MLflow's auth app refuses shorter ones at start; say so before anything starts
            raise ValueError("MLOPS_MLFLOW_PASSWORD: must be at least 12 characters")
        auth = self.prefect_auth_string
        if auth is not None and not auth.get_secret_value():
            raise ValueError("MLOPS_PREFECT_AUTH_STRING: must not be empty")
        if self.database_url is not None:
            _check_server_url(self.database_url.get_secret_value())
        return self

    @property
    def local_only(self) -> bool:
        """Whether the stack's servers listen on this machine's loopback alone: any other
        interface serves a team, and then `mlops up` requires both servers' authentication."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: others may reach it
            return False

    def server_database(self, name: Literal["prefect", "mlflow"]) -> str | None:
        """The SQLAlchemy URL of server ``name``'s database, or None for its SQLite file: its own
        setting, else database_url's database of that name with the driver its server uses
        (asyncpg for Prefect, psycopg for MLflow)."""
        own = self.prefect_database_url if name == "prefect" else self.mlflow_database_url
        if own is not None:
            return own.get_secret_value()
        if self.database_url is None:
            return None
        parts = urlsplit(self.database_url.get_secret_value())
        driver = "asyncpg" if name == "prefect" else "psycopg"
        return urlunsplit((f"postgresql+{driver}", parts.netloc, f"/{name}", parts.query, ""))

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        self.project_dir = self.project_dir.resolve()
        if not self.state_dir.is_absolute():
            self.state_dir = self.project_dir / self.state_dir
        if not self.pipeline.is_absolute():
            self.pipeline = self.project_dir / self.pipeline
        if self.prefect_api_url is None:
            self.prefect_api_url = f"http://{self.host}:{self.prefect_port}/api"
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"http://{self.host}:{self.mlflow_port}"
        if self.prometheus_url is None:
            self.prometheus_url = f"http://{self.host}:{self.prometheus_port}"
        return self

    @property
    def prefect_ui_url(self) -> str:
        assert self.prefect_api_url is not None
        return self.prefect_api_url.removesuffix("/api")

    def prediction_log(self, model: str) -> str:
        """The prediction log of ``model``: one folder (or prefix) per model."""
        base = self.prediction_log_url or str(self.state_dir / "prediction-log")
        return f"{base.rstrip('/')}/{model}"

    @property
    def results_dir(self) -> Path:
        """Persisted Prefect task results (the cache behind re-runs)."""
        return self.state_dir / "prefect" / "storage"

    @property
    def reports_dir(self) -> Path:
        """Validation reports and failing rows, one folder per run."""
        return self.state_dir / "reports"


def _check_server_url(url: str) -> None:
    """database_url names a PostgreSQL server, not one database: each server gets its own."""
    parts = urlsplit(url)
    if parts.scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(
            f"MLOPS_DATABASE_URL: a PostgreSQL server's URL "
            f"(postgresql://user:password@host:port), not {parts.scheme or 'a path'}://"
        )
    if not parts.hostname:
        raise ValueError("MLOPS_DATABASE_URL: names no host (postgresql://user:password@host:port)")
    if parts.path.strip("/"):
        raise ValueError(
            f"MLOPS_DATABASE_URL: names the database {parts.path.strip('/')!r}; name the server "
            "alone: Prefect and MLflow each keep their own database on it (`prefect`, `mlflow`)"
        )


def _secret_from_file(name: str, path: Path, given: SecretStr | None) -> SecretStr:
    """The secret in ``path`` (a mounted secret; one trailing newline is not part of it)."""
    variable = f"MLOPS_{name.upper()}"
    if given is not None:
        raise ValueError(f"{variable} and {variable}_FILE are both set: keep one")
    try:
        value = path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{variable}_FILE={path}: cannot be read ({exc})") from None
    if not value:
        raise ValueError(f"{variable}_FILE={path}: the file is empty")
    return SecretStr(value)
