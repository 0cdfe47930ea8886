"""The audit trail's hash chain against a real MLflow server (and Prefect's concurrency limit):
appends link up, and editing, deleting or forking entries in the artifact store is named."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlops.adapters.audit import ENTRIES, GENESIS, HEAD_TAG, AuditEntry, AuditTrail, digest
from mlops.core.settings import Settings

pytestmark = pytest.mark.flows  # needs the servers of `local_stack`


@pytest.fixture(scope="module")
def trail(local_stack: Settings) -> AuditTrail:
    return AuditTrail(str(local_stack.mlflow_tracking_uri))


def _entry(model: str, k: int) -> AuditEntry:
    return AuditEntry(
        model=model, version=1, action="gate-decision", actor="tests", trigger="t", reason=f"r{k}"
    )


def _model_with(trail: AuditTrail, n: int) -> tuple[str, list[str]]:
    model = f"audited-{uuid.uuid4().hex[:8]}"
    return model, [trail.append(_entry(model, k)) for k in range(n)]


def _stored_file(settings: Settings, path: str) -> Path:
    """The entry's file in the MLflow server's artifact store, as the server keeps it."""
    found = list((settings.state_dir / "mlflow" / "artifacts").rglob(Path(path).name))
    assert len(found) == 1, found
    return found[0]


def _run_id(trail: AuditTrail, model: str) -> str:
    return trail._runs(model)[0]


def test_appends_form_a_chain_that_verifies(trail: AuditTrail) -> None:
    model, _ = _model_with(trail, 3)
    entries = trail.entries(model)
    assert [e.sequence for e in entries] == [0, 1, 2]
    assert entries[0].previous == GENESIS
    assert entries[1].previous == digest(entries[0].model_dump(mode="json"))
    report = trail.verify(model)
    assert report.ok and report.chained == 3, report.text()
    head = trail.client.get_run(_run_id(trail, model)).data.tags[HEAD_TAG]
    assert head == f"3:{digest(entries[2].model_dump(mode='json'))}"


def test_an_edited_entry_is_named(trail: AuditTrail, local_stack: Settings) -> None:
    model, paths = _model_with(trail, 3)
    stored = _stored_file(local_stack, paths[1])
    doc = json.loads(stored.read_text())
    stored.write_text(json.dumps(doc | {"reason": "nothing to see"}))
    report = trail.verify(model)
    assert not report.ok
    assert f"entry {doc['id']}" in report.problems[0] and "was edited" in report.problems[0]


def test_an_entry_overwritten_through_mlflow_is_named(trail: AuditTrail) -> None:
    model, paths = _model_with(trail, 2)
    doc = trail.entries(model)[0].model_dump(mode="json")
    trail.client.log_dict(_run_id(trail, model), doc | {"actor": "someone else"}, paths[0])
    report = trail.verify(model)
    assert not report.ok and f"entry {doc['id']}" in report.problems[0], report.text()


def test_a_deleted_middle_entry_is_named(trail: AuditTrail, local_stack: Settings) -> None:
    model, paths = _model_with(trail, 4)
    after = trail.entries(model)[2]
    _stored_file(local_stack, paths[1]).unlink()
    report = trail.verify(model)
    assert not report.ok
    assert "#1..#1 are missing (deleted)" in report.problems[0]
    assert f"before entry {after.id}" in report.problems[0]


def test_a_deleted_newest_entry_is_detected_by_the_head(
    trail: AuditTrail, local_stack: Settings
) -> None:
    model, paths = _model_with(trail, 3)
    _stored_file(local_stack, paths[-1]).unlink()
    report = trail.verify(model)
    assert not report.ok and "the newest 1 entries were deleted" in report.problems[0]
    # the next append chains onto the head, so the gap stays visible
    trail.append(_entry(model, 9))
    again = trail.verify(model)
    assert not again.ok and "#2..#2 are missing (deleted)" in again.problems[0], again.text()


def test_an_edited_newest_entry_is_detected_by_the_head(
    trail: AuditTrail, local_stack: Settings
) -> None:
    model, paths = _model_with(trail, 2)
    stored = _stored_file(local_stack, paths[-1])
    doc = json.loads(stored.read_text())
    stored.write_text(json.dumps(doc | {"reason": "edited"}))
    report = trail.verify(model)
    assert not report.ok and f"entry {doc['id']}" in report.problems[0]
    assert "differs from the head on the audit run" in report.problems[0]


def test_a_second_entry_at_one_position_is_a_fork(trail: AuditTrail) -> None:
    model, _ = _model_with(trail, 2)
    doc = trail.entries(model)[1].model_dump(mode="json") | {"id": uuid.uuid4().hex}
    trail.client.log_dict(_run_id(trail, model), doc, f"{ENTRIES}/00000001-x-{doc['id']}.json")
    report = trail.verify(model)
    assert not report.ok and "forks the chain" in report.problems[0], report.text()


def test_entries_written_before_the_chain_are_reported_not_broken(trail: AuditTrail) -> None:
    model = f"audited-{uuid.uuid4().hex[:8]}"
    legacy = _entry(model, 0).model_dump(mode="json", exclude={"sequence", "previous"})
    run_id = trail._run_for(model)
    trail.client.log_dict(run_id, legacy, f"{ENTRIES}/20240101T000000000000Z-{legacy['id']}.json")
    trail.append(_entry(model, 1))
    report = trail.verify(model)
    assert report.ok and report.before_chain == 1 and report.chained == 1, report.text()
    assert [e.sequence for e in trail.entries(model)] == [None, 0]


def test_racing_writers_do_not_fork_the_chain(trail: AuditTrail) -> None:
    model = f"audited-{uuid.uuid4().hex[:8]}"
    trail.append(_entry(model, 0))  # the run exists before the race

    def write(k: int) -> None:
        mine = AuditTrail(trail.tracking_uri)
        for j in range(4):
            mine.append(_entry(model, 10 * k + j))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = trail.verify(model)
    assert report.ok and report.chained == 13, report.text()


def test_the_cli_exits_1_on_a_broken_chain(trail: AuditTrail, local_stack: Settings) -> None:
    from mlops.cli import app

    model, paths = _model_with(trail, 2)
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", model, "--verify"])
    assert ok.exit_code == 0 and "chain intact" in ok.output, ok.output
    _stored_file(local_stack, paths[0]).unlink()
    broken = runner.invoke(app, ["audit", model, "--verify"])
    assert broken.exit_code == 1 and "first broken link" in broken.output, broken.output
