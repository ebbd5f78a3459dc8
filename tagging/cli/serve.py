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
version is emptied and rebuilt, which a second process doing the same would undo). Every opener
of a store takes a lock for it (:func:`tagging.server.cache.store_lock`, inside
:class:`~tagging.server.cache.MLCache`: a PostgreSQL advisory lock, or a lock file beside the
SQLite file), so the workers, replicas and other ``serve`` processes may open it at once. The
command still opens it once before any worker starts, so that a store error stops it there
instead of in every worker, and the workers find the store current.
"""

from __future__ import annotations

import os

from tagging.config import Settings

APP_FACTORY = "tagging.server.app:create_app"
"""What each uvicorn worker process imports and calls: ``create_app()`` reads the settings from
the environment, which the workers inherit from this command."""


def run_ml_server(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """Open (or create) the cache store once, then serve until stopped.

    Args:
        workers: uvicorn worker processes; 1 serves in this process.
    """
    # numpy's OpenBLAS would start a thread per core for every matrix product (the perceptual
    # hash is two small ones per image): with the fetch threads and the workers already sharing
    # the cores, that made a product 100x slower. Set before the app (and numpy) is imported;
    # uvicorn's worker processes inherit it.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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
    """Create or upgrade the ML cache store at ``url`` (under its lock); its generation."""
    from db.engine import make_engine
    from tagging.server.cache import MLCache

    engine = make_engine(url, create=True)
    try:
        return MLCache(engine).generation
    finally:
        engine.dispose()
