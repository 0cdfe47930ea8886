"""The auth settings: secrets from the environment or a mounted file, refused with the setting's
name when unusable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from mlops.core.settings import Settings
from mlops.stack.local import mlflow_auth_env, server_env, service_env

pytestmark = pytest.mark.unit


def test_a_secret_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "auth"
    secret.write_text("user:pass\n")
    settings = Settings(prefect_auth_string_file=secret, state_dir=tmp_path)
    assert settings.prefect_auth_string == SecretStr("user:pass")
    assert "user:pass" not in repr(settings)  # SecretStr: not in logs or tracebacks
    assert service_env(settings)["PREFECT_API_AUTH_STRING"] == "user:pass"
    assert "PREFECT_SERVER_API_AUTH_STRING" not in service_env(settings)  # the server's own
    assert server_env(settings, "prefect") == {"PREFECT_SERVER_API_AUTH_STRING": "user:pass"}


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("", {}, "MLOPS_PREFECT_AUTH_STRING_FILE=.*the file is empty"),
        (None, {}, "MLOPS_PREFECT_AUTH_STRING_FILE=.*cannot be read"),
        ("a:b", {"prefect_auth_string": "c:d"}, "MLOPS_PREFECT_AUTH_STRING and .*_FILE are both"),
    ],
)
def test_an_unusable_secret_file_is_named(
    tmp_path: Path, content: str | None, extra: dict[str, str], message: str
) -> None:
    secret = tmp_path / "auth"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(ValidationError, match=message):
        Settings(prefect_auth_string_file=secret, **extra)  # type: ignore[arg-type]


def test_a_short_mlflow_password_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValidationError, match="MLOPS_MLFLOW_PASSWORD: must be at least 12"):
        Settings(mlflow_password=SecretStr("short"))


def test_the_mlflow_auth_files_are_private_and_hold_no_password(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, mlflow_password=SecretStr("a-long-password"))
    env = mlflow_auth_env(settings)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "a-long-password"
    config = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert "a-long-password" not in config.read_text()
    assert "default_permission = NO_PERMISSIONS" in config.read_text()
    for name in ("basic_auth.ini", "auth.db", "flask-secret-key"):
        assert (tmp_path / "mlflow" / name).stat().st_mode & 0o077 == 0, name
    assert (
        mlflow_auth_env(settings)["MLFLOW_FLASK_SERVER_SECRET_KEY"]
        == env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    )  # static across restarts
