"""Lineage: which code, data and parameters a model came from, typed, and the tags that carry it.

Every tag name the product writes on an MLflow run or model version is defined here (or beside
the module that owns its meaning, e.g. ``mlops.release.approval``), so a reader of a tag never
spells it again. ``Lineage`` is the part every registered version carries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# What a training run and its model version record about their origin (``Lineage``).
FINGERPRINT_TAG = "mlops.fingerprint"  # identity of a training run's inputs (run_fingerprint)
CODE_TAG = "mlops.code.sha256"  # the model code's fingerprint (mlops.ml.fingerprint)
DATA_PATH_TAG = "mlops.data.path"
DATA_MD5_TAG = "mlops.data.md5"
DATA_REV_TAG = "mlops.data.rev"  # the git revision the data was resolved at, or "workspace"
GIT_COMMIT_TAG = "mlops.git.commit"
GIT_DIRTY_TAG = "mlops.git.dirty"  # "true" or "false"
FLOW_RUN_TAG = "mlops.prefect.flow_run_id"
POLICY_VERSION_TAG = "mlops.policy.version"
POLICY_DIGEST_TAG = "mlops.policy.digest"
TRIGGER_TAG = "mlops.trigger"
# Written beside the lineage when a run trains on more than the data version, or elsewhere.
PRODUCTION_MD5_TAG = "mlops.data.production_md5"
PRODUCTION_ROWS_TAG = "mlops.data.production_rows"
COMPUTE_TAG = "mlops.training.compute"  # absent for a fit in the flow run itself
SAGEMAKER_JOB_TAG = "mlops.sagemaker.job"

#: The registry alias of the version in production, and of the newest registered candidate.
#: The key of a model's MLmodel ``metadata`` saying what it answers: ``{"type": problem type,
#: "target": column, "classes": labels in order}`` and, for a regression, ``"value_buckets"``
#: (histogram bounds: the training target's deciles; mlops.adapters.tracking.problem_metadata
#: writes it at training, mlops.serving.model.served_problem reads it).
PROBLEM_METADATA = "mlops_problem"

#: The key of a model's MLmodel ``metadata`` holding what its explanations start from:
#: ``{"baseline": the mean transformed training row}`` (``mlops.core.explanations.baseline_of``,
#: written at training; a linear model's attributions are measured from it).
EXPLANATION_METADATA = "mlops_explanation"

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"


@dataclass(frozen=True)
class DataVersion:
    """One exact version of a DVC-tracked file: what training records as its data lineage."""

    path: str
    md5: str
    size: int
    rev: str | None  # git revision it was resolved at; None for the workspace

    @property
    def short(self) -> str:
        return self.md5[:8]


@dataclass(frozen=True)
class GitState:
    commit: str  # "unknown" outside a git checkout or before the first commit
    dirty: bool


@dataclass(frozen=True)
class Lineage:
    """Where a model came from: what a training run and its model version carry as tags."""

    fingerprint: str
    code: str
    data_path: str
    data_md5: str
    data_rev: str  # "workspace" when the data was not resolved at a git revision
    git_commit: str
    git_dirty: bool
    flow_run_id: str
    policy_version: str
    policy_digest: str
    trigger: str

    def to_tags(self) -> dict[str, str]:
        """The lineage as MLflow tags (the order is the one the registry shows)."""
        return {
            tag: str(getattr(self, name)).lower() if name == "git_dirty" else getattr(self, name)
            for name, tag in _FIELD_TAGS.items()
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Lineage:
        """The lineage a run or version's tags record; KeyError names a tag that is missing."""
        missing = [tag for tag in _FIELD_TAGS.values() if tag not in tags]
        if missing:
            raise KeyError(f"not a training lineage: no tag {', '.join(missing)}")
        values: dict[str, Any] = {name: tags[tag] for name, tag in _FIELD_TAGS.items()}
        values["git_dirty"] = values["git_dirty"] == "true"
        return cls(**values)

    @classmethod
    def of(
        cls,
        git: GitState,
        data: DataVersion,
        fingerprint: tuple[str, str],
        policy_version: int | str,
        policy_digest: str,
        flow_run_id: str,
        trigger: str,
    ) -> Lineage:
        """The lineage of a training run from its parts (``fingerprint``: run and code hash)."""
        return cls(
            fingerprint=fingerprint[0],
            code=fingerprint[1],
            data_path=data.path,
            data_md5=data.md5,
            data_rev=data.rev or "workspace",
            git_commit=git.commit,
            git_dirty=git.dirty,
            flow_run_id=flow_run_id,
            policy_version=str(policy_version),
            policy_digest=policy_digest,
            trigger=trigger,
        )


#: Each field of ``Lineage`` and the tag that carries it, in the order the registry shows.
_FIELD_TAGS: dict[str, str] = {
    "fingerprint": FINGERPRINT_TAG,
    "code": CODE_TAG,
    "data_path": DATA_PATH_TAG,
    "data_md5": DATA_MD5_TAG,
    "data_rev": DATA_REV_TAG,
    "git_commit": GIT_COMMIT_TAG,
    "git_dirty": GIT_DIRTY_TAG,
    "flow_run_id": FLOW_RUN_TAG,
    "policy_version": POLICY_VERSION_TAG,
    "policy_digest": POLICY_DIGEST_TAG,
    "trigger": TRIGGER_TAG,
}


def run_fingerprint(data_md5: str, code: str, config: dict[str, Any]) -> str:
    """Identity of a training run: same data, same pipeline code, same config -> same fingerprint."""
    payload = json.dumps(
        {"data": data_md5, "code": code, "config": config}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()
