"""Serving latency and throughput: this model server against `mlflow models serve`.

In one run, on one model (the example's HistGradientBoosting pipeline, trained and registered on a
private local stack) and with one load generator on loopback (N client threads, each with its
own keep-alive connection, one row per request, for a fixed time):
  * in-process ``predict`` of one row (the floor),
  * this server (`mlops serve`, uvicorn, one process),
  * `mlflow models serve --env-manager local` (one worker).
Latency is measured with one client (a request at a time, so no queueing in the figure),
throughput with ``--clients`` at once. Prints single-row p50/p99 latency of each and the
throughput of both servers, and ends with the throughput ratio of this server over MLflow's
(goal: at least 2).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from _common import PROJECT, ROW, SETTINGS, exited, local_stack, percentile

from mlops.release.smoke import wait_until_ready
from mlops.stack.processes import free_port, stop_process_group

BIN = Path(sys.executable).parent


def load(url: str, body: dict, seconds: float, clients: int) -> tuple[list[float], float]:
    """Latencies (s) of every request and the requests per second, ``clients`` at a time."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        mine = []
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = client.post(url, json=body)
                mine.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
        with lock:
            latencies.extend(mine)

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, len(latencies) / (time.monotonic() - start)


def roundtrips(url: str, count: int) -> list[float]:
    """Latencies of ``count`` GETs of a route that does no work: what client and HTTP cost alone."""
    out = []
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            t = time.perf_counter()
            client.get(url)
            out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    import logging

    logging.getLogger("prefect").setLevel(logging.WARNING)
    with local_stack():
        from flows.training import training
        from mlops.cli.serving import load_served_model

        version = training(trigger="benchmark").version
        name = "adult-income"
        # the floor: the same model object, in this process
        import pandas as pd

        served = load_served_model(
            str(SETTINGS.mlflow_tracking_uri), name, str(version), SETTINGS.state_dir / "bench"
        )
        frame = pd.DataFrame([ROW])
        for _ in range(20):
            served.predict(frame)
        floor = []
        for _ in range(300):
            t = time.perf_counter()
            served.predict(frame)
            floor.append(time.perf_counter() - t)

        env = os.environ | {"PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        results = {}
        for label, argv, ready, url, body in (
            (
                "this server",
                [
                    str(BIN / "mlops"),
                    "serve",
                    name,
                    "--version",
                    str(version),
                    "--port",
                    "{port}",
                    "--log-root",
                    str(SETTINGS.state_dir / "bench-log"),
                ],
                "/ready",
                "/predict",
                {"row": ROW},
            ),
            (
                "mlflow models serve",
                [
                    str(BIN / "mlflow"),
                    "models",
                    "serve",
                    "-m",
                    f"models:/{name}/{version}",
                    "--env-manager",
                    "local",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    "{port}",
                    "-w",
                    "1",
                ],
                "/ping",
                "/invocations",
                {"dataframe_records": [ROW]},
            ),
        ):
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
                wait_until_ready(base, 120, exited(proc), path=ready)
                load(base + url, body, 2, args.clients)  # warm-up
                latency, _ = load(base + url, body, args.seconds / 2, 1)
                if label == "this server":
                    transport = roundtrips(base + "/health", 500)
                _, throughput = load(base + url, body, args.seconds, args.clients)
                results[label] = (latency, throughput)
            finally:
                stop_process_group(proc.pid, timeout=10)

    ms = 1000
    print(
        f"in-process predict, one row: p50 {percentile(floor, 0.5) * ms:.2f} ms, "
        f"p99 {percentile(floor, 0.99) * ms:.2f} ms"
    )
    print(
        f"round trip of GET /health (client and transport alone): p50 {percentile(transport, 0.5) * ms:.2f} ms"
    )
    for label, (lat, rps) in results.items():
        print(
            f"{label}: p50 {percentile(lat, 0.5) * ms:.2f} ms, p99 {percentile(lat, 0.99) * ms:.2f} ms "
            f"(one client); {rps:.0f} requests/s ({args.clients} clients)"
        )
    ours, theirs = results["this server"][1], results["mlflow models serve"][1]
    gap = (percentile(results["this server"][0], 0.5) - percentile(floor, 0.5)) * ms
    own = gap - percentile(transport, 0.5) * ms
    print(
        f"this server's p50 over in-process predict: +{gap:.2f} ms, of which +{own:.2f} ms beyond "
        "the bare round trip (goal within 1 ms)"
    )
    print(f"{ours / theirs:.2f} throughput ratio: this server / mlflow models serve (goal >= 2)")


if __name__ == "__main__":
    main()
