"""A scrape split into chunks (tagging.ingest.chunks), on SQLite and PostgreSQL, over real HTTP:
the same items as one process's scrape, every position stored once, one finisher."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.chunks import chunks_of, count_items, elect_finisher
from db.engine import make_engine, make_session_factory
from db.models import ChunkState, Scrape, ScrapeChunk, SitemapItem, utcnow
from db.scrapes import scrape_items
from tagging.demo.generate import DemoInventory
from tagging.ingest import chunks as chunks_module
from tagging.ingest.chunks import (
    MAX_CHUNK_ATTEMPTS,
    coordinate_scrape,
    fan_in,
    reclaim,
    run_chunk,
)
from tagging.ingest.fetch import client_from_settings
from tagging.ingest.scrape import ScrapeConfig, run_scrape
from tagging.server.client import MLClient
from tests.utils.servers import cdn_host, ml_settings

LEASE = timedelta(seconds=30)


@dataclass
class Env:
    settings: Any
    sessions: sessionmaker[Session]
    name: str
    """A demo advertiser with broken images (some items fail)."""

    def ml(self) -> MLClient:
        return MLClient.from_settings(self.settings)


@pytest.fixture
def env(
    tmp_path: Path, database_url: str, ml_server: Any, cdn: Any, demo_dir: Path
) -> Iterator[Env]:
    from tagging.demo.setup import register_demo_advertisers

    settings = ml_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'ml_cache.sqlite'}",
        cdn_host(cdn),
        database_url=database_url,
        ml_url=ml_server.url,
    )
    inventory = DemoInventory.load(demo_dir)
    register_demo_advertisers(settings, inventory, cdn.url)  # type: ignore[arg-type]
    engine = make_engine(database_url)
    yield Env(settings, make_session_factory(engine), inventory.advertiser("harbor-autos").name)
    engine.dispose()


def coordinate(env: Env, chunk_size: int = 7, **config: Any) -> tuple[int, list[int]]:
    """Run the coordinator; the scrape's id and the chunk ids it queued."""
    queued: list[int] = []
    client = client_from_settings(env.settings)
    summary = coordinate_scrape(
        env.sessions,
        env.name,
        ml=env.ml(),
        client=client,
        enqueue_chunk=queued.append,
        config=ScrapeConfig(chunk_size=chunk_size, batch_size=3, **config),
        lease=LEASE,
    )
    client.close()
    return summary.scrape_id, queued


def labels(sessions: sessionmaker[Session], scrape_id: int) -> list[tuple[object, ...]]:
    with sessions() as session:
        return [
            (
                i.position,
                i.page_url,
                i.image_url,
                i.image_key,
                i.status,
                i.ml_image_type,
                i.ml_color,
                i.image_type,
                i.color,
                i.image_type_source,
                i.color_source,
            )
            for i in scrape_items(session, scrape_id)
        ]


def scrape_row(sessions: sessionmaker[Session], scrape_id: int) -> Scrape:
    with sessions() as session:
        scrape = session.get_one(Scrape, scrape_id)
        session.expunge(scrape)
        return scrape


def assert_exact(sessions: sessionmaker[Session], scrape_id: int, expected: int) -> None:
    """Every position 0..expected-1 stored once; the scrape's counts are its items'."""
    with sessions() as session:
        positions = session.scalars(
            select(SitemapItem.position)
            .where(SitemapItem.scrape_id == scrape_id)
            .order_by(SitemapItem.position)
        ).all()
        counts = count_items(session, scrape_id)
    assert list(positions) == list(range(expected))
    scrape = scrape_row(sessions, scrape_id)
    assert (
        scrape.item_count,
        scrape.cached_count,
        scrape.classified_count,
        scrape.failed_count,
        scrape.ml_failure_count,
    ) == (counts.items, counts.cached, counts.classified, counts.failed, counts.ml_failures)
    assert counts.items == expected


def test_chunks_by_two_workers_store_what_one_process_stores(env: Env) -> None:
    reference = run_scrape(
        env.sessions, env.name, ml=env.ml(), client=client_from_settings(env.settings)
    )
    state = scrape_row(env.sessions, reference.scrape_id).sitemap_state
    with env.sessions.begin() as session:  # read the sitemap again in full, not copied
        session.execute(update(Scrape).values(sitemap_state=None))
    scrape_id, queued = coordinate(env)
    assert len(queued) == -(-reference.items // 7) > 2
    assert scrape_row(env.sessions, scrape_id).chunk_total == len(queued)
    outcomes: list[Any] = []

    def worker(ids: list[int]) -> None:
        ml = env.ml()
        outcomes.extend(run_chunk(env.sessions, i, ml=ml, lease=LEASE) for i in ids)

    threads = [threading.Thread(target=worker, args=(queued[n::2],)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(o.done for o in outcomes)
    assert sum(o.finished is not None for o in outcomes) == 1, "finished exactly once"
    assert labels(env.sessions, scrape_id) == labels(env.sessions, reference.scrape_id)
    assert_exact(env.sessions, scrape_id, reference.items)
    chunked, single = (
        scrape_row(env.sessions, scrape_id),
        scrape_row(env.sessions, reference.scrape_id),
    )
    assert chunked.finished_at is not None and chunked.status == single.status
    assert chunked.failed_count == single.failed_count
    assert chunked.expected_items == single.expected_items
    assert chunked.sitemap_state == state  # the next scrape can copy from it
    assert chunked.error == single.error


def test_a_worker_that_lost_its_chunk_stores_nothing_more(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zombie: its lease expired while it waited on the ML server, the reclaimer queued the
    chunk again and another worker stored it; the zombie's next batch rolls back."""
    scrape_id, queued = coordinate(env, chunk_size=1000)  # one chunk
    (chunk_id,) = queued
    answered = threading.Event()
    release = threading.Event()
    ml = env.ml()
    real_classify = ml.classify

    def slow_classify(*args: Any, **kwargs: Any) -> Any:
        if not release.is_set():
            answered.set()
            release.wait(30)
        return real_classify(*args, **kwargs)

    monkeypatch.setattr(ml, "classify", slow_classify)
    result: dict[str, Any] = {}

    def zombie() -> None:
        result["zombie"] = run_chunk(env.sessions, chunk_id, ml=ml, lease=LEASE, worker="zombie")

    thread = threading.Thread(target=zombie)
    thread.start()
    assert answered.wait(30)
    with env.sessions.begin() as session:  # its lease runs out (it stalled)
        session.execute(update(ScrapeChunk).values(lease_until=utcnow() - timedelta(seconds=1)))
    requeued: list[int] = []
    report = reclaim(
        env.sessions,
        enqueue_chunk=requeued.append,
        enqueue_fan_in=lambda *_: None,
        lease=LEASE,
        in_queue=(),
    )
    assert report.expired == requeued == [chunk_id]
    other = run_chunk(env.sessions, chunk_id, ml=env.ml(), lease=LEASE, worker="other")
    assert other.done and other.finished is not None
    release.set()
    thread.join(30)
    zombie_outcome = result["zombie"]
    assert zombie_outcome.lost and not zombie_outcome.done and zombie_outcome.stored == 0
    total = other.stored + other.already
    assert_exact(env.sessions, scrape_id, total)


def test_a_chunk_taken_over_skips_the_positions_stored_before(env: Env) -> None:
    scrape_id, queued = coordinate(env, chunk_size=1000)
    (chunk_id,) = queued
    first = run_chunk(env.sessions, chunk_id, ml=env.ml(), lease=LEASE)
    total = first.stored
    # As if its worker had died after storing the first batches: back to running, lease gone,
    # the items after position 5 and the scrape's finish not done.
    with env.sessions.begin() as session:
        session.execute(
            SitemapItem.__table__.delete().where(
                SitemapItem.scrape_id == scrape_id, SitemapItem.position > 5
            )
        )
        counts = count_items(session, scrape_id)
        session.execute(
            update(Scrape)
            .where(Scrape.id == scrape_id)
            .values(
                finished_at=None,
                fan_in_by=None,
                item_count=counts.items,
                cached_count=counts.cached,
                classified_count=counts.classified,
                failed_count=counts.failed,
                ml_failure_count=counts.ml_failures,
            )
        )
        session.execute(
            update(ScrapeChunk).values(
                state=ChunkState.RUNNING, lease_until=utcnow() - timedelta(seconds=1)
            )
        )
    again = run_chunk(env.sessions, chunk_id, ml=env.ml(), lease=LEASE)
    assert again.done and again.already == 6 and again.stored == total - 6
    assert again.finished is not None
    assert_exact(env.sessions, scrape_id, total)


def test_two_finishers_racing_one_wins(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scrape_id, queued = coordinate(env)
    with env.sessions.begin() as session:  # every chunk done, no one finishing yet
        session.execute(
            update(Scrape)
            .where(Scrape.id == scrape_id)
            .values(chunk_total=len(queued) + 1)  # one more: none of them may elect itself
        )
    ml = env.ml()
    for chunk_id in queued:
        assert run_chunk(env.sessions, chunk_id, ml=ml, lease=LEASE).finished is None
    with env.sessions.begin() as session:
        session.execute(
            update(Scrape).where(Scrape.id == scrape_id).values(chunk_total=len(queued))
        )
    finished: list[int] = []
    real = chunks_module.conclude

    def counted(*args: Any, **kwargs: Any) -> Any:
        finished.append(scrape_id)
        return real(*args, **kwargs)

    monkeypatch.setattr(chunks_module, "conclude", counted)
    barrier = threading.Barrier(4)
    results: list[Any] = []

    def finisher(n: int) -> None:
        sessions = make_session_factory(make_engine(env.settings.database_url))
        barrier.wait()
        results.append(fan_in(sessions, scrape_id, ml=ml, lease=LEASE, finisher=f"f{n}"))

    threads = [threading.Thread(target=finisher, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r is not None for r in results) == 1
    assert finished == [scrape_id]
    scrape = scrape_row(env.sessions, scrape_id)
    assert scrape.finished_at is not None and scrape.fan_in_by in {f"f{n}" for n in range(4)}
    with env.sessions.begin() as session:  # finished: no one is elected again
        assert not elect_finisher(session, scrape_id, "late", LEASE)


def test_a_finisher_that_died_is_replaced_by_the_reclaimer(env: Env) -> None:
    scrape_id, queued = coordinate(env)
    ml = env.ml()
    with env.sessions.begin() as session:  # the last chunk's worker will die before finishing
        session.execute(update(Scrape).where(Scrape.id == scrape_id).values(chunk_total=None))
    for chunk_id in queued:
        run_chunk(env.sessions, chunk_id, ml=ml, lease=LEASE)
    with env.sessions.begin() as session:
        session.execute(
            update(Scrape)
            .where(Scrape.id == scrape_id)
            .values(
                chunk_total=len(queued),
                fan_in_by="dead",
                fan_in_until=utcnow() - timedelta(seconds=1),
            )
        )
    fan_ins: list[tuple[int, str]] = []
    report = reclaim(
        env.sessions,
        enqueue_chunk=lambda _: None,
        enqueue_fan_in=lambda *a: fan_ins.append(a),
        lease=LEASE,
        in_queue=(),
    )
    assert report.fan_ins == [scrape_id] and len(fan_ins) == 1
    again = reclaim(  # elected already: a second reclaimer does not queue it twice
        env.sessions,
        enqueue_chunk=lambda _: None,
        enqueue_fan_in=lambda *a: fan_ins.append(a),
        lease=LEASE,
        in_queue=(),
    )
    assert again.fan_ins == [] and len(fan_ins) == 1
    ((scrape, finisher),) = fan_ins
    assert (
        fan_in(env.sessions, scrape_id, ml=ml, lease=LEASE, finisher="impostor", elected=True)
        is None
    )
    summary = fan_in(env.sessions, scrape, ml=ml, lease=LEASE, finisher=finisher, elected=True)
    assert summary is not None and summary.status != "running"
    assert scrape_row(env.sessions, scrape_id).finished_at is not None


def test_pending_chunks_whose_message_was_lost_are_queued_again(env: Env) -> None:
    _, queued = coordinate(env)
    with env.sessions.begin() as session:
        session.execute(update(ScrapeChunk).values(enqueued_at=utcnow() - timedelta(seconds=45)))

    def once(in_queue: list[int]) -> list[int]:
        return reclaim(
            env.sessions,
            enqueue_chunk=lambda _: None,
            enqueue_fan_in=lambda *_: None,
            lease=LEASE,
            in_queue=in_queue,
        ).lost

    # Waiting long behind others is not lost: their messages are still in the queue. (A rule by
    # time alone queued a long backlog again, ahead of a dead worker's chunk.)
    assert once(in_queue=queued) == []
    lost = queued[-1:]  # a worker took this one's message and died before claiming it
    assert once(in_queue=queued[:-1]) == lost
    assert once(in_queue=queued[:-1]) == []  # marked queued now: not again before a lease


def test_a_chunk_its_workers_keep_dying_on_stores_ml_failures(env: Env) -> None:
    _, queued = coordinate(env, chunk_size=1000)
    with env.sessions.begin() as session:
        session.execute(update(ScrapeChunk).values(attempts=MAX_CHUNK_ATTEMPTS))
    outcome = run_chunk(env.sessions, queued[0], ml=env.ml(), lease=LEASE)
    assert outcome.done and outcome.finished is not None
    assert outcome.finished.ml_failures == outcome.stored
    assert "relaunch the scrape" in "\n".join(outcome.finished.problems)


def test_an_unchanged_sitemap_is_copied_by_the_coordinator_without_chunks(env: Env) -> None:
    first = run_scrape(
        env.sessions, env.name, ml=env.ml(), client=client_from_settings(env.settings)
    )
    scrape_id, queued = coordinate(env)
    assert queued == []
    scrape = scrape_row(env.sessions, scrape_id)
    assert scrape.finished_at is not None and scrape.chunk_total is None
    assert scrape.item_count == first.items
    with env.sessions() as session:
        assert chunks_of(session, scrape_id) == []
        assert (
            session.scalar(
                select(func.count())
                .select_from(SitemapItem)
                .where(SitemapItem.scrape_id == scrape_id)
            )
            == first.items
        )
