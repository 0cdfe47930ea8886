"""Monitoring at scale: a window of 1,000,000 logged predictions judged, and the log keeping up.

Writes the Adult example's rows (resampled, seeded) through the real ``PredictionLog`` as the model
server does, one single-row append per request with the server's schemas, and labels for a share
of them through the log's feedback kind. A clock handed to the log replays three days: a day
before the window, the window's day (``--rows`` rows, the window's ``age`` and ``hours_per_week``
shifted as the example's world shifts) and a day after, so the log spans several date and hour
partitions. Every row is counted back from the files' footers against the rows appended.

Then one window (the middle day) is judged as the monitoring flow judges it, in a fresh process
each so that each peak memory (max RSS) is its own: ``read_prediction_window`` and then
``detect_prediction_shift``, ``detect_drift`` and ``measure_live_performance`` with the example's
policy, its ``max_rows`` raised to hold the whole window. The baseline reads every file of the log
with all its columns into pandas (no pruning, no projection), keeps the window's files and judges
the same frame with the same functions. Both sides must reach the same verdicts.

Prints the log's write figures, then each side's read and judgement seconds and peak memory, the
ratio ours/baseline; the last line's first number is the seconds ours took to read and judge the
window (goal: under 15 s and 2 GB for 1,000,000 rows).

    .venv/bin/python benchmarks/monitoring_scale.py [--rows 1000000 --others 100000 --labelled 0.1]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

EXAMPLE = HERE.parent / "examples" / "adult"
DAY0 = datetime(2026, 1, 5, tzinfo=UTC)  # the window is the second of the three days
INTS = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
#: Rows at most in the buffer before the writer waits: well under the log's drop limit.
BUFFER_LIMIT = 50_000


def adult() -> tuple[pd.DataFrame, list[str]]:
    """The example's rows typed as the server logs them (no missing values), and its features."""
    from mlops.core.config import load_pipeline_config

    cfg = load_pipeline_config(EXAMPLE / "pipeline.yaml")
    raw = pd.read_csv(EXAMPLE / "adult.csv.gz", dtype=str, keep_default_na=False)
    typed = pd.read_csv(io.StringIO(raw.to_csv(index=False)), na_values=["?"]).dropna()
    return typed.reset_index(drop=True), list(cfg.features.columns)


class Clock:
    """The time the log stamps its commits with: moved on by the writer, day by day."""

    def __init__(self) -> None:
        self.now = DAY0

    def __call__(self) -> datetime:
        return self.now


def write(root: Path, rows: int, others: int, labelled: float) -> dict[str, Any]:
    """Three days of requests through the log; append cost, throughput and rows counted back."""
    import pyarrow.parquet as pq

    from examples.adult.traffic import shift_adult
    from mlops.adapters.prediction_log import (
        FEEDBACK,
        PREDICTIONS,
        PredictionLog,
        feedback_schema,
        prediction_schema,
    )

    data, features = adult()
    columns = [(c, "long" if c in INTS else "string") for c in features]
    clock = Clock()
    log = PredictionLog(root, spill_dir=root.parent / "spill", clock=clock)
    log.use_schema(PREDICTIONS, prediction_schema(columns, "binary"))
    log.use_schema(FEEDBACK, feedback_schema("binary"))
    rng = np.random.default_rng(0)
    appended = labels = 0
    in_append = 0.0
    started, cpu = time.perf_counter(), _cpu()
    for day, n in enumerate((others, rows, others)):
        start = DAY0 + timedelta(days=day)
        done = 0
        while done < n:
            chunk = data.iloc[rng.integers(0, len(data), min(10_000, n - done))]
            if day == 1:  # the window's world has shifted
                chunk = shift_adult(chunk)
            y = (chunk["income"] == ">50K").to_numpy()
            p = np.clip(y * 0.4 + rng.random(len(chunk)) * 0.6, 0, 1)  # informative, not perfect
            label = rng.random(len(chunk)) < labelled
            for i, feature_row in enumerate(chunk[features].to_dict("records")):
                clock.now = start + timedelta(days=(done + i) / n)
                request = f"{day}-{done + i:030x}"
                record = {**feature_row, "request_id": request, "row": 0, "time": clock.now,
                          "model": "adult", "version": 1,
                          "prediction": ">50K" if p[i] >= 0.5 else "<=50K",
                          "probabilities": [1 - float(p[i]), float(p[i])],
                          "probability": float(p[i])}  # fmt: skip
                t = time.perf_counter()
                log.append(PREDICTIONS, [record])
                if label[i]:
                    answer = ">50K" if y[i] else "<=50K"
                    log.append(FEEDBACK, [{"request_id": request, "label": answer,
                                           "time": clock.now}])  # fmt: skip
                    labels += 1
                in_append += time.perf_counter() - t
                appended += 1
                if appended % 1000 == 0:  # a server slower than its log never waits here
                    while sum(log.stats()["buffered"].values()) > BUFFER_LIMIT:
                        time.sleep(0.001)
            done += len(chunk)
        assert log.flush(timeout=600), "the log did not flush in 10 minutes"
    log.close()
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    stats = log.stats()
    counted = {
        kind: sum(pq.read_metadata(f).num_rows for f in (root / kind).rglob("part-*.parquet"))
        for kind in (PREDICTIONS, FEEDBACK)
    }
    return {
        "appended": appended,
        "labels": labels,
        "seconds": seconds,
        "append_us": in_append / (appended + labels) * 1e6,
        "cpu_us": cpu / appended * 1e6,
        "counted": counted,
        "written": stats["written"],
        "dropped": sum(stats["dropped"].values()),
        "spilled": sum(stats["spilled"].values()),
        "files": {kind: sum(1 for _ in (root / kind).rglob("part-*.parquet")) for kind in counted},
        "partitions": len({f.parent for f in (root / PREDICTIONS).rglob("part-*.parquet")}),
    }


def _cpu() -> float:
    """CPU seconds this process used so far (on a loaded machine, wall time overstates work)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def naive_window(root: str, since: datetime, until: datetime, features: list[str]) -> Any:
    """The baseline: every file of the log read whole into pandas, the window's kept."""
    import pyarrow.parquet as pq

    from mlops.adapters.prediction_log import FEEDBACK, PREDICTIONS, commit_time
    from mlops.ml.monitoring import Window

    def read(kind: str) -> tuple[pd.DataFrame, list[datetime | None]]:
        files = sorted(str(f) for f in (Path(root) / kind).rglob("part-*.parquet"))
        frames = [pq.read_table(f).to_pandas() for f in files]
        stamps = [
            commit_time(f) for f, frame in zip(files, frames, strict=True) for _ in frame.index
        ]
        return pd.concat(frames, ignore_index=True), stamps

    everything, stamps = read(PREDICTIONS)
    stamp = pd.Series(pd.to_datetime(stamps, utc=True))
    rows = everything[((stamp >= since) & (stamp < until)).to_numpy()]
    rows = rows.assign(time=pd.to_datetime(rows["time"], utc=True)).sort_values(
        "time", kind="stable"
    )
    feedback, _ = read(FEEDBACK)
    labels = feedback.drop_duplicates("request_id", keep="last")[["request_id", "label"]]
    rows = rows.merge(labels, on="request_id", how="left")
    return Window(since, until, rows.reset_index(drop=True), [])


def judge(which: str, root: str, rows: int) -> dict[str, Any]:
    """One side in this process: seconds to read and to judge the window, verdicts, peak RSS."""
    # imports first, on both sides: the figure is the work, not loading libraries
    import evidently.legacy.calculations.stattests.registry  # noqa: F401
    import scipy.stats  # noqa: F401
    from evidently.core.datasets import infer_column_type  # noqa: F401

    from mlops.adapters.prediction_window import read_prediction_window
    from mlops.core.config import load_pipeline_config
    from mlops.core.policy import load_policy
    from mlops.ml.monitoring import detect_drift, detect_prediction_shift, measure_live_performance
    from mlops.ml.problems import Predictions, problem_for

    cfg = load_pipeline_config(EXAMPLE / "pipeline.yaml")
    rules = load_policy(cfg.policy, set(cfg.features.columns), cfg.target.kind)[0].monitoring
    policy = rules.model_copy(update={"max_rows": rows})
    problem = problem_for(cfg.target)
    reference, features = adult()
    y = (reference["income"] == ">50K").to_numpy().astype("int64")
    holdout = Predictions(y, np.column_stack([1 - y * 0.9, y * 0.9]))
    since, until = DAY0 + timedelta(days=1), DAY0 + timedelta(days=2)

    started, cpu = time.perf_counter(), _cpu()
    if which == "ours":
        window = read_prediction_window(root, since, until, features, rows)
    else:
        window = naive_window(root, since, until, features)
    read = time.perf_counter() - started
    shift = detect_prediction_shift(window, holdout, problem, policy, 1)
    drift = detect_drift(window, reference, features, policy, shift)
    perf = measure_live_performance(window, 1, {policy.performance_metric: 0.9}, policy, problem)
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    return {
        "cpu": cpu,
        "rows": len(window.rows),
        "labelled": window.labelled,
        "read": read,
        "seconds": seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "verdicts": {
            "drift": [drift.judged, drift.detected, drift.drifted, drift.scores],
            "shift": [shift.judged, shift.distance],
            "performance": [perf.judged, perf.degraded, perf.labelled, perf.live],
        },
        "problems": window.problems,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the judged window")
    parser.add_argument("--others", type=int, default=100_000, help="rows on each other day")
    parser.add_argument("--labelled", type=float, default=0.1, help="share of rows labelled")
    parser.add_argument("--side", choices=["ours", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(judge(args.side, args.root, args.rows)))
        return

    folder = Path(tempfile.mkdtemp(prefix="mlops-monitoring-scale-"))
    try:
        report(folder / "log", args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def report(root: Path, args: argparse.Namespace) -> None:
    """Write the log under ``root``, judge its window on both sides, print the figures."""
    w = write(root, args.rows, args.others, args.labelled)
    lost = w["appended"] - w["counted"]["predictions"]
    print(
        f"log: {w['appended']} predictions and {w['labels']} labels appended one per call in "
        f"{w['seconds']:.1f} s ({w['appended'] / w['seconds']:.0f} predictions/s sustained, "
        f"making the records included; {w['cpu_us']:.0f} us of CPU per prediction, all "
        f"threads); append {w['append_us']:.1f} us per call on the caller's thread; {w['files']['predictions']} prediction files in {w['partitions']} hour "
        f"partitions; counted back {w['counted']}, written {w['written']}, spilled "
        f"{w['spilled']}, dropped {w['dropped']}; {lost} predictions lost"
    )

    def side(which: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, __file__, "--side", which, "--root", str(root),
             "--rows", str(args.rows)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    naive, ours = side("naive"), side("ours")
    for name, s in (("baseline (every file, all columns)", naive), ("ours", ours)):
        print(
            f"{name}: {s['rows']} rows ({s['labelled']} labelled) read in {s['read']:.1f} s, "
            f"read and judged in {s['seconds']:.1f} s ({s['cpu']:.1f} s of CPU), peak "
            f"{s['peak_mb']:.0f} MB"
        )
    same = naive["verdicts"] == ours["verdicts"] and naive["rows"] == ours["rows"]
    print(f"verdicts: {json.dumps(ours['verdicts']['drift'][:3])} drift, "
          f"{ours['verdicts']['performance']} performance; the same on both sides: {same}")  # fmt: skip
    if ours["problems"]:
        print(f"problems: {ours['problems']}")
    print(
        f"{ours['seconds']:.2f} s to read and judge a window of {ours['rows']} rows, peak "
        f"{ours['peak_mb']:.0f} MB ({ours['seconds'] / naive['seconds']:.2f}x the baseline's "
        f"{naive['seconds']:.1f} s and {naive['peak_mb']:.0f} MB); log {w['appended'] / w['seconds']:.0f} "
        f"rows/s, {lost} lost (goal: under 15 s and 2048 MB, none lost)"
    )


if __name__ == "__main__":
    main()
