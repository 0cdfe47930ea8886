"""The git checkout (scmrepo): which commit the code is at, and the lineage tags that record it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from scmrepo.exceptions import SCMError
from scmrepo.git import Git

from mlops.core.lineage import DataVersion, GitState, Lineage

if TYPE_CHECKING:
    from mlops.core.policy import Policy


def git_state(project_dir: Path) -> GitState:
    """The checked-out commit and whether tracked files differ from it."""
    try:
        with Git(str(project_dir)) as scm:
            return GitState(commit=scm.get_rev(), dirty=bool(scm.is_dirty(untracked_files=False)))
    except SCMError:
        return GitState(commit="unknown", dirty=True)


def lineage_tags(
    project_dir: Path,
    data: DataVersion,
    fingerprint: tuple[str, str],
    policy: Policy,
    policy_digest: str,
    flow_run_id: str,
    trigger: str,
) -> dict[str, str]:
    """The tags a training run and its model version carry: where the model came from.

    Here rather than in ``mlops.core.lineage`` because it reads the checkout's git state.
    """
    git = git_state(project_dir)
    return Lineage.of(
        git, data, fingerprint, policy.version, policy_digest, flow_run_id, trigger
    ).to_tags()
