"""`mlops init`: from a data file to a pipeline that trains, judged by a policy made for it.

The file is copied into the project's ``data/`` and versioned with DVC; its data contract is
inferred (``mlops.ml.contract_inference``) and printed for review; a quick cross-validated fit of
the default model (``mlops.ml.baseline``) sets the starting thresholds; the pipeline config,
contract and policy are written to ``pipelines/<name>/`` and loaded back as training will load
them; the model's deployments are added to ``prefect.yaml`` and registered when the local stack
is up. Everything that can be refused (the file, the target, the problem type) is refused before
anything is written.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlops.cli.run import need_stack, reported, settings
from mlops.core.errors import MlopsError

if TYPE_CHECKING:
    import pandas as pd

    from mlops.core.config import FeatureConfig, ModelConfig, TargetConfig
    from mlops.core.settings import Settings
    from mlops.ml.contract_inference import InferredContract

#: The model every new pipeline starts with, per problem the family's classifier or regressor.
DEFAULT_FAMILY = "hist_gradient_boosting"
DEFAULT_PARAMS = {"max_iter": 100, "learning_rate": 0.1, "random_state": 42}
TEST_SIZE = 0.2
SPLIT_SEED = 42
#: An int target of this few values may be classes: the note on its problem type says so.
FEW_VALUES = 10

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class InitRequest:
    """What `mlops init` was asked to do."""

    data: Path
    target: str
    problem: str | None = None
    name: str | None = None
    positive: str | None = None
    project_dir: Path | None = None
    out_dir: Path | None = None
    na_values: tuple[str, ...] = ()
    register: bool = True


@dataclass(frozen=True)
class Initialised:
    """What `mlops init` wrote."""

    name: str
    pipeline: Path
    data_path: str  # relative to the project
    deployments: tuple[str, ...]
    next_command: str


def pipeline_name(request: InitRequest) -> str:
    """The pipeline's (and registered model's) name: ``--name``, else the file's name in
    lower case with anything but letters, digits, ``-`` and ``_`` made a ``-``."""
    if request.name is not None:
        if not _NAME.match(request.name):
            raise MlopsError(
                f"--name {request.name!r}: use lower-case letters, digits, '-' and '_', "
                "starting with a letter or digit"
            )
        return request.name
    stem = request.data.name.split(".")[0]
    name = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")
    if not name:
        raise MlopsError(f"{request.data}: no name can be made from the file's name; pass --name")
    return name


def check_target(frame: pd.DataFrame, target: str, source: Path) -> None:
    """Refuse a target that is not a column, has missing values or holds one value."""
    if target not in frame.columns:
        shown = ", ".join(map(str, frame.columns[:20])) + (", …" if len(frame.columns) > 20 else "")
        raise MlopsError(f"--target {target!r} is not a column of {source} (its columns: {shown})")
    column = frame[target]
    missing = int(column.isna().sum())
    if missing:
        raise MlopsError(
            f"--target {target!r}: {missing} of {len(frame)} rows of {source} have no value; "
            "a model cannot learn from them: drop or fill them first"
        )
    values = column.unique()
    if len(values) < 2:
        raise MlopsError(
            f"--target {target!r} holds one value ({str(values[0])!r}) in all {len(frame)} rows of "
            f"{source}: there is nothing to predict"
        )


def resolve_problem(
    frame: pd.DataFrame, inferred: InferredContract, request: InitRequest
) -> tuple[TargetConfig, str]:
    """The target with its problem type and classes, and a note on how the type was chosen.

    ``--problem`` wins; else ``mlops.core.config.infer_problem`` on the target's contract, except
    that an int column of exactly two values is binary (a 0/1 label), not a regression. A
    classifier on a numeric target takes its sorted values as the classes. A problem that does
    not fit the target is a ConfigError from ``resolve_target``, named ``--problem``.
    """
    from mlops.core.config import TargetConfig, resolve_target
    from mlops.core.metrics import PROBLEM_TYPES

    column = inferred.contract.columns[request.target]
    problem = request.problem
    note = ""
    if problem is not None and problem not in PROBLEM_TYPES:
        raise MlopsError(f"--problem {problem!r}: use one of {', '.join(PROBLEM_TYPES)}")
    values = sorted(v.item() if hasattr(v, "item") else v for v in frame[request.target].unique())
    if problem is None and column.type == "int" and len(values) == 2:
        problem = "binary"
        note = (
            f"binary (the target is an int column of two values, {values}; "
            "pass --problem regression to predict the number)"
        )
    classes: tuple[str, ...] = ()
    if problem in ("binary", "multiclass") and column.type in ("int", "float"):
        classes = tuple(str(v) for v in values)
    target = TargetConfig(
        column=request.target,
        problem=problem,  # checked against PROBLEM_TYPES above
        positive=request.positive,
        classes=classes,
    )
    where = f"--problem {request.problem}" if request.problem else f"--target {request.target!r}"
    resolved = resolve_target(target, column, where)
    chosen = note or (f"{resolved.kind} (--problem)" if request.problem else "")
    hint = ""
    if request.problem is None and column.type == "int" and 2 < len(values) <= FEW_VALUES:
        hint = (
            f"it holds {len(values)} values: pass --problem multiclass to predict them as classes"
        )
    return resolved, "; ".join(filter(None, [chosen, resolved.inferred, hint]))


def choose_features(inferred: InferredContract, target: str) -> tuple[FeatureConfig, list[str]]:
    """Numbers are numeric features, categories and bools categorical ones; strings and row ids
    are left out (returned, to be said)."""
    from mlops.core.config import FeatureConfig

    numeric, categorical, left_out = [], [], []
    for column in inferred.columns:
        if column.name == target:
            continue
        if column.identifier or column.contract.type == "string":
            left_out.append(column.name)
        elif column.contract.type in ("int", "float"):
            numeric.append(column.name)
        else:
            categorical.append(column.name)
    if not numeric and not categorical:
        raise MlopsError(
            f"no column beside the target {target!r} can be a feature (left out: "
            f"{', '.join(left_out) or 'none'}): a model needs numbers, categories or bools"
        )
    return FeatureConfig(numeric=tuple(numeric), categorical=tuple(categorical)), left_out


def pipeline_yaml(
    name: str,
    data_path: str,
    na_values: tuple[str, ...],
    target: TargetConfig,
    features: FeatureConfig,
    model: ModelConfig,
    left_out: list[str],
    source: str,
    how: str,
    numeric_classes: bool = False,
) -> str:
    """The pipeline config, commented, as a user would write it; ``how`` says how the problem
    type was chosen, ``numeric_classes`` that the classes are a numeric column's values."""
    from mlops.ml.contract_inference import yaml_comment
    from mlops.ml.contract_inference import yaml_text as dump

    declared: dict[str, object] = {"column": target.column, "problem": target.kind}
    if target.kind == "binary":
        declared["positive"] = target.positive
    if (
        numeric_classes and target.classes
    ):  # a category's classes are in the contract; numbers' are not
        declared["classes"] = list(target.classes)
    kind = "regressor" if target.kind == "regression" else "classifier"
    parts = [
        f"# Written by `mlops init` from {source}. Paths are relative to this file, except "
        "data.path,\n# which is relative to the project root (DVC tracks it).\n",
        dump({"name": name, "model_name": name, "experiment": name}),
        "\n",
        dump(
            {"data": {"path": data_path, "na_values": list(na_values), "contract": "contract.yaml"}}
        ),
        yaml_comment(f"The problem type: {how}."),
        dump({"target": declared}),
        yaml_comment(
            "Numbers are numeric features; categories and True/False columns categorical ones."
            + (
                f" Left out (text with too many values, or row ids): {', '.join(left_out)}."
                if left_out
                else ""
            )
        ),
        dump(
            {
                "features": {
                    "numeric": list(features.numeric),
                    "categorical": list(features.categorical),
                }
            }
        ),
        "\n",
        dump(
            {
                "split": {
                    "test_size": TEST_SIZE,
                    "seed": SPLIT_SEED,
                    "stratify": kind == "classifier",
                }
            }
        ),
        yaml_comment(f"The default model of every new pipeline: the family's {kind}."),
        dump({"model": {"family": model.family, "params": dict(model.params)}}),
        "\n",
        dump({"policy": "policy.yaml"}),
    ]
    return "".join(parts)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def version_data(found: Settings, project: Path, source: Path, out: Callable[[str], None]) -> str:
    """Copy ``source`` into the project's ``data/`` (unless it is there), ``dvc add`` it and push
    it to the DVC remote. Returns its path relative to the project."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from mlops.adapters.dvc import configure_remote

    relative = f"data/{source.name}"
    target = project / relative
    if target.resolve() != source:
        if target.exists() and _md5(target) != _md5(source):
            raise MlopsError(
                f"{relative} already exists in {project} and differs from {source}; rename the "
                "file or remove the other"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    try:
        if found.dvc_remote_url:
            configure_remote(project, found.dvc_remote_url, found.dvc_remote_endpoint_url)
        with Repo(str(project)) as repo:
            repo.scm_context.quiet = True  # its git hint names paths from the working folder
            repo.add(str(target))
    except DvcException as exc:
        raise MlopsError(f"{relative}: `dvc add` failed: {exc}") from None
    out(f"{relative}: versioned with DVC (commit {relative}.dvc and data/.gitignore)")
    try:
        with Repo(str(project)) as repo:
            repo.push(targets=[str(target)])
        out(f"{relative}: pushed to the DVC remote")
    except DvcException as exc:
        out(f"{relative}: not pushed to a DVC remote ({exc}); run `dvc push {relative}`")
    return relative


def register_deployments(
    found: Settings, pipeline: Path, register: bool, out: Callable[[str], None]
) -> tuple[str, ...]:
    """Add the pipeline's deployments to prefect.yaml (``mlops.stack.deployments.add_model``) and
    register them on the local stack when it is up."""
    relative = _relative(pipeline, found.project_dir)
    try:
        from mlops.stack.deployments import add_model
    except ImportError:
        out(
            "deployments: not added (this mlops has no mlops.stack.deployments yet); add them "
            f"with `mlops model add {relative}`, then `mlops deploy`"
        )
        return ()
    names = add_model(found.project_dir, pipeline)
    out(f"deployments: {len(names)} of {relative} in prefect.yaml")
    if not register:
        out("deployments: not registered (--no-register); `mlops deploy` registers them")
        return tuple(names)
    try:
        need_stack(found)
    except MlopsError:
        out("deployments: the local stack is not running; `mlops up` registers them")
        return tuple(names)
    from mlops.stack.local import LocalStack

    LocalStack(found, out=out).deploy(dict(os.environ), names)
    return tuple(names)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def initialise(found: Settings, request: InitRequest, out: Callable[[str], None]) -> Initialised:
    """Do what `mlops init` does (the module's docstring), saying each step through ``out``."""
    from mlops.core.config import ModelConfig, load_pipeline_config
    from mlops.core.policy import load_policy
    from mlops.ml.baseline import cross_validate_baseline, folds_for, starting_policy
    from mlops.ml.contract import check_contract
    from mlops.ml.contract_inference import infer_contract
    from mlops.ml.data import parse_dataset
    from mlops.ml.problems import problem_for

    project = (request.project_dir or found.project_dir).resolve()
    found = found.model_copy(update={"project_dir": project})
    if not (project / ".dvc").is_dir():
        raise MlopsError(f"{project} is not a DVC project (no .dvc/): run `dvc init` there first")
    source = request.data.resolve()
    if not source.is_file():
        raise MlopsError(f"--data {request.data}: file not found")
    name = pipeline_name(request)
    out_dir = (request.out_dir or project / "pipelines" / name).resolve()
    pipeline = out_dir / "pipeline.yaml"
    if pipeline.exists():
        raise MlopsError(f"{pipeline} already exists: choose another --name, or remove it")

    # by the file's name (CSV, gzip CSV, Parquet), as training will parse it
    frame = parse_dataset(source.read_bytes(), str(source), request.na_values)
    check_target(frame, request.target, source)
    inferred = infer_contract(frame, target=request.target)
    target, how = resolve_problem(frame, inferred, request)
    features, left_out = choose_features(inferred, request.target)
    out(f"data contract inferred from {source} ({len(frame)} rows, {len(frame.columns)} columns):")
    out(inferred.summary())
    out(f"target {target.column!r}: {how}")
    if target.classes:
        out(f"  classes (label order): {', '.join(target.classes)}")
    if left_out:
        out(f"left out of the features: {', '.join(left_out)}")

    # the contract must accept the data it came from, as training will check it
    conformed = check_contract(frame, inferred.contract, str(source), found.reports_dir / "init")
    model = ModelConfig(family=DEFAULT_FAMILY, params=dict(DEFAULT_PARAMS))
    baseline = cross_validate_baseline(
        conformed, features, model, problem_for(target), folds_for(TEST_SIZE), SPLIT_SEED
    )
    out(baseline.summary())

    data_path = version_data(found, project, source, out)
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = max(
        (float(frame[c].isna().mean()) for c in frame.columns if c != target.column), default=0.0
    )
    files = {
        "contract.yaml": inferred.to_yaml(source.name),
        "policy.yaml": starting_policy(baseline, list(frame.columns), source.name, missing),
        "pipeline.yaml": pipeline_yaml(
            name,
            data_path,
            request.na_values,
            target,
            features,
            model,
            left_out,
            source.name,
            how,
            numeric_classes=inferred.contract.columns[target.column].type in ("int", "float"),
        ),
    }
    for file, text in files.items():
        (out_dir / file).write_text(text, encoding="utf-8")
    cfg = load_pipeline_config(pipeline)  # as training loads them: a file that does not is a bug
    load_policy(cfg.policy, set(cfg.features.columns), cfg.target.kind)
    out(f"wrote {', '.join(str(out_dir / f) for f in files)}")

    deployments = register_deployments(found, pipeline, request.register, out)
    command = f"mlops train --pipeline {_relative(pipeline, project)} --hand-over promotion"
    if project != Path(os.environ.get("MLOPS_PROJECT_DIR", Path.cwd())).resolve():
        command = f"MLOPS_PROJECT_DIR={project} {command}"
    return Initialised(name, pipeline, data_path, deployments, command)


def init(
    data: Annotated[
        Path, typer.Option(help="The dataset: a CSV (.csv, .csv.gz) or Parquet (.parquet) file.")
    ],
    target: Annotated[str, typer.Option(help="The column the model predicts.")],
    problem: Annotated[
        str | None,
        typer.Option(help="binary, multiclass or regression (default: from the target column)."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Name of the pipeline and the registered model (default: the file's)."),
    ] = None,
    positive: Annotated[
        str | None,
        typer.Option(help="Binary: the target value counted as positive (default: the last)."),
    ] = None,
    project_dir: Annotated[
        Path | None,
        typer.Option(
            help="The project, a git + DVC checkout (default: MLOPS_PROJECT_DIR or here)."
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Folder for pipeline.yaml, contract.yaml and policy.yaml "
            "(default: pipelines/NAME/ in the project).",
        ),
    ] = None,
    na_value: Annotated[
        list[str] | None,
        typer.Option(help="A text that marks a missing value in the file, e.g. '?' (repeatable)."),
    ] = None,
    register: Annotated[
        bool, typer.Option(help="Register the deployments on the local stack when it is up.")
    ] = True,
) -> None:
    """Start a pipeline from a data file: version it, infer its contract, fit a baseline, write
    the pipeline, contract and policy, add its deployments, and print the next command."""
    found = settings()
    request = InitRequest(
        data=data,
        target=target,
        problem=problem,
        name=name,
        positive=positive,
        project_dir=project_dir,
        out_dir=out_dir,
        na_values=tuple(na_value or ()),
        register=register,
    )
    with reported():
        done = initialise(found, request, typer.echo)
    typer.echo("")
    typer.echo(f"next: {done.next_command}")
