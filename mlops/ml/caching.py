"""Content hashes for cache keys: equal values hash alike, whichever process or cache they come from.

Prefect hashes an input it cannot serialise as JSON by pickling it, and a DataFrame pickles to
different bytes after a round trip through the result store, so a step downstream of a cache hit
would miss. ``stable_hash`` hashes frames and arrays by content (``pandas.util.hash_pandas_object``),
configs by their JSON, and anything else with ``joblib.hash`` (what joblib.Memory keys on). The
cache policies that use it are Prefect's business and live in the project layer (tasks/caching.py);
the code side of a cache key is ``mlops.ml.fingerprint``.
"""

from __future__ import annotations

import hashlib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from pydantic import BaseModel


def stable_hash(obj: Any) -> str:
    """A content hash that is the same for equal values, whichever process or cache they come from."""
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    if isinstance(obj, pd.DataFrame):
        digest.update(b"frame")
        digest.update(repr([(str(c), str(t)) for c, t in obj.dtypes.items()]).encode())
        digest.update(pd.util.hash_pandas_object(obj, index=True).to_numpy().tobytes())
    elif isinstance(obj, pd.Series):
        digest.update(f"series:{obj.name}:{obj.dtype}".encode())
        digest.update(pd.util.hash_pandas_object(obj, index=True).to_numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        digest.update(f"array:{obj.dtype}:{obj.shape}".encode())
        if obj.dtype.hasobject:  # the buffer holds pointers: hash the elements
            _feed(digest, obj.ravel().tolist())
        else:
            digest.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, BaseModel):
        digest.update(f"{type(obj).__qualname__}:{obj.model_dump_json()}".encode())
    elif is_dataclass(obj) and not isinstance(obj, type):
        digest.update(type(obj).__qualname__.encode())
        for f in fields(obj):
            digest.update(f.name.encode())
            _feed(digest, getattr(obj, f.name))
    elif isinstance(obj, dict):
        for key in sorted(obj, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__}:{len(obj)}".encode())
        for item in obj:
            _feed(digest, item)
    elif isinstance(obj, type):
        digest.update(f"type:{obj.__module__}.{obj.__qualname__}".encode())
    elif obj is None or isinstance(obj, (str, int, float, bool, Path, np.generic)):
        digest.update(f"{type(obj).__name__}:{obj!r}".encode())
    else:
        # Estimators and other objects: by type and state, so a fitted model read back from the
        # result store hashes like the one that was stored.
        state = obj.__getstate__() if hasattr(obj, "__getstate__") else None
        if isinstance(state, dict):
            digest.update(f"{type(obj).__module__}.{type(obj).__qualname__}".encode())
            _feed(digest, state)
        else:
            digest.update(joblib.hash(obj).encode())
