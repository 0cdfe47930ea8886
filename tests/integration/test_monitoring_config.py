"""infra/monitoring: the Prometheus config and alert rules pass promtool (their own unit tests
included), and the Grafana dashboard asks only for metrics the product exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlops.adapters.prometheus import write_prometheus
from mlops.ml.monitoring import DriftVerdict, MonitoringOutcome, PerformanceVerdict
from mlops.serving.app import Metrics
from mlops.serving.model import Answers, ServedProblem
from tests.helpers import PROJECT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("promtool") is None,
        reason="promtool is not installed (.ci/run installs Debian's prometheus)",
    ),
]

MONITORING = PROJECT / "infra" / "monitoring"
ROUTER_METRICS = {
    "traefik_service_requests_total",
    "traefik_service_request_duration_seconds_bucket",
}


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_prometheus_config_and_rules_pass_promtool() -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout


def test_the_compose_stacks_prometheus_config_passes_promtool() -> None:
    checked = promtool("check", "config", "prometheus.yml", cwd=PROJECT / "infra" / "docker")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_rules_fire_on_what_they_should_and_only_that() -> None:
    tested = promtool("test", "rules", "mlops.rules.test.yml", cwd=MONITORING / "rules")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def exported_metrics(tmp_path: Path) -> set[str]:
    """Every sample name the model server and the monitoring flow export, and the router's."""
    server = Metrics("adult-income", "1")
    server.requests.labels(**server.labels, route="/predict", status="200").inc()
    server.latency.labels(**server.labels, route="/predict").observe(0.01)
    server.errors.labels(**server.labels, route="/predict", kind="invalid_row").inc()
    binary = ServedProblem("binary", "income", ("<=50K", ">50K"))
    server.for_problem(binary)
    server.observe(binary, Answers([">50K"], np.array([[0.3, 0.7]])))
    text = generate_latest(server.registry).decode()
    regression = ServedProblem("regression", "price", (), (1.0, 2.0))
    values = Metrics("prices", "1")  # a regression's server counts values instead
    values.for_problem(regression)
    values.observe(regression, Answers([1.5]))
    text += generate_latest(values.registry).decode()
    outcome = MonitoringOutcome(
        "adult-income", 1, None, datetime.now(UTC).isoformat(), 1200,
        DriftVerdict(True, True, "", 0.14, ["age"], {"age": 0.6, "sex": 0.01}),
        PerformanceVerdict(True, False, "", "roc_auc", 300, 0.9, 0.93),
        [], {},
    )  # fmt: skip
    write_prometheus(outcome, tmp_path / "monitoring.prom", None)
    text += (tmp_path / "monitoring.prom").read_text()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    return names | ROUTER_METRICS


def test_the_dashboard_asks_only_for_exported_or_recorded_metrics(tmp_path: Path) -> None:
    dashboard = json.loads(
        (MONITORING / "grafana" / "dashboards" / "mlops-overview.json").read_text()
    )
    rules = yaml.safe_load((MONITORING / "rules" / "mlops.rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    known = exported_metrics(tmp_path) | recorded
    datasources = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources.yml").read_text()
    )
    uids = {d["uid"] for d in datasources["datasources"]}
    asked = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            asked |= set(re.findall(r"\b(?:mlops|traefik)[a-zA-Z0-9_:]*", target["expr"]))
    assert asked - known == set()
    # what the issue asks the dashboard to show
    shown = {m.split("_bucket")[0] for m in asked}
    assert {
        "traefik_service_requests_total",
        "mlops_predictions_total",
        "mlops_drift_share",
    } <= shown
    assert "mlops:router_latency_p99:rate5m" in asked and "mlops:router_error_ratio:rate5m" in asked
