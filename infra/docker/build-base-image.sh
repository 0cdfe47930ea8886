#!/usr/bin/env bash
# Build the model server's base image locally from Debian packages, for machines that cannot pull
# from a public image registry. Elsewhere, build with BASE_IMAGE=python:3.11-slim instead.
#   infra/docker/build-base-image.sh [IMAGE]      (default mlops-base:bookworm)
# Needs root, debootstrap and an engine CLI (ENGINE=podman by default; docker works the same).
set -euo pipefail
image=${1:-mlops-base:bookworm}
engine=${ENGINE:-podman}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if "$engine" image exists "$image" 2>/dev/null || "$engine" image inspect "$image" >/dev/null 2>&1; then
    echo "build-base-image: $image exists"
    exit 0
fi
root=$(mktemp -d)
chmod 755 "$root" # mktemp makes it 0700, and it becomes the image's /: unreadable to a non-root user
trap 'rm -rf "$root"' EXIT
# python3-venv: the server installs into its own venv (Debian's python refuses pip installs
# into the system interpreter); ca-certificates: pip over TLS; libgomp1: the OpenMP runtime
# LightGBM's wheel links against (scikit-learn and XGBoost ship their own); no compiler: wheels only.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
    bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | "$engine" import --quiet \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["/usr/bin/python3"]' - "$image" >/dev/null
echo "build-base-image: built $image ($(du -sh "$root" | cut -f1) root filesystem)"
