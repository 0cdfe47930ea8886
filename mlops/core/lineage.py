"""Lineage: which code, data and parameters a model came from, as tags and a fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scmrepo.exceptions import SCMError
from scmrepo.git import Git

from mlops.ml.caching import code_fingerprint

if TYPE_CHECKING:
    from mlops.core.config import PipelineConfig
    from mlops.core.policy import Policy
    from mlops.ml.data import DataVersion

#: The registry tag that identifies a training run's inputs (see ``training_fingerprint``).
FINGERPRINT_TAG = "mlops.fingerprint"


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


def training_fingerprint(cfg: PipelineConfig, data_md5: str) -> tuple[str, str]:
    """(fingerprint, code hash) of a training run: the data, the training flow's code and the
    parts of the config that change the model. The model name and file paths do not count."""
    code = code_fingerprint("flows.training")
    config = cfg.model_dump(
        mode="json", include={"target", "features", "split", "model", "contract_spec"}
    ) | {"na_values": list(cfg.data.na_values)}
    return run_fingerprint(data_md5, code, config), code


def lineage_tags(
    project_dir: Path,
    data: DataVersion,
    fingerprint: tuple[str, str],
    policy: Policy,
    policy_digest: str,
    flow_run_id: str,
    trigger: str,
) -> dict[str, str]:
    """The tags a training run and its model version carry: where the model came from."""
    git = git_state(project_dir)
    return {
        FINGERPRINT_TAG: fingerprint[0],
        "mlops.code.sha256": fingerprint[1],
        "mlops.data.path": data.path,
        "mlops.data.md5": data.md5,
        "mlops.data.rev": data.rev or "workspace",
        "mlops.git.commit": git.commit,
        "mlops.git.dirty": str(git.dirty).lower(),
        "mlops.prefect.flow_run_id": flow_run_id,
        "mlops.policy.version": str(policy.version),
        "mlops.policy.digest": policy_digest,
        "mlops.trigger": trigger,
    }
