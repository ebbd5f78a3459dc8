"""Scrapes: an advertiser's sitemap → batches to the ML server → one transaction per batch.

A scrape never aborts because of one bad image or an ML outage: a failing image gets the seed's
defaults (Image Type "Placeholder", Color None) with an ``error`` status, and items the ML server
could not classify get them with an ``ml_failure`` status. The next scrape retries exactly those,
because the ML server caches only what it classified.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db.advertisers import get_advertiser
from db.findings import RefreshReport
from db.labels import carry_over, load_fix_index, resolve
from db.models import Advertiser, ItemStatus, Scrape, ScrapeStatus, utcnow
from db.scrapes import (
    LEASE,
    ScrapeCounts,
    beat,
    finish_scrape,
    set_expected_items,
    start_scrape,
    store_batch,
)
from db.vocab import COLORS, DEFAULT_IMAGE_TYPE
from tagging.detectors.refresh import refresh_findings
from tagging.detectors.remedies import AUTO_CARRY_ACTOR, carry_over_fixes
from tagging.errors import MLServerError, TaggingError
from tagging.fixes import FixPushTarget, push_pending
from tagging.ingest.fetch import GuardedClient
from tagging.ingest.sitemap import SitemapItem as ParsedItem
from tagging.ingest.sitemap import read_sitemap
from tagging.server.client import MLClient
from tagging.server.schemas import ClassifyResponse, ImageResult

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (items done, items in all) after each batch."""


@dataclass(frozen=True)
class ScrapeConfig:
    batch_size: int = 64
    """Image URLs per ``/classify`` call."""
    in_flight: int = 2
    """Batches the ML server works on while the previous one is written to the database."""
    max_consecutive_ml_failures: int = 3
    """After this many failed batches in a row the rest are not sent: the server is down."""
    trigger: str = "cli"
    requested_by: str | None = None
    """Who asked for it (the app's relaunch button); None for the CLI and schedules."""


@dataclass
class ScrapeSummary:
    """What a scrape did, for the CLI, the page and ``--json``."""

    scrape_id: int
    advertiser: str
    status: str
    items: int = 0
    cached: int = 0
    classified: int = 0
    failed: int = 0
    ml_failures: int = 0
    carried: int = 0
    """Fixes carried over to images re-published under a new image_key (same bytes)."""
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
    with sessions.begin() as session:
        advertiser = get_advertiser(session, advertiser_name)
        scrape = start_scrape(
            session, advertiser.id, trigger=config.trigger, requested_by=config.requested_by
        )
        summary = ScrapeSummary(
            scrape_id=scrape.id, advertiser=advertiser.name, status=ScrapeStatus.RUNNING
        )
        advertiser_id, sitemap_url = advertiser.id, advertiser.sitemap_url
        color_from_feed = advertiser.color_from_feed

    # The scrape's lease (db.scrapes.LEASE): a thread beats while this process works, so a
    # scrape whose process died stops blocking relaunches soon after.
    with Heartbeat(sessions, summary.scrape_id):
        try:
            sitemap = read_sitemap(sitemap_url, client)
        except TaggingError as exc:
            summary.problems.append(f"the sitemap could not be read: {exc}")
            return _finish(sessions, summary, started, failed=True)
        summary.problems.extend(f"{p.url}: {p.message}" for p in sitemap.problems)

        items = sitemap.items
        total = len(items)
        with sessions.begin() as session:
            set_expected_items(session, summary.scrape_id, total)
        if progress:
            progress(0, total)
        consecutive_failures = 0
        carried: list[int] = []
        batches = _classified_batches(
            items, ml, config, color=not color_from_feed, advertiser=summary.advertiser
        )
        for batch, outcome in batches:
            if isinstance(outcome, MLServerError):
                consecutive_failures += 1
            else:
                consecutive_failures = 0
            with sessions.begin() as session:
                carried += _store_batch(
                    session, summary, advertiser_id, batch, outcome, color_from_feed
                )
            if progress:
                progress(min(summary.items, total), total)
            if consecutive_failures >= config.max_consecutive_ml_failures:
                rest = items[summary.items :]
                if rest:
                    reason = MLServerError(
                        f"not sent: the ML server failed {consecutive_failures} batches in a row "
                        f"({outcome})"
                    )
                    with sessions.begin() as session:
                        _store_batch(session, summary, advertiser_id, rest, reason, color_from_feed)
                    if progress:
                        progress(total, total)
                break
        if summary.ml_failures:
            summary.problems.append(
                f"{summary.ml_failures} items got no answer from the ML server: relaunch the scrape"
            )
        if carried:  # fixes carried to re-published images: the ML cache learns them at once
            summary.carried = len(carried)
            push_pending(sessions, ml, fix_ids=carried)
        after_scrape(sessions, summary.scrape_id, ml=ml)  # carry fixes over, refresh weird results
        return _finish(sessions, summary, started, failed=False)


class Heartbeat:
    """A thread that beats for a running scrape every ``LEASE / 4`` until the block ends.

    ``store_batch`` beats too; this thread covers the waits between (a slow sitemap, an ML
    server at its timeout, the findings' refresh). A failed beat is logged and retried.
    """

    def __init__(self, sessions: sessionmaker[Session], scrape_id: int) -> None:
        self.sessions, self.scrape_id = sessions, scrape_id
        self.every = LEASE.total_seconds() / 4
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"scrape-{scrape_id}-heartbeat", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                with self.sessions.begin() as session:
                    beat(session, self.scrape_id)
            except Exception:  # the next beat tries again
                log.warning("scrape %s: heartbeat failed", self.scrape_id, exc_info=True)


Outcome = ClassifyResponse | MLServerError


def _classified_batches(
    items: list[ParsedItem],
    ml: MLClient,
    config: ScrapeConfig,
    *,
    color: bool,
    advertiser: str | None = None,
) -> Iterator[tuple[list[ParsedItem], Outcome]]:
    """Yield each batch with the ML server's answer, keeping ``in_flight`` calls running ahead.

    Stops sending new calls as soon as the consumer stops iterating.
    """
    batches = [items[i : i + config.batch_size] for i in range(0, len(items), config.batch_size)]

    def call(batch: list[ParsedItem]) -> Outcome:
        urls = list(dict.fromkeys(item.image_url for item in batch))
        try:
            return ml.classify(urls, color=color, advertiser=advertiser)
        except MLServerError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=config.in_flight, thread_name_prefix="scrape") as pool:
        pending: list[tuple[list[ParsedItem], Future[Outcome]]] = []
        queue = iter(batches)
        try:
            for batch in queue:
                pending.append((batch, pool.submit(call, batch)))
                if len(pending) >= config.in_flight:
                    done_batch, future = pending.pop(0)
                    yield done_batch, future.result()
            while pending:
                done_batch, future = pending.pop(0)
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
) -> list[int]:
    """Store one batch; every item's values resolved from the fixes this database holds.

    Returns the ids of the fixes carried over to images whose content was fixed under another
    image_key (recorded as ``carry_over``, to push).
    """
    now = utcnow()
    results: dict[str, ImageResult] = (
        {r.url: r for r in outcome.results} if isinstance(outcome, ClassifyResponse) else {}
    )
    rows: list[dict[str, Any]] = []
    images: dict[str, dict[str, Any]] = {}
    thumbnails: dict[str, dict[str, Any]] = {}
    for item in batch:
        result = results.get(item.image_url)
        feed_color = _normalize_color(item.feed_color)
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
    store_batch(
        session,
        summary.scrape_id,
        summary.counts(),
        rows,
        list(images.values()),
        list(thumbnails.values()),
    )
    return carry_over(session, to_carry) if to_carry else []


def _normalize_color(value: str | None) -> str | None:
    """A feed color as one of COLORS when it names one (any case), else as given."""
    if value is None:
        return None
    for color in COLORS:
        if color.lower() == value.strip().lower():
            return color
    return value.strip() or None


def _finish(
    sessions: sessionmaker[Session], summary: ScrapeSummary, started: float, *, failed: bool
) -> ScrapeSummary:
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
        )
    return summary


# --- after a scrape ------------------------------------------------------------------------------


@dataclass
class AfterScrape:
    """What :func:`after_scrape` did."""

    carried_fix_ids: list[int] = field(default_factory=list)
    refresh: RefreshReport | None = None
    pushed: int = 0


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
