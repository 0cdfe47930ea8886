"""What tells the forking worker that its zygote's modules are no longer the project's code: the
project's Python files, edited, added or removed, through symlinked folders, hidden ones aside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlops.stack.worker import project_sources

pytestmark = pytest.mark.unit


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shared = tmp_path / "shared-flows"
    shared.mkdir()
    (shared / "training.py").write_text("def training(): ...\n")
    root = tmp_path / "project"
    (root / "model_code").mkdir(parents=True)
    (root / "model_code" / "factory.py").write_text("def make(): ...\n")
    (root / "flows").symlink_to(shared, target_is_directory=True)  # as the tests' projects
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "big.py").write_text("x = 1\n")
    (root / "loop").symlink_to(root, target_is_directory=True)  # a cycle must end the walk
    return root


def test_the_files_behind_symlinks_count_and_hidden_folders_do_not(project: Path) -> None:
    names = {Path(p).name for p in project_sources(project)}
    assert names == {"training.py", "factory.py"}


def test_an_edit_an_added_file_and_a_removed_one_each_change_the_sources(project: Path) -> None:
    before = project_sources(project)
    assert project_sources(project) == before, "nothing changed, nothing seen"
    flow = project / "flows" / "training.py"
    stat = flow.stat()
    os.utime(flow, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # saved again
    touched = project_sources(project)
    assert touched != before
    (project / "model_code" / "extra.py").write_text("y = 2\n")
    added = project_sources(project)
    assert added != touched
    (project / "model_code" / "extra.py").unlink()
    assert project_sources(project) == touched


def test_hidden_folders_and_bytecode_never_count(project: Path) -> None:
    before = project_sources(project)
    (project / ".venv" / "lib" / "big.py").write_text("x = 2\n")
    (project / "model_code" / "__pycache__").mkdir()
    (project / "model_code" / "__pycache__" / "factory.py").write_text("")
    assert project_sources(project) == before
