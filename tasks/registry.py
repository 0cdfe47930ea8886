"""Registry steps: register, resolve, alias and load model versions (MLflow)."""

from __future__ import annotations

from mlops.adapters import registry
from mlops.core.retries import only_connection_errors
from tasks import step

find_model_version = step(
    registry.find_model_version,
    name="find-model-version",
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=only_connection_errors,
)
register_model_version = step(registry.register_model_version, name="register-model-version")
resolve_model_version = step(registry.resolve_model_version, name="resolve-model-version")
set_model_alias = step(registry.set_model_alias, name="set-model-alias")
load_model_version = step(
    registry.load_model_version,
    name="load-model-version",
    retries=1,
    retry_condition_fn=only_connection_errors,
)
