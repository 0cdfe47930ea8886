"""What every `mlops` command does at the edge: settings, the stack check, the project's flows,
and a failure reported as one line."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from mlops.core.errors import MlopsError
from mlops.core.settings import Settings


def settings() -> Settings:
    """Settings for this command, with the stack's environment applied before Prefect is imported."""
    from mlops.stack.local import service_env

    try:
        found = Settings()
    except ValidationError as exc:  # each problem on a line, no traceback (and no value given)
        for error in exc.errors():
            where = "_".join(str(part) for part in error["loc"]).upper()
            message = error["msg"].removeprefix("Value error, ")
            typer.secho(
                f"error: {f'MLOPS_{where}: ' if where else ''}{message}", fg="red", err=True
            )
        raise typer.Exit(2) from None
    os.environ.update(service_env(found))
    return found


def fail(exc: BaseException) -> typer.Exit:
    """Print ``exc`` as the command's one error line; raise the exit this returns."""
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


@contextmanager
def reported(*errors: type[BaseException]) -> Iterator[None]:
    """Turn ``errors`` (default: MlopsError) raised inside into the one-line failure of ``fail``."""
    caught = errors or (MlopsError,)
    try:
        yield
    except caught as exc:
        raise fail(exc) from None


class _WithoutTraceback(logging.Formatter):
    """Formats a copy of each record without its exception: the message line alone."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info, bare.exc_text, bare.stack_info = None, None, None
        return self.inner.format(bare)


def one_line_failures() -> None:
    """Print a failed flow's reason alone (``fail``): Prefect's console handler would print its
    traceback first. Call after Prefect is imported; the Prefect UI keeps the traceback (its API
    log handler is left as it is)."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()  # else the flow's first run configures it, after this
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(handler, PrefectConsoleHandler) and formatter is not None:
            handler.setFormatter(
                formatter
                if isinstance(formatter, _WithoutTraceback)
                else _WithoutTraceback(formatter)
            )


def need_stack(settings: Settings) -> None:
    """Raise a MlopsError saying to run `mlops up` unless the Prefect and MLflow servers answer."""
    from mlops.stack.processes import healthy

    down = [
        name
        for name, url in (
            ("Prefect server", f"{settings.prefect_api_url}/health"),
            ("MLflow server", f"{settings.mlflow_tracking_uri}/health"),
        )
        if not healthy(url)
    ]
    if down:
        raise MlopsError(
            f"{' and '.join(down)} not answering ({settings.prefect_api_url}, "
            f"{settings.mlflow_tracking_uri}); start the local stack with `mlops up`"
        )


def project_object(settings: Settings, entrypoint: str) -> Any:
    """The object at ``entrypoint`` of the project folder (``flows/training.py:training``, spelled
    as prefect.yaml spells it): the project layer is not installed, so it is imported from there."""
    path, name = entrypoint.rsplit(":", 1)
    if not (settings.project_dir / path).is_file():
        raise MlopsError(
            f"{path} is not in the project folder {settings.project_dir} (MLOPS_PROJECT_DIR); "
            "run `mlops` in the project, or point MLOPS_PROJECT_DIR at it"
        )
    root = str(settings.project_dir)
    if root not in sys.path:
        # Its modules import one another from the project root (`from tasks.data import ...`).
        sys.path.insert(0, root)
    # By module name, not by file as a deployment's worker loads it: a file loaded by path is a
    # second copy of a module the flows also import by name (`from flows.release import ...`).
    # Not through Prefect's import_object either: it puts the working directory first on
    # sys.path, and a flows/ there would win over the project's.
    module = importlib.import_module(Path(path).with_suffix("").as_posix().replace("/", "."))
    return getattr(module, name)


def run_flow(
    settings: Settings,
    entrypoint: str,
    /,
    *,
    errors: tuple[type[BaseException], ...] = (),
    **parameters: Any,
) -> Any:
    """Run the project's flow at ``entrypoint`` in this process against the local stack and return
    its result; a failure (MlopsError, a failed gate, or ``errors``) is one error line and exit 1.

    Path parameters are passed as strings, as a deployment would pass them.
    """
    from prefect import Flow

    from mlops.ml.gates import GateFailed  # not at import: --help stays quick

    with reported(MlopsError, GateFailed, *errors):
        need_stack(settings)
        flow = project_object(settings, entrypoint)
        if not isinstance(flow, Flow):
            raise MlopsError(f"{entrypoint} is not a Prefect flow")
        one_line_failures()
        return flow(**{k: str(v) if isinstance(v, Path) else v for k, v in parameters.items()})
