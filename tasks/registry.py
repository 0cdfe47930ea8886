"""Registry steps: register, resolve, alias and load model versions (MLflow)."""

from __future__ import annotations

from prefect import get_run_logger

from mlops.adapters import registry
from mlops.adapters.mirrors import sync_mirrors
from mlops.core.settings import Settings
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


@step(name="sync-registry-mirrors")
def sync_registry_mirrors(settings: Settings, model: str) -> dict[str, list[str] | str]:
    """The registries that mirror MLflow's (settings' ``registry_mirrors``) made to say what
    MLflow says of the champion now; a mirror that fails is reported, never raised."""
    done = sync_mirrors(settings, model)
    logger = get_run_logger()
    for name, what in done.items():
        lines = [what] if isinstance(what, str) else what or ["in step already"]
        for line in lines:
            logger.info("registry mirror %s: %s", name, line)
    return done
