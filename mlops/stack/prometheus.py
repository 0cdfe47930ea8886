"""The local stack's Prometheus: Debian's ``prometheus`` server on 127.0.0.1, configured from
``infra/monitoring/prometheus.yml`` with the stack's own paths.

The file in ``infra/monitoring/`` is the configuration (its jobs, rules and relabelling); the
stack writes a copy into ``<state_dir>/prometheus/`` whose file-discovery paths and rule files
point at this stack's folders, and whose scrape interval is the release analysis' (a canary step
lasts seconds, not minutes). The release targets write who to scrape
(``<state_dir>/metrics/routers.json`` and ``slots.json``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from mlops.core.errors import StackError
from mlops.core.files import write_atomic
from mlops.core.settings import Settings

PROMETHEUS = "prometheus"

PUSHGATEWAY = "pushgateway"

#: How often the local Prometheus scrapes: a canary step's analysis reads seconds-old figures.
SCRAPE_INTERVAL = "1s"

MONITORING_DIR = Path(__file__).resolve().parents[2] / "infra" / "monitoring"

INSTALL_HINT = (
    "Prometheus is not installed: the release's canary analysis reads its metrics there. "
    "Install Debian's package (`sudo apt-get install --no-install-recommends prometheus`; "
    "`make demo` and `make test` do so where they can), or put a `prometheus` binary on PATH"
)


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def pushgateway_binary() -> str | None:
    """Debian's ``prometheus-pushgateway`` (or a ``pushgateway`` on PATH)."""
    return shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")


def pushgateway_url(settings: Settings) -> str | None:
    """Where the monitoring flow pushes its figures: the settings' Pushgateway, else the
    stack's own where it can run one; None when neither."""
    if settings.pushgateway_url:
        return settings.pushgateway_url
    if pushgateway_binary():
        return f"http://{settings.host}:{settings.pushgateway_port}"
    return None


def pushgateway_argv(settings: Settings) -> list[str]:
    binary = pushgateway_binary()
    if binary is None:
        return []
    return [
        binary,
        f"--web.listen-address={settings.host}:{settings.pushgateway_port}",
        f"--persistence.file={settings.state_dir / 'prometheus' / 'pushgateway.db'}",
    ]


def scrape_targets_dir(settings: Settings) -> Path:
    """Where release targets write the routers and servers Prometheus scrapes (file discovery)."""
    return settings.state_dir / "metrics"


def monitoring_dir(settings: Settings) -> Path:
    """``infra/monitoring`` of the project, else the product's own."""
    mine = settings.project_dir / "infra" / "monitoring"
    return mine if (mine / "prometheus.yml").exists() else MONITORING_DIR


def render_config(settings: Settings) -> Path:
    """Write this stack's Prometheus configuration; returns its path."""
    source = monitoring_dir(settings)
    try:
        config: dict[str, Any] = yaml.safe_load((source / "prometheus.yml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise StackError(f"cannot read {source / 'prometheus.yml'}: {exc}") from None
    targets = scrape_targets_dir(settings)
    targets.mkdir(parents=True, exist_ok=True)
    config.setdefault("global", {})
    config["global"]["scrape_interval"] = SCRAPE_INTERVAL
    config["global"]["evaluation_interval"] = SCRAPE_INTERVAL
    config["rule_files"] = [str(source / r) for r in config.get("rule_files", [])]
    for job in config.get("scrape_configs", []):
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(targets / Path(f).name) for f in sd["files"]]
            sd["refresh_interval"] = SCRAPE_INTERVAL
        for static in job.get("static_configs", []):
            if job.get("job_name") == "mlops-monitoring" and (url := pushgateway_url(settings)):
                static["targets"] = [url.split("://", 1)[-1].rstrip("/")]
    for name in ("routers.json", "slots.json"):
        if not (targets / name).exists():
            write_atomic(targets / name, "[]")
    folder = settings.state_dir / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prometheus.yml"
    write_atomic(path, yaml.safe_dump(config, sort_keys=False))
    return path


def prometheus_argv(settings: Settings) -> list[str]:
    binary = prometheus_binary()
    if binary is None:
        raise StackError(INSTALL_HINT)
    folder = settings.state_dir / "prometheus"
    return [
        binary,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--web.listen-address={settings.host}:{settings.prometheus_port}",
        f"--storage.tsdb.path={folder / 'data'}",
        "--storage.tsdb.retention.time=7d",
        "--web.enable-lifecycle",
    ]
