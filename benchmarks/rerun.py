"""Re-run speed-up: the training flow with nothing changed, against its first run.

In one process, against one real local Prefect server and MLflow server, for each repetition a
fresh model name: a first run (trains, logs, registers; Prefect's task cache refreshed so that the
model really is trained) and then the identical run again (finds the version an identical run
registered and stops). Checks that the second run registered nothing,
prints both wall times, and ends with first/second (higher is better).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

from _common import SETTINGS, example_copy, local_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("prefect").setLevel(logging.WARNING)
    firsts: list[float] = []
    seconds: list[float] = []
    with local_stack():
        from mlflow import MlflowClient
        from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

        from flows.training import training

        client = MlflowClient(str(SETTINGS.mlflow_tracking_uri))
        for i in range(args.repeats + 1):  # round 0 warms imports and clients: not counted
            pipeline = str(example_copy(f"rerun-{i}"))
            start = time.perf_counter()
            with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
                first = training(pipeline=pipeline, trigger="benchmark")
            mid = time.perf_counter()
            second = training(pipeline=pipeline, trigger="benchmark")
            end = time.perf_counter()
            versions = client.search_model_versions(f"name = 'rerun-{i}'")
            assert not first.reused and second.reused, (
                "the second run must reuse the first's version"
            )
            assert second.version == first.version and len(versions) == 1, "no new version"
            print(
                f"round {i}: first {mid - start:6.2f} s, second {end - mid:5.2f} s, "
                f"versions registered: {len(versions)}{'  (warm-up)' if not i else ''}",
                flush=True,
            )
            if i:
                firsts.append(mid - start)
                seconds.append(end - mid)
    first_s, second_s = statistics.median(firsts), statistics.median(seconds)
    print(f"first run: median {first_s:.2f} s; unchanged re-run: median {second_s:.2f} s")
    print(
        f"{first_s / second_s:.2f}x faster re-run with nothing changed (first / second wall time)"
    )


if __name__ == "__main__":
    main()
