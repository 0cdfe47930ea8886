"""The prediction log: every answered row, appended in batches to Parquet files partitioned by hour.

Written under a local folder or any fsspec URL (``s3://bucket/prefix``); read back by monitoring,
with labels that arrive later (``POST /feedback``) joined by request id.
"""

from __future__ import annotations

import io
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
#: A request header the release's smoke test and warm-up send: answered, but not logged here.
SYNTHETIC_HEADER = "X-Mlops-Synthetic"


class PredictionLog:
    """Buffers records in memory and writes one Parquet file per flush (size or age)."""

    def __init__(self, root: str, batch_rows: int = 500, max_age_seconds: float = 5.0) -> None:
        self.root = root.rstrip("/")
        self.batch_rows = batch_rows
        self.max_age = max_age_seconds
        self._rows: dict[str, list[dict[str, Any]]] = {PREDICTIONS: [], FEEDBACK: []}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_periodically, daemon=True)
        self._flusher.start()

    def append(self, kind: str, records: list[dict[str, Any]]) -> None:
        with self._lock:
            self._rows[kind].extend(records)
            full = len(self._rows[kind]) >= self.batch_rows
        if full:
            self.flush(kind)

    def flush(self, kind: str | None = None) -> None:
        for k in [kind] if kind else list(self._rows):
            with self._lock:
                rows, self._rows[k] = self._rows[k], []
            if rows:
                self._write(k, rows)

    def warm(self, record: dict[str, Any]) -> None:
        """Serialise one record to Parquet in memory: the first flush then does not pay for
        pyarrow's lazy imports and allocations while callers wait on the GIL."""
        pq.write_table(pa.Table.from_pylist([record]), io.BytesIO())

    def _write(self, kind: str, rows: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC)
        path = (
            f"{self.root}/{kind}/date={now:%Y-%m-%d}/hour={now:%H}/"
            f"part-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
        )
        fs, fs_path = fsspec.core.url_to_fs(path)
        fs.makedirs(fs_path.rsplit("/", 1)[0], exist_ok=True)
        tmp = fs_path + ".tmp"
        with fs.open(tmp, "wb") as fh:  # write aside, then move: readers never see half a file
            pq.write_table(pa.Table.from_pylist(rows), fh)
        fs.mv(tmp, fs_path)

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self.max_age):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(timeout=self.max_age + 1)
        self.flush()


def read_log(root: str, kind: str = PREDICTIONS) -> pd.DataFrame:
    """All records of one kind under ``root`` (empty frame when there are none)."""
    fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/{kind}")
    files = sorted(fs.glob(f"{path}/**/*.parquet"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(fs.open(f, "rb")) for f in files], ignore_index=True)


def read_labelled(root: str) -> pd.DataFrame:
    """Predictions with the labels that arrived for them (``label`` is missing where none did)."""
    predictions = read_log(root, PREDICTIONS)
    feedback = read_log(root, FEEDBACK)
    if predictions.empty or feedback.empty:
        return predictions.assign(label=pd.NA) if not predictions.empty else predictions
    labels = feedback.drop_duplicates("request_id", keep="last")[["request_id", "label"]]
    return predictions.merge(labels, on="request_id", how="left")
