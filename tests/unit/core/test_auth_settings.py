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


def test_a_settings_error_names_the_problem_never_the_values_given() -> None:
    """pydantic's error repeats every input by default: the password with the complaint."""
    with pytest.raises(ValidationError) as raised:
        Settings(mlflow_password=SecretStr("short-pw"), database_url="postgresql://u:pg-pw@db")  # type: ignore[arg-type]
    assert "at least 12" in str(raised.value)
    assert "short-pw" not in str(raised.value) and "pg-pw" not in str(raised.value)


def test_one_database_url_gives_each_server_its_own_database_and_driver(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, database_url="postgresql://team:p%40ss@db:5433")  # type: ignore[arg-type]
    assert settings.server_database("prefect") == "postgresql+asyncpg://team:p%40ss@db:5433/prefect"
    assert settings.server_database("mlflow") == "postgresql+psycopg://team:p%40ss@db:5433/mlflow"
    assert server_env(settings, "prefect")["PREFECT_API_DATABASE_CONNECTION_URL"].endswith(
        "/prefect"
    )
    mlflow = server_env(settings, "mlflow")
    assert mlflow["MLFLOW_BACKEND_STORE_URI"] == settings.server_database("mlflow")
    own = Settings(
        state_dir=tmp_path,
        database_url="postgresql://team:x@db",  # type: ignore[arg-type]
        prefect_database_url="postgresql+asyncpg://other@elsewhere/p",  # type: ignore[arg-type]
    )
    assert own.server_database("prefect") == "postgresql+asyncpg://other@elsewhere/p"
    assert Settings(state_dir=tmp_path).server_database("mlflow") is None  # SQLite


def test_on_a_shared_database_mlflows_users_live_beside_its_runs(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        database_url="postgresql://team:100%25@db",  # type: ignore[arg-type]
        mlflow_password=SecretStr("a-long-password"),
    )
    config = Path(mlflow_auth_env(settings)["MLFLOW_AUTH_CONFIG_PATH"])
    # configparser reads %% as one %: the URL MLflow gets is the one configured
    assert "database_uri = postgresql+psycopg://team:100%%25@db/mlflow" in config.read_text()
    assert not (tmp_path / "mlflow" / "auth.db").exists()
    assert config.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u:p@db:5432/mine", "names the database 'mine'"),
        ("mysql://u:p@db", "a PostgreSQL server's URL"),
        ("postgresql:///var/run", "names no host"),
    ],
)
def test_a_database_url_that_is_not_a_postgresql_server_is_refused(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(database_url=url)  # type: ignore[arg-type]


def test_a_stack_beyond_loopback_without_both_servers_auth_is_refused(tmp_path: Path) -> None:
    from mlops.core.errors import StackError
    from mlops.stack.local import check_shared

    check_shared(Settings(state_dir=tmp_path))  # one person's stack: no auth needed
    with pytest.raises(StackError, match=r"MLOPS_HOST=0\.0\.0\.0 .*MLOPS_PREFECT_AUTH_STRING and "):
        check_shared(Settings(state_dir=tmp_path, host="0.0.0.0"))
    with pytest.raises(StackError, match="set MLOPS_MLFLOW_PASSWORD \\("):
        check_shared(
            Settings(state_dir=tmp_path, host="10.0.0.5", prefect_auth_string=SecretStr("a:b"))
        )
    check_shared(
        Settings(
            state_dir=tmp_path,
            host="0.0.0.0",
            prefect_auth_string=SecretStr("a:b"),
            mlflow_password=SecretStr("a-long-password"),
        )
    )
    assert Settings(host="::1").local_only and Settings(host="localhost").local_only
    assert not Settings(host="team-box").local_only
