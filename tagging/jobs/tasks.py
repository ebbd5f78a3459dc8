"""Background work through a task queue (huey): scrape relaunches and the fix push retries.

Embedded default: a SQLite queue in the data dir, served by one worker process
(``python -m tagging worker``). With ``TAGGING_REDIS_URL`` set, Redis carries the queue instead, so
several workers on several machines can share it.

The queue carries only names and ids; the work reads everything else from the database, so a
task retried after a crash does the same thing. It is built on first use (:func:`task_queue`),
never at import time: importing this module opens no file and no connection.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey, crontab
from huey.api import Task, TaskWrapper

from db.accounts import Actor, Permission, require
from db.advertisers import get_advertiser
from db.engine import create_private_file, make_engine, make_session_factory
from db.scrapes import expire_abandoned_scrapes, running_scrape
from tagging.config import Settings
from tagging.errors import Conflict


def make_huey(settings: Settings) -> Huey:
    """The queue: Redis when ``settings.redis_url`` is set, else SQLite in the data dir."""
    if settings.redis_url:
        return RedisHuey("tagdesk", url=settings.redis_url)
    queue_file = settings.data_dir / "tasks.sqlite"
    create_private_file(queue_file)  # 0600 before SQLite creates it (an empty file is valid)
    return SqliteHuey("tagdesk", filename=str(queue_file))


@dataclass(frozen=True)
class TaskQueue:
    """The queue and the tasks registered on it (call a task to enqueue it)."""

    huey: Huey
    scrape: TaskWrapper
    push_pending: TaskWrapper
    expire_scrapes: TaskWrapper


@functools.cache
def task_queue() -> TaskQueue:
    """The process's queue, built from the settings on first use, with its tasks registered.

    The worker (``python -m tagging worker``) and every producer call this, so both sides know
    the same task names.
    """
    huey = make_huey(Settings.from_env())
    scrape = huey.task(retries=1, retry_delay=30, context=True, name="scrape_task")(scrape_task)
    push = huey.periodic_task(crontab(minute="*"), name="push_pending_task")(push_pending_task)
    expire = huey.periodic_task(crontab(minute="*"), name="expire_scrapes_task")(
        expire_scrapes_task
    )
    return TaskQueue(huey=huey, scrape=scrape, push_pending=push, expire_scrapes=expire)


def scrape_task(
    advertiser_name: str, requested_by: str | None, task: Task | None = None
) -> dict[str, Any]:
    """Scrape one advertiser (the app's "Relaunch scrape")."""
    from tagging.ingest.fetch import client_from_settings
    from tagging.ingest.scrape import ScrapeConfig, run_scrape
    from tagging.server.client import MLClient

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    client = client_from_settings(settings)
    ml = MLClient.from_settings(settings)
    try:
        summary = run_scrape(
            make_session_factory(engine),
            advertiser_name,
            ml=ml,
            client=client,
            config=ScrapeConfig(trigger="app", requested_by=requested_by),
        )
        return summary.as_dict()
    finally:
        client.close()
        ml.client.close()
        engine.dispose()


def push_pending_task() -> dict[str, Any]:
    """Every minute: push the fixes the ML server has not acknowledged yet, and every current
    fix again when its cache is a new generation (it lost its memory)."""
    from tagging.fixes import sync_fixes
    from tagging.server.client import MLClient

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    ml = MLClient.from_settings(settings)
    try:
        return sync_fixes(make_session_factory(engine), ml).__dict__
    finally:
        ml.client.close()
        engine.dispose()


def expire_scrapes_task() -> list[int]:
    """Every minute: mark failed the running scrapes whose process died (no heartbeat).

    Returns the ids of the scrapes marked failed (see :func:`db.scrapes.expire_abandoned_scrapes`).
    """
    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine).begin() as session:
            return expire_abandoned_scrapes(session)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Queued:
    task_id: str
    advertiser: str


def enqueue_scrape(settings: Settings, actor: Actor | None, advertiser_name: str) -> Queued:
    """Queue a scrape of ``advertiser_name`` on behalf of ``actor``.

    Raises:
        PermissionDenied: the actor may not relaunch scrapes.
        NotFoundError: no such advertiser.
        Conflict: a scrape of this advertiser is already running (a scrape whose process
            died, with no heartbeat for ``db.scrapes.LEASE``, is marked failed instead).
    """
    actor = require(actor, Permission.RELAUNCH)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine).begin() as session:
            advertiser = get_advertiser(session, advertiser_name)
            expire_abandoned_scrapes(session, advertiser.id)
            running = running_scrape(session, advertiser.id)
            if running is not None:
                raise Conflict(
                    f"a scrape of {advertiser.name} is already running (started "
                    f"{running.started_at:%H:%M:%S}): wait for it to finish"
                )
            name = advertiser.name
    finally:
        engine.dispose()
    result = task_queue().scrape(name, actor.username)
    return Queued(task_id=result.id, advertiser=name)
