"""A real container engine and image registry for the tests that build and run images.

Podman's Docker-compatible service on a private socket (with a registries.conf of its own that
lets it push to the test registry over plain HTTP), Debian's ``docker-registry`` on a free
loopback port, and the locally built base image. ``infra/docker/setup-engine.sh`` installs them;
CI runs it. Without Podman, an engine at DOCKER_HOST is used as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mlops.stack.processes import free_port, spawn, stop_process_group
from tests.helpers import PROJECT

LOCAL_BASE_IMAGE = "mlops-base:bookworm"


@dataclass(frozen=True)
class Engine:
    docker_host: str
    registry: str  # host:port
    base_image: str


def _wait(check: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s")


@contextmanager
def container_engine(workdir: Path) -> Iterator[Engine]:
    """Start the engine service and a registry; build the base image if it is missing."""
    podman = shutil.which("podman")
    registry_bin = shutil.which("docker-registry")
    if podman is None and not os.environ.get("DOCKER_HOST"):
        pytest.skip("no container engine: run infra/docker/setup-engine.sh (CI does)")
    if registry_bin is None:
        pytest.skip("no docker-registry: run infra/docker/setup-engine.sh (CI does)")
    port = free_port()
    registry = f"127.0.0.1:{port}"
    (workdir / "registry.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {workdir / 'registry'}\n"
        f"http:\n  addr: {registry}\n"
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            spawn([registry_bin, "serve", str(workdir / "registry.yml")], workdir / "registry.log")
        )
        _wait(lambda: httpx.get(f"http://{registry}/v2/").status_code == 200, "docker-registry")
        if podman is None:
            yield Engine(os.environ["DOCKER_HOST"], registry, "python:3.11-slim")
            return
        conf = workdir / "registries.conf"
        conf.write_text(
            f'unqualified-search-registries = []\n[[registry]]\nlocation = "{registry}"\n'
            "insecure = true\n"
        )
        socket = workdir / "podman.sock"
        procs.append(
            spawn(
                [podman, "system", "service", "--time=0", f"unix://{socket}"],
                workdir / "podman.log",
                env={**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)},
            )
        )
        transport = httpx.HTTPTransport(uds=str(socket))
        _wait(
            lambda: httpx.Client(transport=transport).get("http://d/_ping").status_code == 200,
            "podman system service",
        )
        base = subprocess.run(
            [str(PROJECT / "infra" / "docker" / "build-base-image.sh"), LOCAL_BASE_IMAGE],
            capture_output=True,
            text=True,
        )
        if base.returncode:
            raise RuntimeError(f"build-base-image.sh failed:\n{base.stderr}")
        yield Engine(f"unix://{socket}", registry, LOCAL_BASE_IMAGE)
    finally:
        for proc in procs:
            stop_process_group(proc.pid, timeout=10)


def build_image(
    engine: Engine, dockerfile: Path, context: Path, tag: str, **build_args: str
) -> None:
    """Build ``dockerfile`` as ``tag`` on the engine's base (BASE_IMAGE), with the machine's CA
    bundle as the build secret ``ca-certificates`` (pip behind a TLS-intercepting proxy). The
    engine's CLI: Podman's, which shares its service's storage, or Docker's with BuildKit."""
    from mlops.release.packaging import ca_bundle

    cli = shutil.which("podman") or shutil.which("docker")
    if cli is None:
        pytest.skip("no podman or docker CLI to build images with")
    args = {"BASE_IMAGE": engine.base_image, **build_args}
    argv = [cli, "build", "-q", "-f", str(dockerfile), "-t", tag]
    argv += [f"--build-arg={k}={v}" for k, v in args.items()]
    argv += [f"--secret=id=ca-certificates,src={ca_bundle()}", str(context)]
    env = {**os.environ, "DOCKER_HOST": engine.docker_host, "DOCKER_BUILDKIT": "1"}
    built = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    if built.returncode:
        raise RuntimeError(f"building {tag} from {dockerfile} failed:\n{built.stderr[-4000:]}")
