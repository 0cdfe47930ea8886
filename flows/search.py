"""The hyper-parameter search flow: the grid's candidates fanned out as tasks on Dask (prefect-dask:
a local cluster, or an existing one at MLOPS_DASK_ADDRESS), scored by cross-validation on the
training split; the best candidate is trained by the delivery flow and goes through the gates."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.delivery import HandOver, HandOverTo, delivery
from flows.model_version import TrainingRequest
from mlops.core.config import FeatureConfig, ModelConfig, SearchConfig
from mlops.core.context import RunContext
from mlops.core.errors import ConfigError
from mlops.core.lineage import DataVersion
from mlops.core.settings import Settings
from mlops.ml.problems import problem_for
from mlops.ml.search import CandidateScore, candidates
from mlops.ml.split import Split
from tasks.data import load_dataset, resolve_data_version, split_dataset, validate_dataset
from tasks.training import log_search_runs, score_candidate

Runner = Literal["dask", "sequential"]


def task_runner(runner: Runner, settings: Settings) -> object:
    """Dask through prefect-dask (an existing cluster at ``settings.dask_address``, else a local
    one with a process per worker and one thread each), or one candidate at a time."""
    if runner == "sequential":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


@contextmanager
def environ_restored() -> Iterator[None]:
    """Restore this process's environment afterwards: distributed's nanny sets OMP_NUM_THREADS,
    MKL_NUM_THREADS and OPENBLAS_NUM_THREADS to 1 in the process that starts a local cluster
    (its documented leak), which would make every later fit, and every model server this process
    starts, single-threaded."""
    before = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


@flow(name="score-candidates")
def score_candidates(
    split: Split,
    features: FeatureConfig,
    configs: list[ModelConfig],
    search: SearchConfig,
    threads: int | None,
) -> list[CandidateScore]:
    """Every candidate as one task on this flow's task runner."""
    futures = [score_candidate.submit(split, features, c, search, threads) for c in configs]
    return [f.result() for f in futures]


@flow(name="hyperparameter-search", persist_result=True)
def hyperparameter_search(
    pipeline: str | None = None,
    data_rev: str | None = None,
    runner: Runner = "dask",
    hand_over: HandOverTo = "promotion",
    trigger: str = "manual",
) -> dict[str, object]:
    """Search the pipeline's grid, then train the best candidate and hand it over.

    Args:
        pipeline: pipeline config, relative to the project (default: the settings' example); its
            ``search`` section gives the grid, the folds and the metric.
        data_rev: git revision whose DVC-tracked data to search and train on.
        runner: ``dask`` fans the candidates out on Dask; ``sequential`` scores one at a time.
        hand_over: what follows the best candidate's training (see the training flow).
        trigger: who or what started this run, recorded on the model version.

    Returns:
        The candidates' scores, the best parameters and the registered version.
    """
    ctx = RunContext.load(Settings(), pipeline)
    cfg, settings = ctx.config, ctx.settings
    if cfg.search is None:
        raise ConfigError(f"{cfg.source}: no `search:` section (grid, folds, metric) to search")
    # unknown parameters (or a factory that refuses them) fail here, before any fit
    configs = candidates(cfg.model, cfg.search, cfg.target.kind)
    data = resolve_data_version(settings.project_dir, cfg.data.path, data_rev)
    frame = load_dataset(settings.project_dir, data, cfg.data.na_values)
    valid = validate_dataset(
        frame, cfg.contract, f"{data.path}@{data.short}", settings.reports_dir / "search"
    )
    split = split_dataset(valid, cfg.features.columns, problem_for(cfg.target), cfg.split)

    threads = 1 if runner == "dask" else None  # parallel candidates: one core each
    fan_out = score_candidates.with_options(task_runner=task_runner(runner, settings))  # type: ignore[arg-type]
    with environ_restored():
        scores = fan_out(split, cfg.features, configs, cfg.search, threads)
    best = max(scores, key=lambda s: s.mean)
    _publish_scores(ctx, scores, best, data, runner)
    search_run = log_search_runs(
        ctx.tracking_uri, cfg.experiment, scores, best, cfg.search.scorer, runner
    )
    changed = {k: v for k, v in best.params.items() if cfg.model.params.get(k) != v}
    registered = delivery(
        ctx.with_model_params(changed),
        TrainingRequest(data_rev=data_rev, trigger=f"search {search_run} ({trigger})"),
        HandOver(hand_over),
    )
    return {
        "scores": [s.__dict__ for s in scores],
        "best": best.params,
        "version": registered.version,
        "search_run": search_run,
    }


def _publish_scores(
    ctx: RunContext,
    scores: list[CandidateScore],
    best: CandidateScore,
    data: DataVersion,
    runner: Runner,
) -> None:
    """The candidates' scores as a table artifact of the run (and the best one in the log)."""
    name, search = ctx.model_name, ctx.config.search
    assert search is not None  # checked at the flow's entry
    get_run_logger().info(
        "best of %d candidates: %s (%s %.4f)", len(scores), best.params, search.scorer, best.mean
    )
    create_table_artifact(
        key=f"search-{name}".lower().replace("_", "-"),
        table=[
            {
                **s.params,
                search.scorer: round(s.mean, 4),
                "std": round(s.std, 4),
                "seconds": round(s.seconds, 1),
                "best": s is best,
            }
            for s in scores
        ],
        description=f"{name}: hyper-parameter search on {data.path}@{data.short} ({runner})",
    )
