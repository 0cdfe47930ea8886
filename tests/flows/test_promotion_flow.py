"""Gates, champion vs challenger, approval and promotion on real Prefect and MLflow servers."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter
from prefect.flow_runs import resume_flow_run

from flows.promotion import promotion
from flows.release import release
from flows.training import training
from mlops.adapters.audit import AuditTrail
from mlops.adapters.prediction_log import FEEDBACK, PREDICTIONS, PredictionLog
from mlops.core.settings import Settings
from mlops.ml.gates import GateFailed
from mlops.release.approval import APPROVAL_BY_TAG, APPROVAL_DECISION_TAG, REFUSED, ApprovalRejected
from mlops.release.canary import ReleaseFailed
from mlops.release.promotion import PromotionConflict
from tests.helpers import INTS, adult_frame, edit_yaml, lenient_policy, make_project

pytestmark = pytest.mark.flows

# Three models on the same 4000 rows (holdout AUC about 0.91, 0.89 and 0.87).
GOOD = {"family": "hist_gradient_boosting", "params": {"max_iter": 60, "random_state": 42}}
FAIR = {
    "family": "random_forest",
    "params": {"n_estimators": 20, "max_depth": 3, "random_state": 0},
}
WEAK = {
    "family": "hist_gradient_boosting",
    "params": {"max_iter": 15, "max_depth": 1, "random_state": 42},
}


def _champion(settings: Settings, name: str) -> int | None:
    client = MlflowClient(settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    try:
        return int(client.get_model_version_by_alias(name, "champion").version)
    except Exception:
        return None


def _train(pipeline: Path, model: dict[str, Any], **params: Any) -> int:
    import yaml

    raw = yaml.safe_load(pipeline.read_text())
    raw["model"] = {"family": model["family"], "params": model["params"] | params}
    pipeline.write_text(yaml.safe_dump(raw))
    return training(pipeline=str(pipeline), trigger="test").version


@pytest.fixture
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Path:
    """A fresh project with 4000 rows of the example, its own model name and a lenient policy."""
    name = f"{request.node.name[:40].replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    pipeline = make_project(tmp_path, adult_frame(4000), model_name=name)
    lenient_policy(pipeline)
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(tmp_path))
    return pipeline


def _name(pipeline: Path) -> str:
    import yaml

    return str(yaml.safe_load(pipeline.read_text())["model_name"])


def _log_answers(settings: Settings, name: str, version: int, frame: pd.DataFrame) -> None:
    """``frame`` answered by ``version`` and labelled, in the model's prediction log as its
    server writes it."""
    import mlflow.sklearn

    X = frame.drop(columns=["income"]).replace("?", None)
    X[INTS] = X[INTS].astype(int)
    model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    p = model.predict_proba(X)[:, 1]
    log = PredictionLog(settings.prediction_log(name), batch_rows=10_000, max_age_seconds=3600)
    now = datetime.now(UTC)
    ids = [uuid.uuid4().hex for _ in range(len(X))]
    log.append(
        PREDICTIONS,
        [
            {"request_id": rid, "row": 0, "time": now, "model": name, "version": version,
             "prediction": ">50K" if q >= 0.5 else "<=50K", "probability": float(q), **row}
            for rid, row, q in zip(ids, X.to_dict("records"), p, strict=True)
        ],
    )  # fmt: skip
    labels = frame["income"].to_numpy()
    log.append(FEEDBACK, [{"request_id": r, "label": y, "time": now} for r, y in zip(ids, labels, strict=True)])  # fmt: skip
    log.close()


def test_better_challenger_is_promoted_and_worse_one_rejected(
    local_stack: Settings, project: Path
) -> None:
    name = _name(project)
    v1 = _train(project, FAIR)
    first = promotion(version=str(v1), pipeline=str(project), trigger="test")
    assert first.promoted and first.previous_champion is None
    assert _champion(local_stack, name) == v1
    _log_answers(local_stack, name, v1, adult_frame(4600).tail(600))  # rows no version trained on

    v2 = _train(project, GOOD)
    second = promotion(pipeline=str(project), trigger="test")  # the `challenger` alias: v2
    assert second.promoted and second.version == v2 and second.previous_champion == v1
    verdict = next(g for g in second.gates if g.gate == "champion-vs-challenger")
    assert verdict.details["verdict"] == "better", verdict.reason
    # and against v1's real answers to production, replayed from the prediction log
    replay = next(g for g in second.gates if g.gate == "replay")
    assert replay.passed and replay.details["replayed"] == 600, replay.reason
    assert replay.reason.startswith(("better against champion v1's answers to 600 labelled ",
                                     "tie against champion v1's answers to 600 labelled ")), replay.reason  # fmt: skip
    assert "answers would change" in replay.reason and replay.details["answered"] == 600
    assert _champion(local_stack, name) == v2

    v3 = _train(project, WEAK)
    state = promotion(pipeline=str(project), trigger="test", return_state=True)
    assert state.is_failed()
    with pytest.raises(GateFailed, match=rf"champion-vs-challenger: worse than champion v{v2}"):
        state.result()
    assert _champion(local_stack, name) == v2, "the champion is untouched"

    actions = [
        (e.version, e.action)
        for e in AuditTrail(str(local_stack.mlflow_tracking_uri)).entries(name)
    ]
    assert actions == [
        (v1, "gate-decision"),
        (v1, "promoted"),
        (v2, "gate-decision"),
        (v2, "promoted"),
        (v3, "gate-decision"),
        (v3, "rejected"),
    ]
    client = MlflowClient(
        local_stack.mlflow_tracking_uri, registry_uri=local_stack.mlflow_tracking_uri
    )
    assert client.get_model_version(name, str(v3)).tags["mlops.gates"] == "failed"
    promoted = client.get_model_version(name, str(v2))
    assert promoted.tags["mlops.promoted.previous"] == str(v1)
    assert "- fairness: pass" in promoted.description and "promoted by" in promoted.description


def test_unfair_challenger_is_rejected_with_the_gap_named(
    local_stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model trained on data where most high-earning women are labelled low-earning learns to
    # under-select women: a real, not a simulated, fairness failure.
    frame = adult_frame(4000)
    rich_women = frame.index[(frame["sex"] == "Female") & (frame["income"] == ">50K")]
    frame.loc[rich_women[: int(len(rich_women) * 0.8)], "income"] = "<=50K"
    name = f"unfair-{uuid.uuid4().hex[:6]}"
    pipeline = make_project(tmp_path, frame, model_name=name)
    lenient_policy(
        pipeline, fairness={"sensitive": ["sex"], "max_equal_opportunity_difference": 0.15}
    )
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(tmp_path))
    _train(pipeline, GOOD)
    state = promotion(pipeline=str(pipeline), trigger="test", return_state=True)
    with pytest.raises(GateFailed) as failure:
        state.result()
    message = str(failure.value)
    assert "fairness: " in message
    assert "opportunity difference on sex is" in message and "> 0.15" in message
    assert "Male" in message and "Female" in message
    assert _champion(local_stack, name) is None


def _paused_run(name: str, timeout: float = 60) -> uuid.UUID:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for run in client.read_flow_runs(flow_run_filter=FlowRunFilter()):
                if run.state and run.state.is_paused() and run.parameters.get("trigger") == name:
                    return run.id
            time.sleep(0.5)
    raise AssertionError("no paused promotion appeared")


def test_approval_rejection_leaves_the_champion_in_place(
    local_stack: Settings, project: Path
) -> None:
    name = _name(project)
    v1 = _train(project, FAIR)
    assert promotion(version=str(v1), pipeline=str(project), trigger="test").promoted
    edit_yaml(project.parent / "policy.yaml", require_approval=True, approval_timeout_seconds=120)
    v2 = _train(project, GOOD)

    outcome: dict[str, Any] = {}
    trigger = f"approval-{uuid.uuid4().hex[:6]}"

    def run() -> None:
        outcome["state"] = promotion(pipeline=str(project), trigger=trigger, return_state=True)

    worker = threading.Thread(target=run)
    worker.start()
    flow_run_id = _paused_run(trigger)
    assert _champion(local_stack, name) == v1, "nothing moves while waiting for a person"
    resume_flow_run(
        flow_run_id, run_input={"approve": False, "approver": "ann", "reason": "wait for Q3 data"}
    )
    worker.join(timeout=120)
    with pytest.raises(ApprovalRejected, match="not approved by ann: wait for Q3 data"):
        outcome["state"].result()
    assert _champion(local_stack, name) == v1
    entries = AuditTrail(str(local_stack.mlflow_tracking_uri)).entries(name, v2)
    approval = next(e for e in entries if e.action == "approval")
    assert approval.evidence == {"approve": False, "approver": "ann"}
    assert entries[-1].action == "rejected"
    # The refusal is on the version, where the release reads it: the `challenger` alias still
    # names v2, whose gates passed, and a release of it is refused with the person's reason.
    client = MlflowClient(local_stack.mlflow_tracking_uri, local_stack.mlflow_tracking_uri)
    tags = client.get_model_version(name, str(v2)).tags
    assert tags[APPROVAL_DECISION_TAG] == REFUSED and tags[APPROVAL_BY_TAG] == "ann"
    with pytest.raises(ReleaseFailed, match=r"refused by ann at \S+: wait for Q3 data"):
        release(pipeline=str(project), trigger="test")
    assert _champion(local_stack, name) == v1


def test_no_answer_in_time_is_a_rejection(local_stack: Settings, project: Path) -> None:
    name = _name(project)
    edit_yaml(project.parent / "policy.yaml", require_approval=True, approval_timeout_seconds=3)
    version = _train(project, GOOD)
    state = promotion(pipeline=str(project), trigger="test", return_state=True)
    # The server may fail the paused run at the timeout before the flow records its own reason:
    # either way the run fails and the audit trail says why.
    assert state.is_failed()
    assert _champion(local_stack, name) is None
    entries = AuditTrail(str(local_stack.mlflow_tracking_uri)).entries(name, version)
    assert [e.action for e in entries] == ["gate-decision", "approval", "rejected"]
    assert "rejected by timeout" in entries[-1].reason


def _paused_runs(trigger: str, count: int, timeout: float = 90) -> list[uuid.UUID]:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = [
                r.id
                for r in client.read_flow_runs(flow_run_filter=FlowRunFilter())
                if r.state and r.state.is_paused() and r.parameters.get("trigger") == trigger
            ]
            if len(runs) == count:
                return runs
            time.sleep(0.5)
    raise AssertionError(f"expected {count} paused promotions")


def test_two_racing_promotions_end_with_exactly_one_champion(
    local_stack: Settings, project: Path
) -> None:
    """Two challengers judged against the same champion (none yet), both approved at once: the
    first to take the promotion lock wins; the other finds the champion changed and is rejected."""
    name = _name(project)
    edit_yaml(project.parent / "policy.yaml", require_approval=True, approval_timeout_seconds=120)
    a = _train(project, GOOD)
    b = _train(project, GOOD, random_state=3)
    trigger = f"race-{uuid.uuid4().hex[:6]}"
    states: dict[int, Any] = {}

    def run(version: int) -> None:
        states[version] = promotion(
            version=str(version), pipeline=str(project), trigger=trigger, return_state=True
        )

    threads = [threading.Thread(target=run, args=(v,)) for v in (a, b)]
    for t in threads:
        t.start()
    paused = _paused_runs(trigger, 2)  # both judged, both waiting: neither has promoted
    approvals = [
        threading.Thread(
            target=resume_flow_run,
            args=(run_id,),
            kwargs={"run_input": {"approve": True, "approver": "bob", "reason": "looks good"}},
        )
        for run_id in paused
    ]
    for t in approvals:
        t.start()
    for t in approvals + threads:
        t.join(timeout=300)
    won = [v for v, s in states.items() if s.is_completed()]
    lost = [v for v, s in states.items() if s.is_failed()]
    assert len(won) == 1 and len(lost) == 1, states
    assert _champion(local_stack, name) == won[0]
    with pytest.raises(PromotionConflict, match=f"the champion is v{won[0]} now, not none as when"):
        states[lost[0]].result()
    trail = AuditTrail(str(local_stack.mlflow_tracking_uri)).entries(name)
    assert [e.version for e in trail if e.action == "promoted"] == won
    assert [e.version for e in trail if e.action == "rejected"] == lost
