"""What one run works from, loaded once at the flow's entry and passed down to every subflow."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
        policy, digest = load_policy(
            config.policy, set(config.features.columns), config.target.kind
        )
        return cls(settings=settings, config=config, policy=policy, policy_digest=digest)

    def with_model_params(self, params: Mapping[str, Any] | None) -> RunContext:
        """This context with ``params`` over the config's model parameters (a search's best).

        They join the version's fingerprint and config snapshot like any configured value.
        """
        if not params:
            return self
        model = self.config.model
        model = model.model_copy(update={"params": model.params | dict(params)})
        return replace(self, config=self.config.model_copy(update={"model": model}))

    def flow_run_url(self, flow_run_id: object) -> str:
        """The Prefect UI page of a flow run (the link audit entries and events carry)."""
        return f"{self.settings.prefect_ui_url}/runs/flow-run/{flow_run_id}"

    @property
    def tracking_uri(self) -> str:
        return str(self.settings.mlflow_tracking_uri)

    @property
    def model_name(self) -> str:
        return self.config.model_name

    @property
    def project_dir(self) -> Path:
        return self.settings.project_dir
