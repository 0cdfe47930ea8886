"""Typed errors: each names the problem and where it is, in words a user can act on."""

from __future__ import annotations

from pathlib import Path


class MlopsError(Exception):
    """Base of every error the product raises on purpose (the CLI prints these without a traceback)."""


class ConfigError(MlopsError):
    """A pipeline config, data contract or policy file is missing or malformed."""


class DataVersionError(MlopsError):
    """The requested data version cannot be resolved, or the bytes do not match their DVC record."""


class DataLoadError(MlopsError):
    """The dataset exists but cannot be read as a table."""


class DataContractError(MlopsError):
    """The dataset breaks its contract; ``report`` and ``failed_rows`` say where."""

    def __init__(self, message: str, report: Path, failed_rows: Path | None) -> None:
        super().__init__(message)
        self.report = report
        self.failed_rows = failed_rows


class StackError(MlopsError):
    """A local service cannot be started, reached or stopped."""
