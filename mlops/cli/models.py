"""The models of a project as `mlops models` and `mlops status` list them: one line per pipeline
that prefect.yaml deploys, with its champion, where it serves and its last monitoring verdict.

prefect.yaml and the pipeline configs are read from the project; the champion and the verdict
come from the MLflow server, and where a model serves from the local release target's state.
With the stack down, what only the servers know is shown as unknown and a note says why.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlops.core.errors import MlopsError
from mlops.core.settings import Settings
from mlops.stack.deployments import PREFECT_FILE, DeployedModel, deployed_models
from mlops.stack.processes import healthy

UNKNOWN = "unknown"


@dataclass(frozen=True)
class ModelRow:
    model: str
    pipeline: str
    champion: str
    serves: str
    monitoring: str


@dataclass(frozen=True)
class ModelTable:
    rows: list[ModelRow]
    notes: list[str]  # what could not be known, and why

    def lines(self) -> list[str]:
        """The table as text: a header, one line per model, then the notes."""
        header = ModelRow("MODEL", "PIPELINE", "CHAMPION", "SERVES", "LAST MONITORING")
        cells = [[getattr(r, f) for f in _FIELDS] for r in (header, *self.rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(_FIELDS) - 1)]
        table = [
            "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]])
            for row in cells
        ]
        return table + self.notes


_FIELDS = ("model", "pipeline", "champion", "serves", "monitoring")


def model_table(settings: Settings) -> ModelTable:
    """Each model prefect.yaml deploys, with what the stack can tell of it."""
    models = deployed_models(settings.project_dir)
    notes: list[str] = []
    uri = str(settings.mlflow_tracking_uri)
    mlflow_up = healthy(f"{uri}/health")
    if not models:
        notes.append(
            f"no model in {settings.project_dir / PREFECT_FILE} "
            "(add one with `mlops model add PIPELINE_YAML`)"
        )
    elif not mlflow_up:
        notes.append(
            f"the MLflow server is not answering at {uri}: champions and monitoring verdicts "
            "are unknown (start the local stack with `mlops up`)"
        )
    rows = [_row(settings, m, uri if mlflow_up else None) for m in models]
    notes += [f"{m.pipeline}: {m.problem}" for m in models if m.problem]
    return ModelTable(rows, notes)


def _row(settings: Settings, deployed: DeployedModel, tracking_uri: str | None) -> ModelRow:
    if deployed.model is None or deployed.config is None:
        return ModelRow("?", deployed.pipeline, UNKNOWN, UNKNOWN, "config unreadable (see below)")
    name, experiment = deployed.model, deployed.config.experiment
    champion = _champion(tracking_uri, name) if tracking_uri else UNKNOWN
    monitoring = _monitoring(tracking_uri, experiment, name) if tracking_uri else UNKNOWN
    return ModelRow(name, deployed.pipeline, champion, _serves(settings, name), monitoring)


def _champion(tracking_uri: str, model: str) -> str:
    from mlops.release.promotion import current_champion

    version = current_champion(tracking_uri, model)
    return f"v{version}" if version is not None else "none"


def _monitoring(tracking_uri: str, experiment: str, model: str) -> str:
    from mlflow.exceptions import MlflowException

    from mlops.adapters.tracking import last_monitoring_window

    try:
        window = last_monitoring_window(tracking_uri, experiment, model)
    except MlflowException as exc:  # a server that refuses the search: say so, list the rest
        return f"{UNKNOWN} ({exc.message})"
    if window is None:
        return "never monitored"
    drift = {None: "drift not judged", True: "DRIFT", False: "no drift"}[window.drift]
    perf = {None: "performance not judged", True: "DEGRADED", False: "performance holds"}[
        window.degraded
    ]
    return f"{drift}, {perf} (v{window.version}, window to {window.ended})"


def _serves(settings: Settings, model: str) -> str:
    """The local router's URL when this model's stable slot runs and the router answers."""
    if not (settings.state_dir / "release" / model).is_dir():  # LocalTarget would make it
        return "not on the local target"
    from mlops.release.targets.local import LocalTarget

    try:
        target = LocalTarget(settings, model)
        state = target.state()
    except MlopsError as exc:
        return f"{UNKNOWN} ({exc})"
    if state.stable is None:
        return "nowhere (its local servers are stopped)"
    if state.traffic is None:
        return f"nowhere (v{state.stable.version} runs, the local router does not answer)"
    return f"{target.router.url} (v{state.stable.version})"
