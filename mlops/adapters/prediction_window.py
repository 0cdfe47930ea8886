"""Reading the prediction log back for monitoring: windows cut by the files' commit stamps, with
the labels that arrived for their rows.

Apart from the log's writer (``mlops.adapters.prediction_log``, which the model server imports)
so that the server never loads what monitoring judges with.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq

from mlops.adapters.prediction_log import FEEDBACK, LOG_COLUMNS, PREDICTIONS, commit_time
from mlops.ml.monitoring import Window

#: How long after its commit stamp a log file is surely readable: the stamp is taken right before
#: the one move that commits the file (a rename locally, a server-side copy on S3), so this covers
#: that move and the clock skew between servers. The monitoring flow ends its windows this long
#: before now, so no file can still appear in a window once it was read.
SETTLE = timedelta(seconds=2)

_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})")


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


def _read(
    fs: Any,
    files: list[str],
    kind: str,
    problems: list[str] | None,
    cache: dict[str, pd.DataFrame],
) -> pd.DataFrame:
    """The records of ``files`` (each read once per window, through ``cache``)."""
    frames = []
    for f in files:
        if f not in cache:
            try:
                with fs.open(f, "rb") as fh:
                    cache[f] = pq.read_table(fh).to_pandas()
            except Exception as exc:  # a corrupt or half-copied file: report it, judge the rest
                if problems is None:
                    raise
                problems.append(f"{kind} file {f} is unreadable and was skipped: {exc}")
                cache[f] = pd.DataFrame()
        frames.append(cache[f])
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_log(
    root: str,
    kind: str = PREDICTIONS,
    since: datetime | None = None,
    problems: list[str] | None = None,
    cache: dict[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """The records of ``kind`` in hour partitions reaching past ``since`` (all when None; an empty
    frame when there are none). An unreadable file is skipped and named in ``problems``; without
    ``problems`` it raises."""
    fs, files = _files(root, kind, since)
    return _read(fs, files, kind, problems, {} if cache is None else cache)


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
    """
    problems: list[str] = []
    cache: dict[str, pd.DataFrame] = {}
    fs, files = _files(log_root, PREDICTIONS, since)
    rows = _read(fs, _committed(files, since, until, problems), PREDICTIONS, problems, cache)
    if rows.empty or "time" not in rows:
        return Window(since, until, pd.DataFrame(columns=[*features, "label"]), problems)
    times = pd.to_datetime(rows["time"], utc=True)
    rows = rows.assign(time=times).sort_values("time", kind="stable").tail(max_rows)
    missing = [c for c in features if c not in rows]
    if missing:
        problems.append(f"the prediction log lacks feature column(s) {missing}: not judged")
    extra = sorted(set(rows.columns) - set(features) - LOG_COLUMNS)
    if extra:
        problems.append(f"column(s) {extra} are not in the reference: ignored")
    rows = rows.drop(columns=extra)

    earliest = rows["time"].min()
    horizon = since if since is None or pd.isna(earliest) else min(since, earliest - SETTLE)
    feedback = read_log(log_root, FEEDBACK, horizon, problems, cache)
    if not feedback.empty and {"request_id", "label"} <= set(feedback.columns):
        labels = feedback.drop_duplicates("request_id", keep="last")[["request_id", "label"]]
        known = read_log(log_root, PREDICTIONS, horizon, problems, cache)
        unmatched = int((~labels["request_id"].isin(known.get("request_id", []))).sum())
        if unmatched:
            problems.append(
                f"{unmatched} label(s) name request ids with no logged prediction: ignored"
            )
        rows = rows.merge(labels, on="request_id", how="left")
    else:
        rows = rows.assign(label=pd.NA)
    return Window(since, until, rows.reset_index(drop=True), problems)
