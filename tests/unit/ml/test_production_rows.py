"""Production rows judged one by one against the data contract (mlops.ml.contract.split_by_contract):
frame-level checks never refuse a row, a bad row is named with its failed check."""

from __future__ import annotations

import pandas as pd
import pytest

from mlops.core.config import load_pipeline_config
from mlops.ml.contract import split_by_contract
from tests.helpers import EXAMPLE

pytestmark = pytest.mark.unit

CONTRACT = load_pipeline_config(EXAMPLE / "pipeline.yaml").contract  # min_rows 1000


@pytest.fixture
def rows() -> pd.DataFrame:
    raw = pd.read_csv(EXAMPLE / "adult.csv.gz", na_values=["?"], nrows=12)
    return raw.dropna().reset_index(drop=True).head(8)


def test_a_few_good_rows_all_pass_despite_the_row_floor(rows: pd.DataFrame) -> None:
    verdict = split_by_contract(rows, CONTRACT, "production")
    assert len(verdict.kept) == len(rows) and verdict.checks == {}


def test_bad_rows_are_left_out_and_named(rows: pd.DataFrame) -> None:
    rows.loc[2, "age"] = -5
    rows.loc[5, "workclass"] = "Moon-base"  # the training contract tolerates 1 % unknowns
    verdict = split_by_contract(rows, CONTRACT, "production")
    assert list(verdict.kept.index) == [0, 1, 3, 4, 6, 7]
    assert verdict.checks == {
        "age:in_range[17.0, 100.0]": 1,
        "workclass:known_categories(tolerance=0)": 1,
    }
    assert verdict.failed_rows.loc[2, "failed_checks"] == "age:in_range[17.0, 100.0]"
    assert "| age | in_range[17.0, 100.0] | 1 | `-5` | 2 |" in verdict.report


def test_a_missing_column_refuses_every_row(rows: pd.DataFrame) -> None:
    verdict = split_by_contract(rows.drop(columns=["age"]), CONTRACT, "production")
    assert verdict.kept.empty and verdict.checks == {"age:missing_column": len(rows)}
