"""Two training runs logging the same dataset at once: MLflow's SQL store looks the dataset up,
finds none, and the second insert meets the first's row (seen in benchmarks/shared_stack_load.py:
one of 25 concurrent training runs failed on it). The second try finds the row and links it."""

from __future__ import annotations

from typing import Any

import pytest
from mlflow.exceptions import MlflowException

from mlops.adapters import tracking

pytestmark = pytest.mark.unit

RACE = (
    "BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
    "datasets.name, datasets.digest"
)


def _calls(monkeypatch: pytest.MonkeyPatch, failures: list[Exception]) -> list[str]:
    calls: list[str] = []

    def log_input(dataset: Any, context: str) -> None:
        calls.append(context)
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(tracking.mlflow, "log_input", log_input)
    return calls


@pytest.mark.parametrize(
    "message",
    [RACE, 'psycopg.errors.UniqueViolation: duplicate key value violates unique constraint "x"'],
)
def test_a_dataset_another_run_inserted_meanwhile_is_linked_on_the_second_try(
    monkeypatch: pytest.MonkeyPatch, message: str
) -> None:
    calls = _calls(monkeypatch, [MlflowException(message)])
    tracking.log_input(object(), "training")
    assert calls == ["training", "training"]


def test_any_other_failure_is_the_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _calls(monkeypatch, [MlflowException("RESOURCE_DOES_NOT_EXIST: no run")])
    with pytest.raises(MlflowException, match="no run"):
        tracking.log_input(object(), "training")
    assert calls == ["training"]


def test_a_race_that_persists_is_not_retried_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _calls(monkeypatch, [MlflowException(RACE), MlflowException(RACE)])
    with pytest.raises(MlflowException, match="UNIQUE constraint"):
        tracking.log_input(object(), "holdout")
    assert calls == ["holdout", "holdout"]
