"""The judgements read a million answers as arrays: the same readings as value by value."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops.ml.drift import _finite
from mlops.ml.monitoring import read_answers
from mlops.ml.problems import Problem

pytestmark = pytest.mark.unit

BINARY = Problem("binary", ("<=50K", ">50K"), "income")
MULTICLASS = Problem("multiclass", ("a", "b", "c"), "y")


def one_by_one(values: pd.Series, problem: Problem) -> list[int]:
    """What each value reads as, by the documented rule: a class name's index; in a binary log,
    0 and 1 as themselves; anything else -1."""

    def index(v: Any) -> int:
        if isinstance(v, str):
            return problem.classes.index(v) if v in problem.classes else -1
        if problem.kind == "binary" and isinstance(v, (int, float)) and v in (0, 1):
            return int(v)
        return -1

    return [index(v) for v in values]


@pytest.mark.parametrize("problem", [BINARY, MULTICLASS], ids=lambda p: p.kind)
@pytest.mark.parametrize(
    "values",
    [
        pd.Series([">50K", "<=50K", "c", "b"]),
        pd.Series([0, 1, 2]),
        pd.Series([0.0, 1.0, np.nan, 0.5]),
        pd.Series([True, False]),
        pd.Series([">50K", None, 1, "a"]),
        pd.Series(["a", pd.NA], dtype="string"),
        pd.Series([], dtype=object),
    ],
    ids=["names", "integers", "floats", "booleans", "mixed", "string-dtype", "empty"],
)
def test_answers_read_as_arrays_read_as_value_by_value(values: pd.Series, problem: Problem) -> None:
    codes, bad = read_answers(values, problem)
    expected = np.array(one_by_one(values, problem), dtype="int64")
    assert codes.dtype == np.int64 and bad.tolist() == (expected < 0).tolist()
    assert codes.tolist() == np.where(expected < 0, 0, expected).tolist()


@pytest.mark.parametrize(
    "values",
    [
        pd.Series([1.0, np.inf, np.nan, -np.inf, 2.0]),
        pd.Series([3, 1, 2]),
        pd.Series([1, None], dtype="Int64"),
        pd.Series(["a", None, np.inf, "b", np.nan]),
        pd.Series([True, False, None]),
    ],
)
def test_finite_values_are_those_neither_missing_nor_infinite(values: pd.Series) -> None:
    expected = values.replace([-np.inf, np.inf], np.nan).dropna()
    assert _finite(values).equals(expected) and list(_finite(values).index) == list(expected.index)
