"""Separate queues per workload, and scrapes split among several workers: real huey consumers,
real worker processes on Redis (one SIGKILLed mid-chunk), a real database and HTTP on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.advertisers import add_advertiser
from db.chunks import chunks_of, count_items
from db.engine import make_engine, make_session_factory
from db.models import ChunkState, Role, Scrape, ScrapeChunk, SitemapItem
from db.scrapes import scrape_items
from tagging.config import Settings
from tagging.demo.cdn import DemoCdnServer
from tagging.demo.generate import DemoInventory
from tagging.ingest.fetch import client_from_settings
from tagging.ingest.scrape import run_scrape
from tagging.server.client import MLClient
from tests.utils.factories import actor

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def fresh_queues(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Run ``use(settings)``: the process's environment and queues become those of ``settings``
    (restored after the test)."""
    from tagging.jobs.tasks import task_queue

    def use(settings: Settings) -> Any:
        for name in [k for k in os.environ if k.startswith("TAGGING_") and "TEST" not in k]:
            monkeypatch.delenv(name)
        for name, value in settings.to_env().items():
            monkeypatch.setenv(name, value)
        task_queue.cache_clear()
        return task_queue()

    yield use
    task_queue.cache_clear()


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def finished_scrape(sessions: sessionmaker[Session]) -> Scrape | None:
    with sessions() as session:
        scrape = session.scalar(select(Scrape).where(Scrape.finished_at.is_not(None)))
        if scrape is not None:
            session.expunge(scrape)
        return scrape


# --- several consumers share one scrape ----------------------------------------------------------


def test_two_consumers_store_the_items_one_process_stores(
    app_settings: Any,
    app_sessions: sessionmaker[Session],
    demo_dir: Path,
    fresh_queues: Any,
    tmp_path: Path,
) -> None:
    from tagging.jobs.tasks import enqueue_scrape

    settings = replace(app_settings, data_dir=tmp_path / "queues", scrape_chunk_size=8)
    settings.data_dir.mkdir()
    queues = fresh_queues(settings)
    name = DemoInventory.load(demo_dir).advertiser("harbor-autos").name
    consumers = [
        queues.scrapes.create_consumer(workers=1, worker_type="thread", periodic=False)
        for _ in range(2)
    ]
    for consumer in consumers:
        consumer.start()
    try:
        enqueue_scrape(settings, actor(Role.ANALYST, "ana"), name)
        wait_until(lambda: finished_scrape(app_sessions) is not None, 90, "the chunked scrape")
    finally:
        for consumer in consumers:
            consumer.stop(graceful=True)
    chunked = finished_scrape(app_sessions)
    assert chunked is not None and chunked.chunk_total and chunked.chunk_total > 2
    assert (chunked.trigger, chunked.requested_by) == ("app", "ana")
    with app_sessions.begin() as session:
        chunks = chunks_of(session, chunked.id)
        assert {c.state for c in chunks} == {ChunkState.DONE}
        assert len({c.claimed_by.split(":")[2] for c in chunks if c.claimed_by}) == 2, (
            "both consumers took chunks"
        )
        session.execute(update(Scrape).values(sitemap_state=None))  # read in full again
    reference = run_scrape(
        app_sessions,
        name,
        ml=MLClient.from_settings(settings),
        client=client_from_settings(settings),
    )

    def rows(scrape_id: int) -> list[tuple[object, ...]]:
        with app_sessions() as session:
            return [
                (i.position, i.image_url, i.image_key, i.status, i.image_type, i.color)
                for i in scrape_items(session, scrape_id)
            ]

    assert rows(chunked.id) == rows(reference.scrape_id)
    assert chunked.item_count == reference.items and chunked.status == reference.status
    assert chunked.failed_count == reference.failed


# --- separate queues -----------------------------------------------------------------------------


def test_a_long_training_delays_no_push_and_no_scrape(
    sqlite_url: str, tmp_path: Path, fresh_queues: Any
) -> None:
    settings = Settings.from_env(
        {"TAGGING_DATA_DIR": str(tmp_path), "TAGGING_DATABASE_URL": sqlite_url}
    )
    queues = fresh_queues(settings)
    assert queues.train.huey is queues.training and queues.train.name == "train_task"
    assert queues.push_pending.huey is queues.expire_scrapes.huey is queues.pushes
    assert queues.scrape.huey is queues.scrape_chunk.huey is queues.scrapes
    training_started, release = threading.Event(), threading.Event()

    @queues.training.task(name="test_long_training")
    def long_training() -> str:
        training_started.set()
        release.wait(30)
        return "trained"

    @queues.scrapes.task(name="test_scrape_ping")
    def scrape_ping() -> str:
        return "scraped"

    @queues.pushes.task(name="test_push_ping")
    def push_ping() -> str:
        return "pushed"

    consumers = [
        queues.of(queue).create_consumer(workers=1, worker_type="thread", periodic=False)
        for queue in ("scrapes", "pushes", "training")
    ]
    for consumer in consumers:
        consumer.start()
    try:
        trained = long_training()
        assert training_started.wait(10)
        started = time.monotonic()
        assert push_ping().get(blocking=True, timeout=10) == "pushed"
        assert scrape_ping().get(blocking=True, timeout=10) == "scraped"
        assert time.monotonic() - started < 5
        assert trained.get() is None, "the training still runs"
    finally:
        release.set()
        for consumer in consumers:
            consumer.stop(graceful=True)


def test_periodic_tasks_run_once_a_minute_whatever_the_consumers(
    sqlite_url: str, tmp_path: Path, fresh_queues: Any
) -> None:
    """Every pushes consumer schedules the periodic tasks; the minute's slot lets one run."""
    settings = Settings.from_env(
        {"TAGGING_DATA_DIR": str(tmp_path), "TAGGING_DATABASE_URL": sqlite_url}
    )
    queues = fresh_queues(settings)
    if int(time.time()) % 60 > 55:  # not across a minute's end
        time.sleep(6)
    assert queues.expire_scrapes.func() == []
    assert queues.expire_scrapes.func() is None


def test_each_queue_has_its_own_redis_name(tmp_path: Path) -> None:
    from tagging.jobs.tasks import QUEUES, make_huey

    settings = Settings.from_env(
        {
            "TAGGING_DATA_DIR": str(tmp_path),
            "TAGGING_REDIS_URL": "redis://127.0.0.1:1/4",
            "TAGGING_QUEUE_NAME": "tagdesk",
        }
    )
    assert [make_huey(settings, q).name for q in QUEUES] == [
        "tagdesk-scrapes",
        "tagdesk-pushes",
        "tagdesk-training",
    ]


@pytest.mark.slow
def test_worker_all_runs_one_process_per_queue_and_stops_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
    env["TAGGING_DATA_DIR"] = str(tmp_path)
    worker = subprocess.Popen(
        [sys.executable, "-m", "tagging", "worker", "--workers", "1"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:

        def children() -> list[str]:
            path = Path(f"/proc/{worker.pid}/task/{worker.pid}/children")
            return path.read_text().split() if path.exists() else []

        wait_until(lambda: len(children()) == 3, 20, "three queue workers")
        kids = children()
        cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in kids]
        assert sorted(c[c.index(b"--queue") + 1].decode() for c in cmdlines) == [
            "pushes",
            "scrapes",
            "training",
        ]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert not [p for p in kids if Path(f"/proc/{p}").exists()]
    finally:
        if worker.poll() is None:
            worker.kill()


# --- a worker killed mid-chunk -------------------------------------------------------------------

COUNT, CHUNK = 800, 200
"""Items of the killed worker's scrape, and per chunk: a few chunks, each several ML batches."""
LATENCY_MS = 40.0
"""The demo CDN's delay before every response during that scrape."""


@pytest.mark.slow
def test_a_worker_killed_mid_chunk_loses_and_repeats_nothing(
    redis_queue: tuple[str, str],
    app_settings: Settings,
    cdn: DemoCdnServer,
    fresh_queues: Any,
    tmp_path: Path,
) -> None:
    """Two worker processes scrape the demo CDN's big sitemap through the real ML server; the one
    holding a half-stored chunk is SIGKILLed, and the other takes the chunk over."""
    from tagging.jobs.tasks import enqueue_scrape

    redis_url, queue_name = redis_queue
    count, chunk = COUNT, CHUNK
    # A CDN far away: each image fetch waits, so a chunk's batches take long enough to catch a
    # chunk half stored, with the real ML server doing the real work.
    cdn.latency_ms = LATENCY_MS
    settings = replace(
        app_settings,
        redis_url=redis_url,
        queue_name=queue_name,
        scrape_chunk_size=chunk,
        chunk_lease_seconds=2.0,
        reclaim_seconds=0.3,
    )
    fresh_queues(settings)
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        # Every item a distinct URL (a distinct image_key) of a demo image.
        add_advertiser(session, "Far Motors", f"{cdn.url}/sitemaps/big-{count}.xml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
    env.update(settings.to_env())
    logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tagging", "worker", "--queue", "scrapes", "--workers", "1"],
            env=env,
            cwd=ROOT,
            stderr=log.open("w"),
        )
        for log in logs
    ]
    try:
        enqueue_scrape(settings, actor(Role.ANALYST), "Far Motors")
        pids = {str(w.pid): w for w in workers}
        victim: dict[str, Any] = {}

        def half_stored_chunk() -> bool:
            with sessions() as session:
                for c in session.scalars(
                    select(ScrapeChunk).where(ScrapeChunk.state == ChunkState.RUNNING)
                ):
                    pid = (c.claimed_by or "").split(":")[1]
                    positions = [int(str(i["position"])) for i in c.items]
                    stored = session.scalar(
                        select(func.count())
                        .select_from(SitemapItem)
                        .where(
                            SitemapItem.scrape_id == c.scrape_id,
                            SitemapItem.position.between(min(positions), max(positions)),
                        )
                    )
                    if pid in pids and 0 < (stored or 0) < c.item_count:
                        victim.update(chunk=c.id, pid=pid, stored=stored)
                        return True
            return False

        wait_until(half_stored_chunk, 60, "a chunk half stored")
        pids[victim["pid"]].send_signal(signal.SIGKILL)
        pids[victim["pid"]].wait()
        wait_until(lambda: finished_scrape(sessions) is not None, 60, "the scrape's finish")
        scrape = finished_scrape(sessions)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGINT)
        for worker in workers:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
    assert scrape is not None and scrape.status == "succeeded", scrape and scrape.error
    with sessions() as session:
        positions = session.scalars(
            select(SitemapItem.position)
            .where(SitemapItem.scrape_id == scrape.id)
            .order_by(SitemapItem.position)
        ).all()
        assert list(positions) == list(range(count)), "every position stored exactly once"
        counts = count_items(session, scrape.id)
        taken_over = session.get_one(ScrapeChunk, victim["chunk"])
        assert taken_over.state == ChunkState.DONE and taken_over.attempts == 2
        assert taken_over.claimed_by and taken_over.claimed_by.split(":")[1] != victim["pid"]
    assert (scrape.item_count, scrape.classified_count + scrape.cached_count) == (count, count)
    assert (counts.items, counts.failed, scrape.failed_count) == (count, 0, 0)
    assert scrape.chunk_total == count // chunk
    finishes = [
        line
        for log in logs
        for line in log.read_text().splitlines()
        if re.search(rf"scrape {scrape.id} finished by", line)
    ]
    assert len(finishes) == 1, finishes
    engine.dispose()


def test_the_reclaimer_sees_which_chunks_wait_in_the_queue(
    tmp_path: Path, redis_queue: tuple[str, str]
) -> None:
    # What tells a chunk whose message was lost from one waiting behind a long backlog.
    from tagging.jobs.tasks import RECLAIMED_PRIORITY, build_queues, queued_chunks

    url, name = redis_queue
    settings = Settings.from_env(
        {"TAGGING_DATA_DIR": str(tmp_path), "TAGGING_REDIS_URL": url, "TAGGING_QUEUE_NAME": name}
    )
    queues = build_queues(settings)
    for chunk_id in (3, 4, 5):
        queues.scrape_chunk(chunk_id)
    queues.scrapes.enqueue(queues.scrape_chunk.s(9, priority=RECLAIMED_PRIORITY))
    queues.scrape(advertiser_name="Harbor Autos", requested_by=None)  # not a chunk
    assert queued_chunks(queues) == {3, 4, 5, 9}
    taken = queues.scrapes.dequeue()  # a worker takes the next: the reclaimed one first
    assert taken is not None and taken.args == (9,)
    assert queued_chunks(queues) == {3, 4, 5}
