"""Reading the prediction log back for monitoring: windows cut by the files' commit stamps, with
the labels that arrived for their rows.

Apart from the log's writer (``mlops.adapters.prediction_log``, which the model server imports)
so that the server never loads what monitoring judges with.

A window of a million rows is a few thousand files: they are pruned by path first (the
``date=/hour=`` partitions and the commit stamps in the names, so files of other windows are
never opened), then read in one multithreaded ``pyarrow.dataset`` scan of only the columns the
judgements use, and cut to the window's newest rows in Arrow before anything becomes pandas.
Files written with different schemas (binary logs from before problem types beside newer ones)
are read one by one, in commit order, and concatenated by pandas as before.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mlops.adapters.prediction_log import FEEDBACK, LOG_COLUMNS, PREDICTIONS, commit_time
from mlops.ml.monitoring import Window

#: How long after its commit stamp a log file is surely readable: the stamp is taken right before
#: the one move that commits the file (a rename locally, a server-side copy on S3), so this covers
#: that move and the clock skew between servers. The monitoring flow ends its windows this long
#: before now, so no file can still appear in a window once it was read.
SETTLE = timedelta(seconds=2)

_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})")

#: The log's own columns a window keeps (``model`` names the rows; the rest the judgements read).
_WINDOW_COLUMNS = ("request_id", "row", "time", "model", "version", "prediction", "probability")

#: Columns of distinct values, read as plain strings (a dictionary of them would save nothing).
_UNIQUE = frozenset({"request_id"})

#: Footers read at once: remote stores answer each file's footer in one round trip.
_FOOTER_THREADS = 16


def _files(root: str, kind: str, since: datetime | None) -> tuple[Any, list[str]]:
    """The log files of ``kind`` in hour partitions reaching past ``since``."""
    fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/{kind}")
    fs.invalidate_cache(path)  # s3fs keeps listings: a long-lived process would miss new files
    files = sorted(fs.glob(f"{path}/**/*.parquet"))
    if since is not None:  # skip hour partitions that ended before the window began

        def recent(f: str) -> bool:
            m = _PARTITION.search(f)
            if not m:
                return True
            start = datetime.fromisoformat(f"{m[1]}T{m[2]}:00:00+00:00")
            return start + timedelta(hours=1) > since

        files = [f for f in files if recent(f)]
    return fs, files


def _committed(
    files: list[str], since: datetime | None, until: datetime, problems: list[str]
) -> list[str]:
    """The files committed in [since, until), by the commit stamp in their names."""
    window = []
    for f in files:
        stamp = commit_time(f)
        if stamp is None:
            problems.append(f"{PREDICTIONS} file {f} has no commit stamp in its name: skipped")
        elif stamp < until and (since is None or stamp >= since):
            window.append(f)
    return window


def _unreadable(kind: str, f: str, exc: Exception, problems: list[str] | None) -> None:
    """A corrupt or half-copied file: reported, the rest judged (raised without ``problems``)."""
    if problems is None:
        raise exc
    problems.append(f"{kind} file {f} is unreadable and was skipped: {exc}")


def _schemas(fs: Any, files: list[str]) -> list[pa.Schema | Exception]:
    """Each file's schema from its footer (or why it could not be read), in the files' order."""

    def one(f: str) -> pa.Schema | Exception:
        try:
            return pq.read_schema(f, filesystem=fs).remove_metadata()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(min(_FOOTER_THREADS, max(1, len(files)))) as pool:
        return list(pool.map(one, files))


def _read(
    fs: Any,
    files: list[str],
    kind: str,
    problems: list[str] | None,
    columns: list[str] | None = None,
) -> list[pa.Table]:
    """The records of ``files`` in commit order, only ``columns`` of them (all when None): one
    table of one scan where all files share a schema, else one table per file."""
    readable, schemas = [], []
    for f, schema in zip(files, _schemas(fs, files), strict=True):
        if isinstance(schema, Exception):
            _unreadable(kind, f, schema, problems)
        else:
            readable.append(f)
            schemas.append(schema)
    if not readable:
        return []

    def wanted(schema: pa.Schema) -> list[str]:
        return schema.names if columns is None else [c for c in columns if c in schema.names]

    if all(s.equals(schemas[0]) for s in schemas):
        names = wanted(schemas[0])
        # strings of few values (features, classes) come as dictionaries: see ``_pandas``
        strings = [
            f.name
            for f in schemas[0]
            if f.name in names and f.name not in _UNIQUE and pa.types.is_string(f.type)
        ]
        try:
            dataset = ds.dataset(
                readable,
                schema=schemas[0],
                format=ds.ParquetFileFormat(dictionary_columns=strings),
                filesystem=fs,
            )
            return [dataset.to_table(columns=names)]
        except (pa.ArrowException, OSError):
            pass  # a file broken past its footer: found and named by reading one at a time
    tables = []
    for f, schema in zip(readable, schemas, strict=True):
        try:
            tables.append(pq.read_table(f, columns=wanted(schema), filesystem=fs))
        except Exception as exc:
            _unreadable(kind, f, exc, problems)
    return tables


def _pandas(table: pa.Table) -> pd.DataFrame:
    """``table`` as pandas, its dictionary-read strings as the object columns pyarrow makes of
    plain strings: the few distinct values are made once and taken by index, where converting
    a million strings one by one costs seconds."""
    frame = table.to_pandas()
    for name in [f.name for f in table.schema if pa.types.is_dictionary(f.type)]:
        column = frame[name].cat
        codes = column.codes.to_numpy()
        values = np.concatenate([column.categories.to_numpy(dtype=object), np.array([None])])
        frame[name] = values[np.where(codes < 0, len(values) - 1, codes)]
    return frame


def _frame(tables: list[pa.Table]) -> pd.DataFrame:
    """One frame of ``tables`` (pandas concatenates columns typed differently by file)."""
    frames = [_pandas(t) for t in tables if t.num_rows]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_log(
    root: str,
    kind: str = PREDICTIONS,
    since: datetime | None = None,
    problems: list[str] | None = None,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """The records of ``kind`` in hour partitions reaching past ``since`` (all when None; an empty
    frame when there are none), only ``columns`` of them (all when None). An unreadable file is
    skipped and named in ``problems``; without ``problems`` it raises."""
    fs, files = _files(root, kind, since)
    return _frame(_read(fs, files, kind, problems, columns))


def _newest(tables: list[pa.Table], max_rows: int) -> pd.DataFrame:
    """The newest ``max_rows`` rows by prediction time (a stable sort: ties keep commit order);
    one table is sorted and cut in Arrow, so only the kept rows become pandas."""
    if len(tables) == 1 and pa.types.is_timestamp(tables[0].schema.field("time").type):
        table, first = tables[0], max(0, tables[0].num_rows - max_rows)
        time = table["time"]
        ordered = time.null_count == 0 and (
            len(time) < 2 or pc.all(pc.greater_equal(time[1:], time[:-1])).as_py()
        )
        if ordered:  # rows are logged as they are answered: usually no sort and no copy
            kept = table.slice(first)
        else:
            kept = table.take(pc.sort_indices(time, sort_keys=[("time", "ascending")])[first:])
        rows = _pandas(kept)
        return rows.assign(time=pd.to_datetime(rows["time"], utc=True))
    rows = _frame(tables)
    rows = rows.assign(time=pd.to_datetime(rows["time"], utc=True))
    return rows.sort_values("time", kind="stable").tail(max_rows)


def read_prediction_window(
    log_root: str,
    since: datetime | None,
    until: datetime,
    features: list[str],
    max_rows: int,
) -> Window:
    """The rows committed to the log in [since, until), the most recent ``max_rows`` of them (by
    prediction time), with their labels.

    Windows are cut by the commit stamps in the files' names, not by the rows' prediction times:
    a row that waited in the server's buffer, in retries or in a spill file belongs to the window
    in which it became readable, so consecutive windows hold every row exactly once (given that
    ``until`` is at least ``SETTLE`` before now). Labels are read from the earliest prediction time
    in the window on: a label arrives after its prediction, however late that was written.

    Only the features and the log's own columns are read; a binary log's ``probabilities`` are
    left out where every row has ``probability`` (P(positive), what the judgements read then).
    """
    problems: list[str] = []
    fs, files = _files(log_root, PREDICTIONS, since)
    files = _committed(files, since, until, problems)
    tables = [t for t in _read(fs, files, PREDICTIONS, problems) if t.num_rows]
    if all("time" not in t.column_names for t in tables):
        return Window(since, until, pd.DataFrame(columns=[*features, "label"]), problems)
    names = list(dict.fromkeys(n for t in tables for n in t.column_names))
    missing = [c for c in features if c not in names]
    if missing:
        problems.append(f"the prediction log lacks feature column(s) {missing}: not judged")
    extra = sorted(set(names) - set(features) - LOG_COLUMNS)
    if extra:
        problems.append(f"column(s) {extra} are not in the reference: ignored")
    keep = [*features, *_WINDOW_COLUMNS]
    if not all(
        "probability" in t.column_names and t["probability"].null_count == 0 for t in tables
    ):
        keep.append("probabilities")
    tables = [t.select([c for c in names if c in keep and c in t.column_names]) for t in tables]
    rows = _newest(tables, max_rows)

    earliest = rows["time"].min()
    horizon = since if since is None or pd.isna(earliest) else min(since, earliest - SETTLE)
    feedback = read_log(log_root, FEEDBACK, horizon, problems, ["request_id", "label"])
    if not feedback.empty and {"request_id", "label"} <= set(feedback.columns):
        labels = feedback.drop_duplicates("request_id", keep="last")
        seen: list[str] = []  # the window's files again: each problem is named once
        fs, files = _files(log_root, PREDICTIONS, horizon)
        known = [
            pc.cast(t["request_id"], pa.string())
            for t in _read(fs, files, PREDICTIONS, seen, ["request_id"])
            if "request_id" in t.column_names
        ]
        problems.extend(p for p in seen if p not in problems)
        ids = pa.array(labels["request_id"].astype(str), pa.string())
        found = pc.is_in(ids, value_set=pa.chunked_array(known, pa.string()).combine_chunks())
        unmatched = len(ids) - int(pc.sum(found).as_py() or 0)
        if unmatched:
            problems.append(
                f"{unmatched} label(s) name request ids with no logged prediction: ignored"
            )
        rows = rows.merge(labels, on="request_id", how="left")
    else:
        rows = rows.assign(label=pd.NA)
    return Window(since, until, rows.reset_index(drop=True), problems)
