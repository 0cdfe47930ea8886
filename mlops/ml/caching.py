"""Cache keys for pipeline steps, and code identity for caching and lineage.

Two things Prefect's stock policies do not do for us, written here by hand:

* Inputs: Prefect hashes an input it cannot serialise as JSON by pickling it, and a DataFrame
  pickles to different bytes after a round trip through the result store, so a step downstream of
  a cache hit would miss. ``stable_hash`` hashes frames and arrays by content
  (``pandas.util.hash_pandas_object``), configs by their JSON, and anything else with
  ``joblib.hash`` (what joblib.Memory keys on).
* Code:Prefect's TASK_SOURCE hashes only the decorated function's own source; our steps call
  helpers in other modules (feature builders, schema builders), so a change there must invalidate
  the cache too, while an edit to an unrelated module (the CLI, another flow) must not.
  ``code_fingerprint`` follows a module's imports (read with ``ast``, nothing executed) through the project's packages
and hashes the source files it reaches.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from pydantic import BaseModel

PROJECT_PACKAGES = ("mlops", "tasks", "flows")


def _origin(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports(module: str, path: Path) -> set[str]:
    """Project modules named by the import statements of one source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            # `from tasks import data` names a module too
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in PROJECT_PACKAGES and _origin(m) is not None}


@cache
def module_closure(module: str) -> tuple[Path, ...]:
    """Source files of ``module`` and of every project module it imports, transitively, sorted."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _origin(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imports(name, path) - seen.keys())
    return tuple(sorted(set(seen.values())))


@cache
def code_fingerprint(module: str) -> str:
    """sha256 over the source of ``module`` and the project modules it reaches."""
    digest = hashlib.sha256()
    for path in module_closure(module):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class PipelineCode(CachePolicy):
    """Keys a task run on which step it is and on the code its module reaches."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        fn = task_ctx.task.fn
        return hashlib.sha256(
            f"{fn.__module__}.{fn.__qualname__}:{code_fingerprint(fn.__module__)}".encode()
        ).hexdigest()


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


@dataclass
class StableInputs(CachePolicy):
    """Keys a task run on its inputs' contents (see ``stable_hash``)."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        return stable_hash(inputs)


#: The cache policy of an expensive pipeline step: which step, its code, its inputs' contents.
PIPELINE_CACHE = PipelineCode() + StableInputs()
