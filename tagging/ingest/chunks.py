"""One advertiser's scrape split among queue workers: a coordinator, chunk workers, one fan-in.

* **The coordinator** (:func:`coordinate_scrape`) starts the scrape and reads the sitemap
  streaming; every ``chunk_size`` items it writes a chunk (``scrape_chunks``) and queues its task,
  so workers start classifying while it still reads. Once the sitemap is read it records the chunk
  total, the sitemap state and problems. An unchanged sitemap is not split: the coordinator copies
  the fresh items and checks the others again itself, as :func:`run_scrape` does.
* **A chunk worker** (:func:`run_chunk`) claims the chunk with a lease (a conditional UPDATE), skips
  the positions stored already (a chunk taken over from a dead worker), classifies and stores the
  rest in batches with a :class:`~tagging.ingest.scrape.ScrapeJob` (the code of :func:`run_scrape`),
  and marks it done. A thread pushes its lease (and the scrape's heartbeat) forward while it works;
  every batch's transaction checks it still holds the chunk, and the unique (scrape_id, position)
  index stops a worker that lost it anyway: its transaction rolls back and it stops.
* **The fan-in** (:func:`fan_in`): after a chunk is done, one conditional UPDATE elects the finisher
  once every chunk is done; it runs what :func:`run_scrape` runs at the end (:func:`conclude`),
  with the counts recounted from the stored items. Its steps can run again, and its election has a
  lease, so a finisher that died is replaced by the reclaimer.
* **The reclaimer** (:func:`reclaim`) queues again the chunks whose lease expired and the pending
  ones whose message was lost, starts the fan-ins no one finished, and beats the chunked scrapes
  whose chunks wait in the queue.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db.chunks import (
    add_chunk,
    beat_chunked_scrapes,
    claim_chunk,
    complete_chunk,
    count_items,
    elect_finisher,
    hold_chunk,
    hold_fan_in,
    requeue_expired,
    requeue_lost,
    set_chunk_total,
    stored_positions,
    stuck_fan_ins,
)
from db.models import Advertiser, Scrape, ScrapeStatus, as_utc, utcnow
from db.scrapes import set_expected_items
from tagging.errors import MLServerError, TaggingError
from tagging.fixes import push_pending
from tagging.ingest.fetch import GuardedClient
from tagging.ingest.scrape import (
    FIX_MARGIN,
    Beat,
    Heartbeat,
    MLGate,
    ScrapeConfig,
    ScrapeJob,
    ScrapeSummary,
    beat_scrape,
    close_scrape,
    conclude,
    copy_if_unchanged,
    open_scrape,
    sitemap_state_of,
)
from tagging.ingest.sitemap import SitemapItem as ParsedItem
from tagging.ingest.sitemap import SitemapResult, read_sitemap
from tagging.server.client import MLClient

log = logging.getLogger(__name__)

MAX_CHUNK_ATTEMPTS = 5
"""A chunk claimed this many times (its workers died on it) stores its remaining items as ML
failures without sending them: the scrape finishes, and the next one retries them."""

Enqueue = Callable[[int], object]
"""Queues the task of a chunk (by id)."""


def worker_name() -> str:
    """A name for one claim: host, process, thread, and a random part (never reused)."""
    return (f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}")[
        :200
    ]


# --- the coordinator -----------------------------------------------------------------------------


def coordinate_scrape(
    sessions: sessionmaker[Session],
    advertiser_name: str,
    *,
    ml: MLClient,
    client: GuardedClient,
    enqueue_chunk: Enqueue,
    config: ScrapeConfig | None = None,
    lease: timedelta = timedelta(seconds=60),
) -> ScrapeSummary:
    """Start a scrape, split its sitemap into chunks for the queue's workers, and queue them.

    Returns the summary as the coordinator leaves it: "running" while chunks remain (the fan-in
    finishes the scrape), or finished when the sitemap could not be read, did not change (done
    here), or listed nothing.

    Raises:
        NotFoundError: no such advertiser. Any other failure is recorded in the scrape.
    """
    config = config or ScrapeConfig()
    started = time.perf_counter()
    start = open_scrape(sessions, advertiser_name, ml, config)
    job, summary = start.job, start.job.summary
    with Heartbeat(sessions, summary.scrape_id):
        copied = copy_if_unchanged(start, client, config)
        if copied is not None:
            since, state = copied
            return conclude(job, since, started, state)
        try:
            sitemap = read_sitemap(start.sitemap_url, client, config.limits)
        except TaggingError as exc:
            summary.problems.append(f"the sitemap could not be read: {exc}")
            return close_scrape(sessions, summary, started, failed=True)
        total = 0
        try:
            chunk: list[ParsedItem] = []
            for item in sitemap.items:
                chunk.append(item)
                if len(chunk) >= config.chunk_size:
                    chunk_id = _write_chunk(sessions, summary.scrape_id, total, chunk, sitemap)
                    _enqueue(enqueue_chunk, summary.scrape_id, chunk_id)
                    total, chunk = total + 1, []
            if chunk:
                chunk_id = _write_chunk(sessions, summary.scrape_id, total, chunk, sitemap)
                _enqueue(enqueue_chunk, summary.scrape_id, chunk_id)
                total += 1
        except TaggingError as exc:  # every document was checked whole: not expected
            summary.problems.append(f"the sitemap could not be read to its end: {exc}")
            return close_scrape(sessions, summary, started, failed=True)
        problems = [f"{p.url}: {p.message}" for p in sitemap.problems]
        summary.problems.extend(problems)
        state = sitemap_state_of(
            sitemap.documents, problems, config, color_from_feed=job.color_from_feed
        )
        with sessions.begin() as session:
            set_expected_items(session, summary.scrape_id, sitemap.expected)
            set_chunk_total(
                session,
                summary.scrape_id,
                total,
                sitemap_state=state,
                problems="\n".join(problems)[:10_000] or None,
            )
    # Its chunks may all be done already (or there is none): then finishing is up to it.
    return fan_in(sessions, summary.scrape_id, ml=ml, config=config, lease=lease) or summary


def _write_chunk(
    sessions: sessionmaker[Session],
    scrape_id: int,
    number: int,
    items: list[ParsedItem],
    sitemap: SitemapResult,
) -> int:
    """Write one chunk (and the sitemap's expected size so far, for the progress); its id."""
    with sessions.begin() as session:
        chunk_id = add_chunk(session, scrape_id, number, [asdict(item) for item in items])
        set_expected_items(session, scrape_id, sitemap.expected)
        return chunk_id


def _enqueue(enqueue_chunk: Enqueue, scrape_id: int, chunk_id: int) -> None:
    """Queue the chunk's task; a queue failing now is not fatal: the chunk is written, and the
    reclaimer queues a pending chunk whose message is missing."""
    try:
        enqueue_chunk(chunk_id)
    except Exception:
        log.warning("scrape %s: chunk %s not queued (the reclaimer will)", scrape_id, chunk_id)


# --- a chunk -------------------------------------------------------------------------------------


@dataclass
class ChunkOutcome:
    """What :func:`run_chunk` did with a chunk."""

    chunk_id: int
    done: bool = False
    """This worker stored its items and marked it done."""
    skipped: str | None = None
    """Why nothing was done: taken by another worker, done already, its scrape finished."""
    lost: bool = False
    """It lost the chunk while working (its lease expired and another worker took it): its
    last batch was rolled back and the other worker stores the rest."""
    stored: int = 0
    """Items this worker stored."""
    already: int = 0
    """Items a previous worker had stored (skipped)."""
    finished: ScrapeSummary | None = None
    """The scrape, when this worker was elected to finish it and did."""
    counts: dict[str, int] = field(default_factory=dict)


class LostChunk(Exception):
    """This worker no longer holds its chunk: store nothing more."""


def run_chunk(
    sessions: sessionmaker[Session],
    chunk_id: int,
    *,
    ml: MLClient,
    config: ScrapeConfig | None = None,
    lease: timedelta = timedelta(seconds=60),
    worker: str | None = None,
) -> ChunkOutcome:
    """Claim the chunk, classify and store its items, mark it done, and finish the scrape if it
    was the last one (:func:`fan_in`).

    Args:
        lease: how long the claim lasts without a beat (a thread beats every third of it).
        worker: this claim's name (default: :func:`worker_name`).
    """
    config = config or ScrapeConfig()
    worker = worker or worker_name()
    outcome = ChunkOutcome(chunk_id=chunk_id)
    with sessions.begin() as session:
        claim = claim_chunk(session, chunk_id, worker, lease)
    if claim is None:
        outcome.skipped = "taken, done, or its scrape finished"
        return outcome
    items = [ParsedItem(**item) for item in claim.items]
    with sessions() as session:
        stored = stored_positions(session, claim.scrape_id, [i.position for i in items])
    todo = [item for item in items if item.position not in stored]
    outcome.already = len(items) - len(todo)
    summary = ScrapeSummary(
        scrape_id=claim.scrape_id, advertiser=claim.advertiser, status=ScrapeStatus.RUNNING
    )
    job = ScrapeJob(sessions, summary, claim.advertiser_id, claim.color_from_feed, ml, config)
    job.increment = True

    def guard(session: Session) -> None:
        if not hold_chunk(session, chunk_id, worker, lease):
            raise LostChunk(chunk_id)

    job.guard = guard
    gate = MLGate()
    if claim.attempts > MAX_CHUNK_ATTEMPTS:
        gate.closed = MLServerError(
            f"not sent: chunk {claim.number} was taken {claim.attempts - 1} times by workers "
            "that died on it"
        )
    beats = _lease_beat(
        lambda s: hold_chunk(s, chunk_id, worker, lease) and beat_scrape(s, claim.scrape_id),
        sessions,
        lease,
        f"chunk-{chunk_id}",
    )
    try:
        with beats:
            job.classify_and_store(todo, None, gate)
            if beats.lost:
                raise LostChunk(chunk_id)
            with sessions.begin() as session:
                if not complete_chunk(session, chunk_id, worker):
                    raise LostChunk(chunk_id)
    except (LostChunk, IntegrityError) as exc:
        # IntegrityError: a position stored meanwhile by a worker that took the chunk over.
        log.warning("chunk %s: lost to another worker (%s); stopping", chunk_id, type(exc).__name__)
        outcome.lost = True
        outcome.stored = summary.items
        return outcome
    outcome.done, outcome.stored = True, summary.items
    outcome.counts = asdict(summary.counts())
    if job.carried:  # fixes carried to re-published images: the ML cache learns them at once
        push_pending(sessions, ml, fix_ids=job.carried)
    outcome.finished = fan_in(sessions, claim.scrape_id, ml=ml, config=config, lease=lease)
    return outcome


def _lease_beat(
    push: Callable[[Session], bool], sessions: sessionmaker[Session], lease: timedelta, name: str
) -> Beat:
    """A :class:`Beat` that pushes a lease forward every third of it until the block ends;
    ``lost`` once a push finds the lease gone (another worker took over)."""
    return Beat(
        push,
        sessions,
        every=lease.total_seconds() / 3,
        thread=f"{name}-lease",
        failure=f"{name}: lease not pushed forward",
        logger=log,
    )


# --- the fan-in ----------------------------------------------------------------------------------


def fan_in(
    sessions: sessionmaker[Session],
    scrape_id: int,
    *,
    ml: MLClient,
    config: ScrapeConfig | None = None,
    lease: timedelta = timedelta(seconds=60),
    finisher: str | None = None,
    elected: bool = False,
) -> ScrapeSummary | None:
    """Finish the chunked scrape if its chunks are all done and this caller wins the election.

    Returns the finished scrape's summary, or None when it is not this caller's to finish (chunks
    remain, another finisher holds it, or it is finished).

    Args:
        finisher: this caller's name (default: :func:`worker_name`).
        elected: the election was won already under ``finisher`` (the reclaimer elects, then
            queues the fan-in).
    """
    config = config or ScrapeConfig()
    finisher = finisher or worker_name()
    with sessions.begin() as session:
        if not elected and not elect_finisher(session, scrape_id, finisher, lease):
            return None
        scrape = session.get(Scrape, scrape_id)
        if scrape is None or scrape.finished_at is not None or scrape.fan_in_by != finisher:
            return None
        advertiser = session.get_one(Advertiser, scrape.advertiser_id)
        counts = count_items(session, scrape_id)
        started_at = as_utc(scrape.started_at) or utcnow()
        problems = scrape.error.split("\n") if scrape.error else []
        state = scrape.sitemap_state
        trigger, requested_by = scrape.trigger, scrape.requested_by
    summary = ScrapeSummary(
        scrape_id=scrape_id,
        advertiser=advertiser.name,
        status=ScrapeStatus.RUNNING,
        items=counts.items,
        cached=counts.cached,
        classified=counts.classified,
        failed=counts.failed,
        ml_failures=counts.ml_failures,
        problems=problems,
    )
    job = ScrapeJob(
        sessions,
        summary,
        advertiser.id,
        advertiser.color_from_feed,
        ml,
        replace(config, trigger=trigger, requested_by=requested_by),
    )
    started = time.perf_counter() - (utcnow() - started_at).total_seconds()
    beats = _lease_beat(
        lambda s: hold_fan_in(s, scrape_id, finisher, lease), sessions, lease, f"fan-in-{scrape_id}"
    )
    with beats:
        summary = conclude(job, started_at - FIX_MARGIN, started, state, finisher=finisher)
    log.info("scrape %s finished by %s: %s", scrape_id, finisher, summary.status)
    return summary


# --- the reclaimer -------------------------------------------------------------------------------


@dataclass
class ReclaimReport:
    """What one :func:`reclaim` pass did."""

    beaten: list[int] = field(default_factory=list)
    """Chunked scrapes whose heartbeat it pushed forward."""
    expired: list[int] = field(default_factory=list)
    """Chunks whose lease had expired, queued again."""
    lost: list[int] = field(default_factory=list)
    """Pending chunks whose message was lost, queued again."""
    fan_ins: list[int] = field(default_factory=list)
    """Scrapes whose fan-in it started (elected under a name of its own, then queued)."""


def reclaim(
    sessions: sessionmaker[Session],
    *,
    enqueue_chunk: Enqueue,
    enqueue_fan_in: Callable[[int, str], object],
    lease: timedelta,
    in_queue: Collection[int],
) -> ReclaimReport:
    """One pass of the reclaimer; every scrapes worker runs it (each action is elected by a
    conditional UPDATE, so several reclaimers queue each thing once).

    Args:
        enqueue_fan_in: queues the fan-in of a scrape (by id) under the finisher's name it was
            elected with.
        lease: the chunk lease; a pending chunk queued more than a lease ago whose message is
            not in the queue (``in_queue``) lost its message.
        in_queue: the chunks whose message the queue holds, read before this pass. (A rule by
            time alone took every chunk of a long backlog for lost and queued it again ahead of
            the rest, so a dead worker's chunk waited behind them all: 287 s instead of 3.)
    """
    report = ReclaimReport()
    now = utcnow()
    with sessions.begin() as session:
        report.beaten = beat_chunked_scrapes(session)
    with sessions.begin() as session:
        report.expired = requeue_expired(session, now=now)
    for chunk_id in report.expired:
        enqueue_chunk(chunk_id)
    with sessions.begin() as session:
        report.lost = requeue_lost(session, now - lease, in_queue)
    for chunk_id in report.lost:
        enqueue_chunk(chunk_id)
    with sessions() as session:
        stuck = stuck_fan_ins(session, now=now)
    for scrape_id in stuck:
        finisher = f"reclaim:{worker_name()}"[:200]
        with sessions.begin() as session:
            won = elect_finisher(session, scrape_id, finisher, lease)
        if won:
            report.fan_ins.append(scrape_id)
            enqueue_fan_in(scrape_id, finisher)
    return report
