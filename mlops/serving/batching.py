"""Adaptive micro-batching: concurrent requests' validated rows answered by one model call.

A batch of 64 rows costs the model about what one row does (the compiled path's fixed cost is
the per-call work, not the per-row work), so requests that arrive while the model is busy are
answered together once it frees. The wait is adaptive, as in BentoML and Ray Serve: a request
that finds the model idle and nothing queued calls it at once, on its own thread (no hand-over
to the batcher's thread, which would cost a thread switch each way on every lone request); one
that finds the model busy is queued, and the batcher's thread, once the model frees, sends
everything queued by then as one call, waiting for more (at most ``max_wait_seconds`` from the
first one's arrival) only when the batch already has company, and never past ``max_rows``. Each request gets its own slice of the answers; when the batch's call
fails, every request in it is answered alone, so the request that made it fail is the only one
that sees the error.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from mlops.serving.model import Answers

Predict = Callable[[list[dict[str, Any]]], Answers]


@dataclass
class _Pending:
    rows: list[dict[str, Any]]
    arrived: float
    answer: Future[Answers] = field(default_factory=Future)


def split(answers: Answers, sizes: list[int]) -> list[Answers]:
    """``answers`` for consecutive groups of ``sizes`` rows, one Answers per group."""
    out, start = [], 0
    for n in sizes:
        proba = answers.probabilities
        out.append(
            Answers(
                answers.predictions[start : start + n],
                None if proba is None else proba[start : start + n],
            )
        )
        start += n
    return out


class Batcher:
    """One thread feeding ``predict`` the rows of every request queued at once.

    Args:
        predict: the model call (``ServedModel.predict_records``); never two calls at once
            (a lone request's own thread or the batcher's thread, one at a time).
        max_rows: a batch holds at most this many rows; a request larger than that is its own
            batch (its size was already bounded by the server's ``max_batch_rows``).
        max_wait_seconds: how long a batch that already has company may wait for more.
        on_batch: told the rows of each batch before it goes to the model (a metric).
    """

    def __init__(
        self,
        predict: Predict,
        max_rows: int,
        max_wait_seconds: float,
        on_batch: Callable[[int], None] = lambda rows: None,
    ) -> None:
        if max_rows < 1 or max_wait_seconds < 0:
            raise ValueError(
                f"batching needs max_rows >= 1 and max_wait_seconds >= 0, got {max_rows} and "
                f"{max_wait_seconds}"
            )
        self.predict = predict
        self.max_rows = max_rows
        self.max_wait = max_wait_seconds
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._held: _Pending | None = None  # taken from the queue, did not fit the last batch
        # The model is busy (a call runs, or the batcher's thread has claimed it); guarded by
        # _idle, which tells the batcher's thread when a lone request's own call has ended.
        self._busy = False
        self._idle = threading.Condition()
        self._waiting = 0  # requests taken from the queue that wait for the model to free
        self.on_batch = on_batch
        self._thread = threading.Thread(target=self._run, name="mlops-batcher", daemon=True)
        self._thread.start()

    def __call__(self, rows: list[dict[str, Any]]) -> Answers:
        """The answers for ``rows`` (blocks the calling thread until they are ready)."""
        return self.submit(rows).result()

    def submit(self, rows: list[dict[str, Any]], here: bool = True) -> Future[Answers]:
        """The answers for ``rows`` as a future, without waiting for a busy model: when it is idle
        and nothing waits, and ``here`` allows, the model answers on the caller's thread and the
        future is done on return; otherwise the rows are queued and the batcher's thread answers
        them (``here=False``: an event loop, which must never run the model). A future cancelled
        before its batch is gathered is left out of it (nobody waits for it)."""
        with self._idle:
            alone = here and (
                not self._busy and not self._waiting and self._held is None and self._queue.empty()
            )
            if alone:
                self._busy = True
        if not alone:
            pending = _Pending(rows, time.perf_counter())
            self._queue.put(pending)
            return pending.answer
        done: Future[Answers] = Future()
        try:
            self.on_batch(len(rows))
            done.set_result(self.predict(rows))
        except Exception as exc:  # raised again by the future's result()
            done.set_exception(exc)
        finally:
            self._free()
        return done

    def queued(self) -> int:
        """How many requests wait for the model now (approximately, as the queue says)."""
        return self._queue.qsize() + self._waiting + (self._held is not None)

    def close(self) -> None:
        """Stop the thread once the requests queued before this call are answered."""
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first, self._held = self._held, None  # a held request is already running
            if first is None:
                first = self._queue.get()
                if first is None:
                    return
                if not first.answer.set_running_or_notify_cancel():
                    continue  # its caller went away while it was queued
            self._claim()  # the batch is gathered once the model is free, not before
            batch = [first]
            rows = len(first.rows)
            deadline = first.arrived + self.max_wait
            while rows < self.max_rows:
                try:
                    # Nothing else waited when the first came in: go now (a lone request never
                    # waits). With company, wait for more until the first one's deadline.
                    timeout = deadline - time.perf_counter() if len(batch) > 1 else 0
                    nxt = (
                        self._queue.get(timeout=timeout)
                        if timeout > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if nxt is None:  # close(): answer this batch, then stop
                    self._queue.put(None)
                    break
                if not nxt.answer.set_running_or_notify_cancel():
                    continue
                if rows + len(nxt.rows) > self.max_rows:
                    self._held = nxt
                    break
                batch.append(nxt)
                rows += len(nxt.rows)
            try:
                self._answer(batch)
            finally:
                self._free()

    def _claim(self) -> None:
        """Wait until no lone request's call runs, then hold the model for a batch."""
        with self._idle:
            self._waiting += 1
            while self._busy:
                self._idle.wait()
            self._busy = True
            self._waiting -= 1

    def _free(self) -> None:
        with self._idle:
            self._busy = False
            self._idle.notify_all()

    def _answer(self, batch: list[_Pending]) -> None:
        self.on_batch(sum(len(p.rows) for p in batch))
        if len(batch) == 1:
            self._alone(batch[0])
            return
        sizes = [len(p.rows) for p in batch]
        try:
            whole = self.predict([row for p in batch for row in p.rows])
            if len(whole) != sum(sizes):
                raise ValueError(f"the model answered {len(whole)} of {sum(sizes)} rows")
        except Exception:
            for pending in batch:  # only the request that breaks the model sees its error
                self._alone(pending)
            return
        for pending, answers in zip(batch, split(whole, sizes), strict=True):
            pending.answer.set_result(answers)

    def _alone(self, pending: _Pending) -> None:
        try:
            pending.answer.set_result(self.predict(pending.rows))
        except Exception as exc:  # raised again on the request's own worker thread
            pending.answer.set_exception(exc)
