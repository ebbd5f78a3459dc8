"""Manual fixes as a user action: record them, refresh the findings, push them to the ML server.

The one use case the review page, the Weird results page, the advertisers' API and the CLI share:

* :func:`record_fixes` writes the history rows (pending sync) and the items in the caller's
  transaction, and recomputes the weird-result findings the fixes may settle or raise;
* :func:`push_pending` sends pending fixes to the ML server's cache until it acknowledges them
  (the fix id travels with each push, so a retry never applies a fix twice);
* :func:`save_fixes` and :func:`run_fix_action` do both, as one user action: one transaction,
  then the push.

Storage (the history rows and their sync state) is :mod:`db.fixes`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor, account_actor
from db.advertisers import get_advertiser
from db.datasets import queue_archive
from db.fixes import (
    FIELDS,
    FixChange,
    FixOutcome,
    PendingFix,
    apply_fixes,
    count_pending,
    fixes_by_id,
    mark_current_fixes_pending,
    mark_push_failed,
    mark_synced,
    pending_fixes,
    read_sync_state,
    validate_change,
    write_sync_state,
)
from db.models import FixSource
from db.scrapes import find_item, latest_scrape
from tagging.detectors.refresh import refresh_findings
from tagging.errors import (
    InvalidInput,
    MLServerError,
    MLServerUnavailable,
    NotFoundError,
    PermissionDenied,
)
from tagging.server.schemas import FixResult, Health, ImageFix


class FixPushTarget(Protocol):
    """Where fixes are pushed: the ML server's cache (:class:`tagging.server.client.MLClient`)."""

    def put_fix(self, image_key: str, fix: ImageFix) -> FixResult: ...


class MLCacheTarget(FixPushTarget, Protocol):
    """The ML server, which also says which generation of its cache it serves."""

    def health(self) -> Health: ...


GENERATION_KEY = "ml_cache_generation"
"""The :class:`~db.models.SyncState` key of the ML cache generation the app last filled."""


@dataclass
class PushReport:
    """What one :func:`push_pending` run did."""

    synced: int = 0
    failed: int = 0
    pending: int = 0
    """Still pending after the run."""
    error: str | None = None
    """Why pushing stopped early (the ML server is down), if it did."""


@dataclass(frozen=True)
class SavedFixes:
    """What one user action recorded (:attr:`outcome`) and how its push went."""

    outcome: FixOutcome | None
    """None for an action that records no fixes (such as ignoring a finding)."""
    push: PushReport | None
    """None when the action recorded no fix (nothing to push)."""

    @property
    def fix_ids(self) -> list[int]:
        return self.outcome.fix_ids if self.outcome is not None else []

    @property
    def push_error(self) -> str | None:
        """None when every new fix reached the ML server, else why some wait (retried later)."""
        if self.push is None or self.push.synced >= len(self.fix_ids):
            return None
        return self.push.error or "the ML server did not acknowledge every fix"


def record_fixes(
    session: Session,
    actor: Actor | None,
    changes: Sequence[FixChange],
    *,
    source: FixSource = FixSource.ANALYST,
    advertiser_id: int | None = None,
    refresh: bool = True,
) -> FixOutcome:
    """Record ``changes`` and refresh the findings they touch, in the caller's transaction
    (unless ``refresh`` is False: the caller refreshes them later, off the user's path, with
    :class:`tagging.detectors.refresh.BackgroundRefresh`).

    See :func:`db.fixes.apply_fixes` for the rules and the errors.
    """
    outcome = apply_fixes(session, actor, changes, source=source, advertiser_id=advertiser_id)
    # A fixed image is a training candidate: queue its bytes for the dataset archive in this same
    # transaction (one insert, no network), so the fix is never slowed down nor lost by the fetch,
    # which a later round does (tagging.datasets.service.archive_pending).
    queue_archive(session, outcome.fix_ids)
    if outcome.fix_ids and refresh:
        touched = outcome.advertiser_ids
        refresh_findings(session, advertiser_id=next(iter(touched)) if len(touched) == 1 else None)
    return outcome


def run_fix_action(
    sessions: sessionmaker[Session],
    ml: FixPushTarget,
    action: Callable[[Session], FixOutcome | None],
    *,
    advertiser_id: int | None = None,
) -> SavedFixes:
    """One user action that records fixes: ``action`` and a findings refresh in one transaction,
    then the push of whatever fixes it recorded.

    ``action`` is a remedy or :func:`db.fixes.apply_fixes` bound to its arguments; it may return
    None (a remedy that records no fix, such as "ignore").
    """
    with sessions.begin() as session:
        outcome = action(session)
        if outcome is not None:
            queue_archive(session, outcome.fix_ids)  # as in record_fixes
        refresh_findings(session, advertiser_id=advertiser_id)
    fix_ids = outcome.fix_ids if outcome is not None else []
    push = push_pending(sessions, ml, fix_ids=fix_ids) if fix_ids else None
    return SavedFixes(outcome, push)


def save_fixes(
    sessions: sessionmaker[Session],
    ml: FixPushTarget,
    actor: Actor | None,
    changes: Sequence[FixChange],
    *,
    source: FixSource = FixSource.ANALYST,
    advertiser_id: int | None = None,
    refresh: bool = True,
) -> SavedFixes:
    """Record ``changes`` in one transaction (:func:`record_fixes`), then push them."""
    with sessions.begin() as session:
        outcome = record_fixes(
            session, actor, changes, source=source, advertiser_id=advertiser_id, refresh=refresh
        )
    push = push_pending(sessions, ml, fix_ids=outcome.fix_ids) if outcome.fix_ids else None
    return SavedFixes(outcome, push)


def undo_fixes(
    sessions: sessionmaker[Session],
    ml: FixPushTarget,
    actor: Actor | None,
    fix_ids: Sequence[int],
    *,
    refresh: bool = True,
) -> SavedFixes:
    """Undo an update: record the fixes that put back what ``fix_ids`` replaced, in one
    transaction, then push them. The history keeps both, the fixes and their undoing.

    Each reverting fix expects the value its fix set: when someone else has changed the image
    since, the undo still wins but is reported as a race (:class:`db.fixes.RaceNotice`). A
    color that was none (a placeholder's) goes back to none.

    Raises:
        AuthenticationError, PermissionDenied: no signed-in user may fix, or a fix is not the
            user's own.
        NotFoundError: a fix is not in the history.
        InvalidInput: a fix is not of an item shown in the review (an import or the API's), or
            it replaced a value no fix can set (a feed's own color): nothing is undone.
    """
    wanted = set(fix_ids)
    if actor is None:
        raise PermissionDenied("sign in to undo fixes")
    with sessions.begin() as session:
        fixes = fixes_by_id(session, sorted(wanted))
        if {f.id for f in fixes} != wanted:
            raise NotFoundError("a fix to undo is no longer in the history")
        changes: list[FixChange] = []
        for fix in fixes:
            if fix.user != actor.username:
                raise PermissionDenied(f"fix {fix.id} is {fix.user}'s: undo only your own fixes")
            if fix.sitemap_item_id is None:
                raise InvalidInput(f"fix {fix.id} is of no sitemap item: it cannot be undone here")
            restorable = FIELDS.get(fix.field, ())
            if fix.old_value is not None and fix.old_value not in restorable:
                # A feed's own color ("Bordeaux") or a legacy value: no fix can set it, nor can
                # the ML cache carry it. Refused whole, so nothing is half undone.
                raise InvalidInput(
                    f"the undo would have to put back {fix.field} {fix.old_value!r}, which no "
                    "fix can set: change the image by hand instead"
                )
            changes.append(
                FixChange(
                    fix.sitemap_item_id,
                    fix.field,
                    fix.old_value,
                    seen_value=fix.new_value,
                    implied=fix.field == "color" and fix.old_value is None,
                )
            )
        outcome = record_fixes(session, actor, changes, refresh=refresh)
    push = push_pending(sessions, ml, fix_ids=outcome.fix_ids) if outcome.fix_ids else None
    return SavedFixes(outcome, push)


def fix_body(fix: PendingFix) -> ImageFix:
    """What the ML cache is told of one fix: its uid, when, whose, and the new value."""
    values: dict[str, object] = {
        "fix_id": fix.uid,
        "fixed_at": fix.created_at,
        "advertiser": fix.advertiser,
        "url": fix.image_url,
    }
    if fix.field == "color" and fix.new_value is None:
        values["clear_color"] = True  # a placeholder has no color
    else:
        values[fix.field] = fix.new_value
    return ImageFix.model_validate(values)


def push_pending(
    sessions: sessionmaker[Session],
    ml: FixPushTarget,
    *,
    fix_ids: Sequence[int] | None = None,
    limit: int = 1000,
) -> PushReport:
    """Send pending fixes to the ML server's cache, oldest first, until it fails.

    Safe to run from several processes at once: a fix pushed twice is applied once, because
    its id travels with it. Each acknowledgement is committed on its own, so nothing acknowledged
    is ever sent again after a crash, and nothing unacknowledged is marked synced.

    Args:
        fix_ids: only these (the ones a user just made); default every pending fix.
    """
    report = PushReport()
    with sessions() as session:
        pending = pending_fixes(session, fix_ids=fix_ids, limit=limit)
    for fix in pending:
        # The field name is data (image_type or color), so validate a mapping, not keywords.
        body = fix_body(fix)
        try:
            ml.put_fix(fix.image_key, body)
        except MLServerError as exc:
            with sessions.begin() as session:
                mark_push_failed(session, fix.id, str(exc))
            report.failed += 1
            if isinstance(exc, MLServerUnavailable):
                report.error = str(exc)
                break  # The server is down: the rest would fail the same way.
            continue
        with sessions.begin() as session:
            mark_synced(session, fix.id)
        report.synced += 1
    with sessions() as session:
        report.pending = count_pending(session)
    return report


def push_all(sessions: sessionmaker[Session], ml: FixPushTarget) -> PushReport:
    """Push every current fix and override again (``python -m tagging sync --all``).

    What the app does when the ML cache lost its memory: the app database is the system of
    record, and the cache ignores a fix id it still remembers, so pushing again is always safe.
    """
    with sessions.begin() as session:
        mark_current_fixes_pending(session)
    return _push_until_done(sessions, ml)


def sync_fixes(sessions: sessionmaker[Session], ml: MLCacheTarget) -> PushReport:
    """The worker's round: push pending fixes; if the ML cache is a new generation (it started
    empty), push every current fix again first, and remember the generation once all landed.

    Raises:
        MLServerError: the ML server cannot be reached (nothing is marked synced).
    """
    generation = ml.health().cache_generation
    with sessions() as session:
        known = read_sync_state(session, GENERATION_KEY)
    if known == generation:
        return _push_until_done(sessions, ml)
    report = push_all(sessions, ml)
    if report.pending == 0 and report.error is None:
        with sessions.begin() as session:
            write_sync_state(session, GENERATION_KEY, generation)
    return report


def _push_until_done(sessions: sessionmaker[Session], ml: FixPushTarget) -> PushReport:
    total = PushReport()
    while True:
        report = push_pending(sessions, ml)
        total.synced += report.synced
        total.failed += report.failed
        total.pending, total.error = report.pending, report.error
        if report.error is not None or report.synced == 0 or report.pending == 0:
            return total


# --- importing fixes from a file -----------------------------------------------------------------

CSV_COLUMNS = ("advertiser", "field", "value")
"""Required columns of a fixes CSV, besides ``image_url`` or ``image_key``."""


def import_fixes_csv(
    sessions: sessionmaker[Session],
    ml: FixPushTarget | None,
    username: str,
    text: str,
) -> SavedFixes:
    """Record team fixes from a CSV (``advertiser, image_url, field, value``; ``image_key`` may
    replace ``image_url``) as ``username``, all in one transaction, then push them.

    Each row names an image of the advertiser's latest successful scrape. The file is checked
    whole before anything is written: a bad row rejects it, naming the row.

    Raises:
        PermissionDenied: no such enabled user, or one who may not fix.
        InvalidInput: a bad header or row (with its line number); nothing is recorded.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = {(name or "").strip() for name in reader.fieldnames or []}
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing or not header & {"image_url", "image_key"}:
        raise InvalidInput(
            "the CSV needs the columns advertiser, image_url (or image_key), field, value; "
            f"it has {', '.join(sorted(header)) or 'none'}"
        )
    with sessions.begin() as session:
        actor = account_actor(session, username)
        if actor is None:
            raise PermissionDenied(f"no enabled account named {username!r}")
        changes: list[FixChange] = []
        scrapes: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            try:
                changes.append(_csv_change(session, row, scrapes))
            except (InvalidInput, NotFoundError) as exc:
                raise InvalidInput(f"line {line}: {exc}") from None
        if not changes:
            raise InvalidInput("the CSV has no fixes")
        outcome = record_fixes(session, actor, changes, source=FixSource.IMPORT)
    push = push_pending(sessions, ml, fix_ids=outcome.fix_ids) if ml and outcome.fix_ids else None
    return SavedFixes(outcome, push)


def _csv_change(session: Session, row: dict[str, str | None], scrapes: dict[str, int]) -> FixChange:
    def cell(name: str) -> str:
        return (row.get(name) or "").strip()

    name, field, value = cell("advertiser"), cell("field"), cell("value")
    if not name:
        raise InvalidInput("no advertiser")
    if name not in scrapes:
        advertiser = get_advertiser(session, name)
        scrape = latest_scrape(session, advertiser.id, successful=True)
        if scrape is None:
            raise NotFoundError(f"{advertiser.name} has no successful scrape")
        scrapes[name] = scrape.id
    url, key = cell("image_url"), cell("image_key")
    item = find_item(session, scrapes[name], image_url=url or None, image_key=key or None)
    if item is None:
        raise NotFoundError(f"{name}'s latest scrape has no image {url or key}")
    change = FixChange(item.id, field, value)
    validate_change(change)
    return change
