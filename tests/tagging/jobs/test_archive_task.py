"""The periodic archiving on the pushes queue: images queued at fix time are stored within a
minute, once whatever the number of consumers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.datasets import archive_counts
from db.engine import make_engine, make_session_factory
from tagging.config import Settings
from tests.tagging.datasets.test_service import FakeCDN
from tests.tagging.datasets.world import build_world


@pytest.fixture
def env(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("TAGGING_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TAGGING_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("TAGGING_QUEUE_NAME", f"archive-test-{tmp_path.name}")
    monkeypatch.delenv("TAGGING_REDIS_URL", raising=False)
    monkeypatch.delenv("TAGGING_ARCHIVE_DIR", raising=False)
    return Settings.from_env()


def test_the_archive_task_is_periodic_on_the_pushes_queue(env: Settings) -> None:
    from tagging.jobs.tasks import build_queues

    queues = build_queues(env)
    assert queues.archive_pending is not None
    periodic = {task.name for task in queues.pushes._registry.periodic_tasks}
    assert "archive_pending_task" in periodic
    assert not queues.scrapes._registry.periodic_tasks


def test_a_round_archives_what_fixes_queued_once_a_minute(
    env: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tagging.ingest import fetch
    from tagging.jobs.tasks import build_queues

    sessions: sessionmaker[Session] = make_session_factory(make_engine(env.database_url))
    world = build_world(sessions, tmp_path / "world", archived=False)
    with sessions() as session:
        assert archive_counts(session)["pending"] == 30  # queued by the fixes themselves

    @contextmanager
    def fake_client(_settings: Settings, **_: object) -> Iterator[FakeCDN]:
        yield FakeCDN(world.urls)

    monkeypatch.setattr(fetch, "client_from_settings", fake_client)
    queues = build_queues(env)
    assert queues.archive_pending is not None
    run = queues.archive_pending.func  # the once-a-minute wrapper the consumer calls
    assert run() == {"stored": 30, "failed": 0}
    # A second consumer's call in the same minute does nothing.
    assert run() is None
    with sessions() as session:
        assert archive_counts(session) == {"pending": 0, "stored": 30}
    archive = env.archive_dir
    assert all((archive / sha[:2] / sha).is_file() for sha in world.shas)
