"""Release targets behind one interface (``base.ReleaseTarget``), chosen by name.

Each target is named by reference and imported only when chosen: the chooser imports no target,
so no target depends on the chooser, and a target's SDK (Kubernetes, boto3) loads for its own
releases only. Adding a target is one module and one entry here.
"""

from __future__ import annotations

import importlib

from mlops.core.settings import Settings
from mlops.release.targets.base import ReleaseTarget, TargetError

#: Target name (``ReleasePolicy.target``) -> ``module:class``, called with (settings, model).
TARGETS: dict[str, str] = {
    "local": "mlops.release.targets.local:LocalTarget",
    "kserve": "mlops.release.targets.kserve:KServeTarget",
    "gitops": "mlops.release.targets.gitops:GitOpsTarget",
    "lambda": "mlops.release.targets.aws_lambda:LambdaTarget",
    "seldon": "mlops.release.targets.seldon:SeldonTarget",
}


def make_target(kind: str, settings: Settings, model: str) -> ReleaseTarget:
    """The target named ``kind``; one without its settings is an error naming them."""
    reference = TARGETS.get(kind)
    if reference is None:
        raise TargetError(f"unknown release target {kind!r} (known: {', '.join(TARGETS)})")
    module, _, name = reference.partition(":")
    target: ReleaseTarget = getattr(importlib.import_module(module), name)(settings, model)
    return target
