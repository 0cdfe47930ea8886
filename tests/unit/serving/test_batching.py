"""Adaptive micro-batching (mlops.serving.batching) in front of a real tiny model: each request
gets its own answers, equal to asking alone; batches keep their row limit; a lone request and a
full batch never wait; a request that breaks the model fails alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from mlops.serving.batching import Batcher
from mlops.serving.model import Answers, ServedModel, ServedProblem
from tests.unit.serving.tiny_models import CLASSES, COLUMNS, features, fitted

pytestmark = pytest.mark.unit

#: Longer than any test may take: a batcher that waited this long would hang the test, which
#: the futures' own timeouts turn into a failure.
FOREVER = 3600.0


@pytest.fixture(scope="module")
def model() -> ServedModel:
    pipeline, _, _ = fitted("multiclass")
    problem = ServedProblem("multiclass", "outcome", tuple(CLASSES["multiclass"]))
    return ServedModel("tiny", 1, pipeline, COLUMNS, problem)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return features(64, seed=7).to_dict("records")


class Gate:
    """The model call, held at its first call until the test opens it: meanwhile the test
    queues other requests, so the next batch's content is known. Records each batch's rows."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.entered, self.open = threading.Event(), threading.Event()
        self.calls: list[int] = []

    def __call__(self, records: list[dict[str, Any]]) -> Answers:
        self.calls.append(len(records))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.open.wait(30), "the test never opened the gate"
        if any(r["color"] == "poison" for r in records):
            raise ValueError("the model cannot read color 'poison'")
        return self.model.predict_records(records)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=40) as executor:
        yield executor


def held(batcher: Batcher, gate: Gate, pool: ThreadPoolExecutor, row: dict[str, Any]) -> Future:
    """A first request, in the model (held at the gate) before the call returns."""
    first = pool.submit(batcher, [row])
    assert gate.entered.wait(30), "the first request reached the model"
    return first


def queued(batcher: Batcher, requests: int) -> None:
    """Wait (without timing anything) until ``requests`` requests are in the batcher's queue."""
    for _ in range(3000):
        if batcher.queued() >= requests:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{requests} requests never queued")


def same(a: Answers, b: Answers) -> bool:
    """The same answers, up to the last bits: a row's floating-point sums may round differently
    inside a larger matrix product (as with any batch), never by more than 1e-12."""
    assert a.probabilities is not None and b.probabilities is not None
    return a.predictions == b.predictions and np.allclose(
        a.probabilities, b.probabilities, rtol=0, atol=1e-12
    )


def test_concurrent_requests_are_answered_together_each_with_its_own_answers(
    model: ServedModel, rows: list[dict[str, Any]], pool: ThreadPoolExecutor
) -> None:
    gate = Gate(model)
    sizes: list[int] = []
    batcher = Batcher(gate, max_rows=64, max_wait_seconds=0, on_batch=sizes.append)
    try:
        first = held(batcher, gate, pool, rows[0])
        # requests of 1, 2, 3, ... rows: each must get exactly its own rows' answers back
        groups = [rows[1 + sum(range(k)) : 1 + sum(range(k + 1))] for k in range(1, 10)]
        futures = [pool.submit(batcher, group) for group in groups]
        queued(batcher, len(groups))
        gate.open.set()
        answers = [f.result(timeout=30) for f in futures]
        first.result(timeout=30)
    finally:
        batcher.close()
    assert gate.calls == [1, sum(len(g) for g in groups)], "the queued requests went as one batch"
    assert sizes == gate.calls
    for group, got in zip(groups, answers, strict=True):
        assert len(got) == len(group)
        assert same(got, model.predict_records(group)), "a request got another's answers"


def test_a_batch_never_holds_more_than_its_row_limit(
    model: ServedModel, rows: list[dict[str, Any]], pool: ThreadPoolExecutor
) -> None:
    gate = Gate(model)
    batcher = Batcher(gate, max_rows=5, max_wait_seconds=0)
    try:
        first = held(batcher, gate, pool, rows[0])
        futures = [pool.submit(batcher, rows[i : i + 2]) for i in range(1, 13, 2)]  # 6 x 2 rows
        oversized = pool.submit(batcher, rows[20:28])  # alone in its batch: 8 rows > 5
        queued(batcher, 7)
        gate.open.set()
        for i, f in zip(range(1, 13, 2), futures, strict=True):
            assert same(f.result(timeout=30), model.predict_records(rows[i : i + 2]))
        assert same(oversized.result(timeout=30), model.predict_records(rows[20:28]))
        first.result(timeout=30)
    finally:
        batcher.close()
    assert gate.calls == [1, 4, 4, 4, 8], "requests are never split, batches stay within 5 rows"


def test_a_lone_request_does_not_wait_and_a_full_batch_goes_at_once(
    model: ServedModel, rows: list[dict[str, Any]], pool: ThreadPoolExecutor
) -> None:
    """With a wait longer than the test may take, a lone request and a batch that reached its
    row limit are still answered: neither waits for company."""
    gate = Gate(model)
    gate.open.set()
    batcher = Batcher(gate, max_rows=4, max_wait_seconds=FOREVER)
    try:
        assert same(
            pool.submit(batcher, rows[:1]).result(timeout=30), model.predict_records(rows[:1])
        )
        gate.entered.clear()
        gate.open.clear()
        gate.calls.clear()
        first = held(batcher, gate, pool, rows[0])
        futures = [pool.submit(batcher, [row]) for row in rows[1:5]]
        queued(batcher, 4)
        gate.open.set()
        for row, f in zip(rows[1:5], futures, strict=True):
            assert same(f.result(timeout=30), model.predict_records([row]))
        first.result(timeout=30)
    finally:
        batcher.close()
    assert gate.calls == [1, 4]


def test_a_lone_request_calls_the_model_on_its_own_thread_and_a_busy_model_batches(
    model: ServedModel, rows: list[dict[str, Any]], pool: ThreadPoolExecutor
) -> None:
    """No hand-over for a request that finds the model idle: its own thread calls it. Requests
    that find it busy go to the batcher's thread, which waits for the lone call to end and
    never calls the model beside it."""
    threads: list[str] = []
    inside = threading.Semaphore(1)  # a second call while one runs finds it taken

    def predict(records: list[dict[str, Any]]) -> Answers:
        assert inside.acquire(blocking=False), "two model calls at once"
        try:
            threads.append(threading.current_thread().name)
            return gate(records)
        finally:
            inside.release()

    gate = Gate(model)
    batcher = Batcher(predict, max_rows=64, max_wait_seconds=0)
    try:
        first = pool.submit(lambda: (threading.current_thread().name, batcher(rows[:1])))
        assert gate.entered.wait(30)
        futures = [pool.submit(batcher, [row]) for row in rows[1:6]]
        queued(batcher, 5)
        gate.open.set()
        caller, answers = first.result(timeout=30)
        for row, f in zip(rows[1:6], futures, strict=True):
            assert same(f.result(timeout=30), model.predict_records([row]))
    finally:
        batcher.close()
    assert same(answers, model.predict_records(rows[:1]))
    assert threads == [caller, "mlops-batcher"], "the lone call on its caller, then one batch"
    assert gate.calls == [1, 5]


def test_an_event_loop_submission_never_runs_the_model_on_its_own_thread(
    model: ServedModel, rows: list[dict[str, Any]]
) -> None:
    """``submit(here=False)`` (the server's event loop) finds the model idle and still hands the
    rows to the batcher's thread: the caller gets a future at once and never calls the model."""
    threads: list[str] = []

    def predict(records: list[dict[str, Any]]) -> Answers:
        threads.append(threading.current_thread().name)
        return model.predict_records(records)

    batcher = Batcher(predict, max_rows=64, max_wait_seconds=0)
    try:
        idle = batcher.submit(rows[:1])  # a worker thread's call: answered here, done at once
        assert idle.done() and threads == [threading.current_thread().name]
        loop = batcher.submit(rows[1:3], here=False)
        assert same(loop.result(timeout=30), model.predict_records(rows[1:3]))
    finally:
        batcher.close()
    assert threads[1:] == ["mlops-batcher"], "the event loop's rows went to the batcher's thread"


def test_a_request_cancelled_while_queued_is_left_out_and_the_batcher_goes_on(
    model: ServedModel, rows: list[dict[str, Any]], pool: ThreadPoolExecutor
) -> None:
    """A caller that goes away (its asyncio task cancelled, which cancels the future) is not
    predicted for, and setting no answer on its cancelled future keeps the thread alive."""
    gate = Gate(model)
    batcher = Batcher(gate, max_rows=64, max_wait_seconds=0)
    try:
        first = held(batcher, gate, pool, rows[0])
        gone = batcher.submit(rows[1:4], here=False)
        kept = batcher.submit(rows[4:6], here=False)
        queued(batcher, 2)
        assert gone.cancel()
        gate.open.set()
        assert same(kept.result(timeout=30), model.predict_records(rows[4:6]))
        first.result(timeout=30)
        after = batcher.submit(rows[6:7], here=False)  # the thread still answers
        assert same(after.result(timeout=30), model.predict_records(rows[6:7]))
    finally:
        batcher.close()
    assert gate.calls == [1, 2, 1], "the cancelled request's 3 rows never reached the model"


def test_a_request_that_breaks_the_model_fails_alone(
    model: ServedModel, rows: list[dict[str, Any]], pool: ThreadPoolExecutor
) -> None:
    gate = Gate(model)
    batcher = Batcher(gate, max_rows=64, max_wait_seconds=0)
    poison = rows[3] | {"color": "poison"}
    try:
        first = held(batcher, gate, pool, rows[0])
        good = [pool.submit(batcher, [row]) for row in rows[1:3]]
        bad = pool.submit(batcher, [rows[4], poison])
        later = pool.submit(batcher, rows[5:7])
        queued(batcher, 4)
        gate.open.set()
        with pytest.raises(ValueError, match="cannot read color 'poison'"):
            bad.result(timeout=30)
        for row, f in zip(rows[1:3], good, strict=True):
            assert same(f.result(timeout=30), model.predict_records([row]))
        assert same(later.result(timeout=30), model.predict_records(rows[5:7]))
        first.result(timeout=30)
    finally:
        batcher.close()
    assert gate.calls == [1, 6, 1, 1, 2, 2], "the failed batch was answered request by request"


def test_close_answers_what_was_queued_then_stops(
    model: ServedModel, rows: list[dict[str, Any]], pool: ThreadPoolExecutor
) -> None:
    gate = Gate(model)
    batcher = Batcher(gate, max_rows=64, max_wait_seconds=0)
    first = held(batcher, gate, pool, rows[0])
    pending = pool.submit(batcher, rows[1:3])
    queued(batcher, 1)
    closing = pool.submit(batcher.close)
    queued(batcher, 2)  # the stop is queued behind the request
    gate.open.set()
    closing.result(timeout=30)
    assert same(pending.result(timeout=30), model.predict_records(rows[1:3]))
    first.result(timeout=30)
    assert not batcher._thread.is_alive()


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_rows >= 1"):
        Batcher(lambda records: Answers([]), max_rows=0, max_wait_seconds=0)
