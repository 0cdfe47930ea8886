"""Missing values as NaN, whatever spelled them."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from mlops.core.frames import missing_as_nan

pytestmark = pytest.mark.unit


def test_none_from_a_parquet_round_trip_becomes_nan_and_other_values_stay() -> None:
    frame = pd.DataFrame({"c": ["a", np.nan, "b"], "n": [1, 2, 3], "f": [0.5, np.nan, 1.0]})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    back = pd.read_parquet(io.BytesIO(buffer.getvalue()))
    assert back["c"].iloc[1] is None  # what Parquet gives back
    fixed = missing_as_nan(back)
    assert fixed["c"].iloc[1] is not None and np.isnan(fixed["c"].iloc[1])
    assert fixed["c"].tolist()[::2] == ["a", "b"] and fixed["n"].dtype == np.int64
    assert back["c"].iloc[1] is None  # the caller's frame is not changed


def test_a_frame_with_nothing_missing_is_returned_as_it_is() -> None:
    frame = pd.DataFrame({"c": ["a", "b"], "n": [1, 2]})
    assert missing_as_nan(frame) is frame
