"""Registry steps: register, resolve, alias and load model versions (MLflow)."""

from __future__ import annotations

from mlops.adapters import registry
from tasks import on_connection_errors, step

find_model_version = step(
    registry.find_model_version,
    name="find-model-version",
    **on_connection_errors(1, 5),
)
register_model_version = step(registry.register_model_version, name="register-model-version")
resolve_model_version = step(registry.resolve_model_version, name="resolve-model-version")
set_model_alias = step(registry.set_model_alias, name="set-model-alias")
load_model_version = step(
    registry.load_model_version,
    name="load-model-version",
    **on_connection_errors(0),
)
