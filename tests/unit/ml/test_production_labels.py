"""Labelled production rows per problem type: labels back in the dataset's own values (from the
log's class names, the 0/1 of binary logs older than problem types, or numbers), and what the
recent labels look like (class shares or value quantiles) for the canary of a retrained model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops.core.config import PipelineConfig, load_pipeline_config
from mlops.ml import production_data
from mlops.ml.monitoring import Window
from mlops.ml.prediction_shift import quantile_cdf
from mlops.ml.problems import problem_for
from mlops.ml.production_data import (
    RECENT_ROWS,
    ProductionData,
    collect_production_data,
    labelled_rows,
    recent_labels,
)
from tests.helpers import EXAMPLE

pytestmark = pytest.mark.unit

ADULT = load_pipeline_config(EXAMPLE / "pipeline.yaml")


def _config(root: Path, target: dict[str, Any], column: dict[str, Any]) -> PipelineConfig:
    """A one-feature pipeline whose target ``y`` has the contract ``column``."""
    contract = {"version": 1, "min_rows": 1, "columns": {"x": {"type": "float"}, "y": column}}
    pipeline = {
        "name": "t", "model_name": "t", "experiment": "t",
        "data": {"path": "data/t.csv", "contract": "contract.yaml"},
        "target": {"column": "y", **target}, "features": {"numeric": ["x"]},
        "model": {"family": "random_forest"}, "policy": "policy.yaml",
    }  # fmt: skip
    (root / "contract.yaml").write_text(yaml.safe_dump(contract))
    (root / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    return load_pipeline_config(root / "pipeline.yaml")


def _window(labels: list[Any], predictions: list[Any] | None = None) -> Window:
    """Served rows of one feature ``x`` (oldest first) with the labels that arrived for them."""
    n = len(labels)
    start = datetime.now(UTC) - timedelta(hours=1)
    rows = pd.DataFrame(
        {
            "request_id": [f"{i:032x}" for i in range(n)],
            "row": 0,
            "time": [start + timedelta(seconds=i) for i in range(n)],
            "version": 1,
            "prediction": predictions if predictions is not None else labels,
            "x": np.arange(n, dtype="float64"),
            "label": pd.Series(labels, dtype=object),
        }
    )
    return Window(None, datetime.now(UTC), rows)


def test_binary_labels_come_back_as_class_names_from_new_and_old_logs() -> None:
    """Class names (new logs) and 0/1 (logs written before problem types) in one window: both
    become the dataset's values, so the contract keeps every row."""
    base = pd.read_csv(EXAMPLE / "adult.csv.gz", na_values=["?"], nrows=40).dropna().head(6)
    rows = base[ADULT.features.columns].reset_index(drop=True)
    labels: list[Any] = [">50K", "<=50K", 1, 0, ">50K", 0]
    start = datetime.now(UTC) - timedelta(hours=1)
    window = Window(
        None,
        datetime.now(UTC),
        rows.assign(
            request_id=[f"{i:032x}" for i in range(6)],
            row=0,
            time=[start + timedelta(seconds=i) for i in range(6)],
            label=pd.Series(labels, dtype=object),
        ),
    )
    frame = labelled_rows(window, ADULT)
    assert list(frame["income"]) == [">50K", "<=50K", ">50K", "<=50K", ">50K", "<=50K"]
    assert list(frame.columns) == [*ADULT.features.columns, "income", "request_id"]


def test_binary_rows_meet_the_contract_and_hand_over_the_recent_class_shares(
    tmp_path: Path,
) -> None:
    base = pd.read_csv(EXAMPLE / "adult.csv.gz", na_values=["?"], nrows=60).dropna().head(20)
    rows = base[ADULT.features.columns].reset_index(drop=True)
    labels: list[Any] = [">50K"] * 5 + [0] * 10 + ["<=50K"] * 4 + ["no such class"]
    start = datetime.now(UTC) - timedelta(hours=1)
    window = Window(
        None,
        datetime.now(UTC),
        rows.assign(
            request_id=[f"{i:032x}" for i in range(20)],
            row=0,
            time=[start + timedelta(seconds=i) for i in range(20)],
            label=pd.Series(labels, dtype=object),
        ),
    )
    collected = collect_production_data(window, ADULT, tmp_path / "rows.parquet")
    assert collected.kept == 19 and collected.rejected.count == 1
    assert collected.rejected.examples[0]["income"] == "no such class"  # named, as it came
    assert collected.data is not None
    expected = collected.data.expected
    assert expected.shares == pytest.approx({"<=50K": 14 / 19, ">50K": 5 / 19})
    assert expected.rows == 19 and not expected.quantiles
    written = pd.read_parquet(collected.data.path)
    assert set(written["income"]) == {">50K", "<=50K"}


def test_the_same_rows_in_another_arrival_order_give_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent callers are answered in a different order each run: the collected file (and so
    the split and the model trained on it) must not depend on it. The recent labels still come
    from the newest arrivals."""
    base = pd.read_csv(EXAMPLE / "adult.csv.gz", na_values=["?"], nrows=400).dropna().head(300)
    rows = base[ADULT.features.columns].reset_index(drop=True)
    labels = base["income"].reset_index(drop=True)
    start = datetime.now(UTC) - timedelta(hours=1)

    def collected(order: np.ndarray, name: str) -> ProductionData:
        window = Window(
            None,
            datetime.now(UTC),
            rows.iloc[order]
            .reset_index(drop=True)
            .assign(
                request_id=[f"{i:032x}" for i in order],
                row=0,
                time=[start + timedelta(seconds=i) for i in range(len(order))],
                label=labels.iloc[order].to_numpy(),
            ),
        )
        data = collect_production_data(window, ADULT, tmp_path / name).data
        assert data is not None
        return data

    arrived = collected(np.arange(300), "a.parquet")
    shuffled = np.random.default_rng(7).permutation(300)
    again = collected(shuffled, "b.parquet")
    assert arrived.md5 == again.md5
    pd.testing.assert_frame_equal(pd.read_parquet(arrived.path), pd.read_parquet(again.path))
    # the newest labels are the last to arrive, not the last of the file's order
    monkeypatch.setattr(production_data, "RECENT_ROWS", 50)
    rich_last = np.argsort((labels == ">50K").to_numpy(), kind="stable")
    newest = collected(rich_last, "c.parquet")
    assert newest.expected.rows == 50 and newest.expected.shares[">50K"] == 1.0
    assert pd.read_parquet(newest.path)["income"].tail(50).eq(">50K").mean() < 1.0


def test_multiclass_labels_keep_their_names_and_the_shares_cover_every_class(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path, {}, {"type": "category", "values": ["a", "b", "c"]})
    assert cfg.target.kind == "multiclass"
    window = _window(["a", "b", "b", "a", "a", "a"])
    frame = labelled_rows(window, cfg)
    assert list(frame["y"]) == ["a", "b", "b", "a", "a", "a"]
    expected = recent_labels(frame, problem_for(cfg.target))
    assert expected.shares == pytest.approx({"a": 4 / 6, "b": 2 / 6, "c": 0.0})


def test_a_bool_target_comes_back_as_true_and_false(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {}, {"type": "bool"})
    assert cfg.target.kind == "binary" and cfg.target.classes == ("False", "True")
    frame = labelled_rows(_window(["True", "False", 1]), cfg)
    assert list(frame["y"]) == [True, False, True]
    assert all(isinstance(v, bool) for v in frame["y"])


def test_regression_labels_are_numbers_and_the_recent_ones_give_their_deciles(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path, {}, {"type": "float", "min": 0})
    assert cfg.target.kind == "regression"
    rng = np.random.default_rng(3)
    old = rng.normal(100, 5, 500)  # before the world changed
    new = rng.normal(150, 10, RECENT_ROWS)  # the most recent labels
    labels = [*old, *new]
    collected = collect_production_data(_window(labels), cfg, tmp_path / "rows.parquet")
    assert collected.data is not None and collected.kept == len(labels)
    written = pd.read_parquet(collected.data.path)
    assert written["y"].dtype == "float64"  # the rows in the file's order of their contents
    assert np.sort(written["y"].to_numpy()) == pytest.approx(np.sort(labels))
    expected = collected.data.expected
    assert expected.rows == RECENT_ROWS and not expected.shares and len(expected.quantiles) == 11
    assert expected.quantiles[0] == pytest.approx(new.min())  # the old labels play no part
    assert expected.quantiles[-1] == pytest.approx(new.max())
    assert expected.median == pytest.approx(np.median(new))
    assert quantile_cdf(expected.quantiles, 150.0) == pytest.approx(0.5, abs=0.03)


def test_a_label_that_is_no_number_is_left_out_by_the_contract(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {}, {"type": "float"})
    collected = collect_production_data(
        _window([1.5, "not a number", 2.5]), cfg, tmp_path / "rows.parquet"
    )
    assert collected.kept == 2 and collected.rejected.count == 1
    assert collected.data is not None and collected.data.expected.quantiles[0] == 1.5


def test_rows_of_a_model_that_reads_only_some_contract_columns_are_kept(tmp_path: Path) -> None:
    """The served rows hold the model's features and its label, never the dataset's other
    columns (the penguins' ``year``): the contract's rules for those columns judge them."""
    _config(tmp_path, {}, {"type": "float"})
    contract = yaml.safe_load((tmp_path / "contract.yaml").read_text())
    contract["columns"]["z"] = {"type": "int", "min": 2000}  # in the data, not a feature
    (tmp_path / "contract.yaml").write_text(yaml.safe_dump(contract))
    cfg = load_pipeline_config(tmp_path / "pipeline.yaml")
    collected = collect_production_data(_window([1.5, -2.0, 2.5]), cfg, tmp_path / "rows.parquet")
    assert collected.kept == 3 and collected.rejected.count == 0, collected.rejected.summary()
    assert collected.data is not None
    assert list(pd.read_parquet(collected.data.path).columns) == ["x", "y"]
