"""The deployments of one pipeline, rendered from its config, and prefect.yaml as a list of models.

Every pipeline of a project gets the same set: training, training to production, the search
(when the config has one), promotion, packaging, release, monitoring and retraining, each named
after the pipeline's ``name`` and tagged with its model's name. The retraining deployment carries
the automations: its triggers match the model's own resource id (``mlops.model.<model_name>``),
so a drift of one model retrains that model only.

``add_model`` appends a pipeline's block to ``prefect.yaml`` as text: what the file holds already,
comments included, stays byte for byte. Adding the same pipeline again when its deployments are
present as they render is a no-op (it says so); present but different is refused, naming the
deployments that differ, because which side is right is for a person to decide.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from mlops.core.config import PipelineConfig, load_pipeline_config
from mlops.core.errors import MlopsError
from mlops.core.events import (
    DRIFT_DETECTED,
    PERFORMANCE_DEGRADED,
    POLICY_UPDATED,
    REGISTRY_VERSION_CREATED,
    model_resource,
)
from mlops.core.files import write_atomic
from mlops.core.lineage import CHALLENGER_ALIAS, CHAMPION_ALIAS

PREFECT_FILE = "prefect.yaml"
WIDTH = 100  # of a line of prefect.yaml

# The project's flows: entrypoint as prefect.yaml spells it, and the flow's name (a deployment
# is addressed as "<flow name>/<deployment name>").
TRAINING = "flows/training.py:training"
SEARCH = "flows/search.py:hyperparameter_search"
PROMOTION = "flows/promotion.py:promotion"
PACKAGING = "flows/packaging.py:packaging"
RELEASE = "flows/release.py:release"
MONITORING = "flows/monitoring.py:monitoring"
RETRAINING = "flows/retraining.py:retraining"
FLOW_NAMES = {
    TRAINING: "training",
    SEARCH: "hyperparameter-search",
    PROMOTION: "promotion",
    PACKAGING: "packaging",
    RELEASE: "release",
    MONITORING: "monitoring",
    RETRAINING: "retraining",
}

WORK_POOL = "{{ $MLOPS_WORK_POOL }}"  # resolved by `prefect deploy` from the environment
MONITORING_INTERVAL_SECONDS = 300
# A trigger fires at the first matching event, then waits out `within`: one burst of drift
# events launches one retraining. A policy change is a single deliberate act: a short cool-down.
DECAY_COOL_DOWN_SECONDS = 600
POLICY_COOL_DOWN_SECONDS = 60
TRIGGER_PARAMETERS = {
    "reason": "{{ event.event }}",
    "event_id": "{{ event.id | string }}",
    "evidence": "{{ event.payload }}",
}
# A version registered outside mlops' flows (MLflow's webhook, mlops.stack.registry_webhooks) is
# judged by the promotion deployment: every such event, no cool-down (each is another version).
REGISTRY_TRIGGER_PARAMETERS = {
    "version": "{{ event.payload.version }}",
    "trigger": "registry webhook (delivery {{ event.payload.delivery_id }})",
    "actor": "registry-webhook",
}

HEADER = """\
# Prefect project: the deployments of {project}, registered by `mlops up` (or `prefect deploy --all`).
# Each deployment runs on a work pool; the local stack's pool is a process pool named `local`.
# One block of deployments per pipeline, each written by `mlops model add PIPELINE_YAML`
# (mlops.stack.deployments renders them from the pipeline's config).
name: {project}
prefect-version: {prefect_version}

build: null
push: null

# Flow runs execute in the project folder on the worker's machine.
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: "{{{{ $MLOPS_PROJECT_DIR }}}}"

# Automations as code: each retraining deployment carries its model's triggers, created with the
# deployment. A trigger fires at the first matching event and then waits out its `within` window,
# so one drift episode (a burst of events) launches one retraining: `within` is the cool-down.
deployments:
"""


class ModelDeploymentError(MlopsError):
    """A pipeline's deployments cannot be written to prefect.yaml, and why."""


def deployments_for(pipeline_path: Path, cfg: PipelineConfig) -> list[dict[str, Any]]:
    """The standard deployments of one pipeline, as prefect.yaml entries.

    Args:
        pipeline_path: the pipeline config, relative to the project (what the flows are given).
        cfg: that pipeline's loaded config.
    """
    name, model = cfg.name, cfg.model_name
    pipeline = pipeline_path.as_posix()
    resource = model_resource(model)["prefect.resource.id"]

    def deployment(
        entrypoint: str,
        stage: list[str],
        description: str,
        parameters: dict[str, Any],
        suffix: str = "",
        **more: Any,
    ) -> dict[str, Any]:
        return {
            "name": name + suffix,
            "description": description,
            "entrypoint": entrypoint,
            "tags": [*stage, model],
            "parameters": parameters,
            **more,
            "work_pool": {"name": WORK_POOL},
        }

    def trigger(
        events: list[str], within: int, parameters: dict[str, str] = TRIGGER_PARAMETERS
    ) -> dict[str, Any]:
        return {
            "type": "event",
            "enabled": True,
            "match": {"prefect.resource.id": resource},
            "expect": events,
            "posture": "Reactive",
            "threshold": 1,
            "within": within,
            "parameters": dict(parameters),
        }

    found = [
        deployment(
            TRAINING,
            ["training"],
            f"Train, evaluate, track and register the {model} model from its DVC-versioned data.",
            {"pipeline": pipeline, "trigger": "deployment"},
        ),
        deployment(
            TRAINING,
            ["training", "release"],
            f"Train the {model} model, run the gates on the new version, and hand a passing one "
            "to the release flow (the policy's strategy and target): versioned data to "
            "production in one run.",
            {"pipeline": pipeline, "trigger": "deployment", "hand_over": "release"},
            suffix="-to-production",
        ),
    ]
    if cfg.search is not None:
        found.append(
            deployment(
                SEARCH,
                ["training", "search"],
                f"Hyper-parameter search of the {model} model: the pipeline's grid, each "
                "candidate cross-validated as a task on Dask (a local cluster, or "
                "MLOPS_DASK_ADDRESS); the best one is trained, registered and judged by the gates.",
                {
                    "pipeline": pipeline,
                    "runner": "dask",
                    "hand_over": "promotion",
                    "trigger": "deployment",
                },
            )
        )
    found += [
        deployment(
            PROMOTION,
            ["promotion"],
            f"Judge the {model} challenger by the policy's gates and make it champion if it passes.",
            {
                "version": CHALLENGER_ALIAS,
                "pipeline": pipeline,
                "trigger": "deployment",
                "actor": "deployment",
            },
        ),
        deployment(
            PACKAGING,
            ["packaging"],
            f"Build the {model} champion's model server image (prefect-docker), check that it "
            "answers as the model does, push it to MLOPS_IMAGE_REGISTRY and record its digest on "
            "the version. Needs a Docker-API engine at DOCKER_HOST (infra/docker/README.md).",
            {"version": CHAMPION_ALIAS, "model": model},
        ),
        deployment(
            RELEASE,
            ["release"],
            f"Put a validated {model} version into production by the policy's strategy "
            "(blue-green, canary or shadow) on a target (local by default; kserve, gitops or "
            "lambda by parameter or policy), watch it, and roll it back by itself on a breach.",
            {
                "version": CHALLENGER_ALIAS,
                "pipeline": pipeline,
                "trigger": "deployment",
                "actor": "deployment",
            },
        ),
        deployment(
            MONITORING,
            ["monitoring"],
            f"Watch {model} in production: the prediction log since the last judged window "
            "against the champion's training data (Evidently drift) and live performance where "
            f"labels arrived; emits {DRIFT_DETECTED} / {PERFORMANCE_DEGRADED} with the evidence.",
            {"pipeline": pipeline},
            schedules=[{"interval": MONITORING_INTERVAL_SECONDS}],
            concurrency_limit=1,
        ),
        deployment(
            RETRAINING,
            ["retraining"],
            f"Retrain {model} when production drifts, its live performance decays, or its "
            "policy changes: trains on the current data version plus labelled production rows, "
            "runs the gates, and releases a passing version by the policy's strategy. The "
            "champion keeps serving on any failure.",
            {"pipeline": pipeline},
            concurrency_limit=1,
        ),
    ]
    # after work_pool, as prefect.yaml reads best: what runs it, then what launches it
    found[-1]["triggers"] = [
        trigger([DRIFT_DETECTED, PERFORMANCE_DEGRADED], DECAY_COOL_DOWN_SECONDS),
        trigger([POLICY_UPDATED], POLICY_COOL_DOWN_SECONDS),
    ]
    promotion = next(d for d in found if d["entrypoint"] == PROMOTION)
    promotion["triggers"] = [trigger([REGISTRY_VERSION_CREATED], 0, REGISTRY_TRIGGER_PARAMETERS)]
    return found


def deployment_names(deployments: list[dict[str, Any]]) -> list[str]:
    """``flow/deployment`` of each entry, as ``prefect deployment run`` takes it."""
    return [f"{flow_name(d)}/{d.get('name')}" for d in deployments]


def flow_name(deployment: dict[str, Any]) -> str:
    entrypoint = str(deployment.get("entrypoint", ""))
    return FLOW_NAMES.get(entrypoint) or entrypoint.rsplit(":", 1)[-1].replace("_", "-")


def render_block(pipeline_path: Path, cfg: PipelineConfig, indent: int = 2) -> str:
    """The text of a pipeline's deployments for prefect.yaml's ``deployments:`` list: a comment
    naming the model, then its entries, blank lines between, each list item indented by
    ``indent``."""
    pad = " " * indent
    resource = model_resource(cfg.model_name)["prefect.resource.id"]
    entries = []
    for entry in deployments_for(pipeline_path, cfg):
        comment = (
            [f"# Its automations: events about {resource} retrain this model only.\n"]
            if entry["entrypoint"] == RETRAINING
            else []
        )
        entries.append("".join(pad + line for line in [*comment, *_entry_lines(entry)]))
    heading = (
        f"{pad}# {cfg.model_name} ({pipeline_path.as_posix()}): written by `mlops model add`.\n"
    )
    return heading + "\n".join(entries)


def _entry_lines(entry: dict[str, Any]) -> list[str]:
    """One deployment as a YAML list item, as PyYAML writes it, but for a description too long
    for one line: that one is folded at the page width by hand (PyYAML's folding overruns it)."""
    description = str(entry.get("description", ""))
    one_line = len(f"    description: {description}") <= WIDTH - 2  # within the list's indent
    rest = {k: _Flow(v) if k == "tags" else v for k, v in entry.items()}
    if not one_line:
        del rest["description"]
    first, *others = yaml.dump(
        [rest], Dumper=_Dumper, sort_keys=False, width=WIDTH, allow_unicode=True
    ).splitlines(keepends=True)
    if one_line:
        return [first, *others]
    wrapped = textwrap.wrap(
        description, WIDTH - 6, break_long_words=False, break_on_hyphens=False
    )  # the page less the indent
    return [first, "  description: >-\n", *(f"    {line}\n" for line in wrapped), *others]


def new_project_file(project: str) -> str:
    """A prefect.yaml with no deployment yet, for a project named ``project``."""
    try:
        prefect_version = version("prefect")
    except PackageNotFoundError:  # pragma: no cover - prefect is a dependency
        prefect_version = "3"
    return HEADER.format(project=project, prefect_version=prefect_version)


# prefect.yaml as models -------------------------------------------------------------------------
@dataclass(frozen=True)
class DeployedModel:
    """One pipeline that has deployments in prefect.yaml."""

    pipeline: str  # relative to the project, as the deployments' `pipeline` parameter says
    model: str | None  # its model_name, None when its config cannot be loaded
    deployments: tuple[str, ...]  # flow/deployment
    problem: str | None = None  # why the config cannot be loaded
    config: PipelineConfig | None = None


def read_deployments(project_dir: Path) -> list[dict[str, Any]]:
    """The ``deployments`` of the project's prefect.yaml (empty if it has none)."""
    path = project_dir / PREFECT_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelDeploymentError(
            f"{path}: not found (add a model with `mlops model add PIPELINE_YAML`)"
        ) from None
    except yaml.YAMLError as exc:
        raise ModelDeploymentError(f"{path}: not valid YAML: {exc}") from None
    return _deployment_list(raw, path)


def deployed_models(project_dir: Path) -> list[DeployedModel]:
    """The pipelines prefect.yaml deploys (by their deployments' ``pipeline`` parameter), in the
    file's order, each with its model name read from its config."""
    by_pipeline: dict[str, list[str]] = {}
    for entry in read_deployments(project_dir):
        pipeline = (entry.get("parameters") or {}).get("pipeline")
        if isinstance(pipeline, str):
            by_pipeline.setdefault(pipeline, []).append(deployment_names([entry])[0])
    found = []
    for pipeline, names in by_pipeline.items():
        try:
            cfg = load_pipeline_config(project_dir / pipeline)
        except MlopsError as exc:
            found.append(DeployedModel(pipeline, None, tuple(names), str(exc)))
            continue
        found.append(DeployedModel(pipeline, cfg.model_name, tuple(names), None, cfg))
    return found


# add_model --------------------------------------------------------------------------------------
def add_model(
    project_dir: Path, pipeline: Path, out: Callable[[str], None] | None = print
) -> list[str]:
    """Append the deployments of ``pipeline`` (absolute, or relative to the project) to the
    project's prefect.yaml, creating the file if there is none; returns their names
    (``flow/deployment``).

    A pipeline name or model name another pipeline of the file deploys already is refused, naming
    both. The same pipeline again, its deployments unchanged, writes nothing and says so.
    """
    project_dir = project_dir.resolve()
    absolute = pipeline if pipeline.is_absolute() else project_dir / pipeline
    absolute = absolute.resolve()
    try:
        relative = absolute.relative_to(project_dir)
    except ValueError:
        raise ModelDeploymentError(
            f"{pipeline}: the pipeline config must be inside the project folder {project_dir} "
            "(flow runs find it there by a relative path)"
        ) from None
    cfg = load_pipeline_config(absolute)
    path = project_dir / PREFECT_FILE
    text = path.read_text(encoding="utf-8") if path.exists() else new_project_file(project_dir.name)
    try:
        existing = _deployment_list(yaml.safe_load(text), path)
    except yaml.YAMLError as exc:
        raise ModelDeploymentError(f"{path}: not valid YAML: {exc}") from None
    wanted = deployments_for(relative, cfg)
    names = deployment_names(wanted)
    say = out or (lambda _line: None)
    ours = _check_room(existing, wanted, relative, cfg, path)
    if ours:  # present already, exactly as it renders
        say(f"{cfg.model_name} ({relative}): its {len(ours)} deployments are in {PREFECT_FILE} "
            "already, unchanged; nothing written")  # fmt: skip
        return names
    indent = _item_indent(text, path)
    joined = text if text.endswith("\n") else text + "\n"
    updated = joined + "\n" + render_block(relative, cfg, indent)
    try:
        reread = _deployment_list(yaml.safe_load(updated), path)
    except yaml.YAMLError as exc:
        raise ModelDeploymentError(
            f"{path}: appending the deployments of {relative} would not parse ({exc}); "
            "nothing written"
        ) from None
    if reread != existing + wanted:
        raise ModelDeploymentError(
            f"{path}: appended text does not read back as the file's deployments plus those of "
            f"{relative} (is `deployments:` the last top-level key?); nothing written"
        )
    write_atomic(path, updated)
    say(f"{cfg.model_name} ({relative}): {len(names)} deployments added to {PREFECT_FILE}: "
        + ", ".join(names))  # fmt: skip
    return names


def _check_room(
    existing: list[dict[str, Any]],
    wanted: list[dict[str, Any]],
    relative: Path,
    cfg: PipelineConfig,
    path: Path,
) -> list[dict[str, Any]]:
    """The entries of ``existing`` that are this pipeline's, if they are exactly ``wanted``
    (else empty); raises when another pipeline holds the name or model, or ours are stale."""
    pipeline = relative.as_posix()

    def given(e: dict[str, Any]) -> Any:
        return (e.get("parameters") or {}).get("pipeline")

    # packaging names the model, not the pipeline: it is ours by its name beside our others
    named = {e.get("name") for e in existing if given(e) == pipeline}
    ours = [
        e
        for e in existing
        if given(e) == pipeline or e in wanted or (given(e) is None and e.get("name") in named)
    ]
    others = [e for e in existing if not any(e is o for o in ours)]
    keys = {(d["entrypoint"], d["name"]) for d in wanted}
    taken = [e for e in others if (e.get("entrypoint"), e.get("name")) in keys]
    if taken:
        raise ModelDeploymentError(
            f"{relative}: its pipeline name {cfg.name!r} is already deployed by "
            f"{_owner(taken)} ({', '.join(deployment_names(taken))}) in {path}; "
            "give the pipeline another `name`"
        )
    resource = model_resource(cfg.model_name)["prefect.resource.id"]
    claimed = [e for e in others if _claims(e, cfg.model_name, resource)]
    if claimed:
        raise ModelDeploymentError(
            f"{relative}: its model_name {cfg.model_name!r} is already deployed by "
            f"{_owner(claimed)} ({', '.join(deployment_names(claimed))}) in {path}; "
            "two pipelines of one model would retrain and release over each other: "
            "give the pipeline another `model_name`"
        )
    if not ours:
        return []
    stale = [e for e in ours if e not in wanted]
    missing = [w for w in wanted if w not in ours]
    if not stale and not missing:
        return ours
    raise ModelDeploymentError(
        f"{relative}: {path} holds deployments of this pipeline that differ from what its config "
        f"renders now (in the file: {', '.join(deployment_names(stale)) or 'none'}; rendered: "
        f"{', '.join(deployment_names(missing)) or 'none'}); edit them, or remove its block and "
        "run `mlops model add` again"
    )


def _claims(entry: dict[str, Any], model: str, resource: str) -> bool:
    """Whether a deployment acts on ``model``: its automations match the model's resource, or a
    parameter names it."""
    if (entry.get("parameters") or {}).get("model") == model:
        return True
    return any(
        ((t or {}).get("match") or {}).get("prefect.resource.id") == resource
        for t in entry.get("triggers") or []
    )


def _owner(entries: list[dict[str, Any]]) -> str:
    pipelines = sorted(
        {str((e.get("parameters") or {}).get("pipeline")) for e in entries}
        - {"None"}  # packaging names the model, not the pipeline
    )
    return ", ".join(pipelines) if pipelines else "another pipeline"


def _deployment_list(raw: Any, path: Path) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise ModelDeploymentError(f"{path}: expected a mapping at the top level")
    deployments = raw.get("deployments")
    if deployments is None:
        return []
    if not isinstance(deployments, list) or not all(isinstance(d, dict) for d in deployments):
        raise ModelDeploymentError(f"{path}: `deployments` must be a list of mappings")
    return deployments


def _item_indent(text: str, path: Path) -> int:
    """How far the ``deployments:`` list's items are indented (2 in a new file); refuses a file
    where text appended at the end would not land in that list."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip() == "deployments:"]
    if not starts:
        if any(line.startswith("deployments:") for line in lines):
            raise ModelDeploymentError(
                f"{path}: write `deployments:` on a line of its own, its entries below it, "
                "for `mlops model add` to append to it"
            )
        raise ModelDeploymentError(f"{path}: has no `deployments:` list to append to")
    after = lines[starts[-1] + 1 :]
    if any(line and not line[0].isspace() and not line.startswith(("#", "-")) for line in after):
        raise ModelDeploymentError(
            f"{path}: `deployments:` must be the last top-level key for `mlops model add` to "
            "append to it; move it to the end of the file"
        )
    for line in after:
        stripped = line.lstrip(" ")
        if stripped.startswith("- "):
            return len(line) - len(stripped)
    return 2


class _Flow(list[str]):
    """A short list written on one line (`tags: [training, model]`)."""


class _Dumper(yaml.SafeDumper):
    """prefect.yaml's style: nested lists indented, Jinja templates double-quoted."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if "{{" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_flow(dumper: yaml.SafeDumper, value: _Flow) -> yaml.SequenceNode:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(_Flow, _represent_flow)
