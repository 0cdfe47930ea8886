"""The monitoring flow and the retraining automation on real Prefect and MLflow servers, with
production traffic sent through the local release target's router to real model servers."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from examples.adult.traffic import send_traffic, shift_adult
from flows.monitoring import monitoring, watermark_name
from flows.release import release
from mlops.adapters.events import emit_model_event
from mlops.adapters.prediction_window import SETTLE
from mlops.core.events import DRIFT_DETECTED, POLICY_UPDATED
from mlops.core.settings import Settings
from mlops.release.targets.local import LocalTarget
from mlops.stack.local import LocalStack, service_env
from tests.fixtures import trained_project
from tests.helpers import EXAMPLE

FEATURES = [
    *["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"],
    *[
        "workclass",
        "education",
        "marital_status",
        "occupation",
        "relationship",
        "race",
        "sex",
        "native_country",
    ],
]

pytestmark = pytest.mark.flows


def typed_rows(start: int, count: int) -> pd.DataFrame:
    """Rows of the example after the training rows, typed and complete, as callers send them."""
    raw = pd.read_csv(
        EXAMPLE / "adult.csv.gz", na_values=["?"], skiprows=range(1, start + 1), nrows=count
    )
    return raw.dropna().reset_index(drop=True)


@pytest.fixture(scope="module")
def production(
    local_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A champion released on the local target, answering through the router."""
    with trained_project(
        tmp_path_factory.mktemp("monitoring-project"),
        "monitored",
        rows=8000,
        policy={
            "monitoring": {
                "min_rows": 900,
                "min_labelled_rows": 200,
                "drift": {"max_share": 0.1},
                "attribution": {"max_shift": 0.1, "rows": 200},
            }
        },
        promote=True,
        router=True,
    ) as p:
        (v1,) = p.versions
        release(version=str(v1), pipeline=str(p.pipeline), trigger="test")
        yield {
            "name": p.name,
            "pipeline": str(p.pipeline),
            "v1": v1,
            "url": p.target.router.url,
            "settings": p.settings,
        }


def _send(production: dict[str, Any], rows: pd.DataFrame) -> None:
    report = send_traffic(production["url"], rows, "income", clients=4)
    assert report.answered == len(rows) and report.labelled == len(rows), report.failures
    # the server's log writes a row within 5 s; a window ends SETTLE before the flow starts
    time.sleep(6 + SETTLE.total_seconds())


def _events(settings: Settings, name: str, model: str) -> list[dict[str, Any]]:
    body = {
        "filter": {"event": {"name": [name]}, "resource": {"id": [f"mlops.model.{model}"]}},
        "limit": 50,
    }
    r = httpx.post(f"{settings.prefect_api_url}/events/filter", json=body, timeout=10)
    r.raise_for_status()
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def test_unshifted_traffic_raises_no_drift_over_repeated_windows(
    production: dict[str, Any],
) -> None:
    for k in range(3):
        _send(production, typed_rows(8000 + 1000 * k, 1000))
        outcome = monitoring(pipeline=production["pipeline"])
        assert outcome.skew.judged and not outcome.skew.detected, outcome.skew.reason
        assert outcome.performance.judged and not outcome.performance.degraded, (
            outcome.performance.reason
        )
        assert outcome.events == {} and outcome.problems == []
        assert 900 <= outcome.rows <= 1000
        # the window against the one before it (none before the first), and the influences
        if k == 0:
            assert not outcome.drift.judged and "the first window" in outcome.drift.reason
        else:
            assert outcome.drift.judged and not outcome.drift.detected, outcome.drift.reason
            assert "against the production rows logged before the window" in outcome.drift.reason
        attribution = outcome.attribution
        assert attribution.judged and not attribution.detected, attribution.reason
        assert attribution.rows == 200 and attribution.space == "log_odds"
        assert {i.feature for i in attribution.influences} == set(FEATURES)
        # the champion's detector flags production like its training rows (1 % at most)
        outliers = outcome.outliers
        assert outliers.judged and outliers.p_value is not None and outliers.p_value > 0.001
        assert outliers.training_rate is not None and 0 < outliers.training_rate <= 0.01
        # the champion predicts production's classes in the shares it predicted its holdout's
        shift = outcome.skew.predictions
        assert shift is not None and shift.judged and shift.measure == "total variation"
        assert shift.distance is not None and shift.distance < 0.1, shift.reason
        assert set(shift.window) == {"<=50K", ">50K"} and not shift.exceeded
    assert _events(production["settings"], DRIFT_DETECTED, production["name"]) == []


def test_a_window_too_small_is_reported_and_kept_for_the_next_run(
    production: dict[str, Any],
) -> None:
    from prefect.variables import Variable

    before = Variable.get(watermark_name(production["name"]))
    _send(production, typed_rows(12000, 100))
    outcome = monitoring(pipeline=production["pipeline"])
    assert not outcome.skew.judged and "too small to judge (needs 900)" in outcome.skew.reason
    assert outcome.events == {}
    assert Variable.get(watermark_name(production["name"])) == before  # the window keeps growing


def test_shifted_traffic_emits_a_drift_event_with_its_evidence(production: dict[str, Any]) -> None:
    settings, name = production["settings"], production["name"]
    _send(production, shift_adult(typed_rows(13000, 1200)))
    outcome = monitoring(pipeline=production["pipeline"])
    assert outcome.skew.detected and {"age", "hours_per_week"} <= set(outcome.skew.drifted)
    assert DRIFT_DETECTED in outcome.events
    assert outcome.skew.report and Path(outcome.skew.report).exists()
    deadline = time.monotonic() + 20
    while not (found := _events(settings, DRIFT_DETECTED, name)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [e["id"] for e in found] == [outcome.events[DRIFT_DETECTED]]
    payload = found[0]["payload"]
    assert "age" in payload["drifted_columns"] and payload["window"]["rows"] == outcome.rows
    # skewed against the training data and drifted against the unshifted windows before it
    assert {"skew", "drift"} <= set(payload["objectives"]) == set(outcome.detected)
    assert {"age", "hours_per_week"} <= set(payload["drift"]["drifted"])
    assert payload["attribution"]["judged"] and "age" in payload["attribution"]["shifts"]
    shift = outcome.skew.predictions  # reported beside the features (no limit: reported only)
    assert shift is not None and shift.judged and payload["predictions"]["reason"] == shift.reason
    assert payload["predictions"]["window"] == pytest.approx(shift.window)
    metrics = (settings.state_dir / "metrics" / f"monitoring-{name}.prom").read_text()
    assert f'mlops_drift_column_detected{{column="age",model="{name}",objective="skew"}} 1.0' in (
        metrics
    )
    assert f'mlops_drift_judged{{model="{name}",objective="attribution"}} 1.0' in metrics
    # each skewed column's two distributions, a PNG on the window's run shown in the verdict
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (verdict,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"monitoring-{name}-report"])
            ),
            limit=1,
            sort=ArtifactSort.CREATED_DESC,
        )
    images = re.findall(r"!\[(\w+)\]\((\S+)\)", str(verdict.data))
    assert {"age", "hours_per_week"} <= {column for column, _ in images}, verdict.data
    url = dict(images)["age"]
    assert "path=drift%2Fage.png" in url
    png = httpx.get(url, timeout=10)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert f'mlops_attribution_shift{{feature="age",model="{name}"}}' in metrics


def test_a_burst_of_ten_drift_events_launches_one_retraining(local_stack: Settings) -> None:
    """The retraining deployment of prefect.yaml, registered as `mlops up` registers it: its
    trigger fires at the first event and waits out its window (no worker runs the flow here)."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

    stack = LocalStack(
        local_stack.model_copy(update={"work_pool": "local"})
    )  # as prefect.yaml says
    stack.ensure_work_pool()
    stack.deploy(os.environ | service_env(local_stack))
    for k in range(10):
        emit_model_event(
            DRIFT_DETECTED, "adult-income", {"reason": f"burst {k}", "drift_share": 0.2}
        )

    async def retraining_runs() -> list[Any]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("retraining/adult")
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(deployment_id={"any_": [deployment.id]}),
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["adult"])),
            )

    import asyncio

    deadline = time.monotonic() + 60
    while not asyncio.run(retraining_runs()) and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(10)  # the other nine have had time to fire, if they were going to
    runs = asyncio.run(retraining_runs())
    assert len(runs) == 1, [r.name for r in runs]
    assert runs[0].parameters["reason"] == DRIFT_DETECTED
    assert runs[0].parameters["event_id"]
    assert runs[0].parameters["evidence"]["reason"].startswith("burst")


def test_a_policy_change_the_champion_meets_retrains_nothing(production: dict[str, Any]) -> None:
    from flows.retraining import retraining
    from mlops.adapters.audit import AuditTrail
    from mlops.adapters.policy_changes import apply_policy
    from mlops.core.config import load_pipeline_config

    settings, name = production["settings"], production["name"]
    cfg = load_pipeline_config(Path(production["pipeline"]))
    what, event_id = apply_policy(
        str(settings.mlflow_tracking_uri), name, cfg.policy, set(cfg.contract.columns), "tests"
    )
    assert what.startswith("policy v1") and event_id
    again, none = apply_policy(
        str(settings.mlflow_tracking_uri), name, cfg.policy, set(cfg.contract.columns), "tests"
    )
    assert "applied already" in again and none is None
    outcome = retraining(pipeline=production["pipeline"], reason=POLICY_UPDATED, event_id=event_id)
    assert outcome.trained is None and outcome.champion_after == production["v1"]
    assert f"champion v{production['v1']} meets policy v1" in outcome.note
    actions = [e.action for e in AuditTrail(settings.mlflow_tracking_uri).entries(name, None)]
    assert actions[-3:] == ["policy-applied", "retraining-triggered", "retraining-skipped"]


def test_a_tighter_policy_the_champion_fails_retrains_and_a_failure_keeps_the_champion(
    production: dict[str, Any],
) -> None:
    """Regulatory change: a fairness limit no model of this data meets. The champion fails it,
    retraining runs, the new version fails the same gate, and the champion keeps serving."""
    from flows.retraining import retraining
    from mlops.adapters.audit import AuditTrail
    from mlops.adapters.policy_changes import apply_policy
    from mlops.core.config import load_pipeline_config
    from mlops.core.errors import ConfigError
    from mlops.ml.gates import GateFailed
    from tests.helpers import edit_yaml

    settings, name = production["settings"], production["name"]
    cfg = load_pipeline_config(Path(production["pipeline"]))
    policy_file = cfg.policy
    before = policy_file.read_text()
    try:
        edit_yaml(policy_file, fairness={"max_demographic_parity_difference": 0.01})
        with pytest.raises(ConfigError, match="bump `version`"):
            apply_policy(
                str(settings.mlflow_tracking_uri),
                name,
                policy_file,
                set(cfg.contract.columns),
                "tests",
            )
        edit_yaml(policy_file, version=2)
        what, event_id = apply_policy(
            str(settings.mlflow_tracking_uri), name, policy_file, set(cfg.contract.columns), "tests"
        )
        assert what == "policy v1 -> v2"
        with pytest.raises(GateFailed, match="fairness"):
            retraining(pipeline=production["pipeline"], reason=POLICY_UPDATED, event_id=event_id)
    finally:
        policy_file.write_text(before)
    entries = AuditTrail(settings.mlflow_tracking_uri).entries(name, None)
    assert [e.action for e in entries][-1] == "retraining-failed"
    assert f"champion v{production['v1']} keeps serving" in entries[-1].reason
    target = LocalTarget(settings, name)
    assert target.state().stable.version == production["v1"]
