"""Packaging: one registered model version as a container image of the model server.

The build context holds the library as a wheel (the image installs it after the pinned serving
requirements, with no source folders on a path), the model's artifacts (verified against the
checksum recorded at registration) and ``model.json``; ``infra/docker/Dockerfile`` builds it through
prefect-docker's ``build_docker_image``. Before anything is pushed, the image is started and must
answer the model's logged input example exactly as the model does in process. After the push,
the digest the registry reports is written on the model version as one tag, ``mlops.image``
(``repository:tag@sha256:...``), so a version never carries half a record.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mlops.adapters.registry import RegisteredVersion, download_model, registry_client
from mlops.core.errors import MlopsError
from mlops.core.integrity import CHECKSUM_TAG, IMAGE_TAG, verify_artifacts
from mlops.core.lineage import GIT_COMMIT_TAG
from mlops.release.smoke import SmokeTestFailed, check_answers, known_batch, wait_until_ready

PRODUCT_ROOT = Path(__file__).resolve().parents[2]

DOCKER_DIR = PRODUCT_ROOT / "infra" / "docker"

#: What the wheel is built from: the project's metadata and the library (no tasks/ or flows/).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "mlops")

_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")  # one path component of an image name

_MANIFESTS = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


class PackagingError(MlopsError):
    """The image could not be built, did not answer as the model does, or could not be pushed."""


@dataclass(frozen=True)
class BuiltImage:
    repository: str  # [registry/][namespace/]name
    tag: str  # v<model version>-<git short sha>
    image_id: str
    digest: str | None = None  # the registry's manifest digest, once pushed

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def pinned(self) -> str:
        """What to deploy: the tag for people, the digest for the engine."""
        return f"{self.reference}@{self.digest}" if self.digest else self.reference


def image_repository(registry: str | None, model: str) -> str:
    """``registry/model``; a model name that is not a valid image name is an error naming it."""
    if not _NAME.match(model):
        raise PackagingError(
            f"model name {model!r} is not a valid image name (lowercase letters, digits and "
            "single '.', '_' or '-' between them)"
        )
    return f"{registry.rstrip('/')}/{model}" if registry else f"mlops/{model}"


def image_tag(version: int, git_commit: str) -> str:
    short = git_commit[:7] if re.fullmatch(r"[0-9a-f]{7,40}", git_commit) else "nogit"
    return f"v{version}-{short}"


def ca_bundle() -> Path:
    """The CA bundle this machine trusts, so pip in the build trusts the same (proxies included)."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    import certifi

    return Path(certifi.where())


def build_wheel(wheel_dir: Path) -> Path:
    """The library as a wheel in ``wheel_dir`` (``pip wheel --no-deps``); returns its path.

    Built from a copy of the sources, so the build's ``build/`` and ``*.egg-info`` folders never
    land in the checkout and two builds at once share nothing. The copy keeps the files' times
    and the wheel is stamped with the sources' time, so the same code gives the same wheel, byte
    for byte, and the engine's layer cache holds across model versions.
    """
    with tempfile.TemporaryDirectory(prefix="mlops-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in WHEEL_SOURCES:
            path = PRODUCT_ROOT / name
            if path.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(path, src / name, ignore=ignore)
            else:
                shutil.copy2(path, src / name)
        wheel_dir.mkdir(parents=True, exist_ok=True)
        # the wheel's entries are stamped with the newest source's time, not the build's
        newest = max(p.stat().st_mtime for p in src.rglob("*") if p.is_file())
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet"]
        done = subprocess.run(
            [*argv, "--wheel-dir", str(wheel_dir), str(src)],
            capture_output=True,
            text=True,
            check=False,
            env=os.environ | {"SOURCE_DATE_EPOCH": str(int(newest))},
        )
    if done.returncode != 0:
        raise PackagingError(f"building the mlops wheel failed: {done.stderr.strip()[-2000:]}")
    [wheel] = wheel_dir.glob("mlops-*.whl")
    return wheel


def assemble_build_context(tracking_uri: str, version: RegisteredVersion, dst: Path) -> Path:
    """Dockerfile, pins, the library's wheel, the verified model and its model.json, in ``dst``."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    model_dir = download_model(tracking_uri, version.name, version.version, dst / "model")
    sha256 = version.tags.get(CHECKSUM_TAG)
    verify_artifacts(model_dir, sha256, f"{version.name} v{version.version}")
    for name in ("Dockerfile", "requirements.txt"):
        shutil.copy2(DOCKER_DIR / name, dst / name)
    shutil.copy2(PRODUCT_ROOT / "constraints.txt", dst / "constraints.txt")
    shutil.copy2(ca_bundle(), dst / "ca-certificates.crt")
    build_wheel(dst / "wheels")
    meta = {
        "name": version.name,
        "version": version.version,
        "sha256": sha256,
        "run_id": version.run_id,
        "git_commit": version.tags.get(GIT_COMMIT_TAG, "unknown"),
    }
    (dst / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return dst


@contextmanager
def docker_engine() -> Iterator[Any]:
    """A client of the Docker-API engine at DOCKER_HOST; its absence is an error saying what to do."""
    import docker

    try:
        client = docker.from_env(timeout=600)  # pulls and removals of big images are slow on vfs
        client.ping()
    except docker.errors.DockerException as exc:
        raise PackagingError(
            f"no container engine answers at DOCKER_HOST={os.environ.get('DOCKER_HOST', '(unset)')}: "
            f"{exc}. Start Docker, or Podman's service (infra/docker/README.md)"
        ) from None
    try:
        yield client
    finally:
        client.close()


def build_image(
    context: Path, repository: str, tag: str, base_image: str, git_commit: str
) -> BuiltImage:
    """Build the image with prefect-docker; the base must already be local or pullable."""
    from prefect_docker.deployments.steps import build_docker_image

    meta = json.loads((context / "model.json").read_text())
    with docker_engine():
        try:
            result = build_docker_image(
                image_name=repository,
                tag=tag,
                dockerfile="Dockerfile",
                path=str(context),
                # "missing", not "always": a locally built base has no registry to pull from.
                pull=False,
                # pip in the build reaches the index through the host's network and proxy.
                network_mode="host",
                buildargs={
                    "BASE_IMAGE": base_image,
                    "MODEL_NAME": meta["name"],
                    "MODEL_VERSION": str(meta["version"]),
                    "MODEL_SHA256": meta["sha256"],
                    "GIT_SHA": git_commit,
                },
            )
        except Exception as exc:  # docker's BuildError and APIError carry the engine's reason
            raise PackagingError(f"building {repository}:{tag} failed: {exc}") from exc
    return BuiltImage(repository=repository, tag=tag, image_id=result["image_id"])


def smoke_test_image(image: BuiltImage, context: Path, port: int, timeout: float = 120.0) -> int:
    """Run the image; it must become ready and answer the model's input example as the model does.

    Returns the number of rows checked.
    """
    meta = json.loads((context / "model.json").read_text())
    batch = known_batch(context / "model", meta["name"], meta["version"], meta["sha256"])
    token = os.urandom(16).hex()
    base = f"http://127.0.0.1:{port}"
    with docker_engine() as client:
        container = client.containers.run(
            image.reference,
            detach=True,
            network_mode="host",
            environment={"HOST": "127.0.0.1", "PORT": str(port), "MLOPS_SERVING_TOKEN": token},
        )

        try:
            wait_until_ready(base, timeout, container_exited(container))
            check_answers(base, batch, token)
        except SmokeTestFailed as exc:
            raise PackagingError(f"{image.reference}: {exc}") from None
        finally:
            container.remove(force=True)
    return len(batch.rows)


def container_exited(container: Any) -> Callable[[], str | None]:
    """For ``wait_until_ready``: the container's last log lines once it has exited, else None."""

    def exited() -> str | None:
        container.reload()
        if container.status in ("exited", "dead"):
            logs = container.logs(tail=20).decode(errors="replace")
            return f"the server in {container.image.tags} exited:\n{logs}"
        return None

    return exited


def registry_digest(
    repository: str,
    tag: str,
    insecure: bool = False,
    credentials: dict[str, Any] | None = None,
) -> str:
    """The manifest digest the registry serves for ``repository:tag`` (OCI distribution API).

    Written by hand: the engine's own record differs (Podman keeps its local manifest's digest)
    and prefect-docker's push step returns none. Anonymous, basic, or bearer-token auth.
    """
    host, _, path = repository.partition("/")
    url = f"{'http' if insecure else 'https'}://{host}/v2/{path}/manifests/{tag}"
    auth = (
        httpx.BasicAuth(credentials["username"], credentials["password"]) if credentials else None
    )
    headers = {"Accept": _MANIFESTS}
    with httpx.Client(timeout=30, auth=auth) as http:
        answer = http.head(url, headers=headers)
        challenge = answer.headers.get("www-authenticate", "")
        if answer.status_code == 401 and challenge.lower().startswith("bearer "):
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            token = http.get(params.pop("realm"), params=params).json()
            headers["Authorization"] = f"Bearer {token.get('token') or token['access_token']}"
            answer = httpx.head(url, headers=headers, timeout=30)  # the token, not the basic auth
    digest = answer.headers.get("docker-content-digest")
    if answer.status_code != 200 or not digest:
        raise PackagingError(
            f"registry {host} has no manifest for {path}:{tag} (HTTP {answer.status_code})"
        )
    return digest


def push_image(
    image: BuiltImage, insecure: bool = False, credentials: dict[str, Any] | None = None
) -> BuiltImage:
    """Push with prefect-docker, then read back the digest the registry stored."""
    from prefect_docker.deployments.steps import push_docker_image

    with docker_engine():
        try:
            push_docker_image(image_name=image.repository, tag=image.tag, credentials=credentials)
        except Exception as exc:
            raise PackagingError(f"pushing {image.reference} failed: {exc}") from exc
    digest = registry_digest(image.repository, image.tag, insecure, credentials)
    return BuiltImage(image.repository, image.tag, image.image_id, digest)


def record_image(tracking_uri: str, model: str, version: int, image: BuiltImage) -> None:
    """Write ``mlops.image`` on the model version: one tag, so the record is whole or absent."""
    registry_client(tracking_uri).set_model_version_tag(
        model, str(version), IMAGE_TAG, image.pinned
    )
