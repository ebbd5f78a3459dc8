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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor
from db.fixes import (
    FixChange,
    FixOutcome,
    apply_fixes,
    count_pending,
    mark_push_failed,
    mark_synced,
    pending_fixes,
)
from db.models import FixSource
from tagging.detectors.refresh import refresh_findings
from tagging.errors import MLServerError, MLServerUnavailable
from tagging.server.schemas import FixResult, ImageFix


class FixPushTarget(Protocol):
    """Where fixes are pushed: the ML server's cache (:class:`tagging.server.client.MLClient`)."""

    def put_fix(self, image_key: str, fix: ImageFix) -> FixResult: ...


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
) -> FixOutcome:
    """Record ``changes`` and refresh the findings they touch, in the caller's transaction.

    See :func:`db.fixes.apply_fixes` for the rules and the errors.
    """
    outcome = apply_fixes(session, actor, changes, source=source, advertiser_id=advertiser_id)
    if outcome.fix_ids:
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
) -> SavedFixes:
    """Record ``changes`` in one transaction (:func:`record_fixes`), then push them."""
    with sessions.begin() as session:
        outcome = record_fixes(session, actor, changes, source=source, advertiser_id=advertiser_id)
    push = push_pending(sessions, ml, fix_ids=outcome.fix_ids) if outcome.fix_ids else None
    return SavedFixes(outcome, push)


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
        body = ImageFix.model_validate(
            {"fix_id": fix.id, "url": fix.image_url, fix.field: fix.new_value}
        )
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
