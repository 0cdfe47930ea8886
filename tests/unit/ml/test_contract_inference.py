"""A data contract inferred from a frame: types, nulls, ranges with margins, categories with a
tolerance; it accepts the data it came from and refuses a corrupted copy, naming the column."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.core.config import DataContract, load_yaml_model
from mlops.core.errors import DataContractError, DataLoadError
from mlops.ml.contract import check_contract
from mlops.ml.contract_inference import (
    CATEGORY_MAX_VALUES,
    UNKNOWN_TOLERANCE,
    infer_contract,
    widen,
)
from mlops.ml.data import parse_dataset

pytestmark = pytest.mark.unit

ROWS = 200


def _as_read(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame written as CSV and read back as training reads it."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return parse_dataset(buffer.getvalue().encode(), "test.csv")


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    temp = rng.uniform(-10.5, 30.25, ROWS).round(2)
    temp[[0, 1]] = [-10.5, 30.25]  # the observed range, exactly
    visits = rng.integers(1, 9, ROWS).astype(float)
    visits[5] = np.nan
    colour = rng.choice(["red", "green", "blue"], ROWS).astype(object)
    colour[7] = None
    flag = rng.choice([True, False], ROWS).astype(object)
    flag[9] = None
    return _as_read(
        pd.DataFrame(
            {
                "row_id": np.arange(ROWS),
                "count": np.r_[0, 50, rng.integers(0, 51, ROWS - 2)],
                "temp": temp,
                "visits": visits,
                "colour": colour,
                "member": rng.choice([True, False], ROWS),
                "flag": flag,
                "code": [f"c{i:04d}" for i in rng.permutation(ROWS)],
                "label": rng.choice(["yes", "no"], ROWS),
            }
        )
    )


FRAME = _frame()
INFERRED = infer_contract(FRAME, target="label")
COLUMNS = INFERRED.contract.columns


def test_each_column_gets_its_type_and_nulls_where_values_are_missing() -> None:
    types = {name: spec.type for name, spec in COLUMNS.items()}
    assert types == {
        "row_id": "int",
        "count": "int",
        "temp": "float",
        "visits": "int",  # whole numbers read as float because one is missing
        "colour": "category",
        "member": "bool",
        "flag": "bool",  # True/False read as objects because one is missing
        "code": "string",  # 200 distinct values: no category
        "label": "category",
    }
    assert {n for n, spec in COLUMNS.items() if spec.nullable} == {"visits", "colour", "flag"}
    assert INFERRED.column("row_id").identifier, (
        "a column of distinct whole numbers filling its range"
    )
    assert not INFERRED.column("count").identifier
    assert COLUMNS["colour"].values == ("blue", "green", "red")
    assert COLUMNS["colour"].unknown_tolerance == UNKNOWN_TOLERANCE
    assert COLUMNS["label"].unknown_tolerance == 0.0, "an unseen class of the target is refused"
    assert INFERRED.contract.min_rows == ROWS // 2


def test_ranges_are_widened_by_the_stated_share_and_floored_at_zero() -> None:
    # count: observed [0, 50], widened by 5 each side, floored at 0 (no negatives seen)
    assert (COLUMNS["count"].min, COLUMNS["count"].max) == (0, 55)
    # temp: observed [-10.5, 30.25], widened by 4.075 each side, rounded outward to 0.1
    assert (COLUMNS["temp"].min, COLUMNS["temp"].max) == (-14.6, 34.4)
    assert widen(10, 20, whole=True) == (9, 21)
    assert widen(-3, 3, whole=True) == (-4, 4), "a column with negatives is not floored"
    assert widen(5, 5, whole=True) == (4, 6), "a constant widens by a share of its value"
    lo, hi = widen(0.25, 0.75, whole=False)
    assert lo == 0.2 and hi == 0.8


def test_text_columns_are_categories_up_to_the_stated_cardinality() -> None:
    rows = 1000
    few = [f"v{i % CATEGORY_MAX_VALUES}" for i in range(rows)]
    many = [f"v{i % (CATEGORY_MAX_VALUES + 1)}" for i in range(rows)]
    sparse = [f"v{i % 30}" for i in range(40)]  # 30 values in 40 rows: names, not categories
    inferred = infer_contract(pd.DataFrame({"few": few, "many": many}))
    assert inferred.contract.columns["few"].type == "category"
    assert inferred.contract.columns["many"].type == "string"
    assert infer_contract(pd.DataFrame({"s": sparse})).contract.columns["s"].type == "string"
    target = infer_contract(pd.DataFrame({"s": sparse}), target="s").contract.columns["s"]
    assert target.type == "category", "the target keeps its classes whatever their number"


def test_the_contract_accepts_the_data_it_came_from(tmp_path: Path) -> None:
    out = check_contract(FRAME, INFERRED.contract, "test.csv", tmp_path / "report")
    assert len(out) == ROWS
    assert not (tmp_path / "report").exists()
    unseen = FRAME.copy()
    unseen.loc[3, "colour"] = "purple"  # one row in 200: within the tolerance
    check_contract(unseen, INFERRED.contract, "test.csv", tmp_path / "report")


@pytest.mark.parametrize(
    ("column", "values", "check"),
    [
        ("count", [1000], "count:in_range"),
        ("temp", [-80.0], "temp:in_range"),
        ("colour", ["purple"] * 5, "colour:known_categories"),  # 2.5 % of rows, over 1 %
        ("count", ["many"], "count:int_values"),
        ("member", ["maybe"], "member:bool_values"),
        ("visits", [2.5], "visits:whole_numbers"),
    ],
)
def test_a_corrupted_copy_is_refused_naming_the_column(
    tmp_path: Path, column: str, values: list[object], check: str
) -> None:
    corrupted = FRAME.copy()
    corrupted[column] = corrupted[column].astype(object)
    corrupted.loc[list(range(10, 10 + len(values))), column] = values
    with pytest.raises(DataContractError) as info:
        check_contract(_as_read(corrupted), INFERRED.contract, "copy.csv", tmp_path / "r")
    assert check in str(info.value), str(info.value)


def test_the_written_contract_loads_back_as_the_same_contract(tmp_path: Path) -> None:
    path = tmp_path / "contract.yaml"
    path.write_text(INFERRED.to_yaml("test.csv"))
    assert path.read_text().startswith("# Data contract inferred by `mlops init` from test.csv")
    assert load_yaml_model(path, DataContract) == INFERRED.contract


def test_the_summary_shows_each_column_with_its_type_range_and_nulls() -> None:
    lines = INFERRED.summary().splitlines()
    assert lines[0].split()[:4] == ["column", "type", "range", "/"]
    by_column = {line.split()[0]: line for line in lines[2:-1]}
    assert set(by_column) == set(FRAME.columns)
    assert "int" in by_column["count"] and "[0, 55]" in by_column["count"]
    assert "3 values: blue, green, red" in by_column["colour"]
    assert "yes (1 missing)" in by_column["colour"]
    assert "string" in by_column["code"] and "200 distinct values" in by_column["code"]
    assert lines[-1] == f"{ROWS} rows; the contract asks for at least {ROWS // 2}"


def test_an_empty_frame_is_refused() -> None:
    with pytest.raises(DataLoadError, match="no rows"):
        infer_contract(pd.DataFrame({"a": []}))
