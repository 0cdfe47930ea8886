"""Lineage: which code, data and parameters a model came from, as tags and a fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scmrepo.exceptions import SCMError
from scmrepo.git import Git


@dataclass(frozen=True)
class GitState:
    commit: str  # "unknown" outside a git checkout or before the first commit
    dirty: bool


def git_state(project_dir: Path) -> GitState:
    """The checked-out commit and whether tracked files differ from it."""
    try:
        with Git(str(project_dir)) as scm:
            return GitState(commit=scm.get_rev(), dirty=bool(scm.is_dirty(untracked_files=False)))
    except SCMError:
        return GitState(commit="unknown", dirty=True)


def run_fingerprint(data_md5: str, code: str, config: dict[str, Any]) -> str:
    """Identity of a training run: same data, same pipeline code, same config -> same fingerprint."""
    payload = json.dumps(
        {"data": data_md5, "code": code, "config": config}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()
