"""`mlops up` on a team's PostgreSQL server creates each server's database where missing
(mlops.stack.postgres.ensure_database), against a real server (a private cluster started here);
what it cannot do is said with the server and database, never the password."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlops.core.errors import StackError
from mlops.stack.postgres import PrivatePostgres, ensure_database, postgres_bin
from mlops.stack.processes import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(postgres_bin() is None, reason="needs PostgreSQL (.ci/run installs it)"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[PrivatePostgres]:
    started = PrivatePostgres(databases=()).start()
    try:
        yield started
    finally:
        started.stop()


def test_a_missing_database_is_created_once(server: PrivatePostgres) -> None:
    url = server.url("team_mlflow", driver="psycopg").replace("mlops@", "mlops:secret-pw@")
    assert ensure_database(url) is True
    assert ensure_database(url) is False  # there now: left as it is


def test_a_role_that_may_not_create_databases_is_told_what_to_do(server: PrivatePostgres) -> None:
    import psycopg

    admin = server.url("postgres").replace("postgresql+asyncpg", "postgresql")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE ROLE analyst LOGIN NOCREATEDB")
    url = f"postgresql+psycopg://analyst:secret-pw@{server.host}:{server.port}/theirs"
    with pytest.raises(StackError, match=r"cannot be created .*grant the role CREATEDB") as refused:
        ensure_database(url)
    assert f"{server.host}:{server.port}/theirs" in str(refused.value)
    assert "secret-pw" not in str(refused.value)


def test_a_server_that_does_not_answer_is_named() -> None:
    port = free_port()
    with pytest.raises(StackError, match=f"postgres 127.0.0.1:{port}/prefect: ") as refused:
        ensure_database(f"postgresql+asyncpg://team:secret-pw@127.0.0.1:{port}/prefect")
    assert "secret-pw" not in str(refused.value)
