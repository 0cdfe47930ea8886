"""One spelling of a missing value for the model: NaN.

A table read back from Parquet, or built from JSON rows, holds ``None`` where a text value is
missing; a CSV read by pandas holds NaN. scikit-learn's imputers match NaN only, so a ``None``
reaches the encoder as a category of its own: the same row would get one answer in training and
another in serving (seen: a missing `workclass` imputed in training, one-hot all zeros when served).
Every frame that enters a model or a training set goes through ``missing_as_nan``.

And one order of the same rows: ``canonical_order``, for what must not depend on the order rows
arrived in (concurrent callers are answered in another order each time).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def missing_as_nan(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``None`` (and pandas' NA) in its object columns as NaN; other columns and
    values untouched. Returns the frame itself when no object column misses a value."""
    out = frame
    for name in frame.columns:
        column = frame[name]
        if column.dtype != object:
            continue
        missing = column.isna()
        if not missing.any():
            continue
        if out is frame:
            out = frame.copy()
        out[name] = column.where(~missing, np.nan)
    return out


def canonical_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows sorted by a hash of their values (identical rows are interchangeable), so the same
    rows give the same frame, the same file and its md5, the same seeded sample, whatever order
    they came in."""
    key = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return frame.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)
