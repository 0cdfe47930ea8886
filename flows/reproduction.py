"""The reproduction flow: retrain a registered version from its own data, config and seed, and
say whether the holdout metrics come out the same."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from sklearn.pipeline import Pipeline

from mlops.adapters.registry import RegisteredVersion
from mlops.adapters.tracking import CONFIG_ARTIFACTS
from mlops.core.config import PipelineConfig, load_pipeline_config
from mlops.core.lineage import (
    CODE_TAG,
    DATA_MD5_TAG,
    DATA_PATH_TAG,
    DATA_REV_TAG,
    GIT_COMMIT_TAG,
    DataVersion,
)
from mlops.core.settings import Settings
from mlops.ml.evaluation import Reproduction
from mlops.ml.fingerprint import training_fingerprint
from mlops.ml.problems import problem_for
from tasks.data import load_dataset, locate_data_version, split_dataset, validate_dataset
from tasks.registry import resolve_model_version
from tasks.training import evaluate_model, train_model


@flow(name="reproduction")
def reproduction(model: str, version: int, tolerance: float = 1e-9) -> Reproduction:
    """Retrain ``model`` v``version`` from its logged config and its DVC data version; compare metrics.

    Nothing is logged to MLflow or registered: the result is a report (artifact and return value).
    The version's own config snapshot is the run's config, not the project's pipeline file.
    """
    settings = Settings()
    uri = str(settings.mlflow_tracking_uri)
    mv = resolve_model_version(uri, model, str(version))
    workdir = settings.state_dir / "reproduce" / f"{model}-v{version}"
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = load_pipeline_config(_config_snapshot(uri, mv, workdir) / "pipeline.yaml")
    tags = mv.tags
    data = locate_data_version(
        settings.project_dir, tags[DATA_PATH_TAG], tags[DATA_MD5_TAG], _data_revisions(tags)
    )
    frame = load_dataset(settings.project_dir, data, cfg.data.na_values)
    valid = validate_dataset(frame, cfg.contract, f"{data.path}@{data.short}", workdir / "reports")
    split = split_dataset(valid, cfg.features.columns, problem_for(cfg.target), cfg.split)
    refit: Pipeline = train_model.with_options(refresh_cache=True)(split, cfg.features, cfg.model)
    metrics = evaluate_model(refit, split)

    result = _compare(cfg, mv, data, metrics, tolerance)
    create_markdown_artifact(
        key="reproduction",
        markdown=_report(result, data, tolerance, tags.get(GIT_COMMIT_TAG, "?")),
        description=f"{model} v{mv.version}",
    )
    get_run_logger().info(
        "%s v%s %s (max difference %.3g)",
        model,
        mv.version,
        "reproduced" if result.matches else "did NOT reproduce",
        result.max_difference,
    )
    return result


def _config_snapshot(uri: str, mv: RegisteredVersion, workdir: Path) -> Path:
    """The folder of the config files the version's training run logged."""
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=mv.run_id,
            artifact_path=CONFIG_ARTIFACTS,
            dst_path=str(workdir),
            tracking_uri=uri,
        )
    )


def _data_revisions(tags: dict[str, str]) -> list[str | None]:
    """Where to look for the version's data: its own revision, its commit, then the workspace."""
    revs: list[str | None] = [None]
    for rev in (tags.get(DATA_REV_TAG), tags.get(GIT_COMMIT_TAG)):
        if rev and rev not in ("workspace", "unknown") and rev not in revs:
            revs.insert(0, rev)
    return revs


def _compare(
    cfg: PipelineConfig,
    mv: RegisteredVersion,
    data: DataVersion,
    metrics: dict[str, float],
    tolerance: float,
) -> Reproduction:
    """The refit's metrics against the recorded ones, and whether the code is the same."""
    same_code = training_fingerprint(cfg, data.md5)[1] == mv.tags.get(CODE_TAG)
    diffs = {k: abs(metrics[k] - v) for k, v in mv.metrics.items() if k in metrics}
    worst = max(diffs.values(), default=float("inf"))
    return Reproduction(
        mv.name,
        mv.version,
        data.md5,
        data.rev or "workspace",
        same_code,
        mv.metrics,
        metrics,
        worst,
        worst <= tolerance,
    )


def _report(result: Reproduction, data: DataVersion, tolerance: float, commit: str) -> str:
    """The reproduction as a markdown artifact: the verdict, the inputs, the metrics side by side."""
    code = (
        "unchanged" if result.same_code else f"DIFFERENT from the version (check out git {commit})"
    )
    lines = [
        f"# Reproduction of {result.model} v{result.version}",
        "",
        f"**{'Reproduced' if result.matches else 'Did not reproduce'}**: largest metric difference "
        f"{result.max_difference:.3g} (tolerance {tolerance:g}).",
        "",
        f"- data `{data.path}` md5 `{data.md5}`, found at `{result.data_rev}`",
        f"- pipeline code {code}",
        "",
        "| metric | recorded | reproduced |",
        "|---|---:|---:|",
        *(
            f"| {k} | {v:.6f} | {result.reproduced.get(k, float('nan')):.6f} |"
            for k, v in sorted(result.recorded.items())
        ),
        "",
    ]
    return "\n".join(lines)
