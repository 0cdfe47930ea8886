"""The prediction log: every answered row, appended in batches to Parquet files partitioned by hour.

Written under a local folder or any fsspec URL (``s3://bucket/prefix``); read back by monitoring
(``mlops.adapters.prediction_window``), with labels that arrive later (``POST /feedback``) joined
by request id.

Nothing answered is lost to a bad day. ``append`` only buffers (no I/O on the caller's thread);
one flusher thread writes full or aged batches. A batch the root does not take after bounded
retries goes to a local spill file, written to the root first by a later flush or the next start,
exactly once. A row that cannot be encoded is dropped alone and counted. Every outcome is counted
(``stats()``, ``collector()`` for Prometheus) and a broken log says so in ``problem()``.

File names carry their **commit stamp**, taken right before the one move that makes the file
visible (``part-<UTC stamp, microseconds>Z-<batch id>.parquet`` under ``date=/hour=`` of that
stamp): monitoring windows are cut by it (``prediction_window.read_prediction_window``), so a
row that waited in the buffer, in retries or in a spill file belongs to the window in which it
became readable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import platformdirs
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.utils import get_protocol
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

PREDICTIONS = "predictions"

FEEDBACK = "feedback"

#: A request header the release's smoke test and warm-up send: answered, but not logged here.
SYNTHETIC_HEADER = "X-Mlops-Synthetic"

_log = logging.getLogger(__name__)

_ARROW_TYPES = {
    "long": pa.int64(),
    "integer": pa.int64(),
    "double": pa.float64(),
    "float": pa.float64(),
    "string": pa.string(),
    "boolean": pa.bool_(),
}

_TIME = pa.timestamp("us", tz="UTC")

#: The columns every predictions table starts with: which request, row, time and model.
_LOG_FIELDS = [
    pa.field("request_id", pa.string()),
    pa.field("row", pa.int64()),
    pa.field("time", _TIME),
    pa.field("model", pa.string()),
    pa.field("version", pa.int64()),
]

#: What the model answered, by problem type: ``prediction`` is the class name (classifiers) or the
#: number (regression); ``probabilities`` one probability per class, in the model's class order
#: (classifiers); ``probability`` P(positive), for binary classifiers only.
_ANSWER_FIELDS = {
    "binary": [
        pa.field("prediction", pa.string()),
        pa.field("probabilities", pa.list_(pa.float64())),
        pa.field("probability", pa.float64()),
    ],
    "multiclass": [
        pa.field("prediction", pa.string()),
        pa.field("probabilities", pa.list_(pa.float64())),
    ],
    "regression": [pa.field("prediction", pa.float64())],
}

#: Columns the model server writes beside the features (any problem type).
LOG_COLUMNS = frozenset(
    f.name for f in [*_LOG_FIELDS, *(f for fs in _ANSWER_FIELDS.values() for f in fs)]
)

#: The feedback table servers wrote before problem types (``label`` 0 or 1, binary models only).
#: Logs may still hold such files; servers now write ``feedback_schema(problem)``.
FEEDBACK_SCHEMA = pa.schema(
    [pa.field("request_id", pa.string()), pa.field("label", pa.int64()), pa.field("time", _TIME)]
)

#: What pyarrow raises for a value its column's type cannot hold (a lone surrogate, 2**70, ...).
_UNENCODABLE = (pa.ArrowException, ValueError, TypeError, OverflowError)


def _answer_fields(problem: str) -> list[pa.Field]:
    if problem not in _ANSWER_FIELDS:
        raise ValueError(f"problem type {problem!r}: one of {sorted(_ANSWER_FIELDS)}")
    return _ANSWER_FIELDS[problem]


def prediction_schema(columns: Iterable[tuple[str, str]], problem: str) -> pa.Schema:
    """The predictions table of a model of ``problem`` type (binary, multiclass, regression): the
    server's own columns, the answer's, then each feature ``(name, mlflow type)``."""
    fields = [*_LOG_FIELDS, *_answer_fields(problem)]
    for name, kind in columns:
        if kind not in _ARROW_TYPES:
            raise ValueError(
                f"feature column {name!r}: MLflow type {kind!r} has no prediction-log type "
                f"(known: {sorted(_ARROW_TYPES)})"
            )
        if name in LOG_COLUMNS:
            raise ValueError(
                f"feature column {name!r}: the prediction log writes a column of that name "
                f"itself ({sorted(LOG_COLUMNS)})"
            )
        fields.append(pa.field(name, _ARROW_TYPES[kind]))
    return pa.schema(fields)


def feedback_schema(problem: str) -> pa.Schema:
    """The feedback table of a model of ``problem`` type: ``label`` is the class name
    (classifiers) or the number (regression)."""
    _answer_fields(problem)  # a known problem type
    label = pa.float64() if problem == "regression" else pa.string()
    return pa.schema(
        [pa.field("request_id", pa.string()), pa.field("label", label), pa.field("time", _TIME)]
    )


# file names --------------------------------------------------------------------------------------
_NAME = re.compile(r"part-(\d{8}T\d{6})(\d{6})?Z?-([0-9a-z]+)\.parquet$")


def file_name(stamp: datetime, batch: str) -> str:
    """The name of batch ``batch`` committed at ``stamp`` (UTC): sorts by commit time."""
    return f"part-{stamp.astimezone(UTC):%Y%m%dT%H%M%S%f}Z-{batch}.parquet"


def commit_time(path: str) -> datetime | None:
    """The commit stamp in a log file's name (older files: to the second); None if it has none."""
    m = _NAME.search(path)
    if not m:
        return None
    return datetime.strptime(m[1] + (m[2] or "000000"), "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)


def _batch_of(name: str) -> str:
    m = _NAME.search(name)
    if not m:
        raise ValueError(f"{name} is not a prediction-log file name")
    return m[3]


class LogStore:
    """The log's root: batches are staged aside, then committed by one move under their final name
    (readers never see half a file, and the commit stamp is taken right before the move)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.fs, self.path = fsspec.core.url_to_fs(self.root)

    def destination(self, kind: str, name: str) -> str:
        stamp = commit_time(name)
        if stamp is None:
            raise ValueError(f"{name} carries no commit stamp")
        return f"{self.path}/{kind}/date={stamp:%Y-%m-%d}/hour={stamp:%H}/{name}"

    def stage(self, kind: str, batch: str, data: bytes) -> str:
        folder = f"{self.path}/{kind}/_incoming"
        tmp = f"{folder}/{batch}.parquet.tmp"  # not *.parquet: no reader globs it
        try:
            self.fs.makedirs(folder, exist_ok=True)
            self.fs.pipe_file(tmp, data)
        except Exception:
            self.discard(tmp)
            raise
        return tmp

    def commit(self, tmp: str, dest: str) -> None:
        self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(tmp, dest)

    def exists(self, dest: str) -> bool:
        self.fs.invalidate_cache(dest.rsplit("/", 1)[0])  # s3fs caches listings
        return bool(self.fs.exists(dest))

    def discard(self, tmp: str) -> None:
        with contextlib.suppress(Exception):  # best effort: a stray *.tmp is never read
            self.fs.rm_file(tmp)


def default_spill_dir(root: str) -> Path:
    """Beside a local log (``<root>/_spill``, which no reader globs); for a remote root, a folder
    of this user's state directory named by the root."""
    if get_protocol(root) in ("file", "local"):
        return Path(fsspec.core.url_to_fs(root)[1]) / "_spill"
    digest = hashlib.sha256(root.encode()).hexdigest()[:16]
    return Path(platformdirs.user_state_dir("mlops")) / "prediction-log-spill" / digest


@dataclass
class _Batch:
    kind: str
    id: str
    rows: int
    data: bytes  # the Parquet file, encoded once
    dest: str | None = None  # a commit that raised: it may have landed, so look before retrying


# the log -----------------------------------------------------------------------------------------
class PredictionLog:
    """Buffers records in memory; a flusher thread writes one Parquet file per batch (size or age).

    Args:
        root: a folder or fsspec URL.
        batch_rows: a kind's buffer is written once it holds this many rows (at a server's
            peak of a few thousand rows a second, a file every few seconds: a window of a million
            rows is then a few hundred files to read, not thousands)...
        max_age_seconds: ...or once its oldest row waited this long.
        spill_dir: where batches the root refused wait (default: ``default_spill_dir``). Several
            servers may share one: each spill file is replayed under an exclusive lock.
        retries: further attempts (with doubling backoff from ``retry_delay_seconds``) before a
            batch is spilled.
        max_buffered_rows: rows held in memory (buffered, being written, or refused by both the
            root and the spill folder) beyond which new rows are dropped and counted.
        store: the root's writer (tests pass a failing one).
        close_timeout_seconds: how long ``close`` waits for the flusher before spilling itself.
        clock: the UTC time commit stamps are taken from (a benchmark replays days in minutes).
    """

    def __init__(
        self,
        root: str | Path,
        batch_rows: int = 5000,
        max_age_seconds: float = 5.0,
        spill_dir: str | Path | None = None,
        retries: int = 3,
        retry_delay_seconds: float = 0.1,
        max_buffered_rows: int = 100_000,
        store: LogStore | None = None,
        close_timeout_seconds: float = 30.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.root = str(root).rstrip("/")
        self.batch_rows = batch_rows
        self.max_age = max_age_seconds
        self.spill_dir = Path(spill_dir) if spill_dir is not None else default_spill_dir(self.root)
        self.retries = retries
        self.retry_delay = retry_delay_seconds
        self.max_buffered_rows = max_buffered_rows
        self.store = store or LogStore(self.root)
        self.close_timeout = close_timeout_seconds
        self.clock = clock or (lambda: datetime.now(UTC))
        # Inferred from the rows until the server gives each kind its model's schema (use_schema)
        self._schemas: dict[str, pa.Schema | None] = {PREDICTIONS: None, FEEDBACK: None}
        self._rows: dict[str, list[dict[str, Any]]] = {PREDICTIONS: [], FEEDBACK: []}
        self._oldest: dict[str, float] = {}  # monotonic time the oldest buffered row came
        self._inflight: Counter[str] = Counter()  # rows the flusher took and has not settled
        self._held: list[_Batch] = []  # neither the root nor the spill folder took them
        self._counts: dict[str, Counter[str]] = {
            k: Counter() for k in ("written", "spilled", "dropped", "write_failures")
        }
        self._waiting: Counter[str] = Counter()  # rows in spill files, by kind
        self._spill_rows: dict[str, int] = {}  # spill file name -> rows (footers read once)
        self._last_error: str | None = None
        self._last_drop: str | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._closed = False
        self._requested = self._done = 0  # flush() generations
        self._retry_at = 0.0  # monotonic time of the next try of spilled or held batches
        self._flusher = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._flusher.start()

    # what the app calls --------------------------------------------------------------------------
    def use_schema(self, kind: str, schema: pa.Schema) -> None:
        """Write ``kind``'s batches with ``schema`` (no inference: a bad value is one bad row)."""
        with self._cond:
            self._schemas[kind] = schema
            self._rows.setdefault(kind, [])

    def append(self, kind: str, records: Iterable[dict[str, Any]]) -> None:
        """Buffer ``records``; never raises because of writing, never waits on I/O."""
        rows = list(records)
        if not rows:
            return
        with self._cond:
            if kind not in self._rows:
                raise ValueError(f"unknown prediction-log kind {kind!r}: one of {list(self._rows)}")
            closed = self._closed
            if not closed and not self._admit(kind, rows):
                return
        if closed:  # a request answered during shutdown: the flusher is gone, write it here
            self._settle([self._encode(kind, rows)])

    def flush(self, kind: str | None = None, timeout: float | None = None) -> bool:
        """Write every buffered row now (``kind`` is accepted for compatibility: all kinds are
        flushed); True once done, False if ``timeout`` passed first."""
        with self._cond:
            if not self._flusher.is_alive():
                return True
            self._requested += 1
            wanted = self._requested
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done >= wanted, timeout)

    def close(self) -> None:
        """Flush; rows that cannot be written end in the spill folder (or, failing that, are
        counted as dropped)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._flusher.join(self.close_timeout)
        with self._cond:
            self._closed = True
            left = [(k, rows) for k, rows in self._rows.items() if rows]
            for k in self._rows:
                self._rows[k] = []
        stuck = self._flusher.is_alive()
        if stuck:  # on a hanging store: keep what it has not taken, locally
            _log.error("the prediction log's flusher did not finish in %ss", self.close_timeout)
        for kind, rows in left:  # appended after the flusher's last look
            self._settle([self._encode(kind, rows)], spill_only=stuck)
        with self._cond:
            held, self._held = self._held, []
        for b in held:
            self._count("dropped", b.kind, b.rows)
            with self._cond:
                self._last_drop = f"{b.rows} {b.kind} rows neither written nor spilled at close"
            _log.error("prediction log: dropped %s", self._last_drop)

    def problem(self) -> str | None:
        """None when healthy; else what is wrong: the last write error, rows waiting in spill
        files or in memory, rows dropped since start."""
        with self._cond:
            parts = []
            if self._last_error:
                parts.append(f"the last write failed ({self._last_error})")
            if waiting := sum(self._waiting.values()):
                parts.append(f"{waiting} rows spilled to {self.spill_dir} wait for the log root")
            if held := sum(b.rows for b in self._held):
                parts.append(f"{held} rows held in memory: the spill folder refused them too")
            if dropped := sum(self._counts["dropped"].values()):
                parts.append(f"{dropped} rows dropped since start (last: {self._last_drop})")
            return "; ".join(parts) or None

    def stats(self) -> dict[str, Any]:
        """Rows written, spilled, dropped and write failures by kind; rows buffered (in memory)
        and waiting in spill files by kind; the last error."""
        with self._cond:
            out: dict[str, Any] = {name: dict(c) for name, c in self._counts.items()}
            out["buffered"] = self._buffered()
            out["spill_waiting"] = dict(self._waiting)
            out["last_error"] = self._last_error
            return out

    def collector(self) -> _LogCollector:
        """A Prometheus collector of ``stats()``, for the app's own registry."""
        return _LogCollector(self)

    def warm(self, record: dict[str, Any]) -> None:
        """Serialise one record to Parquet in memory: the first flush then does not pay for
        pyarrow's lazy imports and allocations while callers wait on the GIL."""
        pq.write_table(pa.Table.from_pylist([record]), io.BytesIO())

    # buffering (under the lock) ------------------------------------------------------------------
    def _admit(self, kind: str, rows: list[dict[str, Any]]) -> bool:
        if self._held_rows() + len(rows) > self.max_buffered_rows:
            self._counts["dropped"][kind] += len(rows)
            self._last_drop = f"{len(rows)} {kind} rows: {self.max_buffered_rows} rows in memory"
            _log.error("prediction log: dropped %s", self._last_drop)
            return False
        first = not self._rows[kind]
        if first:
            self._oldest[kind] = time.monotonic()
        self._rows[kind].extend(rows)
        if first or len(self._rows[kind]) >= self.batch_rows:  # a new deadline, or a full batch
            self._cond.notify_all()
        return True

    def _held_rows(self) -> int:
        """All rows in memory (what ``max_buffered_rows`` bounds): ``_buffered`` summed in place,
        as ``append`` asks it on every request and a Counter there cost more than the rest."""
        held = sum(len(rows) for rows in self._rows.values()) + sum(self._inflight.values())
        return held + sum(b.rows for b in self._held)

    def _buffered(self) -> dict[str, int]:
        out = Counter({k: len(rows) for k, rows in self._rows.items()})
        out.update(self._inflight)
        for b in self._held:
            out[b.kind] += b.rows
        return dict(out)

    def _due(self, now: float) -> list[str]:
        """The kinds whose buffer is to be written now (every kind when stopping or flushing)."""
        everything = self._stopping or self._requested > self._done
        return [
            k
            for k, rows in self._rows.items()
            if rows
            and (
                everything or len(rows) >= self.batch_rows or now - self._oldest[k] >= self.max_age
            )
        ]

    def _retry_due(self, now: float) -> bool:
        pending = self._held or any(self._waiting.values())
        return bool(pending) and now >= self._retry_at

    def _wait(self) -> tuple[list[tuple[str, list[dict[str, Any]]]], bool, int]:
        """Wait until something is to be done; take the due buffers."""
        while True:
            now = time.monotonic()
            due = self._due(now)
            if due or self._stopping or self._requested > self._done or self._retry_due(now):
                break
            deadlines = [self._oldest[k] + self.max_age for k, r in self._rows.items() if r]
            if self._held or any(self._waiting.values()):
                deadlines.append(self._retry_at)
            self._cond.wait(max(0.0, min(deadlines) - now) if deadlines else None)
        taken = []
        for k in due:
            rows, self._rows[k] = self._rows[k], []
            self._inflight[k] += len(rows)
            taken.append((k, rows))
        return taken, self._stopping, self._requested

    # the flusher ---------------------------------------------------------------------------------
    def _run(self) -> None:
        first = True
        while True:
            with self._cond:
                taken, stopping, generation = ([], False, self._done) if first else self._wait()
            try:  # the flusher never dies: whatever goes wrong is logged, counted, retried
                if first:
                    self._replay()
                else:
                    self._cycle(taken)
            except Exception as exc:
                _log.exception("prediction log: flush failed")
                with self._cond:
                    self._last_error = f"{type(exc).__name__}: {exc}"
            finally:
                with self._cond:
                    for k, rows in taken:
                        self._inflight[k] -= len(rows)
                    self._done = max(self._done, generation)
                    self._cond.notify_all()
            first = False
            if stopping:
                return

    def _cycle(self, taken: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """Spilled batches first (oldest first), then held ones, then the new ones."""
        try:
            root_up = self._replay()
        except Exception:  # never in the way of the new rows
            _log.exception("prediction log: replaying spill files failed")
            root_up = False
        with self._cond:
            held, self._held = self._held, []
        batches = held + [b for k, rows in taken for b in self._batches(k, rows)]
        self._settle(batches, spill_only=not root_up)

    def _batches(self, kind: str, rows: list[dict[str, Any]]) -> Iterator[_Batch]:
        for i in range(0, len(rows), self.batch_rows):
            chunk = rows[i : i + self.batch_rows]
            try:
                yield self._encode(kind, chunk)
            except Exception as exc:  # not a bad value (those are dropped alone): a bug, counted
                _log.exception("prediction log: encoding %s %s rows failed", len(chunk), kind)
                self._count("dropped", kind, len(chunk))
                with self._cond:
                    self._last_drop = f"{len(chunk)} {kind} rows: {type(exc).__name__}: {exc}"

    def _settle(self, batches: list[_Batch], spill_only: bool = False) -> None:
        """Each batch to the root (with retries), else to a spill file, else held in memory. Once
        the root refused one, the rest go straight to spill files: it is down."""
        for b in batches:
            if b.rows == 0:
                continue
            if not spill_only and self._write(b):
                self._count("written", b.kind, b.rows)
                continue
            spill_only = True
            if self._spill(b):
                self._count("spilled", b.kind, b.rows)
                continue
            with self._cond:
                self._held.append(b)
                self._retry_at = time.monotonic() + self.max_age

    def _count(self, outcome: str, kind: str, rows: int) -> None:
        with self._cond:
            self._counts[outcome][kind] += rows
            if outcome == "written":
                self._last_error = None

    def _failed(self, kind: str, exc: Exception) -> None:
        _log.warning("prediction log: writing %s to %s failed: %s", kind, self.root, exc)
        with self._cond:
            self._counts["write_failures"][kind] += 1
            self._last_error = f"to {self.root}: {type(exc).__name__}: {exc}"

    # encoding ------------------------------------------------------------------------------------
    def _encode(self, kind: str, rows: list[dict[str, Any]]) -> _Batch:
        """One Parquet file of ``rows``; rows that cannot be encoded are dropped alone, counted."""
        with self._cond:
            schema = self._schemas.get(kind)
        try:
            table = pa.Table.from_pylist(rows, schema=schema)
        except _UNENCODABLE:
            table = self._encode_each(kind, rows, schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return _Batch(kind, uuid.uuid4().hex, table.num_rows, sink.getvalue().to_pybytes())

    def _encode_each(
        self, kind: str, rows: list[dict[str, Any]], schema: pa.Schema | None
    ) -> pa.Table:
        tables: list[pa.Table] = []
        bad: list[str] = []
        unified = schema
        for i, row in enumerate(rows):
            try:
                one = pa.Table.from_pylist([row], schema=schema)
                # without a schema, a row typed unlike the others is a bad row too
                unified = pa.unify_schemas(
                    [unified or one.schema, one.schema], promote_options="permissive"
                )
                tables.append(one)
            except _UNENCODABLE as exc:
                bad.append(f"row {i} ({type(exc).__name__}: {exc})")
        if bad:
            self._count("dropped", kind, len(bad))
            with self._cond:
                self._last_drop = f"{len(bad)} unencodable {kind} rows, first {bad[0]}"
            _log.error("prediction log: dropped %s", self._last_drop)
        if not tables:
            return pa.table({}) if schema is None else schema.empty_table()
        return pa.concat_tables(tables, promote_options="permissive")

    # the root ------------------------------------------------------------------------------------
    def _write(self, b: _Batch) -> bool:
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_delay * 2 ** (attempt - 1))
            try:
                self._commit(b)
                return True
            except Exception as exc:
                self._failed(b.kind, exc)
        return False

    def _commit(self, b: _Batch) -> None:
        if b.dest is not None:  # the last commit raised: if it landed, it must not land twice
            landed = self.store.exists(b.dest)
            b.dest = None
            if landed:
                return
        tmp = self.store.stage(b.kind, b.id, b.data)
        b.dest = self.store.destination(b.kind, file_name(self.clock(), b.id))
        try:
            self.store.commit(tmp, b.dest)
        except Exception:
            self.store.discard(tmp)
            raise
        b.dest = None

    # spill files ---------------------------------------------------------------------------------
    def _spill(self, b: _Batch) -> bool:
        """``b`` as a local file named as its destination would be (the stamp of a commit that
        may have landed, so the replay looks there first)."""
        stamp = commit_time(b.dest) if b.dest else None
        path = self.spill_dir / b.kind / file_name(stamp or self.clock(), b.id)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(b.data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except Exception as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            _log.error("prediction log: spilling %s rows to %s failed: %s", b.rows, path, exc)
            with self._cond:
                self._last_error = f"to the spill folder {self.spill_dir}: {exc}"
            return False
        with self._cond:
            self._spill_rows[path.name] = b.rows
            self._waiting[b.kind] += b.rows
            self._retry_at = time.monotonic() + self.max_age
        _log.warning("prediction log: %s %s rows spilled to %s", b.rows, b.kind, path)
        return True

    def _replay(self) -> bool:
        """Write the spill files to the root, oldest first; False once the root refuses one."""
        if not self.spill_dir.is_dir():
            return True
        up = True
        for path in sorted(self._spill_files(), key=_age):
            if up:
                up = self._replay_one(path)
        self._recount(self._spill_files())
        with self._cond:  # what is left (root down, or another server on it) waits a while
            self._retry_at = time.monotonic() + self.max_age
        return up

    def _spill_files(self) -> list[Path]:
        return list(self.spill_dir.glob("*/part-*.parquet"))

    def _replay_one(self, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # another server replayed it meanwhile
            return True
        try:
            if not _lock(fd, path):
                return True
            kind = path.parent.name
            try:
                rows = self._rows_in(path)
            except Exception as exc:  # not a Parquet file: set aside for a person, never replayed
                _log.error("prediction log: spill file %s is unreadable: %s", path, exc)
                os.replace(path, path.with_name(path.name + ".unreadable"))
                return True
            try:
                self._commit_spilled(fd, path)
            except Exception as exc:
                self._failed(kind, exc)
                return False
            self._count("written", kind, rows)
            return True
        finally:
            os.close(fd)  # releases the lock

    def _commit_spilled(self, fd: int, path: Path) -> None:
        """Look where the name says it may have landed; else stage, rename the spill file to the
        new destination's name (the intent, recorded before the commit), commit, remove it."""
        kind, batch = path.parent.name, _batch_of(path.name)
        if not self.store.exists(self.store.destination(kind, path.name)):
            with os.fdopen(os.dup(fd), "rb") as fh:
                tmp = self.store.stage(kind, batch, fh.read())
            name = file_name(self.clock(), batch)
            renamed = path.with_name(name)
            os.replace(path, renamed)
            path = renamed
            try:
                self.store.commit(tmp, self.store.destination(kind, name))
            except Exception:
                self.store.discard(tmp)
                raise
        path.unlink()

    def _rows_in(self, path: Path) -> int:
        with self._cond:
            if path.name in self._spill_rows:
                return self._spill_rows[path.name]
        return int(pq.read_metadata(path).num_rows)

    def _recount(self, files: list[Path]) -> None:
        """Rows still waiting in spill files (another server may have replayed some)."""
        waiting: Counter[str] = Counter()
        known: dict[str, int] = {}
        for path in files:
            try:
                known[path.name] = rows = self._rows_in(path)
            except FileNotFoundError:  # replayed by another server meanwhile
                continue
            except Exception as exc:  # unreadable: reported, left for a person
                _log.error("prediction log: spill file %s is unreadable: %s", path, exc)
                continue
            waiting[path.parent.name] += rows
        with self._cond:
            self._waiting, self._spill_rows = waiting, known


def _age(path: Path) -> tuple[int, str]:
    try:
        return path.stat().st_mtime_ns, path.name
    except FileNotFoundError:
        return 0, path.name


def _lock(fd: int, path: Path) -> bool:
    """An exclusive lock on the open spill file, if no other process holds one and the name still
    names this file (not renamed or removed by the process that held it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


class _LogCollector:
    """The log's counters and gauges, read from ``stats()`` at each scrape."""

    def __init__(self, log: PredictionLog) -> None:
        self.log = log

    def collect(self) -> Iterator[Metric]:
        stats = self.log.stats()
        rows = CounterMetricFamily(
            "mlops_prediction_log_rows_total",
            "Prediction-log rows by outcome: written to the root, spilled locally, dropped.",
            labels=["kind", "outcome"],
        )
        for outcome in ("written", "spilled", "dropped"):
            for kind, n in sorted(stats[outcome].items()):
                rows.add_metric([kind, outcome], n)
        failures = CounterMetricFamily(
            "mlops_prediction_log_write_failures_total",
            "Failed attempts to write a batch to the prediction log's root.",
            labels=["kind"],
        )
        for kind, n in sorted(stats["write_failures"].items()):
            failures.add_metric([kind], n)
        buffered = GaugeMetricFamily(
            "mlops_prediction_log_buffered_rows",
            "Rows in memory not yet written to the prediction log.",
            labels=["kind"],
        )
        for kind, n in sorted(stats["buffered"].items()):
            buffered.add_metric([kind], n)
        waiting = GaugeMetricFamily(
            "mlops_prediction_log_spilled_rows",
            "Rows in local spill files waiting for the prediction log's root.",
            labels=["kind"],
        )
        for kind, n in sorted(stats["spill_waiting"].items()):
            waiting.add_metric([kind], n)
        return iter([rows, failures, buffered, waiting])
