"""Engines, sessions and migrations for the app database (and the ML server's cache store).

SQLite is the embedded default. It runs in WAL mode (readers never wait for the writer) with a busy
timeout, and every transaction starts with ``BEGIN IMMEDIATE``: a transaction that reads and then
writes would otherwise hold a shared lock and deadlock against another one upgrading at the same
time, which SQLite reports as "database is locked" instead of waiting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db.errors import NotFoundError

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PostgresqlInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

ROOT = Path(__file__).resolve().parent.parent
SQLITE_BUSY_TIMEOUT_MS = 30_000


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite ``url``; None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_private_file(path: Path) -> bool:
    """Create ``path`` (and its folder) readable and writable by its owner only (0600).

    SQLite gives a database's ``-wal``, ``-shm`` and journal files the database file's mode, so
    creating the (empty, valid) database file first keeps them private too. Returns whether the
    file was created (False: it was there already, left as it is).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    os.close(descriptor)
    os.chmod(path, 0o600)  # whatever the umask
    return True


def make_engine(url: str, *, create: bool = False, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with Tagdesk's connection settings.

    For SQLite, WAL, the busy timeout, foreign keys and ``BEGIN IMMEDIATE`` are set on every
    connection. A SQLite file that does not exist is an error unless ``create`` is set: a
    mistyped ``TAGGING_DATABASE_URL`` must not open a new, empty database. With ``create`` the
    file (and its folder) is made, private (0600), before SQLite opens it.

    Raises:
        NotFoundError: ``url`` names a SQLite file that does not exist, and not ``create``.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)

    path = sqlite_file(url)
    if path is not None and not path.exists():
        if not create:
            raise NotFoundError(
                f"no database at {path}: run `python -m tagging migrate` to create it"
            )
        create_private_file(path)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    connect_args.setdefault("check_same_thread", False)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory; use it as ``with factory.begin() as session:``."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """Alembic's configuration for the app database at ``url``."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "db" / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head", *, create: bool = True) -> None:
    """Bring the app database at ``url`` to ``revision`` (default: the newest).

    A SQLite file that does not exist is created (private, 0600) when ``create`` is set (the
    default: ``python -m tagging migrate``, the test fixtures); processes that merely migrate at
    start-up pass ``create=False`` for a database they did not choose themselves.

    Raises:
        NotFoundError: ``url`` names a SQLite file that does not exist, and not ``create``.
    """
    path = sqlite_file(url)
    if path is not None and not path.exists():
        if not create:
            raise NotFoundError(
                f"no database at {path}: run `python -m tagging migrate` to create it"
            )
        create_private_file(path)
    command.upgrade(alembic_config(url), revision)


def upsert(
    session: Session,
    table: Table,
    rows: list[dict[str, Any]],
    *,
    key: list[str],
    update: list[str],
) -> int:
    """Insert ``rows``; where ``key`` exists already, overwrite the ``update`` columns.

    One statement for SQLite and PostgreSQL alike (``INSERT ... ON CONFLICT``), so concurrent
    writers of the same key never fail on a unique violation. With ``update=[]`` existing rows are
    left alone. Returns the number of rows inserted or updated.
    """
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    statement: PostgresqlInsert | SqliteInsert
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        statement = postgresql_insert(table)
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(table)
    else:  # pragma: no cover - we only ship these two
        raise NotImplementedError(f"upsert is not implemented for {dialect}")
    if update:
        statement = statement.on_conflict_do_update(
            index_elements=key, set_={column: statement.excluded[column] for column in update}
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=key)
    # Count with RETURNING: psycopg reports no rowcount for INSERT ... ON CONFLICT.
    returning = statement.returning(*(table.c[column] for column in key))
    return len(session.execute(returning, rows).all())
