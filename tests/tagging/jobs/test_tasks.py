"""The task queue with a real huey consumer: a relaunched scrape runs in the background."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.advertisers import get_advertiser
from db.models import Role, Scrape
from tagging.demo.generate import DemoInventory
from tagging.errors import Conflict, PermissionDenied
from tests.utils.factories import actor


@pytest.fixture
def worker(app_settings: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A real huey consumer (threads) working for the test's database and ML server."""
    from tagging.jobs.tasks import task_queue

    huey = task_queue().huey
    for name, value in app_settings.to_env().items():  # type: ignore[attr-defined]
        monkeypatch.setenv(name, value)
    huey.flush()
    consumer = huey.create_consumer(workers=1, worker_type="thread", periodic=False)
    consumer.start()
    yield
    consumer.stop(graceful=True)


def test_relaunch_runs_the_scrape_in_the_background(
    worker: None, app_sessions: sessionmaker[Session], app_settings: object, demo_dir: Path
) -> None:
    from tagging.jobs.tasks import enqueue_scrape

    name = DemoInventory.load(demo_dir).advertisers[0].name
    queued = enqueue_scrape(app_settings, actor(Role.ANALYST, "ana"), name)  # type: ignore[arg-type]
    assert queued.advertiser == name and queued.task_id
    deadline = time.monotonic() + 90
    scrape = None
    while time.monotonic() < deadline:
        with app_sessions() as session:
            scrape = session.scalar(select(Scrape).where(Scrape.finished_at.is_not(None)))
        if scrape is not None:
            break
        time.sleep(0.2)
    assert scrape is not None, "the worker did not finish the scrape"
    assert (scrape.trigger, scrape.requested_by) == ("app", "ana")
    assert scrape.item_count == scrape.expected_items > 0


def test_relaunch_needs_the_role_and_no_running_scrape(
    app_sessions: sessionmaker[Session], app_settings: object, demo_dir: Path
) -> None:
    from tagging.jobs.tasks import enqueue_scrape

    name = DemoInventory.load(demo_dir).advertisers[0].name
    with pytest.raises(PermissionDenied):
        enqueue_scrape(app_settings, actor(Role.MANAGER), name)  # type: ignore[arg-type]
    with app_sessions.begin() as session:
        session.add(Scrape(advertiser_id=get_advertiser(session, name).id))  # running
    with pytest.raises(Conflict, match="already running"):
        enqueue_scrape(app_settings, actor(Role.ANALYST), name)  # type: ignore[arg-type]


def test_a_scrape_without_heartbeat_no_longer_blocks_a_relaunch(
    app_sessions: sessionmaker[Session], app_settings: object, demo_dir: Path
) -> None:
    """A scrape whose process died (no heartbeat for the lease) is marked failed, not waited on."""
    from db.models import utcnow
    from db.scrapes import LEASE
    from tagging.jobs.tasks import enqueue_scrape, task_queue

    name = DemoInventory.load(demo_dir).advertisers[0].name
    silent_since = utcnow() - LEASE - timedelta(seconds=5)
    with app_sessions.begin() as session:
        dead = Scrape(
            advertiser_id=get_advertiser(session, name).id,
            started_at=silent_since - timedelta(minutes=1),
            heartbeat_at=silent_since,
        )
        session.add(dead)
        session.flush()
        dead_id = dead.id
    try:
        queued = enqueue_scrape(app_settings, actor(Role.ANALYST), name)  # type: ignore[arg-type]
        assert queued.advertiser == name
    finally:
        task_queue().huey.flush()
    with app_sessions() as session:
        scrape = session.get_one(Scrape, dead_id)
        assert scrape.status == "failed" and scrape.finished_at is not None
        assert scrape.error is not None
        assert scrape.error.startswith(
            f"abandoned: no heartbeat since {silent_since:%Y-%m-%d %H:%M}"
        )


def test_the_worker_expires_abandoned_scrapes_periodically(
    app_sessions: sessionmaker[Session],
    app_settings: object,
    demo_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from db.models import utcnow
    from db.scrapes import LEASE
    from tagging.jobs.tasks import expire_scrapes_task, task_queue

    assert task_queue().expire_scrapes.name == "expire_scrapes_task"
    for key, value in app_settings.to_env().items():  # type: ignore[attr-defined]
        monkeypatch.setenv(key, value)
    name = DemoInventory.load(demo_dir).advertisers[0].name
    with app_sessions.begin() as session:
        advertiser_id = get_advertiser(session, name).id
        dead = Scrape(advertiser_id=advertiser_id, heartbeat_at=utcnow() - LEASE * 2)
        alive = Scrape(advertiser_id=advertiser_id, heartbeat_at=utcnow())
        session.add_all([dead, alive])
        session.flush()
        dead_id, alive_id = dead.id, alive.id
    assert expire_scrapes_task() == [dead_id]
    with app_sessions() as session:
        assert session.get_one(Scrape, dead_id).status == "failed"
        assert session.get_one(Scrape, alive_id).finished_at is None


def test_importing_the_tasks_builds_no_queue(tmp_path: Path) -> None:
    """The queue is built on first use: an import opens no file (and needs no Redis)."""
    import os
    import subprocess
    import sys

    data_dir = tmp_path / "data"
    env = {**os.environ, "TAGGING_DATA_DIR": str(data_dir)}
    code = (
        "import tagging.jobs.tasks as t, pathlib, sys; "
        "assert not pathlib.Path(sys.argv[1]).exists(); "
        "q = t.task_queue(); assert q is t.task_queue(); "
        "assert all((pathlib.Path(sys.argv[1]) / f'tasks-{n}.sqlite').exists() "
        "for n in ('scrapes', 'pushes', 'training')); "
        "assert q.scrape.name == 'scrape_task'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
