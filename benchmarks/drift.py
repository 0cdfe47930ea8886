"""The monitoring flow's drift step against Evidently's DataDriftPreset run plainly, same frames.

1,000,000 reference rows and 100,000 current rows of 30 columns (20 numeric, 10 categorical;
seeded), a third of them shifted by amounts from slight to strong so that per-column decisions
are not all alike. "Ours" is `mlops.ml.monitoring.detect_drift` as the monitoring flow runs it: the
reference sampled to the policy's `reference_rows`, the window cut to its newest `max_rows`, then
Evidently's own per-column tests called directly (`mlops.ml.drift.drift_tests`; the flow renders the
HTML report after its events are out). "Plain" is `Report([DataDriftPreset()])` on the full frames.
Each runs in its own process, so each peak memory (max RSS) is its own.

Prints the time ratio ours/plain first, then each peak memory, then the share of per-column
drift decisions on which they agree; the last line's first number is the time ratio
(goal: under 0.1 with at least 99 % agreement).

    .venv/bin/python benchmarks/drift.py [--reference 1000000 --current 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

NUMERIC, CATEGORICAL = 20, 10


def frames(reference: int, current: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def make(n: int, shift: dict[int, float]) -> pd.DataFrame:
        data: dict[str, object] = {}
        for i in range(NUMERIC):
            data[f"num_{i}"] = rng.normal(shift.get(i, 0.0), 1.0 + i / 20, n)
        for j in range(CATEGORICAL):
            levels = 3 + j
            p = np.linspace(1, 2, levels)
            if NUMERIC + j in shift:  # move mass towards the last level
                p[-1] *= 1 + shift[NUMERIC + j] * 4
            data[f"cat_{j}"] = rng.choice([f"c{k}" for k in range(levels)], n, p=p / p.sum())
        return pd.DataFrame(data)

    # a third of the columns shifted, from below Evidently's threshold to well above it
    shifts = {i: 0.05 * (k + 1) for k, i in enumerate(range(0, 30, 3))}
    return make(reference, {}), make(current, shifts)


def run(which: str, reference: int, current: int) -> dict[str, object]:
    """One side in this process: seconds, decisions per column, peak RSS."""
    ref, cur = frames(reference, current)
    columns = list(ref.columns)
    # imports first, on both sides: the figure is the step's work, not loading libraries
    from evidently import Report
    from evidently.core.datasets import infer_column_type  # noqa: F401
    from evidently.legacy.calculations.stattests.registry import get_stattest  # noqa: F401
    from evidently.presets import DataDriftPreset

    from mlops.core.policy import MonitoringPolicy
    from mlops.ml.drift import read_snapshot
    from mlops.ml.monitoring import Window, detect_drift

    started = time.perf_counter()
    if which == "plain":
        reading = read_snapshot(Report([DataDriftPreset()]).run(cur, ref).dict()["metrics"])
        decisions = {c.column: c.drifted for c in reading.columns}
    else:
        policy = MonitoringPolicy()
        window = Window(None, pd.Timestamp.now(tz="UTC"), cur.tail(policy.max_rows))
        verdict = detect_drift(window, ref, columns, policy)
        decisions = {c: c in verdict.drifted for c in verdict.scores}
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "decisions": decisions, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=int, default=1_000_000)
    parser.add_argument("--current", type=int, default=100_000)
    parser.add_argument("--side", choices=["plain", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run(args.side, args.reference, args.current)))
        return

    def side(which: str) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, __file__, "--side", which, "--reference", str(args.reference),
             "--current", str(args.current)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    plain, ours = side("plain"), side("ours")
    a, b = plain["decisions"], ours["decisions"]
    assert isinstance(a, dict) and isinstance(b, dict)
    agree = sum(a[c] == b.get(c) for c in a) / len(a)
    print(
        f"plain Evidently: {plain['seconds']:.1f} s, peak {plain['peak_mb']:.0f} MB, drifted {sorted(c for c, d in a.items() if d)}"
    )
    print(
        f"ours:            {ours['seconds']:.1f} s, peak {ours['peak_mb']:.0f} MB, drifted {sorted(c for c, d in b.items() if d)}"
    )
    ratio = float(ours["seconds"]) / float(plain["seconds"])  # type: ignore[arg-type]
    print(
        f"{ratio:.3f} time ratio ours/plain; peak memory {ours['peak_mb']:.0f} MB against "
        f"{plain['peak_mb']:.0f} MB; {agree:.1%} of {len(a)} per-column decisions agree "
        "(goal: under 0.1 with at least 99 %)"
    )


if __name__ == "__main__":
    main()
