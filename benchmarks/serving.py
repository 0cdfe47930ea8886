"""Serving latency and throughput under wrk: this model server against `mlflow models serve`.

In one run, on one model (the example's HistGradientBoosting pipeline, trained and registered on a
private local stack), on this machine:
  * the floor: in-process ``ServedModel.predict_records`` of one validated row, by the path the
    server answers with (compiled or registered, as /ready says),
  * this server (`mlops serve`, uvicorn, one process, micro-batching concurrent requests),
  * `mlflow models serve --env-manager local` (one worker),
each server under wrk (a Lua script posting the one-row JSON on keep-alive connections) at 1, 8
and 64 connections for a fixed time after a warm-up: requests/s, p50 and p99 of each level.
Then this server's own work per request, itemised and measured in-process on the same row (JSON
parse, validation, predict, log append, metrics, JSON dump), and a check that its prediction log
wrote a row for every request it answered 200 (its Parquet rows counted after the server stops
and flushes, against its own /metrics count). wrk shares the 2 cores with the server it loads.

Last line: the throughput ratio over MLflow's at 8 connections (the headline; goal >= 10), then
at 64 (goal >= 20).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _common import PROJECT, ROW, SETTINGS, exited, local_stack, percentile

from mlops.release.smoke import wait_until_ready
from mlops.stack.processes import free_port, stop_process_group

BIN = Path(sys.executable).parent
#: the load generator (Debian's wrk: `make wrk` installs it)
WRK = shutil.which("wrk") or "wrk"
LEVELS = (1, 8, 64)

# Posts BODY on every request; prints one JSON line of the run's figures (latency in µs).
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = BODY
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "seconds": %f, "non2xx": %d, "errors": %d, "p50": %d, "p99": %d}\\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(url: str, body: dict[str, Any], connections: int, seconds: float) -> dict[str, Any]:
    """One wrk run (``seconds`` rounded to whole seconds, as wrk takes them): requests/s, p50 and
    p99 (ms); every answer must be 2xx."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"BODY = {json.dumps(json.dumps(body))}\n{LUA}")
    try:
        done = subprocess.run(
            [WRK, f"-t{min(2, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
             "--timeout", "10s", "-s", script.name, url],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(
                f"wrk failed on {url} ({done.returncode}): {done.stderr or done.stdout}"
            )
    finally:
        os.unlink(script.name)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["non2xx"] or figures["errors"]:
        raise SystemExit(f"wrk on {url}: {figures} (not every answer was 2xx)\n{done.stdout}")
    return figures | {
        "rps": figures["requests"] / figures["seconds"],
        "p50": figures["p50"] / 1000,
        "p99": figures["p99"] / 1000,
    }


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    """Seconds each of ``n`` calls of ``fn`` took, after 50 untimed ones."""
    for _ in range(50):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def itemised(served: Any, log_root: Path, n: int) -> dict[str, list[float]]:
    """This server's work on one request, step by step, in-process on ROW (as app.answer does)."""
    from mlops.adapters.prediction_log import PREDICTIONS, PredictionLog
    from mlops.serving.app import (
        Metrics,
        SafeJSON,
        _answer_body,
        _parse_json,
        _records,
        row_model,
    )

    raw = json.dumps({"row": ROW}).encode()
    model = row_model(served.columns)
    checked = [model.model_validate(ROW).model_dump()]
    answers = served.predict_records(checked)
    metrics = Metrics(served.name, str(served.version))
    metrics.for_problem(served.problem)
    log = PredictionLog(str(log_root), batch_rows=10_000, max_age_seconds=1)
    rid = "0" * 32

    def observe() -> None:
        metrics.observe(served.problem, answers)
        metrics.batch_rows.labels(**metrics.labels).observe(1)
        metrics.requests.labels(**metrics.labels, route="/predict", status=200).inc()
        metrics.latency.labels(**metrics.labels, route="/predict").observe(0.001)

    try:
        return {
            "JSON parse": timed(lambda: _parse_json(raw), n),
            "validation": timed(lambda: [model.model_validate(r).model_dump() for r in [ROW]], n),
            "predict": timed(lambda: served.predict_records(checked), n),
            "log append": timed(
                lambda: log.append(PREDICTIONS, _records(served, rid, checked, answers)), n
            ),
            "metrics": timed(observe, n),
            "JSON dump": timed(lambda: SafeJSON(_answer_body(served, rid, answers)), n),
        }
    finally:
        log.close()


def answered_200(base: str) -> int:
    """This server's own count of /predict requests it answered 200 (from /metrics), once it
    stops moving: wrk leaves up to a connection's worth of requests in flight when it ends, and
    the server answers (and logs) them after it."""

    def count() -> int:
        text = httpx.get(base + "/metrics").text
        found = re.search(
            r'^mlops_requests_total\{[^}]*route="/predict",status="200"[^}]*\} (\S+)$', text, re.M
        )
        return int(float(found.group(1))) if found else 0

    last, now = -1, count()
    while now != last:
        time.sleep(0.5)
        last, now = now, count()
    return now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10, help="wrk's time at each level")
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--repeat", type=int, default=2000, help="in-process timings per item")
    args = parser.parse_args()
    import logging

    logging.getLogger("prefect").setLevel(logging.WARNING)
    with local_stack():
        from flows.training import training
        from mlops.adapters.prediction_window import read_log
        from mlops.cli.serving import load_served_model
        from mlops.serving.app import row_model

        version = training(trigger="benchmark").version
        name = "adult-income"
        served = load_served_model(
            str(SETTINGS.mlflow_tracking_uri), name, str(version), SETTINGS.state_dir / "bench"
        )
        checked = [row_model(served.columns).model_validate(ROW).model_dump()]
        floor = timed(lambda: served.predict_records(checked), args.repeat)
        steps = itemised(served, SETTINGS.state_dir / "bench-itemised-log", args.repeat)

        env = os.environ | {"PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        log_root = SETTINGS.state_dir / "bench-log"
        results: dict[str, dict[int, dict[str, Any]]] = {}
        answered = 0
        for label, argv, ready, url, body in (
            (
                "this server",
                [str(BIN / "mlops"), "serve", name, "--version", str(version), "--port", "{port}",
                 "--log-root", str(log_root)],
                "/ready",
                "/predict",
                {"row": ROW},
            ),
            (
                "mlflow models serve",
                [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}/{version}",
                 "--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}", "-w", "1"],
                "/ping",
                "/invocations",
                {"dataframe_records": [ROW]},
            ),
        ):  # fmt: skip
            port = free_port()
            proc = subprocess.Popen(
                [a.replace("{port}", str(port)) for a in argv],
                cwd=PROJECT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                wait_until_ready(base, 180, exited(proc), path=ready)
                if label == "this server":
                    path = httpx.get(base + "/ready").json()["path"]["name"]
                results[label] = {}
                for connections in LEVELS:
                    wrk(base + url, body, connections, args.warmup)
                    results[label][connections] = wrk(base + url, body, connections, args.seconds)
                if label == "this server":
                    answered = answered_200(base)
            finally:
                stop_process_group(proc.pid, timeout=30)  # SIGTERM: the log flushes as it stops
        logged = len(read_log(str(log_root), columns=["request_id"]))

    ms = 1000
    p50 = percentile(floor, 0.5) * ms
    print(
        f"in-process predict_records, one row ({path} path): p50 {p50:.2f} ms, "
        f"p99 {percentile(floor, 0.99) * ms:.2f} ms"
    )
    for label, levels in results.items():
        for connections, r in levels.items():
            print(
                f"{label:20s} {connections:3d} connections: {r['rps']:7.0f} requests/s, "
                f"p50 {r['p50']:7.2f} ms, p99 {r['p99']:7.2f} ms ({r['requests']} requests)"
            )
    ours, theirs = results["this server"], results["mlflow models serve"]
    for connections in LEVELS:
        print(
            f"ratio at {connections:2d} connections: {ours[connections]['rps'] / theirs[connections]['rps']:.1f}x "
            "requests/s"
        )
    print("this server's own work per one-row request, in-process (p50, p99):")
    total = 0.0
    for step, values in steps.items():
        total += percentile(values, 0.5)
        print(
            f"  {step:12s} {percentile(values, 0.5) * ms:6.3f} ms  {percentile(values, 0.99) * ms:6.3f} ms"
        )
    print(f"  {'sum of p50s':12s} {total * ms:6.3f} ms")
    gap = ours[1]["p50"] - p50
    print(
        f"one-row p50 under wrk at 1 connection over in-process predict_records: +{gap:.2f} ms "
        "(goal within 1 ms)"
    )
    print(
        f"prediction log: {logged} rows written for {answered} requests answered 200 "
        f"({'equal' if logged == answered else 'NOT EQUAL'})"
    )
    r8 = ours[8]["rps"] / theirs[8]["rps"]
    r64 = ours[64]["rps"] / theirs[64]["rps"]
    print(
        f"{r8:.1f} throughput ratio at 8 connections, this server / mlflow models serve (goal >= 10); "
        f"{r64:.1f} at 64 (goal >= 20)"
    )


if __name__ == "__main__":
    main()
