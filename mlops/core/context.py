"""What one run works from, loaded once at the flow's entry and passed down to every subflow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlops.core.config import PipelineConfig, load_pipeline_config
from mlops.core.policy import Policy, load_policy
from mlops.core.settings import Settings


@dataclass(frozen=True)
class RunContext:
    """The settings, the pipeline config (with its data contract) and the policy of one run.

    A flow builds it once (``RunContext.load``) and hands it to the subflows it calls, so a
    training run handed over to the release reads each file once, and every step of the run
    judges by the same policy even if the file changes meanwhile.
    """

    settings: Settings
    config: PipelineConfig
    policy: Policy
    policy_digest: str

    @classmethod
    def load(cls, settings: Settings | None = None, pipeline: str | None = None) -> RunContext:
        """The context of ``pipeline`` (relative to the project; default: the settings' example)."""
        settings = settings or Settings()
        path = settings.project_dir / pipeline if pipeline else settings.pipeline
        config = load_pipeline_config(path)
        policy, digest = load_policy(config.policy, set(config.contract.columns))
        return cls(settings=settings, config=config, policy=policy, policy_digest=digest)

    @property
    def tracking_uri(self) -> str:
        return str(self.settings.mlflow_tracking_uri)

    @property
    def model_name(self) -> str:
        return self.config.model_name

    @property
    def project_dir(self) -> Path:
        return self.settings.project_dir
