"""The dataset's bytes parsed as a table.

Reading the bytes of one exact version (DVC) is the adapter's (``mlops.adapters.dvc``); what
shapes the model is how they are parsed, here. The format is chosen by the file's name
(``mlops.core.config.data_format``): CSV, gzip-compressed CSV or Parquet. Whatever the format,
the same data contract judges the table afterwards, so a Parquet file's typed columns and a CSV
file's text end up as the same frame once the contract has conformed them.
"""

from __future__ import annotations

import gzip
import io
import zlib

import numpy as np
import pandas as pd

from mlops.core.config import data_format
from mlops.core.errors import ConfigError, DataLoadError


def parse_dataset(raw: bytes, source: str, na_values: tuple[str, ...] = ()) -> pd.DataFrame:
    """``raw`` (the bytes of ``source``) as a table, by the format ``source``'s name says; an
    empty or unreadable file, or an unknown format, is refused naming ``source``."""
    try:
        fmt = data_format(source)
    except ConfigError as exc:
        raise DataLoadError(str(exc)) from None
    if not raw.strip():
        raise DataLoadError(f"{source}: the file is empty")
    if fmt == "parquet":
        return _parquet(raw, source, na_values)
    if fmt == "csv.gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataLoadError(f"{source}: not a readable gzip file: {exc}") from None
        if not raw.strip():
            raise DataLoadError(f"{source}: the file is empty")
    try:
        return pd.read_csv(
            io.BytesIO(raw), na_values=list(na_values), keep_default_na=True, skipinitialspace=True
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataLoadError(f"{source}: not a readable CSV table: {exc}") from None


def _parquet(raw: bytes, source: str, na_values: tuple[str, ...]) -> pd.DataFrame:
    """A Parquet file's table; its text and category columns as plain values (what a CSV gives),
    with ``na_values`` read as missing there."""
    import pyarrow as pa

    try:
        frame = pd.read_parquet(io.BytesIO(raw))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataLoadError(f"{source}: not a readable Parquet file: {exc}") from None
    missing = set(na_values)
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(column):
            column = column.astype(object)
            frame[name] = column.where(~column.isin(missing) & column.notna(), np.nan)
    return frame
