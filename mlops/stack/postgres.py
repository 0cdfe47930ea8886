"""A private Postgres server in a folder of its own: Debian's PostgreSQL binaries, a fresh cluster
(``initdb``), one loopback port, trust authentication for its one role, and the databases asked
for. For benchmarks and tests that run the stack's servers on Postgres instead of SQLite, the way
a team's shared stack would (``Settings.database_url``); and what `mlops up` does on a team's
server: create the servers' databases where missing (``ensure_database``).

Postgres refuses to run as root: as root, the cluster belongs to Debian's ``postgres`` user and
every server command runs as that user (``runuser``). The folder is removed on ``stop``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlops.core.errors import MlopsError, StackError
from mlops.stack.processes import free_port

#: what installs the binaries when they are missing
INSTALL_HINT = "install PostgreSQL (Debian: apt-get install postgresql)"
ROLE = "mlops"


def postgres_bin() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` and ``createdb``: on PATH, else Debian's newest
    /usr/lib/postgresql/<major>/bin; None when neither has them."""
    found = shutil.which("initdb")
    if found:  # the real folder, not a folder of links to it
        folder = Path(found).resolve().parent
        if all((folder / tool).exists() for tool in ("pg_ctl", "createdb")):
            return folder
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(versions[-1]).parent if versions else None


@dataclass
class PrivatePostgres:
    """``start()`` a cluster under a new temporary folder on a free port; ``url(db)`` for
    SQLAlchemy's asyncpg driver; ``stop()`` stops it and removes the folder."""

    databases: tuple[str, ...] = ("prefect",)
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlops-postgres-")))

    def url(self, database: str, driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{ROLE}@{self.host}:{self.port}/{database}"

    def _run(self, argv: list[str]) -> None:
        as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*as_owner, *argv], capture_output=True, text=True)
        if done.returncode != 0:
            raise MlopsError(
                f"postgres: `{' '.join(argv)}` failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-2000:]}; the server log is "
                f"{self.root / 'server.log'}"
            )

    def start(self) -> PrivatePostgres:
        binaries = postgres_bin()
        if binaries is None:
            raise MlopsError(f"postgres: no initdb or pg_ctl found: {INSTALL_HINT}")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        data = self.root / "data"
        self._run([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", ROLE, "-E",
                   "UTF8", "--no-instructions"])  # fmt: skip
        options = f"-p {self.port} -k {self.root} -c listen_addresses={self.host}"
        self._run([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                   str(self.root / "server.log"), "-w", "-t", "60", "start"])  # fmt: skip
        for database in self.databases:
            self._run([str(binaries / "createdb"), "-h", self.host, "-p", str(self.port), "-U",
                       ROLE, database])  # fmt: skip
        return self

    def stop(self) -> None:
        binaries = postgres_bin()  # found again: a cluster whose start failed has none recorded
        data = self.root / "data"
        try:
            if binaries is not None and (data / "postmaster.pid").exists():
                self._run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def where(url: str) -> str:
    """``host:port/database`` of a SQLAlchemy URL: what may be said of it (never its password)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return f"{parsed.host}:{parsed.port or 5432}/{parsed.database}"


def ensure_database(url: str) -> bool:
    """Create the database ``url`` names (a SQLAlchemy URL of any PostgreSQL driver) when the
    server has none of that name; True when it was created. The role needs CREATEDB for that;
    an unreachable server, refused credentials or a missing privilege are a StackError naming
    the server and the database, never the password."""
    import psycopg
    from psycopg import errors, sql
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    name = str(parsed.database)
    maintenance = parsed.set(database="postgres").render_as_string(hide_password=False)
    try:
        conn = psycopg.connect(maintenance, connect_timeout=10, autocommit=True)
    except psycopg.OperationalError as exc:  # no maintenance database for this role: is it there?
        try:
            psycopg.connect(
                parsed.render_as_string(hide_password=False), connect_timeout=10
            ).close()
        except psycopg.Error:
            raise StackError(f"postgres {where(url)}: {_first_line(exc)}") from None
        return False
    with conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except errors.DuplicateDatabase:
            return False  # created meanwhile by another `mlops up`
        except psycopg.Error as exc:
            raise StackError(
                f"postgres {where(url)}: the database does not exist and cannot be created "
                f"({_first_line(exc)}); create it, or grant the role CREATEDB"
            ) from None
    return True


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
