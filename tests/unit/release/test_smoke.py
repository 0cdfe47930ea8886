"""The release's smoke test compares a served answer with the in-process one per problem type:
class names exactly and probabilities per class; numbers to a round trip's precision."""

from __future__ import annotations

from typing import Any

import pytest

from mlops.release.smoke import KnownBatch, answer_differences

pytestmark = pytest.mark.unit

ROWS: list[dict[str, Any]] = [{"a": 1}, {"a": 2}]
CLASSIFIER = KnownBatch(
    "m", 1, "multiclass", ROWS, ["low", "high"], ["low", "mid", "high"],
    [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]],
)  # fmt: skip
REGRESSION = KnownBatch("m", 1, "regression", ROWS, [12.5, 1e6 / 3])


def served(batch: KnownBatch, **change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"problem": batch.problem, "predictions": list(batch.predictions)}
    if batch.classes is not None:
        body |= {"classes": list(batch.classes), "probabilities": batch.probabilities}
    return body | change


def test_the_same_answers_pass() -> None:
    assert answer_differences(served(CLASSIFIER), CLASSIFIER) == []
    # a JSON round trip of a large number: a relative tolerance, not an absolute one
    assert (
        answer_differences(served(REGRESSION, predictions=[12.5, 333333.3333333333]), REGRESSION)
        == []
    )


@pytest.mark.parametrize(
    ("batch", "change", "fragment"),
    [
        (CLASSIFIER, {"problem": "binary"}, "problem 'binary', not 'multiclass'"),
        (CLASSIFIER, {"predictions": ["low", "mid"]}, "row 1: predicted 'mid', in process 'high'"),
        (CLASSIFIER, {"predictions": ["low"]}, "for 2 rows"),
        (CLASSIFIER, {"classes": ["low", "high", "mid"]}, "classes ['low', 'high', 'mid']"),
        (CLASSIFIER, {"probabilities": [[0.7, 0.2, 0.1], [0.1, 0.31, 0.59]]}, "row 1: probabilities"),
        (CLASSIFIER, {"probabilities": [[0.7, 0.3], [0.4, 0.6]]}, "row 0: probabilities"),
        (CLASSIFIER, {"probabilities": None}, "probabilities None for 2 rows"),
        (REGRESSION, {"predictions": [12.5, 333333.4]}, "row 1: predicted 333333.4"),
        (REGRESSION, {"predictions": ["12.5", 333333.3333333333]}, "row 0: predicted '12.5'"),
    ],
)  # fmt: skip
def test_a_different_answer_is_named(
    batch: KnownBatch, change: dict[str, Any], fragment: str
) -> None:
    problems = answer_differences(served(batch, **change), batch)
    assert any(fragment in p for p in problems), problems
