# The project's flow image: the flows of prefect.yaml run from it on the docker, ecs and kubernetes
# work pools (deployments/environments/). The project sits at /opt/mlops/project, the folder those
# environments' `run_dir` names, with the dependencies CI tests (constraints.txt).
#
#   docker build -f infra/docker/flows.Dockerfile -t <registry>/mlops-flows:<git sha> .
#
# The CI pipelines (.github/workflows/main.yml and the GitLab and Jenkins equivalents) build and
# push it before `mlops deploy`. DVC data is not baked in: flows pull their data version from the
# DVC remote (MLOPS_DVC_REMOTE_URL) when they run.
#
# For the vertex and azure environments, build with `--build-arg EXTRAS=gcp` or `EXTRAS=azure`
# (pyproject.toml's extras: DVC's remote and the prediction log on gs:// or Azure Blob storage).
#
# On a machine that cannot pull from a hub, build it on the locally built Debian base
# (`--build-arg BASE_IMAGE=mlops-base:bookworm`, build-base-image.sh). Behind a TLS-intercepting
# proxy, hand pip the machine's CA bundle as a build secret (never a layer):
#   --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt
# `EXTRAS=server` adds what infra/docker/compose.yaml's Prefect server and services need.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG EXTRAS=""

# A venv on any Debian base: Debian's own python refuses pip installs into the system interpreter.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MLOPS_PROJECT_DIR=/opt/mlops/project

# git: DVC and the runs' lineage; libgomp1: the OpenMP runtime LightGBM's wheel links against
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends git libgomp1 \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv

WORKDIR /opt/mlops/project
# dependencies first: rebuilt only when the pins change (an empty `mlops` stands in for the
# library, which is the one package pyproject.toml installs; tasks/ and flows/ run from here)
COPY pyproject.toml constraints.txt README.md ./
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
    && mkdir mlops && touch mlops/__init__.py \
    && pip install -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" && pip uninstall -y mlops \
    && rm -rf mlops build
COPY . .
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
    && pip install --no-deps -c constraints.txt . \
    && useradd --create-home --uid 10001 mlops && chown -R mlops /opt/mlops \
    && mkdir -p /var/lib/mlflow && chown mlops /var/lib/mlflow
# /var/lib/mlflow: the artifacts of compose.yaml's MLflow server (a volume, owned as in the image)
USER mlops
