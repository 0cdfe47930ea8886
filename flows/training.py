"""The training flow: versioned data -> contract -> split -> features + model -> holdout -> MLflow -> registry."""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from mlops.adapters.registry import RUN_ID_TAG, RegisteredVersion
from mlops.core.config import config_snapshot, load_pipeline_config
from mlops.core.lineage import lineage_tags, training_fingerprint
from mlops.core.policy import load_policy
from mlops.core.settings import Settings
from mlops.ml.production_data import read_production_data
from tasks.data import load_dataset, resolve_data_version, split_dataset, validate_dataset
from tasks.registry import find_model_version, register_model_version, set_model_alias
from tasks.reporting import publish_training_report, write_model_card
from tasks.training import evaluate_model, log_training_run, train_model, train_on_sagemaker


@flow(name="training", persist_result=True)
def training(
    pipeline: str | None = None,
    data_rev: str | None = None,
    trigger: str = "manual",
    hand_over: Literal["none", "promotion", "release"] = "none",
    production_data: str | None = None,
    expected_positive_rate: float | None = None,
    model_params: dict[str, Any] | None = None,
    compute: Literal["local", "sagemaker"] = "local",
) -> RegisteredVersion:
    """Train, evaluate, track and register a model from one exact version of the data.

    Args:
        pipeline: pipeline config file, relative to the project (default: the settings' example).
        data_rev: git revision whose DVC-tracked data to train on (default: the workspace).
        trigger: who or what started this run, recorded on the model version.
        hand_over: what follows registration: nothing; the `promotion` flow (gates, then the
            champion alias); or `release`: the gates, then the release flow puts a passing
            version into production by the policy's strategy and target.
        production_data: a Parquet file of labelled production rows (tasks.production_data) to
            train on beside the data version; its md5 joins the version's lineage.
        expected_positive_rate: handed to the release (see there).
        model_params: hyper-parameters over the config's (a search's best candidate); they
            join the version's fingerprint and its config snapshot.
        compute: where the fit runs: in this flow run, or as an AWS SageMaker training job from
            the project's image (tasks/sagemaker.py; its logs join the MLflow run).

    Returns:
        The registered model version, or the earlier one an identical run already registered.
        A version the gates or the release reject fails this flow run with their reason.
    """
    log = get_run_logger()
    settings = Settings()
    cfg = load_pipeline_config(settings.project_dir / pipeline if pipeline else settings.pipeline)
    if model_params:
        cfg = cfg.model_copy(
            update={
                "model": cfg.model.model_copy(update={"params": cfg.model.params | model_params})
            }
        )
    policy, policy_digest = load_policy(cfg.policy, set(cfg.contract.columns))
    tracking_uri = str(settings.mlflow_tracking_uri)

    data = resolve_data_version(settings.project_dir, cfg.data.path, data_rev)
    extra, extra_md5 = read_production_data(production_data) if production_data else (None, None)
    fingerprint = training_fingerprint(cfg, f"{data.md5}+{extra_md5}" if extra_md5 else data.md5)
    existing = find_model_version(tracking_uri, cfg.model_name, fingerprint[0])
    if existing is not None:
        log.info(
            "%s v%s already holds data %s with this code and config; nothing to train",
            existing.name,
            existing.version,
            data.short,
        )
        publish_training_report(existing, data, existing.metrics, policy, None, cfg.model.family)
        return _hand_over(existing, hand_over, pipeline, trigger, expected_positive_rate)

    run_id = str(flow_run.get_id() or "local")
    frame = load_dataset(settings.project_dir, data, cfg.data.na_values)
    source = f"{data.path}@{data.short}"
    if extra is not None:
        frame = pd.concat([frame, extra], ignore_index=True)
        source += f" + {len(extra)} production rows @{str(extra_md5)[:8]}"
    valid = validate_dataset(frame, cfg.contract, source, settings.reports_dir / run_id)
    split = split_dataset(valid, cfg.features.columns, cfg.target, cfg.split)
    texts: dict[str, str] = {}  # text artifacts of the run
    compute_tags: dict[str, str] = {}
    if compute == "sagemaker":
        model, job = train_on_sagemaker(split, cfg.features, cfg.model, settings)
        texts[f"sagemaker/{job.name}.log"] = "\n".join(job.logs)
        compute_tags = {"mlops.training.compute": "sagemaker", "mlops.sagemaker.job": job.name}
    else:
        model = train_model(split, cfg.features, cfg.model)
    metrics = evaluate_model(model, split)

    tags = lineage_tags(
        settings.project_dir, data, fingerprint, policy, policy_digest, run_id, trigger
    )
    tags |= compute_tags
    if extra is not None:
        tags |= {
            "mlops.data.production_md5": str(extra_md5),
            "mlops.data.production_rows": str(len(extra)),
        }
    run = log_training_run(
        tracking_uri,
        cfg.experiment,
        f"{cfg.name}-{data.short}",
        model,
        split,
        metrics,
        cfg.model_dump(mode="json", include={"model", "split", "features"}),
        tags,
        data_source=str(settings.project_dir / data.path),
        data_md5=data.md5,
        config_files=config_snapshot(cfg),
        texts=texts,
    )
    registered = register_model_version(
        tracking_uri,
        cfg.model_name,
        run.model_uri,
        tags | {RUN_ID_TAG: run.run_id},
        description=f"{cfg.model.family} on {data.path}@{data.short}, git {tags['mlops.git.commit'][:8]}",
    )
    set_model_alias(tracking_uri, cfg.model_name, "challenger", registered.version)
    write_model_card(tracking_uri, registered, [], [])
    log.info(
        "registered %s v%s as challenger (run %s)", registered.name, registered.version, run.run_url
    )
    publish_training_report(registered, data, metrics, policy, run.run_url, cfg.model.family)
    return _hand_over(registered, hand_over, pipeline, trigger, expected_positive_rate)


def _hand_over(
    registered: RegisteredVersion,
    hand_over: str,
    pipeline: str | None,
    trigger: str,
    expected_positive_rate: float | None,
) -> RegisteredVersion:
    """Run the gates (and the release) on the version as subflows of this run."""
    if hand_over != "none":
        from flows.promotion import promotion

        promotion(
            version=str(registered.version),
            pipeline=pipeline,
            trigger=f"training ({trigger})",
            go_live=hand_over == "release",
            expected_positive_rate=expected_positive_rate,
        )
    return registered
