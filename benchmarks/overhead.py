"""Orchestration overhead of the training flow.

In one process, against one real local Prefect server and MLflow server, alternately:
  * plain: the flow's step functions (each task's ``.fn``) called in the flow's order with the same
    arguments, logging and registering to MLflow as the flow does;
  * flow:  the ``training`` flow, with Prefect's task cache refreshed so every step really runs
    (task runs reported to the server, results persisted, artifacts published).
Each repetition uses a new model name, so neither finds an earlier identical version.
Prints the median wall time of each, the fixed cost of an empty flow run measured alongside
(Prefect joins its flow-run heartbeat thread at exit, which sleeps in one-second steps), and ends
with flow/plain (goal: at most 1.10).
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import SETTINGS, example_copy, local_stack


def plain_run(pipeline: str) -> int:
    """The training flow's steps, called as plain functions."""
    from mlops.adapters.git import lineage_tags
    from mlops.core.config import config_snapshot, load_pipeline_config
    from mlops.core.policy import load_policy
    from mlops.ml.fingerprint import training_fingerprint
    from mlops.ml.problems import problem_for
    from tasks.data import load_dataset, resolve_data_version, split_dataset, validate_dataset
    from tasks.registry import find_model_version, register_model_version
    from tasks.training import evaluate_model, log_training_run, train_model

    s = SETTINGS
    uri = str(s.mlflow_tracking_uri)
    cfg = load_pipeline_config(s.project_dir / pipeline)
    policy, digest = load_policy(cfg.policy, set(cfg.contract.columns))
    data = resolve_data_version.fn(s.project_dir, cfg.data.path, None)
    fingerprint = training_fingerprint(cfg, data.md5)
    assert find_model_version.fn(uri, cfg.model_name, fingerprint[0]) is None
    frame = load_dataset.fn(s.project_dir, data, cfg.data.na_values)
    valid = validate_dataset.fn(frame, cfg.contract, data.path, s.reports_dir / "plain")
    split = split_dataset.fn(valid, cfg.features.columns, problem_for(cfg.target), cfg.split)
    model = train_model.fn(split, cfg.features, cfg.model)
    metrics = evaluate_model.fn(model, split)
    tags = lineage_tags(s.project_dir, data, fingerprint, policy, digest, "plain", "benchmark")
    run = log_training_run.fn(
        uri,
        cfg.experiment,
        "plain",
        model,
        split,
        metrics,
        cfg.model_dump(mode="json", include={"model", "split", "features"}),
        tags,
        data_source=str(s.project_dir / data.path),
        data_md5=data.md5,
        config_files=config_snapshot(cfg),
    )
    mv = register_model_version.fn(uri, cfg.model_name, run.model_uri, tags, description="plain")
    return mv.version


def flow_run(pipeline: str) -> int:
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from flows.training import training

    with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
        result = training(pipeline=pipeline, trigger="benchmark")
    assert not result.reused
    return result.version


def empty_flow_seconds(repeats: int) -> float:
    """Median wall time of a flow run that does nothing: Prefect's fixed cost per flow run."""
    from prefect import flow

    @flow(name="empty", persist_result=False)
    def empty() -> None:
        return None

    empty()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        empty()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import logging

    logging.getLogger("prefect").setLevel(logging.WARNING)
    times: dict[str, list[float]] = {"plain": [], "flow": []}
    with local_stack():
        for i in range(args.repeats + 1):  # the first round warms imports and clients: not counted
            for kind, fn in (("plain", plain_run), ("flow", flow_run)):
                pipeline = str(example_copy(f"bench-{kind}-{i}"))
                start = time.perf_counter()
                fn(pipeline)
                elapsed = time.perf_counter() - start
                if i:
                    times[kind].append(elapsed)
                print(
                    f"round {i} {kind:<5} {elapsed:6.2f} s{'  (warm-up)' if not i else ''}",
                    flush=True,
                )
        fixed = empty_flow_seconds(5)
    plain = statistics.median(times["plain"])
    flow = statistics.median(times["flow"])
    print(f"plain steps: median {plain:.2f} s over {args.repeats} runs")
    print(f"training flow: median {flow:.2f} s over {args.repeats} runs")
    print(f"empty flow run: median {fixed:.2f} s (Prefect's fixed cost per flow run)")
    print(f"overhead beyond the fixed cost: {(flow - fixed) / plain:.3f}")
    print(
        f"{flow / plain:.3f} orchestration overhead: training flow / plain step calls (goal <= 1.10)"
    )


if __name__ == "__main__":
    main()
