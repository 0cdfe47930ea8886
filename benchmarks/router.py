"""The local router's added latency: requests through Traefik against the same model server direct.

In one run, on one model server (`mlops serve`, the example's model trained on a private stack)
with the router (Traefik, all traffic to that one slot) in front: one client, one request at a
time, alternating direct and routed requests so both see the same machine load. Prints p50 and
p99 of each on POST /predict (one row) and on GET /health (no model work), and ends with the
router's added latency on /predict: p50 then p99, in ms (goal: under 1 ms at p50). The stack's
Prometheus scrapes the router and the server every second meanwhile, as during a release.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from _common import PROJECT, ROW, SETTINGS, exited, local_stack, percentile

from mlops.core.files import write_atomic
from mlops.release.smoke import wait_until_ready
from mlops.stack.processes import free_port, stop_process_group
from mlops.stack.prometheus import SCRAPE_INTERVAL, scrape_targets_dir

BIN = Path(sys.executable).parent


def paired(direct: str, routed: str, count: int, send: str) -> tuple[list[float], list[float]]:
    """Latencies of ``count`` requests each way, alternating, on two keep-alive connections."""
    a, b = [], []
    with httpx.Client(timeout=30) as one, httpx.Client(timeout=30) as two:
        for i in range(count):
            for client, base, into in ((one, direct, a), (two, routed, b))[:: 1 if i % 2 else -1]:
                t = time.perf_counter()
                if send == "predict":
                    client.post(f"{base}/predict", json={"row": ROW})
                else:
                    client.get(f"{base}/health")
                into.append(time.perf_counter() - t)
    return a, b


def scraped_by_prometheus(router: str, server: str, timeout: float = 30) -> str:
    """Put the router and the server in the stack's Prometheus file discovery (as the local
    target does) and wait until both are scraped, so the latencies are measured while
    Prometheus scrapes them, as in a release."""
    folder = scrape_targets_dir(SETTINGS)
    for name, url, labels in (
        ("routers.json", router, {"model": "bench"}),
        ("slots.json", server, {"model": "bench", "slot": "blue", "version": "1"}),
    ):
        target = url.split("://", 1)[1]
        write_atomic(folder / name, json.dumps([{"targets": [target], "labels": labels}]))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = httpx.get(
            f"{SETTINGS.prometheus_url}/api/v1/query", params={"query": 'up{model="bench"}'}
        ).json()["data"]["result"]
        if len(up) == 2 and all(r["value"][1] == "1" for r in up):
            return ", ".join(sorted(r["metric"]["job"] for r in up))
        time.sleep(0.5)
    raise SystemExit(f"Prometheus at {SETTINGS.prometheus_url} did not scrape both in {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    import logging

    logging.getLogger("prefect").setLevel(logging.WARNING)
    from mlops.release.router import Router, Traffic

    with local_stack():
        from flows.training import training

        version = training(trigger="benchmark").version
        port = free_port()
        proc = subprocess.Popen(
            [
                str(BIN / "mlops"),
                "serve",
                "adult-income",
                "--version",
                str(version),
                "--port",
                str(port),
                "--log-root",
                str(SETTINGS.state_dir / "bench-log"),
            ],
            cwd=PROJECT,
            env=os.environ | {"PATH": f"{BIN}:{os.environ.get('PATH', '')}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        router = Router(SETTINGS.state_dir / "bench-router", free_port(), free_port())
        direct = f"http://127.0.0.1:{port}"
        pid = None
        try:
            wait_until_ready(direct, 120, exited(proc))
            pid = router.start({"blue": direct}, Traffic.only("blue"))
            scraped = scraped_by_prometheus(router.url, direct)
            paired(direct, router.url, 200, "predict")  # warm-up
            results = {
                route: paired(direct, router.url, args.requests, route)
                for route in ("health", "predict")
            }
        finally:
            if pid:
                stop_process_group(pid, timeout=10)
            stop_process_group(proc.pid, timeout=10)

    ms = 1000
    for route, (a, b) in results.items():
        print(
            f"{route:<8} direct p50 {percentile(a, 0.5) * ms:.3f} ms, p99 {percentile(a, 0.99) * ms:.3f} ms;"
            f" through the router p50 {percentile(b, 0.5) * ms:.3f} ms, p99 {percentile(b, 0.99) * ms:.3f} ms"
        )
    print(f"Prometheus scraped the router and the server every {SCRAPE_INTERVAL}: {scraped}")
    a, b = results["predict"]
    p50 = (percentile(b, 0.5) - percentile(a, 0.5)) * ms
    p99 = (percentile(b, 0.99) - percentile(a, 0.99)) * ms
    print(
        f"{p50:.3f} ms p50, {p99:.3f} ms p99: the router's added latency on /predict (goal p50 < 1 ms)"
    )


if __name__ == "__main__":
    main()
