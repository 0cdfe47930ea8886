"""The local stack's Prometheus: configured from infra/monitoring/ with the stack's own paths,
started by `mlops up`, scraping what the release targets write for it; and a plain sentence when
it is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from mlops.core.files import write_atomic
from mlops.core.settings import Settings
from mlops.stack import local as local_stack_module
from mlops.stack.local import LocalStack
from mlops.stack.prometheus import INSTALL_HINT, render_config, scrape_targets_dir

pytestmark = pytest.mark.integration

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="Prometheus is not installed (.ci/run and `make test` install Debian's prometheus)",
)


@needs_prometheus
def test_the_rendered_config_is_infra_monitoring_with_the_stacks_paths(tmp_path: Path) -> None:
    settings = Settings(project_dir=Path.cwd(), state_dir=tmp_path / "state")
    path = render_config(settings)
    config = yaml.safe_load(path.read_text())
    assert config["global"]["scrape_interval"] == "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) >= {"mlops-router", "mlops-model-servers", "mlops-monitoring"}
    discovered = [
        f for job in jobs.values() for sd in job.get("file_sd_configs", []) for f in sd["files"]
    ]
    assert sorted(Path(f).name for f in discovered) == [
        "registry-webhooks.json",
        "routers.json",
        "slots.json",
    ]
    assert all(Path(f).parent == scrape_targets_dir(settings) for f in discovered)
    assert all(Path(rule).is_absolute() and Path(rule).exists() for rule in config["rule_files"])
    checked = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_mlflow_server_runs_without_its_job_runner(local_stack: Settings) -> None:
    """MLflow 3's server starts a Huey job runner (seven consumer processes, each importing MLflow)
    for its GenAI jobs; the registry and tracking the stack uses need none of it (webhooks are
    delivered from the server's own threads), so the stack's server starts without it."""
    import psutil

    mlflow = LocalStack(local_stack).load().get("mlflow")
    assert mlflow is not None
    tree = [psutil.Process(mlflow.pid), *psutil.Process(mlflow.pid).children(recursive=True)]
    commands = [" ".join(p.cmdline()) for p in tree]
    assert any("uvicorn" in c for c in commands), commands  # the server itself is there
    assert not [c for c in commands if "huey" in c or "_job_runner" in c], commands


@needs_prometheus
def test_mlops_up_runs_prometheus_scraping_what_the_targets_write(local_stack: Settings) -> None:
    rows = {name: (state, url) for name, state, url in LocalStack(local_stack).status()}
    assert rows["prometheus"][0].startswith("running") and rows["prometheus"][1] == str(
        local_stack.prometheus_url
    )
    # a target the local release target would write: Prometheus' own endpoint stands in for it
    own = str(local_stack.prometheus_url).split("://", 1)[1]
    folder = scrape_targets_dir(local_stack)
    before = (folder / "routers.json").read_text()
    write_atomic(
        folder / "routers.json",
        json.dumps([*json.loads(before), {"targets": [own], "labels": {"model": "probe"}}]),
    )
    try:
        deadline, found = time.monotonic() + 30, []
        while time.monotonic() < deadline and not found:
            time.sleep(0.5)
            found = httpx.get(
                f"{local_stack.prometheus_url}/api/v1/query",
                params={"query": 'up{job="mlops-router",model="probe"} == 1'},
            ).json()["data"]["result"]
        assert found, "Prometheus did not scrape the target written to routers.json in 30 s"
    finally:
        write_atomic(folder / "routers.json", before)


def test_up_without_prometheus_says_what_to_install(
    local_stack: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The servers that run already are left alone; the missing Prometheus is named with the
    package to install, and nothing fails."""
    said: list[str] = []
    monkeypatch.setattr(local_stack_module, "prometheus_binary", lambda: None)
    LocalStack(local_stack, out=said.append).up(with_worker=False, deploy=False)
    assert any(line.startswith("prometheus: not started") and INSTALL_HINT in line for line in said)
    assert "apt-get install --no-install-recommends prometheus" in INSTALL_HINT
