"""What a training run shows in the Prefect UI: a metrics table and a short summary."""

from __future__ import annotations

from typing import Any

from mlops.adapters.audit import AuditEntry
from mlops.adapters.registry import RegisteredVersion, registry_client
from mlops.core.policy import KNOWN_METRICS, Policy
from mlops.ml.data import DataVersion


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


def model_card(
    version: RegisteredVersion, gates: list[dict[str, Any]], entries: list[AuditEntry]
) -> str:
    """A model card: what the version is, where it came from, how it was judged, what happened to it."""
    t = version.tags
    lines = [
        f"# Model card: {version.name} v{version.version}",
        "",
        "## Lineage",
        "",
        f"- data: `{t.get('mlops.data.path')}` md5 `{t.get('mlops.data.md5')}` (rev `{t.get('mlops.data.rev')}`)",
        f"- code: git `{t.get('mlops.git.commit')}`"
        + (" with uncommitted changes" if t.get("mlops.git.dirty") == "true" else "")
        + f", pipeline code sha256 `{t.get('mlops.code.sha256', '')[:16]}`",
        f"- training: MLflow run `{version.run_id}`, Prefect flow run `{t.get('mlops.prefect.flow_run_id')}`, "
        f"trigger `{t.get('mlops.trigger')}`",
        f"- policy: v{t.get('mlops.policy.version')} (digest `{t.get('mlops.policy.digest')}`)",
        "",
        "## Holdout metrics",
        "",
        *(f"- {k}: {v:.4f}" for k, v in sorted(version.metrics.items())),
        "",
        "## Gates",
        "",
        *(
            [f"- {g['gate']}: {'pass' if g['passed'] else 'FAIL'} — {g['reason']}" for g in gates]
            or ["- not judged yet (the promotion flow runs the gates)"]
        ),
        "",
        "## History",
        "",
        *(
            [
                f"- {e.time:%Y-%m-%d %H:%M:%S} {e.action} by {e.actor} ({e.trigger}): {e.reason}"
                for e in entries
                if e.version == version.version
            ]
            or ["- registered; no decisions yet"]
        ),
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    tracking_uri: str,
    version: RegisteredVersion,
    gates: list[dict[str, Any]],
    entries: list[AuditEntry],
) -> str:
    """Write the version's model card to its MLflow run (model_card.md) and its description."""
    card = model_card(version, gates, entries)
    client = registry_client(tracking_uri)
    client.log_text(version.run_id, card, "model_card.md")
    client.update_model_version(version.name, str(version.version), description=card)
    return card
