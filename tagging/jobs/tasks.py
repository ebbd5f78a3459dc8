"""Background work through a task queue (huey): scrape relaunches and the fix push retries.

Embedded default: a SQLite queue in the data dir, served by one worker process
(``python -m tagging worker``). With ``TAGGING_REDIS_URL`` set, Redis carries the queue instead, so
several workers on several machines can share it.

The queue carries only names and ids; the work reads everything else from the database, so a
task retried after a crash does the same thing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from huey import Huey, RedisHuey, SqliteHuey, crontab

from db.accounts import Actor, Permission, require
from db.advertisers import get_advertiser
from db.engine import make_engine, make_session_factory
from db.scrapes import running_scrape
from tagging.config import Settings
from tagging.errors import TaggingError


def make_huey(settings: Settings) -> Huey:
    """The queue: Redis when ``TAGGING_REDIS_URL`` is set, else SQLite in the data dir."""
    redis_url = os.environ.get("TAGGING_REDIS_URL")
    if redis_url:
        return RedisHuey("tagdesk", url=redis_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey("tagdesk", filename=str(settings.data_dir / "tasks.sqlite"))


huey = make_huey(Settings.from_env())


@huey.task(retries=1, retry_delay=30, context=True)
def scrape_task(advertiser_name: str, requested_by: str | None, task: object = None) -> dict:
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


@huey.periodic_task(crontab(minute="*"))
def push_pending_task() -> dict:
    """Every minute: push the fixes the ML server has not acknowledged yet."""
    from tagging.fixes import push_pending
    from tagging.server.client import MLClient

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    ml = MLClient.from_settings(settings)
    try:
        return push_pending(make_session_factory(engine), ml).__dict__
    finally:
        ml.client.close()
        engine.dispose()


@dataclass(frozen=True)
class Queued:
    task_id: str
    advertiser: str


def enqueue_scrape(settings: Settings, actor: Actor | None, advertiser_name: str) -> Queued:
    """Queue a scrape of ``advertiser_name`` on behalf of ``actor``.

    Raises:
        PermissionDenied: the actor may not relaunch scrapes.
        TaggingError: a scrape of this advertiser is already running.
    """
    actor = require(actor, Permission.RELAUNCH)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            advertiser = get_advertiser(session, advertiser_name)
            running = running_scrape(session, advertiser.id)
            if running is not None:
                raise TaggingError(
                    f"a scrape of {advertiser.name} is already running (started "
                    f"{running.started_at:%H:%M:%S}): wait for it to finish"
                )
            name = advertiser.name
    finally:
        engine.dispose()
    result = scrape_task(name, actor.username)
    return Queued(task_id=result.id, advertiser=name)
