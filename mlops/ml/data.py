"""The dataset's bytes parsed as a table.

Reading the bytes of one exact version (DVC) is the adapter's (``mlops.adapters.dvc``); what
shapes the model is how they are parsed, here.
"""

from __future__ import annotations

import io

import pandas as pd

from mlops.core.errors import DataLoadError


def parse_dataset(raw: bytes, source: str, na_values: tuple[str, ...] = ()) -> pd.DataFrame:
    """``raw`` (the bytes of ``source``) as a CSV table; an empty or unreadable file is refused."""
    if not raw.strip():
        raise DataLoadError(f"{source}: the file is empty")
    try:
        return pd.read_csv(
            io.BytesIO(raw), na_values=list(na_values), keep_default_na=True, skipinitialspace=True
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataLoadError(f"{source}: not a readable CSV table: {exc}") from None
