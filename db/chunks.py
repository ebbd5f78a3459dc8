"""Chunks of a scrape that queue workers share: writing them, claiming them with a lease, the
fan-in election, and what the reclaimer queues again.

Every state change is one conditional ``UPDATE`` whose row count says whether this caller won, so
any number of workers (threads, processes, machines) on SQLite or PostgreSQL agree without locks of
their own. A position is stored once per scrape (the unique ``ix_sitemap_items_scrape_position``),
so even a worker that lost its chunk without knowing cannot store an item twice.

Each function takes a Session and leaves the transaction to its caller.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from db.models import (
    Advertiser,
    ChunkState,
    ItemStatus,
    Scrape,
    ScrapeChunk,
    SitemapItem,
    utcnow,
)
from db.scrapes import ScrapeCounts


def _won(result: object) -> bool:
    return bool(cast("CursorResult[Any]", result).rowcount)


def add_chunk(
    session: Session, scrape_id: int, number: int, items: Sequence[dict[str, Any]]
) -> int:
    """Write chunk ``number`` of the scrape (pending, marked queued now); returns its id."""
    return int(
        session.execute(
            insert(ScrapeChunk)
            .values(
                scrape_id=scrape_id,
                number=number,
                items=list(items),
                item_count=len(items),
                state=ChunkState.PENDING,
                attempts=0,
                enqueued_at=utcnow(),
            )
            .returning(ScrapeChunk.id)
        ).scalar_one()
    )


def set_chunk_total(
    session: Session,
    scrape_id: int,
    total: int,
    *,
    sitemap_state: dict[str, Any] | None,
    problems: str | None,
) -> None:
    """The coordinator read the whole sitemap: ``total`` chunks, and what the finisher writes
    when the scrape finishes (its sitemap state and problems). Also a heartbeat."""
    session.execute(
        update(Scrape)
        .where(and_(Scrape.id == scrape_id, Scrape.finished_at.is_(None)))
        .values(
            chunk_total=total,
            sitemap_state=sitemap_state,
            error=problems,
            heartbeat_at=utcnow(),
        )
    )


@dataclass(frozen=True)
class Claim:
    """A chunk this worker holds: what it needs to classify and store its items."""

    chunk_id: int
    scrape_id: int
    number: int
    worker: str
    attempts: int
    items: list[dict[str, Any]]
    advertiser_id: int
    advertiser: str
    color_from_feed: bool


def claim_chunk(session: Session, chunk_id: int, worker: str, lease: timedelta) -> Claim | None:
    """Take the chunk for ``worker`` until ``lease`` from now: it is pending, or running with an
    expired lease, and its scrape is not finished. None when another worker has it, it is done,
    or its scrape finished (failed, or expired) meanwhile."""
    now = utcnow()
    unfinished = select(Scrape.id).where(Scrape.finished_at.is_(None))
    claimed = session.execute(
        update(ScrapeChunk)
        .where(
            ScrapeChunk.id == chunk_id,
            ScrapeChunk.scrape_id.in_(unfinished),
            or_(
                ScrapeChunk.state == ChunkState.PENDING,
                and_(ScrapeChunk.state == ChunkState.RUNNING, ScrapeChunk.lease_until < now),
            ),
        )
        .values(
            state=ChunkState.RUNNING,
            claimed_by=worker,
            lease_until=now + lease,
            attempts=ScrapeChunk.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    if not _won(claimed):
        return None
    row = session.execute(
        select(
            ScrapeChunk.scrape_id,
            ScrapeChunk.number,
            ScrapeChunk.attempts,
            ScrapeChunk.items,
            Advertiser.id,
            Advertiser.name,
            Advertiser.color_from_feed,
        )
        .join(Scrape, Scrape.id == ScrapeChunk.scrape_id)
        .join(Advertiser, Advertiser.id == Scrape.advertiser_id)
        .where(ScrapeChunk.id == chunk_id)
    ).one()
    return Claim(chunk_id, row[0], row[1], worker, row[2], list(row[3]), row[4], row[5], row[6])


def hold_chunk(session: Session, chunk_id: int, worker: str, lease: timedelta) -> bool:
    """Push the lease of a chunk ``worker`` still holds forward; False when it lost it.

    Called in the transaction of every stored batch: on PostgreSQL the row lock it takes orders
    it against a reclaim or a claim, so a worker that lost its chunk stores nothing more.
    """
    return _won(
        session.execute(
            update(ScrapeChunk)
            .where(
                ScrapeChunk.id == chunk_id,
                ScrapeChunk.claimed_by == worker,
                ScrapeChunk.state == ChunkState.RUNNING,
            )
            .values(lease_until=utcnow() + lease)
            .execution_options(synchronize_session=False)
        )
    )


def complete_chunk(session: Session, chunk_id: int, worker: str) -> bool:
    """Mark the chunk done, if ``worker`` still holds it; returns whether it did."""
    return _won(
        session.execute(
            update(ScrapeChunk)
            .where(
                ScrapeChunk.id == chunk_id,
                ScrapeChunk.claimed_by == worker,
                ScrapeChunk.state == ChunkState.RUNNING,
            )
            .values(state=ChunkState.DONE, done_at=utcnow(), lease_until=None)
            .execution_options(synchronize_session=False)
        )
    )


def stored_positions(session: Session, scrape_id: int, positions: Sequence[int]) -> set[int]:
    """Which of ``positions`` the scrape holds already (a chunk taken over from a dead worker)."""
    if not positions:
        return set()
    low, high = min(positions), max(positions)
    return set(
        session.scalars(
            select(SitemapItem.position).where(
                SitemapItem.scrape_id == scrape_id,
                SitemapItem.position >= low,
                SitemapItem.position <= high,
            )
        )
    )


def elect_finisher(
    session: Session,
    scrape_id: int,
    finisher: str,
    lease: timedelta,
    *,
    now: datetime | None = None,
) -> bool:
    """Make ``finisher`` the one that finishes the scrape, if its chunks are all done and no one
    else is finishing it (or the one who was let its lease expire). Exactly one caller wins."""
    now = now or utcnow()
    done = (
        select(func.count())
        .select_from(ScrapeChunk)
        .where(ScrapeChunk.scrape_id == scrape_id, ScrapeChunk.state == ChunkState.DONE)
        .scalar_subquery()
    )
    return _won(
        session.execute(
            update(Scrape)
            .where(
                Scrape.id == scrape_id,
                Scrape.finished_at.is_(None),
                Scrape.chunk_total.is_not(None),
                Scrape.chunk_total == done,
                or_(Scrape.fan_in_by.is_(None), Scrape.fan_in_until < now),
            )
            .values(fan_in_by=finisher, fan_in_until=now + lease, heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
    )


def hold_fan_in(session: Session, scrape_id: int, finisher: str, lease: timedelta) -> bool:
    """Push the finisher's lease forward (and beat the scrape); False when it lost it."""
    now = utcnow()
    return _won(
        session.execute(
            update(Scrape)
            .where(
                Scrape.id == scrape_id,
                Scrape.fan_in_by == finisher,
                Scrape.finished_at.is_(None),
            )
            .values(fan_in_until=now + lease, heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
    )


def count_items(session: Session, scrape_id: int) -> ScrapeCounts:
    """The scrape's counts from its stored items (one grouped pass over its index)."""
    ok = SitemapItem.status == ItemStatus.OK
    row = session.execute(
        select(
            func.count(),
            func.sum(case((and_(ok, SitemapItem.cached), 1), else_=0)),
            func.sum(case((and_(ok, ~SitemapItem.cached), 1), else_=0)),
            func.sum(case((~ok, 1), else_=0)),
            func.sum(case((SitemapItem.status == ItemStatus.ML_FAILURE, 1), else_=0)),
        ).where(SitemapItem.scrape_id == scrape_id)
    ).one()
    items, cached, classified, failed, ml_failures = (int(v or 0) for v in row)
    return ScrapeCounts(items, cached, classified, failed, ml_failures)


# --- the reclaimer -------------------------------------------------------------------------------


def beat_chunked_scrapes(session: Session) -> list[int]:
    """Beat every unfinished scrape whose coordinator is done (its chunks wait in the queue, or
    run): the reclaimer runs in every scrapes worker, so such a scrape lives while one does.
    Returns their ids."""
    ids = list(
        session.scalars(
            select(Scrape.id).where(Scrape.finished_at.is_(None), Scrape.chunk_total.is_not(None))
        )
    )
    if ids:
        session.execute(
            update(Scrape)
            .where(Scrape.id.in_(ids), Scrape.finished_at.is_(None))
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return ids


def requeue_expired(session: Session, *, now: datetime | None = None) -> list[int]:
    """Put back to pending every running chunk of an unfinished scrape whose lease expired (its
    worker died, or stalls); returns the ids this caller put back, for it to queue them."""
    now = now or utcnow()
    unfinished = select(Scrape.id).where(Scrape.finished_at.is_(None))
    candidates = session.scalars(
        select(ScrapeChunk.id).where(
            ScrapeChunk.state == ChunkState.RUNNING,
            ScrapeChunk.lease_until < now,
            ScrapeChunk.scrape_id.in_(unfinished),
        )
    ).all()
    taken = []
    for chunk_id in candidates:
        if _won(
            session.execute(
                update(ScrapeChunk)
                .where(
                    ScrapeChunk.id == chunk_id,
                    ScrapeChunk.state == ChunkState.RUNNING,
                    ScrapeChunk.lease_until < now,
                )
                .values(
                    state=ChunkState.PENDING, claimed_by=None, lease_until=None, enqueued_at=now
                )
                .execution_options(synchronize_session=False)
            )
        ):
            taken.append(chunk_id)
    return taken


def requeue_lost(
    session: Session, queued_before: datetime, in_queue: Collection[int] = ()
) -> list[int]:
    """Pending chunks of unfinished scrapes last queued before ``queued_before`` and not in
    ``in_queue`` (the chunks whose message the queue still holds): their message was lost (a
    worker died between taking it and claiming). Marked queued now; returns the ids this caller
    marked, for it to queue them."""
    now = utcnow()
    unfinished = select(Scrape.id).where(Scrape.finished_at.is_(None))
    candidates = session.scalars(
        select(ScrapeChunk.id).where(
            ScrapeChunk.state == ChunkState.PENDING,
            ScrapeChunk.enqueued_at < queued_before,
            ScrapeChunk.scrape_id.in_(unfinished),
        )
    ).all()
    waiting = set(in_queue)
    return [
        chunk_id
        for chunk_id in candidates
        if chunk_id not in waiting
        and _won(
            session.execute(
                update(ScrapeChunk)
                .where(
                    ScrapeChunk.id == chunk_id,
                    ScrapeChunk.state == ChunkState.PENDING,
                    ScrapeChunk.enqueued_at < queued_before,
                )
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            )
        )
    ]


def stuck_fan_ins(session: Session, *, now: datetime | None = None) -> list[int]:
    """Unfinished scrapes whose chunks are all done and that no one is finishing (no finisher, or
    one whose lease expired): their last chunk's worker died before finishing them."""
    now = now or utcnow()
    done = (
        select(func.count())
        .select_from(ScrapeChunk)
        .where(ScrapeChunk.scrape_id == Scrape.id, ScrapeChunk.state == ChunkState.DONE)
        .correlate(Scrape)
        .scalar_subquery()
    )
    return list(
        session.scalars(
            select(Scrape.id).where(
                Scrape.finished_at.is_(None),
                Scrape.chunk_total.is_not(None),
                Scrape.chunk_total == done,
                or_(Scrape.fan_in_by.is_(None), Scrape.fan_in_until < now),
            )
        )
    )


def chunks_of(session: Session, scrape_id: int) -> list[ScrapeChunk]:
    """The scrape's chunks in sitemap order."""
    return list(
        session.scalars(
            select(ScrapeChunk)
            .where(ScrapeChunk.scrape_id == scrape_id)
            .order_by(ScrapeChunk.number)
        )
    )
