"""The steps that make one model version: versioned data -> contract -> split -> features + model
-> holdout -> MLflow -> registry.

Plain wiring, not a flow of its own: it runs inside the calling flow's run (``training``, or
``delivery`` when a hand-over follows), so the tasks, the artifacts and the version's
``mlops.prefect.flow_run_id`` all belong to that one run. Its own module because both of those
flows use it and ``training`` hands over through ``delivery``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import pandas as pd
from prefect import get_run_logger
from prefect.runtime import flow_run
from sklearn.pipeline import Pipeline

from mlops.adapters.git import lineage_tags
from mlops.adapters.registry import RUN_ID_TAG, RegisteredVersion
from mlops.core.config import config_snapshot, own_code_packages
from mlops.core.context import RunContext
from mlops.core.lineage import (
    CHALLENGER_ALIAS,
    COMPUTE_TAG,
    GIT_COMMIT_TAG,
    PRODUCTION_MD5_TAG,
    PRODUCTION_ROWS_TAG,
    SAGEMAKER_JOB_TAG,
    DataVersion,
)
from mlops.ml.contract import contract_of
from mlops.ml.fingerprint import training_fingerprint
from mlops.ml.problems import problem_for
from mlops.ml.production_data import read_production_data
from mlops.ml.split import Split
from mlops.ml.training import check_model_code
from tasks.data import load_dataset, resolve_data_version, split_dataset, validate_dataset
from tasks.registry import find_model_version, register_model_version, set_model_alias
from tasks.reporting import publish_training_report, write_model_card
from tasks.training import (
    evaluate_model,
    explain_model,
    log_importance,
    log_training_run,
    train_model,
    train_on_sagemaker,
)

Compute = Literal["local", "sagemaker"]


@dataclass(frozen=True)
class TrainingRequest:
    """What one training is asked for beyond the run's pipeline config.

    Attributes:
        data_rev: git revision whose DVC-tracked data to train on (None: the workspace).
        trigger: who or what started it, recorded on the model version.
        production_data: a Parquet file of labelled production rows to train on beside the data
            version; its md5 joins the version's lineage.
        compute: where the fit runs: in this flow run, or as a SageMaker training job.
    """

    data_rev: str | None = None
    trigger: str = "manual"
    production_data: str | None = None
    compute: Compute = "local"


@dataclass(frozen=True)
class _Extra:
    """Labelled production rows trained on beside the data version."""

    frame: pd.DataFrame
    md5: str

    def tags(self) -> dict[str, str]:
        return {PRODUCTION_MD5_TAG: self.md5, PRODUCTION_ROWS_TAG: str(len(self.frame))}


def train_model_version(ctx: RunContext, request: TrainingRequest) -> RegisteredVersion:
    """Train, evaluate, track and register a model from one exact version of the data.

    Returns the registered version, or the earlier one an identical run already registered.
    """
    cfg = ctx.config
    # the user's own code (or a family that does not fit the problem) fails before anything else
    check_model_code(cfg.features, cfg.model, cfg.target.kind)
    data = resolve_data_version(ctx.project_dir, cfg.data.path, request.data_rev)
    extra = (
        _Extra(*read_production_data(request.production_data)) if request.production_data else None
    )
    fingerprint = training_fingerprint(cfg, f"{data.md5}+{extra.md5}" if extra else data.md5)
    existing = find_model_version(ctx.tracking_uri, cfg.model_name, fingerprint[0])
    if existing is not None:
        get_run_logger().info(
            "%s v%s already holds data %s with this code and config; nothing to train",
            existing.name,
            existing.version,
            data.short,
        )
        publish_training_report(existing, data, existing.metrics, ctx.policy, None, cfg.model.label)
        return existing

    run_id = str(flow_run.get_id() or "local")
    split = _validated_split(ctx, data, extra, run_id)
    model, texts, where = _fit(ctx, split, request.compute)
    metrics = evaluate_model(model, split)
    importance = explain_model(model, split)
    tags = lineage_tags(
        ctx.project_dir, data, fingerprint, ctx.policy, ctx.policy_digest, run_id, request.trigger
    )
    tags |= where | (extra.tags() if extra else {})
    run = log_training_run(
        ctx.tracking_uri,
        cfg.experiment,
        f"{cfg.name}-{data.short}",
        model,
        split,
        metrics,
        cfg.model_dump(mode="json", include={"model", "split", "features"}),
        tags,
        data_source=str(ctx.project_dir / data.path),
        data_md5=data.md5,
        config_files=config_snapshot(cfg),
        texts=texts,
        own_code=own_code_packages(cfg.model, cfg.features),
    )
    log_importance(ctx.tracking_uri, run.run_id, importance)
    registered = _register(ctx, run.model_uri, tags | {RUN_ID_TAG: run.run_id}, data)
    get_run_logger().info(
        "registered %s v%s as challenger (run %s)", registered.name, registered.version, run.run_url
    )
    publish_training_report(registered, data, metrics, ctx.policy, run.run_url, cfg.model.label)
    return registered


def _validated_split(
    ctx: RunContext, data: DataVersion, extra: _Extra | None, run_id: str
) -> Split:
    """The data version (and the production rows) checked against the contract, then split."""
    cfg = ctx.config
    frame = load_dataset(ctx.project_dir, data, cfg.data.na_values)
    source = f"{data.path}@{data.short}"
    reports = ctx.settings.reports_dir / run_id
    valid = validate_dataset(frame, cfg.contract, source, reports)
    if extra is not None:
        # production rows hold the model's columns only (its features and target): beside the
        # data version, which meets the whole contract, they meet its rules for those columns
        columns = [*cfg.features.columns, cfg.target.column]
        rows = cast(pd.DataFrame, frame)  # the task's declared type is wider than what runs
        joined = pd.concat([rows[columns], extra.frame[columns]], ignore_index=True)
        source += f" + {len(extra.frame)} production rows @{extra.md5[:8]}"
        valid = validate_dataset(joined, contract_of(cfg.contract, columns), source, reports)
    return split_dataset(valid, cfg.features.columns, problem_for(cfg.target), cfg.split)


def _fit(
    ctx: RunContext, split: Split, compute: Compute
) -> tuple[Pipeline, dict[str, str], dict[str, str]]:
    """The fitted model, the run's text artifacts and the tags saying where it was fitted."""
    cfg = ctx.config
    if compute == "sagemaker":
        model, job = train_on_sagemaker(split, cfg.features, cfg.model, ctx.settings)
        texts = {f"sagemaker/{job.name}.log": "\n".join(job.logs)}
        return model, texts, {COMPUTE_TAG: "sagemaker", SAGEMAKER_JOB_TAG: job.name}
    return train_model(split, cfg.features, cfg.model), {}, {}


def _register(
    ctx: RunContext, model_uri: str, tags: dict[str, str], data: DataVersion
) -> RegisteredVersion:
    """Register the run's model as the newest challenger, with its model card."""
    cfg = ctx.config
    registered = register_model_version(
        ctx.tracking_uri,
        cfg.model_name,
        model_uri,
        tags,
        description=f"{cfg.model.label} on {data.path}@{data.short}, "
        f"git {tags[GIT_COMMIT_TAG][:8]}",
    )
    set_model_alias(ctx.tracking_uri, cfg.model_name, CHALLENGER_ALIAS, registered.version)
    write_model_card(ctx.tracking_uri, registered, [], [])
    return registered
