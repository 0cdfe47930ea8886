"""Reading a window at scale: only the window's partitions and files are opened, only the columns
the judgements use are read, and the newest rows are cut before they become pandas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mlops.adapters.prediction_log import (
    FEEDBACK,
    PREDICTIONS,
    PredictionLog,
    feedback_schema,
    file_name,
    prediction_schema,
)
from mlops.adapters.prediction_window import read_prediction_window

pytestmark = pytest.mark.unit

FEATURES = ["age", "workclass"]
DAY = datetime(2026, 3, 1, tzinfo=UTC)


class Clock:
    """The log's commit clock, set by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def answered(n: int, start: int, at: datetime, problem: str = "binary") -> list[dict[str, Any]]:
    """``n`` rows as the server logs them for a model of ``problem`` type, predicted at ``at``."""
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"request_id": f"{start + i:032x}", "row": 0, "time": at,
                               "model": "m", "version": 1, "age": 20 + i % 50,
                               "workclass": "Private", "shoe_size": 42}  # fmt: skip
        if problem == "binary":
            row |= {"prediction": "yes", "probabilities": [0.3, 0.7], "probability": 0.7}
        else:
            row |= {"prediction": "b", "probabilities": [0.2, 0.5, 0.3]}
        rows.append(row)
    return rows


def three_days(root: Path, problem: str = "binary", labels: bool = True) -> None:
    """100 rows committed on each of three days (in two hours of each), with labels for all."""
    clock = Clock(DAY)
    log = PredictionLog(root, batch_rows=50, max_age_seconds=3600, clock=clock)
    columns = [("age", "long"), ("workclass", "string"), ("shoe_size", "long")]
    log.use_schema(PREDICTIONS, prediction_schema(columns, problem))
    log.use_schema(FEEDBACK, feedback_schema(problem))
    for day in range(3):
        for hour in (3, 15):
            clock.now = DAY + timedelta(days=day, hours=hour)
            rows = answered(50, day * 1000 + hour * 10, clock.now, problem)
            log.append(PREDICTIONS, rows)
            label = "yes" if problem == "binary" else "b"
            if labels:
                log.append(FEEDBACK, [{"request_id": r["request_id"], "label": label,
                                       "time": clock.now} for r in rows])  # fmt: skip
            assert log.flush(timeout=30)
    log.close()


def test_a_clock_given_to_the_log_stamps_its_files_into_that_times_partitions(
    tmp_path: Path,
) -> None:
    three_days(tmp_path)
    partitions = sorted(
        str(p.relative_to(tmp_path / PREDICTIONS))
        for p in (tmp_path / PREDICTIONS).glob("date=*/hour=*")
    )
    assert partitions == [f"date=2026-03-0{d}/hour={h}" for d in (1, 2, 3) for h in ("03", "15")]


def test_files_outside_the_window_are_never_opened(tmp_path: Path) -> None:
    """Corrupt files in a partition that ended before the window, in the window's first hour but
    stamped before it began, and after its end would be named as unreadable if they were opened.
    (Labels are left out: their check reads request ids from the window's hour partitions on.)"""
    three_days(tmp_path, labels=False)
    since, until = DAY + timedelta(days=1, hours=3, minutes=30), DAY + timedelta(days=2)
    for stamp in (
        DAY + timedelta(hours=4),
        DAY + timedelta(days=1, hours=3, minutes=10),
        DAY + timedelta(days=2, hours=1),
    ):
        folder = tmp_path / PREDICTIONS / f"date={stamp:%Y-%m-%d}" / f"hour={stamp:%H}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / file_name(stamp, "corrupt")).write_bytes(b"PAR1 not parquet")

    window = read_prediction_window(str(tmp_path), since, until, FEATURES, 10_000)

    assert sorted(int(r, 16) for r in window.rows["request_id"]) == list(range(1150, 1200))
    assert window.problems == ["column(s) ['shoe_size'] are not in the reference: ignored"]


def test_only_the_features_and_the_columns_judged_are_read(tmp_path: Path) -> None:
    """A binary log's ``probabilities`` are left out where every row has ``probability``; a
    multiclass log keeps them; a column outside the reference is named, not read."""
    three_days(tmp_path / "binary")
    three_days(tmp_path / "multiclass", "multiclass")
    since, until = DAY, DAY + timedelta(days=3)

    binary = read_prediction_window(str(tmp_path / "binary"), since, until, FEATURES, 10_000)
    multi = read_prediction_window(str(tmp_path / "multiclass"), since, until, FEATURES, 10_000)

    log_columns = {"request_id", "row", "time", "model", "version", "prediction"}
    assert set(binary.rows.columns) == {*FEATURES, *log_columns, "probability", "label"}
    assert set(multi.rows.columns) == {*FEATURES, *log_columns, "probabilities", "label"}
    assert list(multi.rows["probabilities"].iloc[0]) == [0.2, 0.5, 0.3]
    for window in (binary, multi):
        assert len(window.rows) == 300 and window.labelled == 300
        assert "column(s) ['shoe_size'] are not in the reference: ignored" in window.problems


def test_the_newest_rows_are_kept_in_prediction_time_order_ties_in_commit_order(
    tmp_path: Path,
) -> None:
    clock = Clock(DAY)
    log = PredictionLog(tmp_path, batch_rows=10, max_age_seconds=3600, clock=clock)
    # committed in this order, predicted out of order; rows 20.. tie with rows 0..
    for start, minutes in ((0, 5), (10, 1), (20, 5), (30, 3)):
        clock.now += timedelta(seconds=1)
        log.append(PREDICTIONS, answered(10, start, DAY + timedelta(minutes=minutes)))
        assert log.flush(timeout=30)
    log.close()

    window = read_prediction_window(str(tmp_path), DAY, DAY + timedelta(hours=1), FEATURES, 25)

    ids = [int(r, 16) for r in window.rows["request_id"]]
    assert ids == [35, 36, 37, 38, 39, *range(0, 10), *range(20, 30)]
    assert window.rows["time"].is_monotonic_increasing and str(window.rows["time"].dt.tz) == "UTC"
