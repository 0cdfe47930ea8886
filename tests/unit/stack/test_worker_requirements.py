"""The cloud extras, the team stack's `server` extra and the vertex and azure workers' packages
are pinned like everything CI installs: `make tools` installs
deployments/work-pools/workers-requirements.txt with --no-deps, so a name missing there, or a pin
missing from constraints.txt, would go unnoticed until a worker failed to import."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

PROJECT = Path(__file__).resolve().parents[3]


def pinned() -> dict[str, str]:
    lines = (PROJECT / "constraints.txt").read_text().splitlines()
    return {canonicalize_name(n): v for n, _, v in (x.partition("==") for x in lines if "==" in x)}


def extras(*keys: str) -> list[str]:
    """The names the pyproject extras ``keys`` ask for."""
    declared = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    found = declared["optional-dependencies"]
    return [Requirement(r).name for key in keys for r in found[key]]


def workers_list() -> list[str]:
    text = (PROJECT / "deployments/work-pools/workers-requirements.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_every_cloud_extra_and_worker_package_is_pinned() -> None:
    names = extras("gcp", "azure", "server", "workers")
    unpinned = sorted({canonicalize_name(n) for n in names + workers_list()} - set(pinned()))
    assert unpinned == []


def test_the_workers_list_holds_what_the_workers_extra_names() -> None:
    wanted = {canonicalize_name(n) for n in extras("workers")}
    assert wanted <= {canonicalize_name(n) for n in workers_list()}
