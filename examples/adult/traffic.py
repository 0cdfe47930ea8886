"""Production traffic for the Adult demo and the tests: rows posted to a model endpoint one request
each, their true labels sent back through ``/feedback`` as they would arrive later; and the
example's documented shift of the world (its column names are the Adult data's)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pandas as pd


def shift_adult(frame: pd.DataFrame) -> pd.DataFrame:
    """The example's shift of the world, on rows of the Adult data (with or without ``income``):

    - the features move: everyone is 8 years older (``age`` + 8, at most 90) and works 15 % fewer
      hours (``hours_per_week`` x 0.85, rounded, at least 1); two of fourteen columns drift;
    - the label relation moves: nobody aged 45 or more who works under 40 hours a week (after the
      shift) earns ``>50K`` any more: about one row in eight changes label, and a model trained
      before the shift over-predicts high incomes for older part-time workers.

    Which rows are shifted is chosen by the caller (the demo samples them with a seed).
    """
    shifted = frame.copy()
    shifted["age"] = (shifted["age"] + 8).clip(upper=90)
    shifted["hours_per_week"] = (shifted["hours_per_week"] * 0.85).round().clip(lower=1).astype(int)
    if "income" in shifted:
        shifted.loc[(shifted["age"] >= 45) & (shifted["hours_per_week"] < 40), "income"] = "<=50K"
    return shifted


@dataclass
class TrafficReport:
    sent: int = 0
    answered: int = 0
    labelled: int = 0
    failures: list[str] = field(default_factory=list)
    versions: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0  # from the first request to the last answer


def send_traffic(
    url: str,
    rows: pd.DataFrame,
    target: str,
    clients: int = 4,
    feedback: bool = True,
    token: str | None = None,
    stop: threading.Event | None = None,
    rate: float | None = None,
) -> TrafficReport:
    """POST each row to ``url``/predict (one row a request) and, with ``feedback``, its true label
    (the ``target`` column's own value: the class name for a classifier, the number for a
    regression, as the answer's ``problem`` says) to ``url``/feedback; ``clients`` at a time.
    With ``rate``, the requests start at most ``rate`` a second over all clients, as production
    traffic comes; without, each client sends its next as soon as it is answered (which on a
    small machine takes the cores the rest of the loop needs). Rows with missing values are
    skipped (the server refuses them)."""
    rows = rows.dropna()
    labels = rows[target].tolist() if target in rows else None
    records = rows.drop(columns=[target], errors="ignore").to_dict("records")
    report = TrafficReport()
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    pace = _Pace(rate)

    def work(part: range) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            for i in part:
                pace.wait(stop)
                if stop is not None and stop.is_set():
                    return
                row: dict[str, Any] = {k: _plain(v) for k, v in records[i].items()}
                body: dict[str, Any] | None = None
                labelled, failure = False, None
                try:
                    r = client.post("/predict", json={"row": row})
                    if r.status_code == 200:
                        body = r.json()
                    else:
                        failure = f"{r.status_code}: {r.text[:200]}"
                    if body is not None and feedback and labels is not None:
                        label = _label(labels[i], body["problem"])
                        f = client.post(
                            "/feedback", json={"request_id": body["request_id"], "label": label}
                        )
                        labelled = f.status_code == 202
                except httpx.HTTPError as exc:
                    failure = f"{type(exc).__name__}: {exc}"
                with lock:
                    report.sent += 1
                    report.labelled += int(labelled)
                    if body is not None:
                        report.answered += 1
                        v = int(body["model"]["version"])
                        report.versions[v] = report.versions.get(v, 0) + 1
                    if failure and len(report.failures) < 20:
                        report.failures.append(failure)

    n = len(records)
    began = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, [range(k, n, clients) for k in range(clients)]))
    report.seconds = time.monotonic() - began
    return report


class _Pace:
    """Start times ``1 / rate`` apart, shared by the clients' threads (no pace without a rate)."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.interval = 1 / rate if rate else 0.0
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self, stop: threading.Event | None) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(self.next, now)
            self.next = start + self.interval
        if start > now:
            if stop is not None:
                stop.wait(start - now)
            else:
                time.sleep(start - now)


def _label(value: Any, problem: str) -> str | float:
    """A true label as /feedback takes it: a class name (a string) or a number."""
    return float(value) if problem == "regression" else str(value)


def _plain(value: Any) -> Any:
    """numpy scalars as the JSON types the server's signature expects."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
