"""The local release target: model-server processes in two slots behind the Traefik router.

State lives in ``<state_dir>/release/<model>/state.json`` (replaced atomically): which version
runs in which slot under which pid, which slot is stable, and the router's pid. Processes are
recognised by pid and start time, so a recycled pid is never mistaken for a slot.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mlops.core.files import write_atomic
from mlops.core.settings import Settings
from mlops.release.guard import start_guard, stop_guard
from mlops.release.providers.prometheus import PrometheusProvider, SlotSeries, server_series
from mlops.release.router import SLOTS, Router, Traffic
from mlops.release.targets.base import Deployed, SlotSample, TargetError, TargetState
from mlops.stack.fork_server import ForkServer
from mlops.stack.local import auth_headers, service_env
from mlops.stack.processes import (
    console_script,
    free_port,
    process_alive,
    spawn,
    started_at,
    stop_process_group,
    tail,
)
from mlops.stack.prometheus import scrape_targets_dir


@dataclass
class _State:
    router: dict[str, Any] | None = None  # pid, started
    slots: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # slot -> version, pid, started, port
    stable: str | None = None


def router_ports(settings: Settings, model: str) -> tuple[int, int]:
    """Where ``model``'s router listens (callers, admin). The first model of a stack gets the
    settings' ports; each further model the next pair above them (both plus 2, 4, ...) that no
    other model holds, so several models serve side by side. Recorded in
    ``release/<model>/ports.json``: a model keeps its ports across releases and restarts, until
    the settings' ports change."""
    base = [settings.router_port, settings.router_admin_port]
    releases = settings.state_dir / "release"
    path = releases / model / "ports.json"
    mine = _read_record(path)
    if mine is not None and mine.get("base") == base:
        return int(mine["port"]), int(mine["admin_port"])
    taken: set[int] = set()
    for other in releases.glob("*/ports.json"):
        record = _read_record(other)
        if other != path and record is not None and record.get("base") == base:
            taken |= {int(record["port"]), int(record["admin_port"])}
    step = 0
    while {base[0] + step, base[1] + step} & taken:
        step += 2
    port, admin = base[0] + step, base[1] + step
    if max(port, admin) > 65535:
        raise TargetError(f"no free router ports above {base} for {model}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"base": base, "port": port, "admin_port": admin}))
    return port, admin


class LocalTarget:
    name = "local"

    def __init__(self, settings: Settings, model: str) -> None:
        self.settings = settings
        self.model = model
        self.dir = settings.state_dir / "release" / model
        self.dir.mkdir(parents=True, exist_ok=True)
        port, admin = router_ports(settings, model)
        self.router = Router(self.dir / "router", port, admin, settings.host)

    # state -----------------------------------------------------------------------------------
    def _load(self) -> _State:
        path = self.dir / "state.json"
        if not path.exists():
            return _State()
        known = {f.name for f in fields(_State)}
        return _State(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})

    def _save(self, state: _State) -> None:
        write_atomic(self.dir / "state.json", json.dumps(asdict(state), indent=2))
        self._write_scrape_targets(state)

    def _write_scrape_targets(self, state: _State) -> None:
        """The model's router and slot servers for Prometheus' file service discovery
        (``infra/monitoring/prometheus.yml``; the stack's Prometheus reads them)."""
        folder = scrape_targets_dir(self.settings)
        folder.mkdir(parents=True, exist_ok=True)
        servers = [
            {
                "targets": [f"{self.settings.host}:{info['port']}"],
                "labels": {"model": self.model, "slot": slot, "version": str(info["version"])},
            }
            for slot, info in sorted(state.slots.items())
        ]
        router = [
            {
                "targets": [f"{self.settings.host}:{self.router.port}"],
                "labels": {"model": self.model},
            }
        ]
        for name, ours in (("slots.json", servers), ("routers.json", router)):
            path = folder / name
            others = [t for t in _read_json(path) if t["labels"].get("model") != self.model]
            write_atomic(path, json.dumps(others + ours, indent=2))

    def metrics(self) -> PrometheusProvider:
        """The stack's Prometheus: each slot as callers saw it through the router (Traefik's
        per-service counters, a dead slot's 502s included), its predictions as its server
        counted them."""
        state = self._load()
        series = {}
        for slot, info in state.slots.items():
            router = f'model="{self.model}",service="{slot}@file"'
            server = server_series(f'model="{self.model}",version="{info["version"]}"')
            series[slot] = SlotSeries(
                requests=f"traefik_service_requests_total{{{router}}}",
                errors=f'traefik_service_requests_total{{{router},code=~"5.."}}',
                latency=f"traefik_service_request_duration_seconds_bucket{{{router}}}",
                labels=server.labels,
                values=server.values,
                matchers=server.matchers,
            )
        assert self.settings.prometheus_url is not None
        return PrometheusProvider(self.settings.prometheus_url, series)

    def _url(self, slot: dict[str, Any]) -> str:
        return f"http://{self.settings.host}:{slot['port']}"

    def _deployed(self, state: _State, slot: str | None) -> Deployed | None:
        info = state.slots.get(slot) if slot else None
        if slot is None or info is None or not process_alive(info["pid"], info["started"]):
            return None
        return Deployed(slot, int(info["version"]), self._url(info))

    def _backends(self, state: _State) -> dict[str, str]:
        return {
            slot: self._url(info)
            for slot, info in state.slots.items()
            if process_alive(info["pid"], info["started"])
        }

    def state(self) -> TargetState:
        state = self._load()
        idle = next((s for s in SLOTS if s != state.stable), None) if state.stable else None
        return TargetState(
            self._deployed(state, state.stable), self._deployed(state, idle), self.router.current()
        )

    # router ----------------------------------------------------------------------------------
    def _ensure_router(self, state: _State, traffic: Traffic) -> None:
        info = state.router
        if info and process_alive(info["pid"], info["started"]):
            return
        pid = self.router.start(self._backends(state), traffic)
        state.router = {"pid": pid, "started": started_at(pid)}
        self._save(state)

    def set_traffic(self, traffic: Traffic) -> None:
        state = self._load()
        backends = self._backends(state)
        missing = set(traffic.serving) - set(backends)
        if missing:
            raise TargetError(f"{self.model}: slot(s) {sorted(missing)} run no model server")
        if state.router is None or not process_alive(state.router["pid"], state.router["started"]):
            self._ensure_router(state, traffic)
        else:
            self.router.apply(backends, traffic)

    def recover(self) -> str | None:
        state = self._load()
        stable = self._deployed(state, state.stable)
        now = self.router.current()
        if stable is None or now is None or now == Traffic.only(stable.slot):
            return None
        self.set_traffic(Traffic.only(stable.slot))
        return (
            f"found traffic {now.describe()} left by an unfinished release; "
            f"restored {stable.slot} (v{stable.version}) to 100%"
        )

    def guard(self, lease: UUID | None = None) -> None:
        start_guard(self.settings, self.model, self.name, self.dir / "guard.json", lease)

    def unguard(self) -> None:
        stop_guard(self.dir / "guard.json")

    def mark_stable(self, slot: str) -> None:
        state = self._load()
        state.stable = slot
        self._save(state)

    # slots -----------------------------------------------------------------------------------
    def deploy(self, version: int, image: str | None = None) -> Deployed:
        state = self._load()
        slot = next(s for s in SLOTS if s != state.stable)
        self.retire(slot)
        state = self._load()
        port = free_port(self.settings.host)
        log = self.dir / f"{slot}.log"
        # the servers keep MLOPS_SERVING_TOKEN when it is set: callers send it through the router
        env = os.environ | service_env(self.settings) | {"MLOPS_ENV": "local"}
        args = [
            "serve",
            self.model,
            "--version",
            str(version),
            "--port",
            str(port),
            "--log-root",
            self.settings.prediction_log(self.model),
        ]
        # forked from the stack's fork server, which imported the server's libraries once; a
        # plain process where it cannot fork, said in the server's log
        pid, why_not = ForkServer(self.settings.state_dir).fork(
            "mlops.cli", args, log, self.settings.project_dir, dict(env)
        )
        if pid is None:
            with log.open("a") as out:
                out.write(f"mlops: not forked ({why_not}): starting a plain process\n")
            pid = spawn(
                [console_script("mlops"), *args], log, cwd=self.settings.project_dir, env=env
            ).pid
        state.slots[slot] = {
            "version": version,
            "pid": pid,
            "started": started_at(pid),
            "port": port,
            "log": str(log),
        }
        self._save(state)
        return Deployed(slot, version, f"http://{self.settings.host}:{port}")

    def wait_ready(self, deployed: Deployed, timeout: float) -> None:
        from mlops.release.smoke import wait_until_ready

        info = self._load().slots[deployed.slot]

        def gone() -> str | None:
            if process_alive(info["pid"], info["started"]):
                return None
            return f"the {deployed.slot} server exited:\n{tail(Path(info['log']))}"

        wait_until_ready(self._url(info), timeout, gone)

    def retire(self, slot: str) -> None:
        state = self._load()
        info = state.slots.pop(slot, None)
        if info and process_alive(info["pid"], info["started"]):
            current = self.router.current()
            if current and (slot in current.serving or current.mirror == slot):
                raise TargetError(f"{self.model}: slot {slot} still takes traffic; not stopping it")
            stop_process_group(info["pid"], timeout=10)
        self._save(state)

    def stop(self) -> None:
        """Stop the router and both slots (``mlops down``)."""
        self.unguard()
        state = self._load()
        for info in [*state.slots.values(), state.router]:
            if info and process_alive(info["pid"], info["started"]):
                stop_process_group(info["pid"], timeout=10)
        (self.dir / "state.json").unlink(missing_ok=True)

    def health(self) -> str | None:
        """The router gone, or a slot's server that died while the router still sends it
        traffic (Prometheus would only stop seeing their series)."""
        state = self._load()
        router = state.router
        if router and not process_alive(router["pid"], router["started"]):
            return f"the router at {self.router.url} cannot be reached: its process is gone"
        now = self.router.current()
        for slot in (
            sorted(set(now.serving) | ({now.mirror} if now.mirror else set())) if now else []
        ):
            info = state.slots.get(slot)
            if info and not process_alive(info["pid"], info["started"]):
                return f"the {slot} server (v{info['version']}) exited:\n{tail(Path(info['log']))}"
        return None

    # metrics ---------------------------------------------------------------------------------
    def sample(self) -> dict[str, SlotSample]:
        state = self._load()
        try:
            routed = httpx.get(f"{self.router.url}/metrics", timeout=5).text
        except httpx.HTTPError as exc:
            raise TargetError(f"the router at {self.router.url} cannot be reached: {exc}") from None
        samples = parse_router_metrics(routed)
        for slot, info in state.slots.items():
            labels: dict[str, float] = {}
            values: dict[float, float] = {}
            try:
                served = httpx.get(
                    f"{self._url(info)}/metrics",
                    headers=auth_headers(self.settings, "serving"),
                    timeout=5,
                ).text
                labels, values = parse_prediction_counts(served), parse_prediction_values(served)
            except httpx.HTTPError:
                pass  # a dead slot shows in the router's errors
            base = samples.get(slot, SlotSample())
            samples[slot] = SlotSample(
                base.requests, base.errors, base.latency_buckets, labels, values
            )
        return samples


def parse_router_metrics(text: str) -> dict[str, SlotSample]:
    """Per-slot requests, 5xx and latency buckets from Traefik's Prometheus text."""
    requests: dict[str, float] = {}
    errors: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            slot = s.labels.get("service", "").split("@", 1)[0]
            if slot not in SLOTS:
                continue
            if s.name == "traefik_service_requests_total":
                requests[slot] = requests.get(slot, 0.0) + s.value
                if s.labels.get("code", "").startswith("5"):
                    errors[slot] = errors.get(slot, 0.0) + s.value
            elif s.name == "traefik_service_request_duration_seconds_bucket":
                le = float(s.labels["le"])
                into = buckets.setdefault(slot, {})
                into[le] = into.get(le, 0.0) + s.value
    return {
        slot: SlotSample(requests.get(slot, 0.0), errors.get(slot, 0.0), buckets.get(slot, {}))
        for slot in set(requests) | set(buckets)
    }


def parse_prediction_counts(text: str) -> dict[str, float]:
    """Predictions per class name from a model server's Prometheus text (classifiers)."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "mlops_predictions_total":
                counts[s.labels["label"]] = counts.get(s.labels["label"], 0.0) + s.value
    return counts


def parse_prediction_values(text: str) -> dict[float, float]:
    """The cumulative histogram of predicted values (``le`` -> count) from a model server's
    Prometheus text (regression); empty for a classifier's server."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "mlops_prediction_value_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
    return buckets


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return data if isinstance(data, list) else []
