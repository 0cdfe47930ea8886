"""The release's smoke test compares a served answer with the in-process one per problem type:
class names exactly and probabilities per class; numbers to a round trip's precision."""

from __future__ import annotations

from typing import Any

import pytest

from mlops.release.smoke import KnownBatch, answer_differences, explanation_differences

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


def explained(
    batch: KnownBatch, space: str, outputs: list[str], values: list[list[float]]
) -> dict[str, Any]:
    """An /explain body whose rows add up to ``values`` (base 0.5 per output, the rest on "a")."""
    return {
        "space": space,
        "outputs": outputs,
        "explanations": [
            {
                "base_value": dict.fromkeys(outputs, 0.5),
                "output_value": dict(zip(outputs, row, strict=True)),
                "attributions": {o: {"a": v - 0.5} for o, v in zip(outputs, row, strict=True)},
            }
            for row in values
        ],
    }


def test_explanations_that_add_up_to_the_answers_pass_in_each_space() -> None:
    import math

    classes = ["low", "mid", "high"]
    logits = [[math.log(p) + 3.0 for p in row] for row in CLASSIFIER.probabilities or []]
    assert (
        explanation_differences(explained(CLASSIFIER, "logit", classes, logits), CLASSIFIER) == []
    )
    probabilities = CLASSIFIER.probabilities or []
    assert (
        explanation_differences(
            explained(CLASSIFIER, "probability", classes, probabilities), CLASSIFIER
        )
        == []
    )
    binary = KnownBatch(
        "m", 1, "binary", ROWS, ["no", "yes"], ["no", "yes"], [[0.8, 0.2], [0.3, 0.7]]
    )
    odds = [[math.log(0.2 / 0.8)], [math.log(0.7 / 0.3)]]
    assert explanation_differences(explained(binary, "log_odds", ["yes"], odds), binary) == []
    values = [[12.5], [1e6 / 3]]
    assert (
        explanation_differences(explained(REGRESSION, "value", ["value"], values), REGRESSION) == []
    )


def test_an_explanation_of_another_answer_or_that_does_not_add_up_is_named() -> None:
    values = [[12.5], [99.0]]
    problems = explanation_differences(
        explained(REGRESSION, "value", ["value"], values), REGRESSION
    )
    assert any(p.startswith("row 1: explains the output [99.0]") for p in problems), problems
    body = explained(REGRESSION, "value", ["value"], [[12.5], [1e6 / 3]])
    body["explanations"][0]["attributions"]["value"]["a"] += 1.0
    problems = explanation_differences(body, REGRESSION)
    assert problems == ["row 0: base and attributions add up to [13.5], not [12.5]"], problems
    short = explained(REGRESSION, "value", ["value"], [[12.5]])
    assert explanation_differences(short, REGRESSION)[0].startswith("explanations")
    wrong_space = explained(REGRESSION, "log_odds", ["value"], [[12.5], [1e6 / 3]])
    assert "an output space 'log_odds'" in explanation_differences(wrong_space, REGRESSION)[0]
