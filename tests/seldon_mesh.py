"""An EMULATION of Seldon Core 2's data plane, for tests only: no cluster runs here.

Callers post to the Experiment (``/infer``); like Seldon's router it picks a candidate Model by
the Experiment's weights as they stand right now (in the emulated Kubernetes API, or the GitOps
branch a sync tool would apply: ``split``), copies the request
to the mirror Model (its answer discarded), and forwards each to the real model server that plays
that Model's storage URI. Like Seldon's agent it exports, per Model, ``seldon_model_infer_total``
(with the answer's ``code``) and the histogram ``seldon_model_infer_api_seconds`` of the real
round trips, for the stack's Prometheus to scrape. It is no Seldon: it loads nothing.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from mlops.stack.processes import free_port
from tests.helpers import ThreadedServer


def split_of(manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The split a rendered v1 List of Models and their Experiment describes."""
    items = (manifest or {}).get("items", [])
    models = {i["metadata"]["name"]: i for i in items if i["kind"] == "Model"}
    experiment = next((i for i in items if i["kind"] == "Experiment"), None)
    if experiment is None:
        return {"candidates": [], "mirror": None}
    mirror = experiment["spec"].get("mirror")
    return {
        "candidates": [
            (c["name"], models[c["name"]]["spec"]["storageUri"], int(c["weight"]))
            for c in experiment["spec"]["candidates"]
        ],
        "mirror": (mirror["name"], models[mirror["name"]]["spec"]["storageUri"])
        if mirror
        else None,
    }


class SeldonMesh:
    def __init__(self, split: Callable[[], dict[str, Any]], backends: dict[str, str]) -> None:
        self.split, self.backends = split, backends  # backends: storage URI -> server
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.registry = CollectorRegistry()
        labels = ["server", "server_replica", "model", "model_internal", "method_type", "code"]
        self.calls = Counter(
            "seldon_model_infer_total", "inference calls", labels, registry=self.registry
        )
        self.seconds = Histogram(
            "seldon_model_infer_api_seconds", "inference latency", labels, registry=self.registry
        )
        self.answered: dict[str, int] = {}  # Model name -> requests it answered with 200
        self._rng = random.Random(7)
        self._client = httpx.Client(timeout=10)
        self._lock = threading.Lock()
        self._serving = ThreadedServer(self._build(), self.port, "the emulated Seldon mesh")

    def _forward(self, model: str, uri: str, body: bytes) -> httpx.Response | None:
        backend = self.backends.get(uri)
        if backend is None:
            return None
        started = time.perf_counter()
        try:
            answer = self._client.post(
                f"{backend}/predict", content=body, headers={"content-type": "application/json"}
            )
            code = str(answer.status_code)
        except httpx.TransportError:
            answer, code = None, "503"
        labels = ("mlserver", "0", model, model, "rest", code)
        self.calls.labels(*labels).inc()
        self.seconds.labels(*labels).observe(time.perf_counter() - started)
        with self._lock:
            self.answered[model] = self.answered.get(model, 0) + (code == "200")
        return answer

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/metrics")
        def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type="text/plain")

        @app.post("/infer")
        async def infer(request: Request) -> Any:
            body = await request.body()
            split = self.split()
            candidates = [c for c in split["candidates"] if c[2] > 0]
            if not candidates:
                return Response(status_code=404)
            with self._lock:
                name, uri, _ = self._rng.choices(candidates, weights=[c[2] for c in candidates])[0]
            answer = await _in_thread(self._forward, name, uri, body)
            if split["mirror"] is not None:
                await _in_thread(self._forward, *split["mirror"], body)
            if answer is None:
                return Response(status_code=503)
            return Response(answer.content, answer.status_code, media_type="application/json")

        return app

    def __enter__(self) -> SeldonMesh:
        self._serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.stop()
        self._client.close()


async def _in_thread(fn: Any, *args: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(fn, *args)
