"""``python -m tagging serve``: the ML server, in as many worker processes as there are cores.

Each uvicorn worker is a process of its own (``TAGGING_ML_WORKERS``, default: the cores this
process may use): its lifespan loads the model and opens the cache store, so decoding and
inference of different requests run on different cores instead of sharing one GIL. The workers
share the listening socket (the kernel hands each connection to one of them) and one cache store:

* SQLite (the default, a file in the data dir): WAL mode, a busy timeout and ``BEGIN IMMEDIATE``
  on every connection (:func:`db.engine.make_engine`), so several processes on one machine read
  it at once and take turns to write; every cache method is one short transaction.
* PostgreSQL (``TAGGING_ML_CACHE_URL``): for several machines, shared by every replica.

Creating a store is the one step that must not run twice at once (a store of another schema
version is emptied and rebuilt, which a second process doing the same would undo). So the
command opens the store once, before any worker starts, under a lock that other ``serve``
processes respect too (a PostgreSQL advisory lock, or a lock file beside the SQLite file); the
workers then find it current and only read its generation.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tagging.config import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

APP_FACTORY = "tagging.server.app:create_app"
"""What each uvicorn worker process imports and calls: ``create_app()`` reads the settings from
the environment, which the workers inherit from this command."""


def run_ml_server(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """Open (or create) the cache store once, then serve until stopped.

    Args:
        workers: uvicorn worker processes; 1 serves in this process.
    """
    import uvicorn

    prepare_cache_store(settings.ml_cache_url)
    if workers <= 1:
        from tagging.server.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
        return
    uvicorn.run(
        APP_FACTORY, factory=True, workers=workers, host=host, port=port, log_level="warning"
    )


def prepare_cache_store(url: str) -> str:
    """Create or upgrade the ML cache store at ``url``, one process at a time; its generation."""
    from db.engine import make_engine
    from tagging.server.cache import MLCache

    engine = make_engine(url, create=True)
    try:
        with store_lock(url, engine):
            return MLCache(engine).generation
    finally:
        engine.dispose()


@contextmanager
def store_lock(url: str, engine: Engine) -> Iterator[None]:
    """Hold a lock that every ``serve`` opening the store at ``url`` takes.

    PostgreSQL: a session advisory lock (released when its connection closes, also when the
    process dies). SQLite: ``flock`` on ``<file>.lock`` (a SQLite store is one machine's).
    Anything else: no lock.
    """
    from sqlalchemy import text

    from db.engine import create_private_file, sqlite_file

    if engine.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(b"tagdesk ml cache store").digest()[:8], "big") >> 1
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
        return
    path = sqlite_file(url)
    if path is None:
        yield
        return
    lock = path.with_name(path.name + ".lock")
    create_private_file(lock)
    with lock.open("rb") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
