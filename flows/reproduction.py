"""The reproduction flow: retrain a registered version from its own data, config and seed, and
say whether the holdout metrics come out the same."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from mlops.adapters.tracking import CONFIG_ARTIFACTS
from mlops.core.config import load_pipeline_config
from mlops.core.lineage import training_fingerprint
from mlops.core.settings import Settings
from mlops.ml.evaluation import Reproduction
from tasks.data import load_dataset, locate_data_version, split_dataset, validate_dataset
from tasks.registry import resolve_model_version
from tasks.training import evaluate_model, train_model


@flow(name="reproduction")
def reproduction(model: str, version: int, tolerance: float = 1e-9) -> Reproduction:
    """Retrain ``model`` v``version`` from its logged config and its DVC data version; compare metrics.

    Nothing is logged to MLflow or registered: the result is a report (artifact and return value).
    """
    log = get_run_logger()
    settings = Settings()
    uri = str(settings.mlflow_tracking_uri)
    mv = resolve_model_version(uri, model, str(version))
    workdir = settings.state_dir / "reproduce" / f"{model}-v{version}"
    workdir.mkdir(parents=True, exist_ok=True)
    config_dir = Path(
        mlflow.artifacts.download_artifacts(
            run_id=mv.run_id,
            artifact_path=CONFIG_ARTIFACTS,
            dst_path=str(workdir),
            tracking_uri=uri,
        )
    )
    cfg = load_pipeline_config(config_dir / "pipeline.yaml")
    tags = mv.tags
    revs: list[str | None] = [None]
    for rev in (tags.get("mlops.data.rev"), tags.get("mlops.git.commit")):
        if rev and rev not in ("workspace", "unknown") and rev not in revs:
            revs.insert(0, rev)
    data = locate_data_version(
        settings.project_dir, tags["mlops.data.path"], tags["mlops.data.md5"], revs
    )
    frame = load_dataset(settings.project_dir, data, cfg.data.na_values)
    valid = validate_dataset(frame, cfg.contract, f"{data.path}@{data.short}", workdir / "reports")
    split = split_dataset(valid, cfg.features.columns, cfg.target, cfg.split)
    refit = train_model.with_options(refresh_cache=True)(split, cfg.features, cfg.model)
    metrics = evaluate_model(refit, split)

    same_code = training_fingerprint(cfg, data.md5)[1] == tags.get("mlops.code.sha256")
    diffs = {k: abs(metrics[k] - v) for k, v in mv.metrics.items() if k in metrics}
    worst = max(diffs.values(), default=float("inf"))
    result = Reproduction(
        model,
        mv.version,
        data.md5,
        data.rev or "workspace",
        same_code,
        mv.metrics,
        metrics,
        worst,
        worst <= tolerance,
    )
    lines = [
        f"# Reproduction of {model} v{mv.version}",
        "",
        f"**{'Reproduced' if result.matches else 'Did not reproduce'}**: largest metric difference "
        f"{worst:.3g} (tolerance {tolerance:g}).",
        "",
        f"- data `{data.path}` md5 `{data.md5}`, found at `{result.data_rev}`",
        f"- pipeline code {'unchanged' if same_code else 'DIFFERENT from the version (check out git ' + tags.get('mlops.git.commit', '?') + ')'}",
        "",
        "| metric | recorded | reproduced |",
        "|---|---:|---:|",
        *(
            f"| {k} | {v:.6f} | {metrics.get(k, float('nan')):.6f} |"
            for k, v in sorted(mv.metrics.items())
        ),
        "",
    ]
    create_markdown_artifact(
        key="reproduction", markdown="\n".join(lines), description=f"{model} v{mv.version}"
    )
    log.info(
        "%s v%s %s (max difference %.3g)",
        model,
        mv.version,
        "reproduced" if result.matches else "did NOT reproduce",
        worst,
    )
    return result
