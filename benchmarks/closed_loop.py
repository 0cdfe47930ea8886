"""The closed loop's wall time, from the shift of the world to the new champion at 100 % of traffic.

Runs the demo's loop (examples.adult.demo.closed_loop) on a private local stack with its
worker: the champion is trained and released, traffic flows, the world shifts, and monitoring,
the Prefect automation, retraining, the gates and the canary do the rest. Prints each phase, the work the
pipeline does (training, gates, release) against the time spent detecting and reacting, and
ends with the headline: seconds from the shift to the new champion serving all traffic
(goal: under 180 s on 2 cores).

    .venv/bin/python benchmarks/closed_loop.py
"""

from __future__ import annotations

import os
import socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# the router of this private stack, not a user's on 8000
os.environ["MLOPS_ROUTER_PORT"] = str(_free_port())
os.environ["MLOPS_ROUTER_ADMIN_PORT"] = str(_free_port())

from _common import SETTINGS, STATE  # noqa: E402

GOAL = 180.0


def main() -> None:
    import shutil

    from examples.adult.demo import closed_loop
    from mlops.adapters.dvc import pull_dataset
    from mlops.core.config import load_pipeline_config
    from mlops.core.settings import Settings
    from mlops.release.targets.local import LocalTarget
    from mlops.stack.local import LocalStack

    settings = Settings()
    stack = LocalStack(settings, out=lambda _m: None)
    cfg = load_pipeline_config(SETTINGS.pipeline)
    try:
        stack.up(with_worker=True, deploy=True)
        pull_dataset(settings.project_dir, cfg.data.path, cfg.data.seed)
        result = closed_loop(settings, out=lambda _m: None)
    finally:
        LocalTarget(settings, cfg.model_name).stop()
        stack.down()
        shutil.rmtree(STATE, ignore_errors=True)

    def first(prefix: str) -> float | None:
        for when, what in result.timeline:
            if what.startswith(prefix):
                return (when - result.shift_at).total_seconds()
        return None

    marks = {
        "drift event": first("event mlops.model.drift-detected"),
        "automation fired": first("automation triggered"),
        "retraining running": first("audit retraining-triggered"),
        "gates decided": first("audit gate-decision"),
        "canary started": first("audit release-started"),
        "new champion at 100%": first("audit released"),
    }
    for name, at in marks.items():
        print(f"{name:<22} +{at:6.1f} s" if at is not None else f"{name:<22} (not seen)")
    total = result.seconds_to_new_champion
    if total is None:
        print("nan s: no new champion took all traffic (see the demo's output)")
        return
    detect = marks["drift event"] or 0.0
    react = (marks["retraining running"] or detect) - detect
    work = total - (marks["retraining running"] or 0.0)
    print(
        f"detecting {detect:.1f} s (traffic, log flush, the monitoring run), reacting {react:.1f} s "
        f"(event -> automation -> worker -> flow running), pipeline {work:.1f} s (train, gates, "
        f"canary): {work / total:.2f} of the loop is the pipeline's own work"
    )
    print(
        f"{total:.1f} s from the shift to v{result.champion_after} at 100% of traffic "
        f"({total / GOAL:.2f} of the {GOAL:.0f} s goal)"
    )


if __name__ == "__main__":
    main()
