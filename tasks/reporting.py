"""Reporting steps: the training report and the model card."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from mlops.adapters import reporting
from mlops.adapters.registry import RegisteredVersion
from mlops.adapters.reporting import metrics_table, training_summary
from mlops.core.lineage import DataVersion
from mlops.core.policy import Policy
from tasks import step

write_model_card = step(reporting.write_model_card, name="write-model-card")


@step(name="publish-training-report")
def publish_training_report(
    result: RegisteredVersion,
    data: DataVersion,
    metrics: dict[str, float],
    policy: Policy,
    run_url: str | None,
    model_family: str,
) -> None:
    """Show the holdout metrics and where the model came from as Prefect artifacts."""
    create_table_artifact(
        key="training-metrics",
        table=metrics_table(metrics, policy),
        description=f"{result.name} v{result.version}: holdout metrics against policy v{policy.version}",
    )
    create_markdown_artifact(
        key="training-summary",
        markdown=training_summary(result, data, metrics, policy, run_url, model_family),
        description=f"{result.name} v{result.version}",
    )
