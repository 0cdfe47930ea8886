"""Orchestration overhead of the training flow.

In one process, against one real local Prefect server and MLflow server, alternately:
  * plain: the flow's step functions (each task's ``.fn``) called in the flow's order with the same
    arguments, logging, registering, aliasing and writing the model card to MLflow as the flow
    does; only the Prefect artifacts of the training report are the flow's alone (they are
    orchestration: the UI's view of the run);
  * flow:  the ``training`` flow, with Prefect's task cache refreshed (once, around every round)
    so every step really runs
    (task runs reported to the server, results persisted, artifacts published);
  * flow with Prefect's heartbeats: the same, with Prefect's own flow-run heartbeat thread put
    back (it sleeps in one-second steps and is joined at the run's exit) in place of the one
    ``mlops.adapters.prefect_heartbeat`` installs (its stop wakes it): the cost before that seam.
Each repetition uses a new model name, so none finds an earlier identical version.
Prints the median wall time of each, the fixed cost of an empty flow run with either heartbeat
thread (alternating), and ends with flow/plain (goal: at most 1.10).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _common import SETTINGS, example_copy, local_stack


def plain_run(pipeline: str) -> int:
    """The training flow's steps, called as plain functions."""
    from mlops.adapters.git import lineage_tags
    from mlops.core.config import config_snapshot, load_pipeline_config
    from mlops.core.lineage import CHALLENGER_ALIAS
    from mlops.core.policy import load_policy
    from mlops.ml.fingerprint import training_fingerprint
    from mlops.ml.problems import problem_for
    from mlops.ml.training import check_model_code
    from tasks.data import load_dataset, resolve_data_version, split_dataset, validate_dataset
    from tasks.registry import find_model_version, register_model_version, set_model_alias
    from tasks.reporting import write_model_card
    from tasks.training import evaluate_model, log_training_run, train_model

    s = SETTINGS
    uri = str(s.mlflow_tracking_uri)
    cfg = load_pipeline_config(s.project_dir / pipeline)
    policy, digest = load_policy(cfg.policy, set(cfg.contract.columns))
    check_model_code(cfg.features, cfg.model, cfg.target.kind)
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
    set_model_alias.fn(uri, cfg.model_name, CHALLENGER_ALIAS, mv.version)
    write_model_card.fn(uri, mv, [], [])
    return mv.version


def flow_run(pipeline: str) -> int:
    """The training flow (run inside ``refreshed_cache``, so every step really runs)."""
    from flows.training import training

    result = training(pipeline=pipeline, trigger="benchmark")
    assert not result.reused
    return result.version


@contextmanager
def heartbeats(send: Callable[..., Any]) -> Iterator[None]:
    """Flow runs started inside use ``send`` as the flow engine's heartbeat context manager."""
    from prefect import flow_engine

    installed = flow_engine._send_heartbeats
    flow_engine._send_heartbeats = send
    try:
        yield
    finally:
        flow_engine._send_heartbeats = installed


def empty_flow_seconds(repeats: int, kinds: dict[str, Callable[..., Any]]) -> dict[str, float]:
    """Median wall time of a flow run that does nothing, with each heartbeat context manager of
    ``kinds`` in turn: Prefect's fixed cost per flow run."""
    from prefect import flow

    @flow(name="empty", persist_result=False)
    def empty() -> None:
        return None

    empty()
    runs: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(repeats):
        for kind, send in kinds.items():
            with heartbeats(send):
                start = time.perf_counter()
                empty()
                runs[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(times) for kind, times in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import logging

    from prefect import flow_engine
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from mlops.adapters.prefect_heartbeat import send_heartbeats

    # Taken before anything imports `tasks`, which installs send_heartbeats in its place.
    prefects = flow_engine._send_heartbeats
    assert prefects is not send_heartbeats, "imported tasks too early: Prefect's thread is gone"
    import tasks  # noqa: F401 (as every flow module does)

    assert flow_engine._send_heartbeats is send_heartbeats, "tasks did not install it"

    def flow_with_prefects_heartbeats(pipeline: str) -> int:
        with heartbeats(prefects):
            return flow_run(pipeline)

    logging.getLogger("prefect").setLevel(logging.WARNING)
    kinds = {"plain": plain_run, "flow": flow_run, "flow-p": flow_with_prefects_heartbeats}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    # Entered once, not per run: copying Prefect's settings costs ~0.1 s, the harness's, not the flow's
    refreshed_cache = temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True})
    with local_stack(), refreshed_cache:
        for i in range(args.repeats + 1):  # the first round warms imports and clients: not counted
            for kind, fn in kinds.items():
                pipeline = str(example_copy(f"bench-{kind}-{i}"))
                start = time.perf_counter()
                fn(pipeline)
                elapsed = time.perf_counter() - start
                if i:
                    times[kind].append(elapsed)
                print(
                    f"round {i} {kind:<6} {elapsed:6.2f} s{'  (warm-up)' if not i else ''}",
                    flush=True,
                )
        fixed = empty_flow_seconds(5, {"prefect": prefects, "mlops": send_heartbeats})
    plain, flow, before = (statistics.median(times[k]) for k in kinds)
    print(f"plain steps: median {plain:.2f} s over {args.repeats} runs")
    print(f"training flow, Prefect's heartbeat thread (flow-p): median {before:.2f} s")
    print(f"training flow: median {flow:.2f} s over {args.repeats} runs")
    print(
        f"empty flow run: median {fixed['prefect']:.3f} s with Prefect's heartbeat thread, "
        f"{fixed['mlops']:.3f} s with mlops.adapters.prefect_heartbeat's (goal <= 0.2 s)"
    )
    print(f"overhead with Prefect's heartbeat thread: {before / plain:.3f}")
    print(f"overhead beyond the fixed cost: {(flow - fixed['mlops']) / plain:.3f}")
    print(
        f"{flow / plain:.3f} orchestration overhead: training flow / plain step calls (goal <= 1.10)"
    )


if __name__ == "__main__":
    main()
