"""Hyper-parameter search wall time on the Dask runner against the same search run sequentially.

The example's search (examples/adult/pipeline.yaml: its grid, 3-fold cross-validation on the
training split of 32,561 rows) as flows/search.py fans it out: the `score-candidates` flow with
prefect-dask's DaskTaskRunner (a local cluster, one worker process per core, one thread each,
cluster start included; and on a cluster already running, as with MLOPS_DASK_ADDRESS), against the
same flow on one worker thread with each fit free to use every core (OpenMP), as a search runs
without Dask. One real local Prefect server for all three.
Prints each wall time and whether the scores agree; the last line's first number is the Dask
wall time over the sequential one (2 cores here: the best it can be is about 0.5).

    .venv/bin/python benchmarks/dask_search.py
"""

from __future__ import annotations

import time

from _common import SETTINGS, local_stack


def main() -> None:
    from flows.search import environ_restored, score_candidates, task_runner
    from mlops.core.config import load_pipeline_config
    from mlops.ml.contract import conform
    from mlops.ml.problems import problem_for
    from mlops.ml.search import candidates
    from tasks.data import load_dataset, resolve_data_version, split_dataset

    with local_stack():
        cfg = load_pipeline_config(SETTINGS.pipeline)
        assert cfg.search is not None
        data = resolve_data_version.fn(SETTINGS.project_dir, cfg.data.path, None)
        frame = conform(
            load_dataset.fn(SETTINGS.project_dir, data, cfg.data.na_values), cfg.contract
        )
        split = split_dataset.fn(frame, cfg.features.columns, problem_for(cfg.target), cfg.split)
        configs = candidates(cfg.model, cfg.search, cfg.target.kind)
        timings: dict[str, float] = {}
        scores: dict[str, list[float]] = {}
        from distributed import LocalCluster

        with LocalCluster(n_workers=SETTINGS.dask_workers, threads_per_worker=1,
                          dashboard_address=None) as cluster:  # fmt: skip
            running = SETTINGS.model_copy(update={"dask_address": cluster.scheduler_address})
            for name, runner, settings, threads in (
                ("sequential", "sequential", SETTINGS, None),
                ("dask", "dask", SETTINGS, 1),  # the flow's default: a local cluster it starts
                ("dask, running cluster", "dask", running, 1),  # MLOPS_DASK_ADDRESS
            ):
                flow = score_candidates.with_options(task_runner=task_runner(runner, settings))  # type: ignore[arg-type]
                started = time.perf_counter()
                with environ_restored():  # the sequential fits keep every core
                    result = flow(split, cfg.features, configs, cfg.search, threads)
                timings[name] = time.perf_counter() - started
                scores[name] = [round(s.mean, 10) for s in result]
    n = len(configs)
    print(f"{n} candidates x {cfg.search.folds} folds on {len(split.X_train)} training rows")
    for runner, seconds in timings.items():
        print(f"{runner:>22}: {seconds:.1f} s ({seconds / timings['sequential']:.2f})")
    agree = scores["dask"] == scores["sequential"] == scores["dask, running cluster"]
    ratio = timings["dask"] / timings["sequential"]
    print(
        f"{ratio:.2f} Dask/sequential wall time ({timings['dask']:.1f} s against "
        f"{timings['sequential']:.1f} s, {SETTINGS.dask_workers} workers); scores "
        f"{'identical' if agree else 'DIFFER'}"
    )


if __name__ == "__main__":
    main()
