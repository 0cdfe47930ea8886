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
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLOPS_PROJECT_DIR=/opt/mlops/project

RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mlops/project
# dependencies first: rebuilt only when the pins change (an empty `mlops` stands in for the
# library, which is the one package pyproject.toml installs; tasks/ and flows/ run from here)
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir mlops && touch mlops/__init__.py \
    && pip install -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" && pip uninstall -y mlops \
    && rm -rf mlops build
COPY . .
RUN pip install --no-deps -c constraints.txt . \
    && useradd --create-home --uid 10001 mlops && chown -R mlops /opt/mlops
USER mlops
