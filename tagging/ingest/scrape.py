"""Scrapes: an advertiser's sitemap → batches to the ML server → one transaction per batch.

A scrape never aborts because of one bad image or an ML outage: a failing image gets the seed's
defaults (Image Type "Placeholder", Color None) with an ``error`` status, and items the ML server
could not classify get them with an ``ml_failure`` status. The next scrape retries exactly those,
because the ML server caches only what it classified.

Memory stays flat whatever the sitemap's size: its items stream from :func:`read_sitemap` in
batches, and only ``in_flight`` batches are held at once.

**A sitemap that did not change** (every document answers ``304 Not Modified`` to its ETag or
Last-Modified, or has the same SHA-256) is not read again: the previous scrape's items whose images
are still fresh by the CDN's caching headers (``images.fresh_until``, from the ML server) are
copied in one ``INSERT ... SELECT``, and only the others (stale, failed, never checked) go to the
ML server, which revalidates them with conditional GETs. Copied items keep their resolved labels;
every item whose image got a fix since the previous scrape started is resolved again before the
scrape finishes, so a fix made meanwhile shows (:func:`db.labels.resolve`, as for new items).

**The steps of a scrape** are public because :mod:`tagging.ingest.chunks` runs the same ones with
a sitemap split among queue workers: :func:`open_scrape` starts it, :func:`copy_if_unchanged`
handles an unchanged sitemap, a :class:`ScrapeJob` classifies and stores items (an
:class:`MLGate` stops sending once the ML server is taken for down), :func:`sitemap_state_of`
records the sitemap for the next scrape, and :func:`conclude` (or, on a failure,
:func:`close_scrape`) finishes it.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, Self

from sqlalchemy.orm import Session, sessionmaker

from db.advertisers import get_advertiser
from db.findings import RefreshReport
from db.labels import carry_over, load_fix_index, resolve
from db.models import Advertiser, ItemStatus, Scrape, ScrapeStatus, as_utc, utcnow
from db.scrapes import (
    LEASE,
    ScrapeCounts,
    beat,
    copy_fresh_items,
    finish_scrape,
    items_fixed_since,
    latest_scrape,
    set_counts,
    set_item_labels,
    stale_items,
    start_scrape,
    store_batch,
    thumbnail_keys,
)
from db.vocab import COLORS, DEFAULT_IMAGE_TYPE
from tagging.detectors.refresh import refresh_findings
from tagging.detectors.remedies import AUTO_CARRY_ACTOR, carry_over_fixes
from tagging.errors import MLServerError, TaggingError
from tagging.fixes import FixPushTarget, push_pending
from tagging.ingest.fetch import GuardedClient
from tagging.ingest.sitemap import SitemapDocument, SitemapLimits, read_sitemap, unchanged_documents
from tagging.ingest.sitemap import SitemapItem as ParsedItem
from tagging.server.client import MLClient
from tagging.server.schemas import MAX_KNOWN_KEYS, ClassifyResponse, ImageResult

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (items done, items in all) after each batch."""

STATE_VERSION = 1
"""Of ``Scrape.sitemap_state``: a state of another version is not trusted (a normal scrape)."""
FIX_MARGIN = timedelta(minutes=10)
"""Fixes recorded this long before a scrape started may still have been committed after it
resolved its items (a transaction in flight): they are resolved again too, to be safe."""
STALE_PAGE = 1_000
"""Items of the previous scrape read per query when re-checking an unchanged sitemap."""


@dataclass(frozen=True)
class ScrapeConfig:
    batch_size: int = 64
    """Image URLs per ``/classify`` call."""
    in_flight: int = 4
    """Batches the ML server works on while the previous one is written to the database. Four,
    not two: with two, the kernel sometimes handed both to one of the ML server's two worker
    processes and the other core idled (cold demo scrape 293 vs 271 images/s, same machine)."""
    max_consecutive_ml_failures: int = 3
    """After this many failed batches in a row the rest are not sent: the server is down."""
    trigger: str = "cli"
    requested_by: str | None = None
    """Who asked for it (the app's relaunch button); None for the CLI and schedules."""
    refresh_findings: bool = True
    """Carry fixes over and refresh the findings once the items are stored (:func:`after_scrape`).
    :func:`run_scrapes` turns it off and does it once for all its scrapes."""
    limits: SitemapLimits = field(default_factory=SitemapLimits)
    """The sitemap's caps (a change of them means the sitemap is read again in full)."""
    chunk_size: int = 500
    """Items per chunk of a scrape split among queue workers (:mod:`tagging.ingest.chunks`;
    ``TAGGING_SCRAPE_CHUNK_SIZE``). A scrape run in one process does not use it."""


@dataclass
class ScrapeSummary:
    """What a scrape did, for the CLI, the page and ``--json``."""

    scrape_id: int
    advertiser: str
    status: str
    items: int = 0
    cached: int = 0
    """Items answered from a cache: the ML server's, or copied (see ``copied``)."""
    classified: int = 0
    failed: int = 0
    ml_failures: int = 0
    carried: int = 0
    """Fixes carried over to images re-published under a new image_key (same bytes)."""
    copied: int = 0
    """Items copied from the previous scrape without asking anyone: the sitemap did not change
    and their images were fresh (they count as ``cached`` too)."""
    sitemap_unchanged: bool = False
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def counts(self) -> ScrapeCounts:
        return ScrapeCounts(
            items=self.items,
            cached=self.cached,
            classified=self.classified,
            failed=self.failed,
            ml_failures=self.ml_failures,
        )


@dataclass(frozen=True)
class PriorScrape:
    """The advertiser's previous successful scrape, when it says what its sitemap was (the
    sitemap may then be checked unchanged instead of read: :func:`copy_if_unchanged`)."""

    scrape_id: int
    started_at: datetime
    items: int
    documents: list[SitemapDocument]
    problems: list[str]

    @classmethod
    def of(
        cls, scrape: Scrape | None, color_from_feed: bool, limits: SitemapLimits
    ) -> PriorScrape | None:
        """What ``scrape`` (the previous successful one) says of its sitemap.

        Returns None when there is no such scrape, or its state cannot be trusted for this one:
        recorded by another version, under other sitemap limits, or with the other
        ``color_from_feed`` setting (the items' colors depend on it).
        """
        state = scrape.sitemap_state if scrape is not None else None
        if scrape is None or not isinstance(state, dict):
            return None
        if state.get("version") != STATE_VERSION or state.get("limits") != repr(limits):
            return None
        # The items' colors depend on it: a change of the setting needs every item again.
        if state.get("color_from_feed") != color_from_feed:
            return None
        started = as_utc(scrape.started_at)
        assert started is not None
        return cls(
            scrape_id=scrape.id,
            started_at=started,
            items=scrape.item_count,
            documents=[SitemapDocument.from_dict(d) for d in state.get("documents", [])],
            problems=[str(p) for p in state.get("problems", [])],
        )


def sitemap_state_of(
    documents: Sequence[SitemapDocument],
    problems: Sequence[str],
    config: ScrapeConfig,
    *,
    color_from_feed: bool,
) -> dict[str, Any]:
    """The sitemap state a finished scrape records (``Scrape.sitemap_state``) for the next one.

    Args:
        documents: the sitemap's documents with their validators (ETag, Last-Modified, SHA-256).
        problems: the sitemap's problems, reported again when it is found unchanged.
        config: the scrape's configuration (its sitemap limits are part of the state).
        color_from_feed: the advertiser's setting, which the stored colors depend on.
    """
    return {
        "version": STATE_VERSION,
        "documents": [d.as_dict() for d in documents],
        "problems": list(problems),
        "color_from_feed": color_from_feed,
        "limits": repr(config.limits),
    }


def run_scrape(
    sessions: sessionmaker[Session],
    advertiser_name: str,
    *,
    ml: MLClient,
    client: GuardedClient,
    config: ScrapeConfig | None = None,
    progress: Progress | None = None,
) -> ScrapeSummary:
    """Scrape one advertiser and store every item's result.

    Raises:
        NotFoundError: no such advertiser. Any other failure is recorded in the scrape.
    """
    config = config or ScrapeConfig()
    started = time.perf_counter()
    start = open_scrape(sessions, advertiser_name, ml, config)
    job, summary, sitemap_url = start.job, start.job.summary, start.sitemap_url
    job.progress = progress

    # The scrape's lease (db.scrapes.LEASE): a thread beats while this process works, so a
    # scrape whose process died stops blocking relaunches soon after.
    with Heartbeat(sessions, summary.scrape_id):
        copied = copy_if_unchanged(start, client, config)
        if copied is not None:
            since, state = copied
        else:
            try:
                sitemap = read_sitemap(sitemap_url, client, config.limits)
            except TaggingError as exc:
                summary.problems.append(f"the sitemap could not be read: {exc}")
                return close_scrape(sessions, summary, started, failed=True)
            try:
                job.classify_and_store(sitemap.items, lambda: max(sitemap.expected, summary.items))
            except TaggingError as exc:  # every document was checked whole: not expected
                summary.problems.append(f"the sitemap could not be read to its end: {exc}")
                return close_scrape(sessions, summary, started, failed=True)
            problems = [f"{p.url}: {p.message}" for p in sitemap.problems]
            summary.problems.extend(problems)
            since = start.started_at - FIX_MARGIN
            state = sitemap_state_of(
                sitemap.documents, problems, config, color_from_feed=job.color_from_feed
            )
        return conclude(job, since, started, state)


@dataclass
class StartedScrape:
    """A scrape just started: its job, where its sitemap is, and the previous scrape."""

    job: ScrapeJob
    sitemap_url: str
    started_at: datetime
    prior: PriorScrape | None


def open_scrape(
    sessions: sessionmaker[Session], advertiser_name: str, ml: MLClient, config: ScrapeConfig
) -> StartedScrape:
    """Start a scrape of the advertiser (in one transaction), with its job and previous scrape.

    The first step of :func:`run_scrape` and of a chunked scrape's coordinator
    (:func:`tagging.ingest.chunks.coordinate_scrape`).

    Raises:
        NotFoundError: no such advertiser.
    """
    with sessions.begin() as session:
        advertiser = get_advertiser(session, advertiser_name)
        prior = PriorScrape.of(
            latest_scrape(session, advertiser.id, successful=True),
            advertiser.color_from_feed,
            config.limits,
        )
        scrape = start_scrape(
            session, advertiser.id, trigger=config.trigger, requested_by=config.requested_by
        )
        summary = ScrapeSummary(
            scrape_id=scrape.id, advertiser=advertiser.name, status=ScrapeStatus.RUNNING
        )
        job = ScrapeJob(sessions, summary, advertiser.id, advertiser.color_from_feed, ml, config)
        return StartedScrape(
            job=job,
            sitemap_url=advertiser.sitemap_url,
            started_at=as_utc(scrape.started_at) or utcnow(),
            prior=prior,
        )


def copy_if_unchanged(
    start: StartedScrape, client: GuardedClient, config: ScrapeConfig
) -> tuple[datetime, dict[str, Any]] | None:
    """When the sitemap did not change since the previous scrape: copy its fresh items and check
    the others again (with ``start.job``).

    Returns:
        Since when fixes must be resolved again, and the sitemap state to record (as
        :func:`conclude` takes them); None, with nothing done, when the sitemap changed or the
        previous scrape does not say what it was.
    """
    prior, job = start.prior, start.job
    documents = unchanged_documents(prior.documents, client, config.limits) if prior else None
    if prior is None or documents is None:
        return None
    job.summary.sitemap_unchanged = True
    job.summary.problems.extend(prior.problems)
    job.copy_then_recheck(prior)
    state = sitemap_state_of(documents, prior.problems, config, color_from_feed=job.color_from_feed)
    return prior.started_at - FIX_MARGIN, state


def conclude(
    job: ScrapeJob,
    since: datetime,
    started: float,
    state: dict[str, Any] | None,
    *,
    finisher: str | None = None,
) -> ScrapeSummary:
    """The end of a scrape whose items are stored: resolve again the items fixed meanwhile, push
    the fixes carried over, carry fixes and refresh the findings (:func:`after_scrape`), finish.

    Every step can run again (a finisher that died is replaced), so a chunked scrape's fan-in
    calls it too (:func:`tagging.ingest.chunks.fan_in`).

    Args:
        since: fixes recorded from then on may have missed the stored items.
        started: ``time.perf_counter()`` when the scrape started (for its duration).
        state: the sitemap state for the next scrape (see ``Scrape.sitemap_state``).
        finisher: a chunked scrape's elected finisher: it finishes the scrape only if it is
            still the one (``db.scrapes.finish_scrape``).
    """
    sessions, summary, config = job.sessions, job.summary, job.config
    # Fixes recorded while this scrape (or the one it copied) ran: their items again.
    with sessions.begin() as session:
        job.carried += job.resolve_again(session, since)
    if summary.ml_failures:
        summary.problems.append(
            f"{summary.ml_failures} items got no answer from the ML server: relaunch the scrape"
        )
    if job.carried:  # fixes carried to re-published images: the ML cache learns them at once
        summary.carried = len(job.carried)
        push_pending(sessions, job.ml, fix_ids=job.carried)
    if config.refresh_findings:
        after_scrape(sessions, summary.scrape_id, ml=job.ml)  # carry fixes, refresh weird results
    return close_scrape(
        sessions, summary, started, failed=False, sitemap_state=state, finisher=finisher
    )


def run_scrapes(
    sessions: sessionmaker[Session],
    advertiser_names: Sequence[str],
    *,
    ml: MLClient,
    client: GuardedClient,
    config: ScrapeConfig | None = None,
    progress: Callable[[str], Progress | None] | None = None,
) -> list[ScrapeSummary]:
    """Scrape several advertisers one after another, then refresh the findings once.

    The findings' detectors compare every advertiser's latest scrape, so refreshing them once
    after the last scrape gives what one refresh per scrape would, at the cost of one. Fixes are
    carried over for each advertiser that asks for it (:func:`after_scrapes`).

    Args:
        progress: given an advertiser's name, the progress callback of its scrape.
    """
    config = config or ScrapeConfig()
    summaries = []
    quiet = replace(config, refresh_findings=False)
    for name in advertiser_names:
        summaries.append(
            run_scrape(
                sessions,
                name,
                ml=ml,
                client=client,
                config=quiet,
                progress=progress(name) if progress else None,
            )
        )
    if config.refresh_findings:
        done = [s.scrape_id for s in summaries if s.status != ScrapeStatus.FAILED]
        after_scrapes(sessions, done, ml=ml)
    return summaries


class Beat:
    """A thread that runs ``push`` in its own transaction every ``every`` seconds until the block
    ends (a heartbeat, a lease pushed forward).

    ``lost`` once a push returns False (the thing beaten for is gone, e.g. another worker took the
    lease over): the thread stops then. A push that raises is logged (``failure``) and retried at
    the next beat.
    """

    def __init__(
        self,
        push: Callable[[Session], bool],
        sessions: sessionmaker[Session],
        *,
        every: float,
        thread: str,
        failure: str,
        logger: logging.Logger | None = None,
    ) -> None:
        self.push, self.sessions, self.every, self.failure = push, sessions, every, failure
        self.lost = False
        self._log = logger or log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                with self.sessions.begin() as session:
                    if not self.push(session):
                        self.lost = True
                        return
            except Exception:  # the next beat tries again
                self._log.warning("%s", self.failure, exc_info=True)


def beat_scrape(session: Session, scrape_id: int) -> bool:
    """Beat for scrape ``scrape_id`` (a :class:`Beat`'s push: it never finds it lost)."""
    beat(session, scrape_id)
    return True


class Heartbeat(Beat):
    """A thread that beats for a running scrape every ``LEASE / 4`` until the block ends.

    ``store_batch`` beats too; this thread covers the waits between (a slow sitemap, an ML
    server at its timeout, the findings' refresh). A failed beat is logged and retried.
    """

    def __init__(self, sessions: sessionmaker[Session], scrape_id: int) -> None:
        super().__init__(
            lambda session: beat_scrape(session, scrape_id),
            sessions,
            every=LEASE.total_seconds() / 4,
            thread=f"scrape-{scrape_id}-heartbeat",
            failure=f"scrape {scrape_id}: heartbeat failed",
        )
        self.scrape_id = scrape_id


Outcome = ClassifyResponse | MLServerError


class ScrapeJob:
    """One scrape's items on their way: batches to the ML server, then to the database.

    :func:`run_scrape` has one for the whole scrape; a chunked scrape has one per chunk worker
    (with ``guard`` and ``increment`` set) and one for its fan-in (:mod:`tagging.ingest.chunks`).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        summary: ScrapeSummary,
        advertiser_id: int,
        color_from_feed: bool,
        ml: MLClient,
        config: ScrapeConfig,
    ) -> None:
        self.sessions = sessions
        self.summary = summary
        self.advertiser_id = advertiser_id
        self.color_from_feed = color_from_feed
        self.ml = ml
        self.config = config
        self.progress: Progress | None = None
        self.carried: list[int] = []
        """Fixes carried over to images whose content was fixed under another key (to push)."""
        self.guard: Callable[[Session], None] | None = None
        """Called first in every batch's transaction (a chunk's worker checks that it still
        holds its chunk); it raises to store nothing more."""
        self.increment = False
        """Add each batch's counts to the stored ones in SQL (several workers store one scrape's
        batches), instead of writing this job's running totals."""
        self._expected = 0

    def copy_then_recheck(self, prior: PriorScrape) -> None:
        """The sitemap did not change: copy the fresh items, send only the others."""
        summary = self.summary
        now = utcnow()
        with self.sessions.begin() as session:
            copied = copy_fresh_items(session, prior.scrape_id, summary.scrape_id, now)
            summary.items += copied
            summary.cached += copied
            summary.copied = copied
            set_counts(session, summary.scrape_id, summary.counts(), expected=prior.items)
        self._expected = prior.items
        if self.progress:
            self.progress(copied, prior.items)
        if copied < prior.items:
            self.classify_and_store(
                self._stale(prior.scrape_id, now), lambda: max(prior.items, summary.items)
            )

    def _stale(self, scrape_id: int, now: datetime) -> Iterator[ParsedItem]:
        """The previous scrape's items that were not copied, a page at a time."""
        after = -1
        while True:
            with self.sessions() as session:
                page = stale_items(session, scrape_id, now, after=after, limit=STALE_PAGE)
            for item in page:
                yield ParsedItem(
                    page_url=item.page_url,
                    image_url=item.image_url,
                    position=item.position,
                    title=item.title,
                    feed_color=item.feed_color,
                )
            if len(page) < STALE_PAGE:
                return
            after = page[-1].position

    def classify_and_store(
        self,
        items: Iterable[ParsedItem],
        total: Callable[[], int] | None,
        gate: MLGate | None = None,
    ) -> None:
        """Send ``items`` in batches (``in_flight`` at once) and store each batch's answers.

        After ``max_consecutive_ml_failures`` failed batches in a row, the rest are not sent
        (the server is down): they are stored as ML failures, still in batches.

        Args:
            total: how many items the scrape has (it may grow as the sitemap is read), for the
                progress; None when someone else keeps it (a chunk of a scrape).
            gate: closed already, nothing is sent: every item is stored as an ML failure.
        """
        summary, config = self.summary, self.config
        gate = gate or MLGate()
        consecutive_failures = 0
        batches = _classified_batches(
            items,
            self.ml,
            config,
            color=not self.color_from_feed,
            advertiser=summary.advertiser,
            known_keys=self._known_keys,
            gate=gate,
        )
        for batch, outcome in batches:
            if isinstance(outcome, MLServerError):
                consecutive_failures += 1
            else:
                consecutive_failures = 0
            expected = total() if total is not None else self._expected
            with self.sessions.begin() as session:
                if self.guard is not None:
                    self.guard(session)
                self.carried += _store_batch(
                    session,
                    summary,
                    self.advertiser_id,
                    batch,
                    outcome,
                    self.color_from_feed,
                    increment=self.increment,
                )
                if expected != self._expected:
                    set_counts(session, summary.scrape_id, summary.counts(), expected=expected)
                    self._expected = expected
            if self.progress and expected:
                self.progress(min(summary.items, expected), expected)
            if consecutive_failures >= config.max_consecutive_ml_failures and gate.closed is None:
                gate.closed = MLServerError(
                    f"not sent: the ML server failed {consecutive_failures} batches in a row "
                    f"({outcome})"
                )

    def _known_keys(self, urls: Collection[str]) -> set[str]:
        with self.sessions() as session:
            return thumbnail_keys(session, urls)

    def resolve_again(self, session: Session, since: datetime) -> list[int]:
        """Resolve again the items whose image got a fix at or after ``since``.

        Returns the ids of fixes carried over (as :func:`_store_batch` does).
        """
        rows = items_fixed_since(session, self.summary.scrape_id, since)
        if not rows:
            return []
        index = load_fix_index(
            session,
            image_keys=[r.image_key for r in rows],
            sha256s=[r.sha256 for r in rows if r.sha256],
        )
        changed: list[dict[str, Any]] = []
        to_carry = []
        for row in rows:
            resolution = resolve(
                index,
                advertiser_id=self.advertiser_id,
                image_key=row.image_key,
                sha256=row.sha256,
                ml_image_type=row.ml_image_type,
                ml_color=row.ml_color,
                ml_answered=row.status == ItemStatus.OK,
                feed_color=_normalize_color(row.feed_color),
                color_from_feed=self.color_from_feed,
            )
            labels = {
                "image_type": resolution.image_type,
                "image_type_source": resolution.image_type_source,
                "color": resolution.color,
                "color_source": resolution.color_source,
            }
            current = (row.image_type, row.image_type_source, row.color, row.color_source)
            if tuple(labels.values()) != current:
                changed.append({"id": row.id, **labels})
            to_carry += [
                (f, row.image_key, row.image_url, self.advertiser_id) for f in resolution.carried
            ]
        set_item_labels(session, changed)
        return carry_over(session, to_carry) if to_carry else []


@dataclass
class MLGate:
    """Closed (with the reason) once the ML server is taken for down: no more batches go out."""

    closed: MLServerError | None = None


def _batches(items: Iterable[ParsedItem], size: int) -> Iterator[list[ParsedItem]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _classified_batches(
    items: Iterable[ParsedItem],
    ml: MLClient,
    config: ScrapeConfig,
    *,
    color: bool,
    advertiser: str | None = None,
    known_keys: Callable[[Collection[str]], Collection[str]] | None = None,
    gate: MLGate | None = None,
) -> Iterator[tuple[list[ParsedItem], Outcome]]:
    """Yield each batch with the ML server's answer, keeping ``in_flight`` calls running ahead.

    Items are taken from ``items`` only as batches are sent, so no more than ``in_flight + 1``
    batches are held. Stops sending new calls as soon as the consumer stops iterating, and sends
    none once ``gate`` is closed (each batch then gets the gate's reason).
    """
    gate = gate or MLGate()

    def call(batch: list[ParsedItem], known: Collection[str]) -> Outcome:
        if gate.closed is not None:
            return gate.closed
        urls = list(dict.fromkeys(item.image_url for item in batch))
        try:
            return ml.classify(urls, color=color, advertiser=advertiser, known_keys=known)
        except MLServerError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=config.in_flight, thread_name_prefix="scrape") as pool:
        pending: deque[tuple[list[ParsedItem], Future[Outcome]]] = deque()
        try:
            for batch in _batches(items, config.batch_size):
                known: Collection[str] = ()
                if known_keys is not None and gate.closed is None:
                    # Past the cap (many versions of the same URLs) thumbnails just come again.
                    known = sorted(known_keys({item.image_url for item in batch}))
                    known = known[:MAX_KNOWN_KEYS]
                pending.append((batch, pool.submit(call, batch, known)))
                if len(pending) >= config.in_flight:
                    done_batch, future = pending.popleft()
                    yield done_batch, future.result()
            while pending:
                done_batch, future = pending.popleft()
                yield done_batch, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def _store_batch(
    session: Session,
    summary: ScrapeSummary,
    advertiser_id: int,
    batch: list[ParsedItem],
    outcome: Outcome,
    color_from_feed: bool,
    *,
    increment: bool = False,
) -> list[int]:
    """Store one batch; every item's values resolved from the fixes this database holds.

    Returns the ids of the fixes carried over to images whose content was fixed under another
    image_key (recorded as ``carry_over``, to push).

    Args:
        increment: add this batch's counts to the stored ones in SQL (see ``ScrapeJob.increment``);
            ``summary`` still gets them added.
    """
    now = utcnow()
    before = summary.counts()
    results: dict[str, ImageResult] = (
        {r.url: r for r in outcome.results} if isinstance(outcome, ClassifyResponse) else {}
    )
    rows: list[dict[str, Any]] = []
    images: dict[str, dict[str, Any]] = {}
    thumbnails: dict[str, dict[str, Any]] = {}
    for item in batch:
        result = results.get(item.image_url)
        feed_color = _normalize_color(item.feed_color)
        # The defaults' confidence is None: no model chose them (they sort last by confidence).
        confidence: float | None = None
        probabilities: dict[str, float] | None = None
        if result is None:
            status, error = ItemStatus.ML_FAILURE, str(outcome)
            ml_type, ml_color = DEFAULT_IMAGE_TYPE, None
            summary.ml_failures += 1
        elif result.error:
            status, error = ItemStatus.ERROR, result.error
            ml_type, ml_color = DEFAULT_IMAGE_TYPE, None
        else:
            status, error = ItemStatus.OK, None
            # The model's own answer: what the ML server says for this advertiser may carry
            # fixes, which this database resolves itself below (it is the system of record).
            ml_type = result.ml_image_type or result.image_type or DEFAULT_IMAGE_TYPE
            ml_color = result.ml_color if result.ml_image_type is not None else result.color
            confidence, probabilities = result.confidence, result.probabilities
        if status != ItemStatus.OK:
            summary.failed += 1
        elif result is not None and result.cached:
            summary.cached += 1
        else:
            summary.classified += 1
        rows.append(
            {
                "scrape_id": summary.scrape_id,
                "advertiser_id": advertiser_id,
                "position": item.position,
                "page_url": item.page_url,
                "image_url": item.image_url,
                "title": item.title,
                "image_key": result.image_key if result else None,
                "ml_image_type": ml_type,
                "ml_color": ml_color,
                "ml_confidence": confidence,
                "ml_probabilities": probabilities,
                "feed_color": item.feed_color,
                "image_type": ml_type,
                "color": feed_color if color_from_feed else ml_color,
                "status": status,
                "error": error,
                "cached": bool(result and result.cached),
                "model_version": result.model_version if result else None,
                "color_model_version": result.color_model_version if result else None,
            }
        )
        if result is not None and result.image_key and not result.error:
            images[result.image_key] = {
                "image_key": result.image_key,
                "url": result.url,
                "etag": result.etag,
                "last_modified": result.last_modified,
                "content_length": result.content_length,
                "sha256": result.sha256,
                "phash": result.phash,
                "width": result.width,
                "height": result.height,
                "first_seen": now,
                "last_seen": now,
                "fresh_until": as_utc(result.fresh_until),
            }
            if result.thumbnail_b64:
                thumbnails[result.image_key] = {
                    "image_key": result.image_key,
                    "jpeg": base64.b64decode(result.thumbnail_b64),
                }
    shas = {key: image["sha256"] for key, image in images.items()}
    index = load_fix_index(
        session,
        image_keys=[r["image_key"] for r in rows if r["image_key"]],
        sha256s=[s for s in shas.values() if s],
    )
    to_carry = []
    for row in rows:
        resolution = resolve(
            index,
            advertiser_id=advertiser_id,
            image_key=row["image_key"],
            sha256=shas.get(row["image_key"]),
            ml_image_type=row["ml_image_type"],
            ml_color=row["ml_color"],
            ml_answered=row["status"] == ItemStatus.OK,
            feed_color=_normalize_color(row["feed_color"]),
            color_from_feed=color_from_feed,
        )
        row["image_type"], row["image_type_source"] = (
            resolution.image_type,
            resolution.image_type_source,
        )
        row["color"], row["color_source"] = resolution.color, resolution.color_source
        to_carry += [
            (f, row["image_key"], row["image_url"], advertiser_id) for f in resolution.carried
        ]
    summary.items += len(batch)
    after = summary.counts()
    counts = (
        ScrapeCounts(*(getattr(after, f) - getattr(before, f) for f in _COUNT_FIELDS))
        if increment
        else after
    )
    store_batch(
        session,
        summary.scrape_id,
        counts,
        rows,
        list(images.values()),
        list(thumbnails.values()),
        add=increment,
    )
    return carry_over(session, to_carry) if to_carry else []


_COUNT_FIELDS = ("items", "cached", "classified", "failed", "ml_failures")


def _normalize_color(value: str | None) -> str | None:
    """A feed color as one of COLORS when it names one (any case), else as given."""
    if value is None:
        return None
    for color in COLORS:
        if color.lower() == value.strip().lower():
            return color
    return value.strip() or None


def close_scrape(
    sessions: sessionmaker[Session],
    summary: ScrapeSummary,
    started: float,
    *,
    failed: bool,
    sitemap_state: dict[str, Any] | None = None,
    finisher: str | None = None,
) -> ScrapeSummary:
    """Record the end of a scrape: its status, counts, duration and problems (one transaction).

    :func:`conclude` calls it once the items are stored; a scrape whose sitemap could not be
    read calls it directly, with ``failed``.

    Args:
        started: ``time.perf_counter()`` when the scrape started (for its duration).
        failed: the scrape failed as a whole; otherwise its status says whether items failed.
        sitemap_state: the sitemap state for the next scrape (:func:`sitemap_state_of`).
        finisher: a chunked scrape's elected finisher (see :func:`conclude`).

    Returns:
        ``summary``, with its status and duration set.
    """
    summary.seconds = round(time.perf_counter() - started, 3)
    if failed:
        summary.status = ScrapeStatus.FAILED
    elif summary.failed:
        summary.status = ScrapeStatus.COMPLETED_WITH_ERRORS
    else:
        summary.status = ScrapeStatus.SUCCEEDED
    with sessions.begin() as session:
        finish_scrape(
            session,
            summary.scrape_id,
            status=summary.status,
            counts=summary.counts(),
            seconds=summary.seconds,
            error="\n".join(summary.problems)[:10_000] or None,
            sitemap_state=sitemap_state,
            finisher=finisher,
        )
    return summary


# --- after a scrape ------------------------------------------------------------------------------


@dataclass
class AfterScrape:
    """What :func:`after_scrape` did."""

    carried_fix_ids: list[int] = field(default_factory=list)
    refresh: RefreshReport | None = None
    pushed: int = 0


def after_scrapes(
    sessions: sessionmaker[Session], scrape_ids: Sequence[int], *, ml: FixPushTarget | None = None
) -> AfterScrape | None:
    """:func:`after_scrape` for several finished scrapes: fixes carried over for each advertiser
    that asks for it, then one refresh of every finding. Never fails (None on a problem)."""
    try:
        result = AfterScrape()
        with sessions.begin() as session:
            for scrape_id in scrape_ids:
                scrape = session.get(Scrape, scrape_id)
                if scrape is None:
                    continue
                advertiser = session.get_one(Advertiser, scrape.advertiser_id)
                if advertiser.auto_carry_fixes:
                    outcome = carry_over_fixes(
                        session, AUTO_CARRY_ACTOR, advertiser_id=advertiser.id, scrape_id=scrape_id
                    )
                    result.carried_fix_ids += outcome.fix_ids
            if scrape_ids:
                result.refresh = refresh_findings(session)
        if result.carried_fix_ids and ml is not None:
            result.pushed = push_pending(sessions, ml, fix_ids=result.carried_fix_ids).synced
        return result
    except Exception:
        log.exception("weird-result findings of scrapes %s were not refreshed", list(scrape_ids))
        return None


def after_scrape(
    sessions: sessionmaker[Session], scrape_id: int, *, ml: FixPushTarget | None = None
) -> AfterScrape | None:
    """Carry fixes over (if the advertiser asks for it) and refresh the findings.

    :func:`run_scrape` calls it once its items are stored. It never fails the scrape: a problem
    is logged and None returned (the next scrape or fix refreshes again).

    Args:
        ml: the scrape's ML client, to push carried-over fixes at once; without it the worker's
            periodic push sends them.
    """
    try:
        result = AfterScrape()
        with sessions.begin() as session:
            scrape = session.get(Scrape, scrape_id)
            if scrape is None:
                return None
            advertiser = session.get_one(Advertiser, scrape.advertiser_id)
            if advertiser.auto_carry_fixes:
                outcome = carry_over_fixes(
                    session, AUTO_CARRY_ACTOR, advertiser_id=advertiser.id, scrape_id=scrape_id
                )
                result.carried_fix_ids = outcome.fix_ids
            result.refresh = refresh_findings(
                session, advertiser_id=advertiser.id, scrape_id=scrape_id
            )
        if result.carried_fix_ids and ml is not None:
            result.pushed = push_pending(sessions, ml, fix_ids=result.carried_fix_ids).synced
        return result
    except Exception:
        # Findings are advisory: a bug or a database hiccup here must not lose a whole scrape.
        log.exception("weird-result findings of scrape %s were not refreshed", scrape_id)
        return None
