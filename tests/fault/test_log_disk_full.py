"""Fault: the prediction log's disk fills up under load. Every answered row is in the log once
space returns: spilled while the disk was full, written afterwards, none twice."""

from __future__ import annotations

import errno
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mlops.adapters.prediction_log import PREDICTIONS, PredictionLog, prediction_schema
from mlops.adapters.prediction_window import read_log

pytestmark = pytest.mark.fault

CLIENTS = 4
REQUESTS = 600  # per client; 1 to 3 rows each (seeded)
SCHEMA = prediction_schema(
    [("age", "long"), ("workclass", "string"), ("hours", "double")], "binary"
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, mounted for the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """A file taking every free byte of ``disk``."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def record(request_id: str, row: int, rng: random.Random) -> dict[str, Any]:
    return {"request_id": request_id, "row": row, "time": datetime.now(UTC), "model": "m",
            "version": 1, "prediction": str(rng.randint(0, 1)), "probability": rng.random(),
            "age": rng.randint(17, 90), "workclass": rng.choice(["Private", "State-gov"]),
            "hours": float(rng.randint(1, 99))}  # fmt: skip


def test_a_full_disk_loses_no_answered_row_once_space_returns(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = small_disk / "log"
    log = PredictionLog(root, batch_rows=50, max_age_seconds=0.05, spill_dir=tmp_path / "spill",
                        retries=2, retry_delay_seconds=0.01)  # fmt: skip
    log.use_schema(PREDICTIONS, SCHEMA)
    answered: list[tuple[str, int]] = []
    lock = threading.Lock()
    # the clients pause at a third (the disk is filled) and at two thirds (the space returns)
    phases = [threading.Barrier(CLIENTS + 1, timeout=120) for _ in range(4)]

    def client(k: int) -> None:
        rng = random.Random(k)
        for i in range(REQUESTS):
            if i in (REQUESTS // 3, 2 * REQUESTS // 3):
                first = 0 if i == REQUESTS // 3 else 2
                phases[first].wait()
                phases[first + 1].wait()
            rid = f"{k:08x}{i:024x}"
            rows = [record(rid, j, rng) for j in range(rng.randint(1, 3))]
            log.append(PREDICTIONS, rows)  # answered: the log must keep it
            with lock:
                answered.extend((rid, j) for j in range(len(rows)))
            time.sleep(0.0005)  # pacing: the flusher writes while clients append

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    phases[0].wait()
    filler = fill(small_disk)
    phases[1].wait()  # clients append while the disk is full
    phases[2].wait()
    assert log.flush(timeout=120)
    while_full = log.stats()
    filler.unlink()  # space returns
    phases[3].wait()
    for t in threads:
        t.join()
    log.close()

    frame = read_log(str(root))
    logged = list(zip(frame["request_id"], frame["row"], strict=True))
    stats = log.stats()
    with capsys.disabled():
        print(
            f"\n[fault: prediction-log disk full] {len(answered)} rows appended by {CLIENTS} "
            f"threads; {sum(while_full['spilled'].values())} spilled while the disk was full "
            f"({sum(while_full['write_failures'].values())} failed writes); "
            f"{sum(stats['written'].values())} written; {len(logged)} read back, "
            f"{len(logged) - len(set(logged))} duplicated, {len(set(answered) - set(logged))} lost"
        )
    assert sum(while_full["spilled"].values()) > 0, while_full  # the disk really was full
    assert len(logged) == len(set(logged)) and set(logged) == set(answered)
    assert sum(stats["written"].values()) == len(answered) and stats["dropped"] == {}
    assert log.problem() is None and list((tmp_path / "spill").glob("*/*")) == []
