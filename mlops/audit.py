"""The audit trail: an append-only record of every gate decision, promotion, rejection and rollback.

Entries live next to the registry, in the MLflow tracking server's artifact store: one run per
model in the experiment ``mlops-audit``, one JSON file per entry under ``entries/``, named by time
and a random id so that writers never overwrite each other. Nothing is ever rewritten or deleted
by the product; the store is as durable as the MLflow artifact store (a folder, or S3).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import mlflow
from mlflow import MlflowClient
from pydantic import BaseModel, Field

AUDIT_EXPERIMENT = "mlops-audit"
ENTRIES = "entries"
MODEL_TAG = "mlops.audit.model"

Action = Literal[
    "gate-decision",
    "approval",
    "promoted",
    "rejected",
    "rolled-back",
    "policy-applied",
    "release-started",
    "released",
    "release-rolled-back",
    "release-failed",
    "retraining-triggered",
    "retraining-skipped",
    "retraining-failed",
]


class AuditEntry(BaseModel):
    """One recorded act: who or what did it, to which versions, on what evidence, under which policy."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model: str
    version: int | None = None
    action: Action
    actor: str
    trigger: str
    reason: str
    previous_champion: int | None = None
    policy_version: int | None = None
    policy_digest: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    links: dict[str, str] = Field(default_factory=dict)


class AuditTrail:
    """Append and read audit entries for models on one MLflow tracking server."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(AUDIT_EXPERIMENT)
        if exp is not None:
            return str(exp.experiment_id)
        try:
            return str(self.client.create_experiment(AUDIT_EXPERIMENT))
        except mlflow.exceptions.MlflowException:  # created meanwhile by another writer
            exp = self.client.get_experiment_by_name(AUDIT_EXPERIMENT)
            assert exp is not None
            return str(exp.experiment_id)

    def _runs(self, model: str) -> list[str]:
        runs = self.client.search_runs(
            [self._experiment_id()], filter_string=f"tags.`{MODEL_TAG}` = '{model}'"
        )
        return sorted(r.info.run_id for r in runs)

    def _run_for(self, model: str) -> str:
        runs = self._runs(model)
        if runs:
            return runs[0]
        run = self.client.create_run(
            self._experiment_id(), run_name=f"audit-{model}", tags={MODEL_TAG: model}
        )
        return str(run.info.run_id)

    def append(self, entry: AuditEntry) -> str:
        """Write one entry; returns its artifact path."""
        stamp = entry.time.strftime("%Y%m%dT%H%M%S%fZ")
        path = f"{ENTRIES}/{stamp}-{entry.id}.json"
        self.client.log_dict(self._run_for(entry.model), entry.model_dump(mode="json"), path)
        return path

    def entries(self, model: str, version: int | None = None) -> list[AuditEntry]:
        """Every entry for ``model`` (or one version of it, with the model-wide ones), oldest first."""
        out: list[AuditEntry] = []
        for run_id in self._runs(model):
            if not self.client.list_artifacts(run_id, ENTRIES):
                continue
            folder = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=ENTRIES, tracking_uri=self.tracking_uri
            )
            for path in sorted(Path(folder).glob("*.json")):
                out.append(AuditEntry.model_validate_json(path.read_text()))
        out.sort(key=lambda e: e.time)
        if version is not None:
            out = [e for e in out if e.version in (version, None) or e.previous_champion == version]
        return out


def describe_version(tracking_uri: str, model: str, version: int | None = None) -> str:
    """The lineage chain of one version (default: the champion) as text for a person."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    registered = client.get_registered_model(model)
    if version is None:
        if "champion" not in registered.aliases:
            raise LookupError(f"{model} has no champion; name a version with --version")
        version = int(registered.aliases["champion"])
    mv = client.get_model_version(model, str(version))
    tags = mv.tags
    run = client.get_run(mv.run_id) if mv.run_id else None
    aliases = sorted(a for a, v in registered.aliases.items() if int(v) == version)
    gates: list[dict[str, Any]] = []
    if mv.run_id and any(a.path == "gates.json" for a in client.list_artifacts(mv.run_id)):
        path = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path="gates.json", tracking_uri=tracking_uri
        )
        gates = json.loads(Path(path).read_text())["gates"]
    entries = AuditTrail(tracking_uri).entries(model, version)
    lines = [
        f"{model} v{version}",
        f"  aliases          {', '.join(aliases) or '(none)'}"
        + ("  <- serving as champion" if "champion" in aliases else ""),
        f"  registered       {datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC):%Y-%m-%d %H:%M:%S} UTC",
        "data",
        f"  path             {tags.get('mlops.data.path', '?')}",
        f"  dvc md5          {tags.get('mlops.data.md5', '?')}",
        f"  revision         {tags.get('mlops.data.rev', '?')}",
        *(
            [
                f"  production rows  {tags['mlops.data.production_rows']} labelled "
                f"(parquet md5 {tags.get('mlops.data.production_md5', '?')})"
            ]
            if "mlops.data.production_rows" in tags
            else []
        ),
        "code",
        f"  git commit       {tags.get('mlops.git.commit', '?')}"
        + (" (uncommitted changes)" if tags.get("mlops.git.dirty") == "true" else ""),
        f"  pipeline sha256  {tags.get('mlops.code.sha256', '?')}",
        "training",
        f"  trigger          {tags.get('mlops.trigger', '?')}",
        f"  prefect run      {tags.get('mlops.prefect.flow_run_id', '?')}",
        f"  mlflow run       {mv.run_id}",
    ]
    if run is not None:
        lines.append("parameters")
        lines += [f"  {k:<32} {v}" for k, v in sorted(run.data.params.items())]
        lines.append("holdout metrics")
        lines += [
            f"  {k.removeprefix('holdout_'):<16} {v:.4f}"
            for k, v in sorted(run.data.metrics.items())
            if k.startswith("holdout_")
        ]
    lines.append(
        f"policy             v{tags.get('mlops.policy.version', '?')} (digest {tags.get('mlops.policy.digest', '?')})"
    )
    lines.append("gates")
    lines += [
        f"  {g['gate']:<24} {'pass' if g['passed'] else 'FAIL'}  {g['reason']}" for g in gates
    ] or ["  (not judged yet: run the promotion flow)"]
    lines.append("history")
    lines += [
        f"  {e.time:%Y-%m-%d %H:%M:%S}  {e.action:<14} by {e.actor} ({e.trigger}): {e.reason}"
        + (f" [approver {e.evidence['approver']}]" if "approver" in e.evidence else "")
        for e in entries
    ] or ["  (no audit entries)"]
    return "\n".join(lines)
