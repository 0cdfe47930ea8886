"""The data contract: each kind of breach is named with its column, check and rows; good data passes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlops.core.config import ColumnContract, DataContract, load_pipeline_config
from mlops.core.errors import DataContractError
from mlops.ml.contract import check_contract
from tests.helpers import EXAMPLE, adult_frame

pytestmark = pytest.mark.unit

CONTRACT = load_pipeline_config(EXAMPLE / "pipeline.yaml").contract


def _as_read(frame: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    """Round-trip through CSV as the load step reads it ("?" is missing)."""
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return pd.read_csv(path, na_values=["?"])


def _breach(frame: pd.DataFrame, tmp_path: Path) -> DataContractError:
    with pytest.raises(DataContractError) as info:
        check_contract(
            _as_read(frame, tmp_path), CONTRACT, "data/adult.csv@test", tmp_path / "report"
        )
    return info.value


def test_the_example_data_passes_and_gets_the_contract_dtypes(tmp_path: Path) -> None:
    out = check_contract(_as_read(adult_frame(), tmp_path), CONTRACT, "x", tmp_path / "r")
    assert list(out.columns) == list(CONTRACT.columns)
    assert out["age"].dtype == "int64" and out["sex"].dtype == object
    assert out["workclass"].isna().any(), "'?' must arrive as missing"
    assert not (tmp_path / "r").exists(), "no report for good data"


def test_missing_column_is_named(tmp_path: Path) -> None:
    err = _breach(adult_frame().drop(columns=["education_num"]), tmp_path)
    assert "education_num:missing_column" in str(err)
    assert "| education_num | missing_column | 1 |" in err.report.read_text()


def test_extra_column_is_refused_by_the_strict_contract(tmp_path: Path) -> None:
    err = _breach(adult_frame().assign(ssn="123"), tmp_path)
    assert "ssn:unexpected_column" in str(err)


def test_wrong_type_names_the_rows(tmp_path: Path) -> None:
    frame = adult_frame()
    frame.loc[[3, 7], "age"] = ["forty", "3x"]
    err = _breach(frame, tmp_path)
    report = err.report.read_text()
    assert "| age | int_values | 2 |" in report
    assert "`forty`" in report and "3, 7" in report
    assert err.failed_rows is not None
    rows = pd.read_csv(err.failed_rows)
    assert sorted(rows["row"]) == [3, 7]
    assert rows["failed_checks"].str.contains("age:int_values").all()


def test_fraction_in_an_int_column_is_refused(tmp_path: Path) -> None:
    frame = adult_frame()
    frame.loc[5, "hours_per_week"] = "40.5"
    err = _breach(frame, tmp_path)
    assert "hours_per_week:whole_numbers" in str(err)


def test_out_of_range_values_are_named(tmp_path: Path) -> None:
    frame = adult_frame()
    frame.loc[[1, 2, 9], "age"] = ["-4", "250", "300"]
    err = _breach(frame, tmp_path)
    report = err.report.read_text()
    assert "| age | in_range[17.0, 100.0] | 3 |" in report
    assert "`250`" in report


def test_nulls_where_the_contract_forbids_them(tmp_path: Path) -> None:
    frame = adult_frame()
    frame.loc[4, "sex"] = "?"
    err = _breach(frame, tmp_path)
    assert "sex:not_nullable" in str(err)


def test_unknown_categories_within_tolerance_pass(tmp_path: Path) -> None:
    frame = adult_frame(1500)
    frame.loc[range(10), "occupation"] = "Astronaut"  # 0.7 % < 1 % tolerance
    out = check_contract(_as_read(frame, tmp_path), CONTRACT, "x", tmp_path / "r")
    assert (out["occupation"] == "Astronaut").sum() == 10


def test_unknown_categories_beyond_tolerance_fail_with_every_row(tmp_path: Path) -> None:
    frame = adult_frame(1500)
    frame.loc[range(30), "occupation"] = "Astronaut"  # 2 % > 1 % tolerance
    err = _breach(frame, tmp_path)
    assert "occupation:known_categories(tolerance=0.01)" in str(err)
    assert err.failed_rows is not None
    assert len(pd.read_csv(err.failed_rows)) == 30


def test_too_few_rows(tmp_path: Path) -> None:
    err = _breach(adult_frame(20), tmp_path)
    assert "at_least_1000_rows" in str(err)
    assert err.failed_rows is None, "a table-level failure has no failing rows"


def test_several_breaches_are_all_reported_at_once(tmp_path: Path) -> None:
    frame = adult_frame().drop(columns=["fnlwgt"])
    frame.loc[0, "age"] = "old"
    frame.loc[1, "race"] = "Martian"
    frame.loc[range(2, 40), "race"] = "Martian"
    err = _breach(frame, tmp_path)
    for expected in ("fnlwgt:missing_column", "age:int_values", "race:known_categories"):
        assert expected in str(err)
    cases = pd.read_csv(err.report.parent / "failure-cases.csv")
    assert {"column", "check", "failure_case", "index"} <= set(cases.columns)


def test_category_codes_read_as_numbers_are_checked_as_their_text(tmp_path: Path) -> None:
    """A CSV holding a category as codes (1, 2; 1.0 where pandas read a gap) meets a contract
    whose values are "1" and "2"; a code outside them is still refused."""
    contract = DataContract(
        min_rows=1,
        columns={
            "sex": ColumnContract(type="category", values=("1", "2"), nullable=True),
            "age": ColumnContract(type="int", min=0, max=120),
        },
    )
    codes = pd.DataFrame({"sex": [1.0, 2.0, None], "age": [30, 40, 50]})
    valid = check_contract(codes, contract, "codes", tmp_path)
    assert valid["sex"].tolist()[:2] == ["1", "2"] and pd.isna(valid["sex"].iloc[2])
    with pytest.raises(DataContractError, match=r"sex:known_categories"):
        check_contract(codes.assign(sex=[1, 3, 2]), contract, "codes", tmp_path)


def test_a_dataset_with_its_own_row_column_gets_its_failure_report(tmp_path: Path) -> None:
    """The failing-rows table puts the row number and the failed checks in front: a dataset
    with columns of those names keeps them (the report crashed: "cannot insert row")."""
    contract = DataContract(
        min_rows=1,
        columns={
            "row": ColumnContract(type="int", min=0, max=10),
            "failed_checks": ColumnContract(type="int", min=0, max=10),
        },
    )
    bad = pd.DataFrame({"row": [1, 99], "failed_checks": [2, 3]})
    with pytest.raises(DataContractError, match=r"row:in_range") as err:
        check_contract(bad, contract, "own-row", tmp_path)
    assert err.value.failed_rows is not None
    table = pd.read_csv(err.value.failed_rows)
    assert list(table.columns) == ["_row", "_failed_checks", "row", "failed_checks"]
    assert table["row"].tolist() == [99] and table["_row"].tolist() == [1]
