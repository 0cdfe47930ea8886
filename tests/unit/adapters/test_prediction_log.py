"""The prediction log loses no answered row: bad values, a broken root, a store that is down, a
crash between commit and clean-up; the flusher survives and the caller never waits on I/O."""

from __future__ import annotations

import fcntl
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mlops.adapters.prediction_log import (
    FEEDBACK,
    FEEDBACK_SCHEMA,
    LOG_COLUMNS,
    PREDICTIONS,
    LogStore,
    PredictionLog,
    commit_time,
    feedback_schema,
    prediction_schema,
)
from mlops.adapters.prediction_window import read_log

pytestmark = pytest.mark.unit

COLUMNS = [("age", "long"), ("workclass", "string"), ("hours", "double"), ("union", "boolean")]
SCHEMA = prediction_schema(COLUMNS, "binary")


def records(n: int, start: int = 0, **override: Any) -> list[dict[str, Any]]:
    """``n`` answered rows as the server logs them, request ids ``start``.. in hex."""
    now = datetime.now(UTC)
    return [
        {"request_id": f"{start + i:032x}", "row": 0, "time": now, "model": "m", "version": 1,
         "prediction": ">50K", "probabilities": [0.25, 0.75], "probability": 0.75,
         "age": 30 + i, "workclass": "Private",
         "hours": 40.0, "union": False} | override
        for i in range(n)
    ]  # fmt: skip


def logged_ids(root: Path) -> list[str]:
    frame = read_log(str(root))
    return sorted(frame["request_id"]) if not frame.empty else []


def ids(n: int, start: int = 0) -> list[str]:
    return [f"{start + i:032x}" for i in range(n)]


class FlakyStore(LogStore):
    """A root that refuses ``fails`` stagings (a store that is down), noting who called it."""

    def __init__(self, root: str, fails: int = 0) -> None:
        super().__init__(root)
        self.fails = fails
        self.threads: set[str] = set()

    def stage(self, kind: str, batch: str, data: bytes) -> str:
        self.threads.add(threading.current_thread().name)
        if self.fails:
            self.fails -= 1
            raise ConnectionError("the store is down")
        return super().stage(kind, batch, data)


class LandsThenRaises(LogStore):
    """A root whose first commit lands, then raises (S3: the copy done, the answer lost)."""

    raised = False

    def commit(self, tmp: str, dest: str) -> None:
        super().commit(tmp, dest)
        if not self.raised:
            self.raised = True
            raise TimeoutError("the answer to the commit was lost")


def test_the_schema_types_each_feature_from_its_mlflow_type() -> None:
    assert SCHEMA.names[:8] == [
        "request_id", "row", "time", "model", "version", "prediction", "probabilities",
        "probability",
    ]  # fmt: skip
    assert [str(SCHEMA.field(n).type) for n, _ in COLUMNS] == ["int64", "string", "double", "bool"]
    assert str(SCHEMA.field("time").type) == "timestamp[us, tz=UTC]"
    assert all(f.nullable for f in SCHEMA)
    assert FEEDBACK_SCHEMA.names == ["request_id", "label", "time"]
    with pytest.raises(ValueError, match="column 'photo': MLflow type 'binary'"):
        prediction_schema([("photo", "binary")], "binary")


@pytest.mark.parametrize(
    ("problem", "answer", "label"),
    [
        ("binary", {"prediction": "string", "probabilities": "list<item: double>",
                    "probability": "double"}, "string"),
        ("multiclass", {"prediction": "string", "probabilities": "list<item: double>"}, "string"),
        ("regression", {"prediction": "double"}, "double"),
    ],
)  # fmt: skip
def test_the_answer_and_label_columns_follow_the_problem_type(
    problem: str, answer: dict[str, str], label: str
) -> None:
    schema = prediction_schema(COLUMNS, problem)
    answered = [n for n in schema.names if n in LOG_COLUMNS][5:]
    assert {n: str(schema.field(n).type) for n in answered} == answer
    assert schema.names[-len(COLUMNS) :] == [n for n, _ in COLUMNS]
    assert str(feedback_schema(problem).field("label").type) == label


def test_a_feature_named_like_a_log_column_or_an_unknown_problem_is_refused() -> None:
    with pytest.raises(ValueError, match="column 'probabilities': the prediction log writes"):
        prediction_schema([*COLUMNS, ("probabilities", "double")], "multiclass")
    with pytest.raises(ValueError, match="problem type 'ranking'"):
        prediction_schema(COLUMNS, "ranking")
    with pytest.raises(ValueError, match="problem type 'ranking'"):
        feedback_schema("ranking")


@pytest.mark.parametrize("problem", ["multiclass", "regression"])
def test_rows_of_each_problem_type_are_written_with_their_types_and_a_mistyped_one_alone_dropped(
    tmp_path: Path, problem: str
) -> None:
    """A classifier's class name and probabilities, a regression's number: written as typed; an
    answer of the other type (a bug) is the one row dropped and counted."""
    log = PredictionLog(tmp_path, batch_rows=10_000, max_age_seconds=3600, spill_dir=tmp_path / "s")
    log.use_schema(PREDICTIONS, prediction_schema(COLUMNS, problem))
    log.use_schema(FEEDBACK, feedback_schema(problem))
    answer: dict[str, Any] = (
        {"prediction": 12.5, "probabilities": None, "probability": None}
        if problem == "regression"
        else {"prediction": "mid", "probabilities": [0.2, 0.5, 0.3], "probability": None}
    )
    wrong = {"prediction": [1, 2]}
    log.append(PREDICTIONS, records(2, **answer) + records(1, start=2, **answer | wrong))
    label = 11.0 if problem == "regression" else "mid"
    now = datetime.now(UTC)
    log.append(FEEDBACK, [{"request_id": ids(1)[0], "label": label, "time": now}])
    log.close()
    frame = read_log(str(tmp_path))
    assert sorted(frame["request_id"]) == ids(2) and log.stats()["dropped"] == {PREDICTIONS: 1}
    assert list(frame["prediction"]) == [answer["prediction"]] * 2
    if problem == "regression":
        assert "probabilities" not in frame and "probability" not in frame
    else:
        assert [list(p) for p in frame["probabilities"]] == [[0.2, 0.5, 0.3]] * 2
        assert "probability" not in frame
    assert list(read_log(str(tmp_path), FEEDBACK)["label"]) == [label]


@pytest.mark.parametrize("explicit", [True, False], ids=["schema", "inferred"])
@pytest.mark.parametrize(
    ("column", "value"), [("workclass", "\ud800"), ("age", 2**70)], ids=["surrogate", "int65"]
)
def test_a_value_that_cannot_be_encoded_drops_its_row_alone(
    tmp_path: Path, explicit: bool, column: str, value: Any
) -> None:
    log = PredictionLog(tmp_path, batch_rows=10_000, max_age_seconds=3600, spill_dir=tmp_path / "s")
    if explicit:
        log.use_schema(PREDICTIONS, SCHEMA)
    log.append(PREDICTIONS, records(3))
    log.append(PREDICTIONS, records(1, start=3, **{column: value}))
    log.append(PREDICTIONS, records(3, start=4))
    log.close()
    assert logged_ids(tmp_path) == ids(3) + ids(3, start=4)
    stats = log.stats()
    assert stats["dropped"] == {PREDICTIONS: 1} and stats["written"] == {PREDICTIONS: 6}
    assert "1 rows dropped since start (last: 1 unencodable predictions rows, first row 3" in str(
        log.problem()
    )


def test_an_unwritable_root_spills_and_the_next_start_writes_the_rows_once(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log's folder should be")
    root, spill = blocker / "log", tmp_path / "spill"
    log = PredictionLog(
        root, max_age_seconds=3600, spill_dir=spill, retries=1, retry_delay_seconds=0
    )
    log.append(PREDICTIONS, records(5))
    log.append(FEEDBACK, [{"request_id": ids(1)[0], "label": 1, "time": datetime.now(UTC)}])
    log.close()
    assert log.stats()["spilled"] == {PREDICTIONS: 5, FEEDBACK: 1}
    assert log.stats()["write_failures"] == {PREDICTIONS: 2}  # down: feedback went straight aside
    problem = str(log.problem())
    assert "NotADirectoryError" in problem or "FileExistsError" in problem, problem
    assert f"6 rows spilled to {spill} wait for the log root" in problem
    assert len(list(spill.glob("*/part-*.parquet"))) == 2

    blocker.unlink()  # the root comes back
    again = PredictionLog(root, max_age_seconds=3600, spill_dir=spill)
    again.close()
    assert logged_ids(root) == ids(5) and len(read_log(str(root), FEEDBACK)) == 1
    assert again.stats()["written"] == {PREDICTIONS: 5, FEEDBACK: 1} and again.problem() is None
    assert list(spill.glob("*/*")) == []
    PredictionLog(root, spill_dir=spill).close()
    assert logged_ids(root) == ids(5)


def test_a_store_down_for_less_than_the_retries_loses_nothing_and_spills_nothing(
    tmp_path: Path,
) -> None:
    store = FlakyStore(str(tmp_path), fails=3)
    log = PredictionLog(tmp_path, max_age_seconds=3600, spill_dir=tmp_path / "s", retries=3,
                        retry_delay_seconds=0, store=store)  # fmt: skip
    log.append(PREDICTIONS, records(4))
    log.close()
    assert logged_ids(tmp_path) == ids(4)
    assert log.stats()["write_failures"] == {PREDICTIONS: 3} and log.stats()["spilled"] == {}
    assert log.problem() is None  # a write succeeded since


def test_a_store_down_longer_spills_and_a_later_flush_writes_the_spilled_rows_first(
    tmp_path: Path,
) -> None:
    store = FlakyStore(str(tmp_path), fails=100)
    log = PredictionLog(tmp_path, max_age_seconds=3600, spill_dir=tmp_path / "s", retries=2,
                        retry_delay_seconds=0, store=store)  # fmt: skip
    log.append(PREDICTIONS, records(4))
    assert log.flush(timeout=30)
    assert log.stats()["spilled"] == {PREDICTIONS: 4} and logged_ids(tmp_path) == []
    assert "ConnectionError: the store is down" in str(log.problem())
    store.fails = 0
    log.append(PREDICTIONS, records(2, start=4))
    assert log.flush(timeout=30)
    files = sorted(read_log_files(tmp_path))
    assert logged_ids(tmp_path) == ids(6) and len(files) == 2
    first = read_log(str(tmp_path)).groupby("request_id").size()
    assert (first == 1).all()
    log.close()
    assert log.problem() is None and log.stats()["spill_waiting"] == {}


def read_log_files(root: Path) -> list[str]:
    return [str(p) for p in (root / PREDICTIONS).glob("**/*.parquet")]


def test_append_never_writes_on_the_callers_thread_and_the_flusher_outlives_every_failure(
    tmp_path: Path,
) -> None:
    store = FlakyStore(str(tmp_path), fails=10**6)
    unwritable = tmp_path / "spill-is-a-file"
    unwritable.write_text("")
    log = PredictionLog(tmp_path, batch_rows=5, max_age_seconds=3600, spill_dir=unwritable,
                        retries=0, store=store)  # fmt: skip
    for k in range(4):  # full batches, each refused by the root and by the spill folder
        log.append(PREDICTIONS, records(5, start=5 * k))  # returns: no exception, no waiting
        assert log.flush(timeout=30)
    assert threading.current_thread().name not in store.threads and store.threads
    assert log.stats()["buffered"] == {PREDICTIONS: 20, FEEDBACK: 0}
    assert "20 rows held in memory: the spill folder refused them too" in str(log.problem())
    store.fails = 0  # the root is back: the same flusher writes everything it held
    log.append(PREDICTIONS, records(1, start=20))
    assert log.flush(timeout=30)
    assert logged_ids(tmp_path) == ids(21) and log.stats()["dropped"] == {}
    log.close()
    assert log.problem() is None


def test_past_the_memory_bound_new_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    unwritable = tmp_path / "spill-is-a-file"
    unwritable.write_text("")
    log = PredictionLog(tmp_path, batch_rows=5, max_age_seconds=3600, spill_dir=unwritable,
                        retries=0, max_buffered_rows=10, store=FlakyStore(str(tmp_path), 10**6))  # fmt: skip
    log.append(PREDICTIONS, records(5))
    assert log.flush(timeout=30)  # held: neither the root nor the spill folder took it
    log.append(PREDICTIONS, records(5, start=5))  # 10 in memory: still kept
    log.append(PREDICTIONS, records(1, start=10))
    assert log.stats()["dropped"] == {PREDICTIONS: 1}
    assert "1 predictions rows: 10 rows in memory" in str(log.problem())


def test_close_writes_what_is_buffered(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, batch_rows=10_000, max_age_seconds=3600, spill_dir=tmp_path / "s")
    log.append(PREDICTIONS, records(3))
    log.close()
    assert logged_ids(tmp_path) == ids(3)
    log.append(PREDICTIONS, records(1, start=3))  # answered while the server shut down
    assert logged_ids(tmp_path) == ids(4)


def test_a_commit_that_landed_but_raised_is_not_written_again(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, max_age_seconds=3600, spill_dir=tmp_path / "s",
                        retry_delay_seconds=0, store=LandsThenRaises(str(tmp_path)))  # fmt: skip
    log.append(PREDICTIONS, records(3))
    log.close()
    assert logged_ids(tmp_path) == ids(3) and len(read_log_files(tmp_path)) == 1
    assert log.stats()["write_failures"] == {PREDICTIONS: 1}


def test_a_crash_between_the_replays_commit_and_the_spill_files_removal_writes_no_copy(
    tmp_path: Path,
) -> None:
    root, spill = tmp_path / "log", tmp_path / "spill"
    down = PredictionLog(root, max_age_seconds=3600, spill_dir=spill, retries=0,
                         store=FlakyStore(str(root), fails=10**6))  # fmt: skip
    down.append(PREDICTIONS, records(3))
    down.close()
    (spilled,) = spill.glob(f"{PREDICTIONS}/part-*.parquet")
    # the crash: the replay committed the file under the spill file's name, then died
    store = LogStore(str(root))
    store.commit(store.stage(PREDICTIONS, "x", spilled.read_bytes()),
                 store.destination(PREDICTIONS, spilled.name))  # fmt: skip
    PredictionLog(root, spill_dir=spill).close()
    assert logged_ids(root) == ids(3) and not spilled.exists()
    assert commit_time(read_log_files(root)[0]) == commit_time(spilled.name)


def test_a_spill_file_another_server_is_replaying_is_left_to_it(tmp_path: Path) -> None:
    root, spill = tmp_path / "log", tmp_path / "spill"
    down = PredictionLog(root, max_age_seconds=3600, spill_dir=spill, retries=0,
                         store=FlakyStore(str(root), fails=10**6))  # fmt: skip
    down.append(PREDICTIONS, records(3))
    down.close()
    (spilled,) = spill.glob(f"{PREDICTIONS}/part-*.parquet")
    other = os.open(spilled, os.O_RDONLY)  # the other server's lock
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        log = PredictionLog(root, max_age_seconds=3600, spill_dir=spill)
        assert log.flush(timeout=30)
        assert logged_ids(root) == [] and spilled.exists()
    finally:
        os.close(other)
    log.close()
    assert logged_ids(root) == ids(3) and list(spill.glob("*/*")) == []


def test_the_collector_exports_the_counts_by_kind_and_outcome(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, max_age_seconds=3600, spill_dir=tmp_path / "s",
                        retries=0, store=FlakyStore(str(tmp_path), fails=1))  # fmt: skip
    log.append(PREDICTIONS, records(2))
    log.flush(timeout=30)  # refused once: spilled
    log.append(PREDICTIONS, records(1, start=2, workclass="\ud800"))
    log.close()
    registry = CollectorRegistry()
    registry.register(log.collector())
    text = generate_latest(registry).decode()
    for line in (
        'mlops_prediction_log_rows_total{kind="predictions",outcome="spilled"} 2.0',
        'mlops_prediction_log_rows_total{kind="predictions",outcome="written"} 2.0',
        'mlops_prediction_log_rows_total{kind="predictions",outcome="dropped"} 1.0',
        'mlops_prediction_log_write_failures_total{kind="predictions"} 1.0',
        'mlops_prediction_log_buffered_rows{kind="predictions"} 0.0',
    ):
        assert line in text, text
