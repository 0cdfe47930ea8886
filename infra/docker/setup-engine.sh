#!/usr/bin/env bash
# Make a Docker-API container engine available on a Debian machine without Docker:
# Podman with its Docker-compatible service, and Debian's docker-registry as a local registry.
# Idempotent; needs root for apt-get and /etc/containers. On a machine with Docker, skip it and
# point DOCKER_HOST at Docker's socket instead.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-engine: run as root (apt-get, /etc/containers); or use any Docker-API engine" >&2
    exit 1
fi

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker-registry >/dev/null || missing+=(docker-registry)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# In containers and VMs without systemd or cgroup v2 delegation, crun fails at setrlimit and the
# overlay driver may be unavailable: runc and vfs work everywhere (vfs costs disk, not answers).
conf=/etc/containers/containers.conf
if [[ ! -f $conf ]]; then
    cat >"$conf" <<'CONF'
# Written by mlops infra/docker/setup-engine.sh
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
CONF
fi
storage=/etc/containers/storage.conf
if [[ ! -f $storage ]]; then
    cat >"$storage" <<'CONF'
# Written by mlops infra/docker/setup-engine.sh
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
fi
echo "setup-engine: podman $(podman --version | awk '{print $3}'), runc, debootstrap, docker-registry ready"
