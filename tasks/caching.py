"""Prefect cache policies of the expensive pipeline steps: which step, its code, its inputs.

Two things Prefect's stock policies do not do for us: TASK_SOURCE hashes only the decorated
function's own source, while our steps call helpers in other modules (feature builders, schema
builders), so ``PipelineCode`` keys on the ``mlops.ml`` code the step's module reaches
(``mlops.ml.fingerprint``); and INPUTS pickles what it cannot serialise as JSON, which a
DataFrame read back from the result store does to different bytes, so ``StableInputs`` keys on
contents (``mlops.ml.caching.stable_hash``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from mlops.core.integrity import is_own_package
from mlops.ml.caching import stable_hash
from mlops.ml.fingerprint import code_fingerprint


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
        # a user's factory named by a config among the inputs: its source is code of the step too
        own = tuple(
            m
            for v in inputs.values()
            if isinstance(m := getattr(v, "factory_module", None), str)
            and is_own_package(m.split(".")[0])
        )
        code = code_fingerprint(own, roots=(fn.__module__,))
        return hashlib.sha256(f"{fn.__module__}.{fn.__qualname__}:{code}".encode()).hexdigest()


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
