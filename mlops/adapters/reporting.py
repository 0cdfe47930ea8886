"""What runs show in the Prefect UI and MLflow: a training run's metrics table and summary, the
model card, a monitoring window's table and verdict."""

from __future__ import annotations

from typing import Any

from mlops.adapters.audit import AuditEntry
from mlops.adapters.registry import RUN_ID_TAG, RegisteredVersion, registry_client
from mlops.adapters.tracking import IMPORTANCE_PLOT, load_importance
from mlops.core.lineage import (
    CODE_TAG,
    DATA_MD5_TAG,
    DATA_PATH_TAG,
    DATA_REV_TAG,
    FLOW_RUN_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    POLICY_DIGEST_TAG,
    POLICY_VERSION_TAG,
    TRIGGER_TAG,
    DataVersion,
)
from mlops.core.metrics import KNOWN_METRICS
from mlops.core.policy import Policy
from mlops.ml.explanations import Importance
from mlops.ml.monitoring import MonitoringOutcome


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
        f"- git commit: `{tags.get(GIT_COMMIT_TAG, '?')}`"
        + (" (uncommitted changes)" if tags.get(GIT_DIRTY_TAG) == "true" else ""),
        f"- MLflow run: {run_url or tags.get(RUN_ID_TAG, '?')}",
        f"- policy v{policy.version}: "
        + ("all metric thresholds pass" if not failing else f"fails {', '.join(failing)}"),
        f"- holdout ROC AUC {metrics.get('roc_auc', float('nan')):.4f}, "
        f"F1 {metrics.get('f1', float('nan')):.4f}",
    ]
    return "\n".join(lines) + "\n"


def importance_lines(importance: Importance | None, top: int = 10) -> list[str]:
    """The model card's section on what drives the model's answers."""
    if importance is None:
        return ["- not computed for this version (registered before explanations)"]
    lines = [
        f"{importance.measure}, over {importance.rows} holdout rows "
        f"(chart: `{IMPORTANCE_PLOT}` in the training run)"
        + (f"; {importance.note}" if importance.note else ""),
        "",
    ]
    return lines + [f"- {name}: {value:.4g}" for name, value in importance.top(top)]


def model_card(
    version: RegisteredVersion,
    gates: list[dict[str, Any]],
    entries: list[AuditEntry],
    importance: Importance | None = None,
) -> str:
    """A model card: what the version is, where it came from, how it was judged, what drives its
    answers, what happened to it."""
    t = version.tags
    lines = [
        f"# Model card: {version.name} v{version.version}",
        "",
        "## Lineage",
        "",
        f"- data: `{t.get(DATA_PATH_TAG)}` md5 `{t.get(DATA_MD5_TAG)}` (rev `{t.get(DATA_REV_TAG)}`)",
        f"- code: git `{t.get(GIT_COMMIT_TAG)}`"
        + (" with uncommitted changes" if t.get(GIT_DIRTY_TAG) == "true" else "")
        + f", pipeline code sha256 `{t.get(CODE_TAG, '')[:16]}`",
        f"- training: MLflow run `{version.run_id}`, Prefect flow run `{t.get(FLOW_RUN_TAG)}`, "
        f"trigger `{t.get(TRIGGER_TAG)}`",
        f"- policy: v{t.get(POLICY_VERSION_TAG)} (digest `{t.get(POLICY_DIGEST_TAG)}`)",
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
        "## What drives its answers",
        "",
        *importance_lines(importance),
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
    card = model_card(version, gates, entries, load_importance(tracking_uri, version.run_id))
    client = registry_client(tracking_uri)
    client.log_text(version.run_id, card, "model_card.md")
    client.update_model_version(version.name, str(version.version), description=card)
    return card


def monitoring_table(outcome: MonitoringOutcome) -> list[dict[str, Any]]:
    """One row per figure of a monitoring window: its span, rows, each objective's verdict, each
    column's skew score and each feature's influence shift."""
    s, a = outcome.skew, outcome.attribution
    rows: list[dict[str, Any]] = [
        {"figure": "window", "value": f"{outcome.since or 'start'} .. {outcome.until}"},
        {"figure": "rows", "value": outcome.rows},
    ]
    verdicts = outcome.verdicts()
    rows += [
        {"figure": name, "value": line} for name, line in verdicts.items() if name != "performance"
    ]
    rows += [
        {"figure": "predictions", "value": s.predictions.line() if s.predictions else "not judged"},
        {"figure": f"live {outcome.performance.metric}", "value": verdicts["performance"]},
    ]
    rows += [
        {
            "figure": f"skew score {c} ({s.methods.get(c, '')})",
            "value": f"{score}{' drifted' if c in s.drifted else ''}",
        }
        for c, score in sorted(s.scores.items())
    ]
    return rows + [
        {
            "figure": f"influence {i.feature} ({a.space})",
            "value": f"{i.reference:.4g} -> {i.window:.4g} ({i.shift:+.3f}){' moved' if i.moved else ''}",
        }
        for i in a.influences
    ]


def monitoring_summary(
    outcome: MonitoringOutcome, report_url: str | None, charts: dict[str, str] | None = None
) -> str:
    """A monitoring window's verdict in markdown, linking the Evidently report and showing each
    drifted column's chart (column -> image URL)."""
    lines = [f"## {outcome.model} v{outcome.version}: monitoring window", ""]
    lines += [f"- **{name}**: {line}" for name, line in outcome.verdicts().items()]
    if outcome.skew.predictions is not None:
        lines.append(f"- **predictions**: {outcome.skew.predictions.line()}")
    if report_url:
        lines.append(f"- Evidently report: [{report_url}]({report_url})")
    lines += [f"- problem: {problem}" for problem in outcome.problems]
    lines += [f"- event `{name}`: {eid}" for name, eid in outcome.events.items()]
    if charts:
        lines += ["", "### Skewed columns: the training data against the window", ""]
        lines += [f"![{column}]({url})" for column, url in charts.items()]
    return "\n".join(lines)
