"""/explain against /predict on the same server, in one run: what an explanation costs a row.

The example's model (examples/adult: HistGradientBoosting behind the shipped feature pipeline),
trained and saved as the training run logs it, is served by ``python -m mlops.serving`` on
loopback. One client alternates, one request after another, /predict and /explain of the same
row, then of the same 10 rows (``--repeat`` times each), and the same pairs in process
(``ServedModel.predict_records`` against ``Explainer.explain``). The first /explain pays shap's
import and the explainer's build: timed on its own, not in the figures. Prints p50 and p99 of
each and ends with the one-row p50 ratio, /explain over /predict.

    .venv/bin/python benchmarks/explain.py [--repeat 300]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import ROW, exited, percentile
from inference_path import served_example, timed

from mlops.core.integrity import artifact_checksum
from mlops.release.smoke import wait_until_ready
from mlops.serving.app import row_model
from mlops.stack.processes import free_port, stop_process_group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlops-explain-bench-"))
    try:
        model = served_example(work / "model")
        (work / "model.json").write_text(
            json.dumps(
                {"name": model.name, "version": 1, "sha256": artifact_checksum(work / "model")}
            )
        )
        checked = [row_model(model.columns).model_validate(ROW).model_dump()]
        rows10 = [dict(ROW, age=20 + 5 * i, hours_per_week=30 + 2 * i) for i in range(10)]
        checked10 = [row_model(model.columns).model_validate(r).model_dump() for r in rows10]
        started = time.perf_counter()
        explainer = model.explainer()
        build = time.perf_counter() - started
        local = timed(
            {
                "predict 1 row": lambda: model.predict_records(checked),
                "explain 1 row": lambda: explainer.explain(model.frame(checked)),
                "predict 10 rows": lambda: model.predict_records(checked10),
                "explain 10 rows": lambda: explainer.explain(model.frame(checked10)),
            },
            args.repeat,
        )
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlops.serving", "--model-dir", str(work / "model"),
             "--metadata", str(work / "model.json"), "--host", "127.0.0.1", "--port", str(port),
             "--log-root", str(work / "log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_ready(base, 180, exited(proc))
            with httpx.Client(base_url=base, timeout=60) as client:
                started = time.perf_counter()
                first = client.post("/explain", json={"row": ROW})
                first_call = time.perf_counter() - started
                assert first.status_code == 200, first.text

                def post(path: str, body: dict[str, object]) -> None:
                    r = client.post(path, json=body)
                    assert r.status_code == 200, r.text

                served = timed(
                    {
                        "/predict 1 row": lambda: post("/predict", {"row": ROW}),
                        "/explain 1 row": lambda: post("/explain", {"row": ROW}),
                        "/predict 10 rows": lambda: post("/predict", {"rows": rows10}),
                        "/explain 10 rows": lambda: post("/explain", {"rows": rows10}),
                    },
                    args.repeat,
                )
        finally:
            stop_process_group(proc.pid, timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ms = 1000
    print(f"explainer: {explainer.method} in {explainer.space} ({model.path.name} predict path)")
    print(f"in process, building the explainer (shap's import, probe-row check): {build:.2f} s")
    print(f"the server's first /explain (the same, in the server): {first_call:.2f} s")
    for figures in (local, served):
        for name, seconds in figures.items():
            print(
                f"{name:18s} p50 {percentile(seconds, 0.5) * ms:7.2f} ms   "
                f"p99 {percentile(seconds, 0.99) * ms:7.2f} ms"
            )
    p50 = {name: percentile(s, 0.5) for name, s in (local | served).items()}
    per_row = (p50["/explain 10 rows"] - p50["/predict 10 rows"]) / 10 * ms
    print(
        f"in process: explain/predict one row {p50['explain 1 row'] / p50['predict 1 row']:.2f}x, "
        f"10 rows {p50['explain 10 rows'] / p50['predict 10 rows']:.2f}x; over HTTP an explained "
        f"row costs {per_row:.2f} ms more than a predicted one in a batch of 10"
    )
    ratio = p50["/explain 1 row"] / p50["/predict 1 row"]
    print(
        f"{ratio:.2f}x /explain over /predict, one row p50 ({p50['/explain 1 row'] * ms:.2f} ms "
        f"against {p50['/predict 1 row'] * ms:.2f} ms, the same server and run)"
    )


if __name__ == "__main__":
    main()
