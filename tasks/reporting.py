"""What a training run shows in the Prefect UI: a metrics table and a short summary."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mlops.policy import KNOWN_METRICS, Policy
from tasks.data import DataVersion
from tasks.registry import RegisteredVersion


def metrics_table(metrics: dict[str, float], policy: Policy) -> list[dict[str, str]]:
    """One row per holdout metric, with the policy's threshold and verdict where it sets one."""
    rows = []
    for name, value in metrics.items():
        threshold = policy.metrics.get(name)
        bound = ""
        verdict = ""
        if threshold is not None:
            bound = f">= {threshold.min}" if threshold.min is not None else f"<= {threshold.max}"
            verdict = "pass" if threshold.passes(value) else "FAIL"
        rows.append(
            {
                "metric": name,
                "value": f"{value:.4f}",
                "better": KNOWN_METRICS[name],
                "policy": bound,
                "verdict": verdict,
            }
        )
    return rows


def training_summary(
    result: RegisteredVersion,
    data: DataVersion,
    metrics: dict[str, float],
    policy: Policy,
    run_url: str | None,
    model_family: str,
) -> str:
    failing = [m for m, ok in policy.check_metrics(metrics).items() if not ok]
    tags = result.tags
    head = (
        f"Reused **{result.name} v{result.version}**: identical data, code and parameters were "
        "already trained and registered; nothing new was registered."
        if result.reused
        else f"Registered **{result.name} v{result.version}** ({model_family})."
    )
    lines = [
        "# Training",
        "",
        head,
        "",
        f"- data: `{data.path}` md5 `{data.md5}` ({data.size:,} bytes, rev `{data.rev or 'workspace'}`)",
        f"- git commit: `{tags.get('mlops.git.commit', '?')}`"
        + (" (uncommitted changes)" if tags.get("mlops.git.dirty") == "true" else ""),
        f"- MLflow run: {run_url or tags.get('mlops.mlflow.run_id', '?')}",
        f"- policy v{policy.version}: "
        + ("all metric thresholds pass" if not failing else f"fails {', '.join(failing)}"),
        f"- holdout ROC AUC {metrics.get('roc_auc', float('nan')):.4f}, "
        f"F1 {metrics.get('f1', float('nan')):.4f}",
    ]
    return "\n".join(lines) + "\n"


@task(name="publish-training-report", cache_policy=NO_CACHE, persist_result=False)
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
