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
# compose.yaml's team stack over the engine's Docker API (tests/e2e/test_compose_stack.py)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# In containers and VMs without systemd or cgroup v2 delegation, crun fails at setrlimit: runc
# works everywhere. Storage: overlay where the kernel mounts it (layers shared, not copied), else
# vfs, which works everywhere but copies the whole filesystem for every layer (the image tests
# took 2.6x as long on vfs here).
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
overlay_mounts() {
    local probe # on the file system the images go to
    mkdir -p /var/lib/containers
    probe=$(mktemp -d -p /var/lib/containers)
    mkdir "$probe"/{lower,upper,work,merged}
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        rm -rf "$probe"
        return 0
    fi
    rm -rf "$probe"
    return 1
}
storage=/etc/containers/storage.conf
if [[ ! -f $storage ]]; then
    driver=vfs
    overlay_mounts && driver=overlay
    cat >"$storage" <<CONF
# Written by mlops infra/docker/setup-engine.sh (overlay if the kernel mounts it, else vfs)
[storage]
driver = "$driver"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
fi
echo "setup-engine: podman $(podman --version | awk '{print $3}') ($(awk -F'"' '/^driver/ {print $2}' "$storage") storage), runc, debootstrap, docker-registry, docker-compose ready"
