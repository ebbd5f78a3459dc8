"""Run every detector over the database's facts and store what they find."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor, Permission, require
from db.findings import RefreshReport, store_candidates
from tagging.detectors.base import DEFAULT_THRESHOLDS, Thresholds
from tagging.detectors.facts import load_facts
from tagging.detectors.registry import detect_all

_log = logging.getLogger(__name__)


def refresh_findings(
    session: Session,
    *,
    advertiser_id: int | None = None,
    scrape_id: int | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    now: datetime | None = None,
) -> RefreshReport:
    """Run every detector and bring the stored findings up to date (in the caller's transaction).

    Call it after each scrape (:func:`tagging.ingest.scrape.after_scrape` does) and after each
    batch of fixes (:func:`tagging.fixes.record_fixes` does).

    Args:
        advertiser_id: recompute only this advertiser's own findings; the detectors comparing
            advertisers (shared CDN, near-duplicates, criteria) are always recomputed in full.
        scrape_id: a scrape to treat as finished (see :func:`load_facts`).
    """
    facts = load_facts(
        session, advertiser_id=advertiser_id, scrape_id=scrape_id, thresholds=thresholds
    )
    candidates = detect_all(facts, thresholds)
    return store_candidates(session, candidates, advertiser_id=advertiser_id, now=now)


def recompute_findings(sessions: sessionmaker[Session], actor: Actor | None) -> RefreshReport:
    """Run every detector now over every advertiser, as a user action (one transaction).

    Raises:
        PermissionDenied: ``actor`` may not fix.
    """
    require(actor, Permission.FIX)
    with sessions.begin() as session:
        return refresh_findings(session)


class BackgroundRefresh:
    """Findings refreshed off the user's path: after a fix, the page answers at once and the
    detectors (whose cross-advertiser ones read every scrape) run in a thread.

    Requests made while a refresh runs are coalesced into one more run, so a burst of Updates
    costs two refreshes, not one per click. ``on_done`` runs after each refresh (the app clears
    its query caches there, so the next look shows the new findings).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        on_done: Callable[[], None],
        *,
        delay_seconds: float = 1.0,
    ) -> None:
        self._sessions = sessions
        self._on_done = on_done
        # The page's own rerun comes first: the detectors' CPU would slow the very answer the
        # user waits for (they share the process, and its GIL).
        self._delay = delay_seconds
        self._lock = threading.Lock()
        self._running = False
        self._again = False
        self._advertisers: set[int | None] = set()

    def request(self, advertiser_ids: Iterable[int]) -> None:
        """Refresh these advertisers' findings (and the cross-advertiser ones) soon."""
        with self._lock:
            ids = set(advertiser_ids)
            self._advertisers |= ids if len(ids) == 1 else {None}
            if self._running:
                self._again = True
                return
            self._running = True
        threading.Thread(target=self._run, name="findings-refresh", daemon=True).start()

    def _run(self) -> None:
        time.sleep(self._delay)
        while True:
            with self._lock:
                targets, self._advertisers = self._advertisers, set()
                self._again = False
            try:
                # One advertiser: its own findings; several (or unknown): everyone's.
                target = next(iter(targets)) if len(targets) == 1 else None
                with self._sessions.begin() as session:
                    refresh_findings(session, advertiser_id=target)
                self._on_done()
            except Exception:  # a refresh that fails is retried by the next fix or scrape
                _log.exception("findings refresh after a fix failed")
            with self._lock:
                if not self._again:
                    self._running = False
                    return

    def wait(self, timeout: float = 30.0) -> bool:
        """Wait until no refresh runs (tests, shutdown); True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    return True
            time.sleep(0.02)
        return False
