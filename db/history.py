"""The manual-fix history: filtered listing, totals, CSV export and the filter widgets' options.

Every function takes a Session and only reads. Filtering and aggregation happen in SQL, so that a
long history is never loaded whole (except by :func:`history_csv`, which exports every match).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, case, distinct, func, or_, select
from sqlalchemy.orm import Session

from db.models import Advertiser, ManualFix, SyncStatus, as_utc

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""Leading characters that make a spreadsheet evaluate a cell (OWASP's CSV injection list)."""

CSV_BATCH = 1000
"""Rows fetched per round trip while exporting, so that a big export streams from the cursor."""


@dataclass(frozen=True)
class HistoryFilter:
    """What the history is narrowed to; an empty field filters nothing.

    Attributes:
        advertiser_ids: only fixes of these advertisers.
        users: only fixes by these users (``advertiser:NAME`` for an advertiser's own front end).
        field: ``image_type`` or ``color``.
        value: a value the fix changed from or to (case-insensitive, whole value).
        date_from: first day included, in UTC.
        date_to: last day included, in UTC.
        sync_status: ``pending`` or ``synced``.
        source: ``analyst``, ``advertiser`` or ``carry_over``.
    """

    advertiser_ids: tuple[int, ...] = ()
    users: tuple[str, ...] = ()
    field: str | None = None
    value: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    sync_status: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        # Accept any sequence but store tuples: the filter stays hashable (st.cache_data keys).
        object.__setattr__(self, "advertiser_ids", tuple(self.advertiser_ids))
        object.__setattr__(self, "users", tuple(self.users))


@dataclass(frozen=True)
class HistoryRow:
    """One manual fix, with its advertiser's name. Datetimes are timezone-aware UTC."""

    id: int
    created_at: datetime
    advertiser: str | None
    user: str
    source: str
    field: str
    old_value: str | None
    new_value: str | None
    image_key: str
    image_url: str
    sync_status: str
    synced_at: datetime | None
    sync_attempts: int
    last_sync_error: str | None
    superseded_fix_id: int | None


@dataclass(frozen=True)
class HistoryTotals:
    """Aggregates over every fix a filter matches (not only one page of them)."""

    total: int = 0
    by_field: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    distinct_images: int = 0
    distinct_users: int = 0


@dataclass(frozen=True)
class HistoryFilterOptions:
    """The choices of the history page's filter widgets."""

    advertisers: list[tuple[int, str]]
    """``(id, name)`` of every advertiser, by name."""
    users: list[str]
    """Everyone who has made a fix, sorted."""


HISTORY_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(HistoryRow))
"""The CSV export's header, in :class:`HistoryRow` order."""


def history_rows(
    session: Session, history_filter: HistoryFilter, *, limit: int = 500, offset: int = 0
) -> list[HistoryRow]:
    """The fixes ``history_filter`` matches, newest first, ``limit`` of them from ``offset``."""
    query = _rows_query(history_filter).limit(limit).offset(offset)
    return [_row(values) for values in session.execute(query)]


def history_count(session: Session, history_filter: HistoryFilter) -> int:
    """How many fixes ``history_filter`` matches."""
    query = select(func.count()).select_from(ManualFix).where(*_conditions(history_filter))
    return session.scalar(query) or 0


def history_totals(session: Session, history_filter: HistoryFilter) -> HistoryTotals:
    """Totals over every fix ``history_filter`` matches, in two aggregate queries."""
    conditions = _conditions(history_filter)
    total, pending, images, users = session.execute(
        select(
            func.count(),
            func.coalesce(
                func.sum(case((ManualFix.sync_status == SyncStatus.PENDING, 1), else_=0)), 0
            ),
            func.count(distinct(ManualFix.image_key)),
            func.count(distinct(ManualFix.user)),
        )
        .select_from(ManualFix)
        .where(*conditions)
    ).one()
    by_field: dict[str, int] = {}
    by_source: dict[str, int] = {}
    for field_name, source, count in session.execute(
        select(ManualFix.field, ManualFix.source, func.count())
        .where(*conditions)
        .group_by(ManualFix.field, ManualFix.source)
    ):
        by_field[field_name] = by_field.get(field_name, 0) + count
        by_source[source] = by_source.get(source, 0) + count
    return HistoryTotals(
        total=total,
        by_field=dict(sorted(by_field.items())),
        by_source=dict(sorted(by_source.items())),
        pending=int(pending),
        distinct_images=images,
        distinct_users=users,
    )


def history_csv(session: Session, history_filter: HistoryFilter) -> str:
    """Every fix ``history_filter`` matches as CSV (header first, newest first).

    Text cells a spreadsheet would evaluate as a formula (starting with ``= + - @``, tab or
    carriage return) are prefixed with a single quote, because an image URL or a user name may
    come from an advertiser.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HISTORY_COLUMNS)
    result = session.execute(_rows_query(history_filter).execution_options(yield_per=CSV_BATCH))
    for values in result:
        row = _row(values)
        writer.writerow(_csv_cell(getattr(row, name)) for name in HISTORY_COLUMNS)
    return buffer.getvalue()


def history_filter_options(session: Session) -> HistoryFilterOptions:
    """Every advertiser and every user who has made a fix, for the filter widgets."""
    advertisers = [
        (advertiser_id, name)
        for advertiser_id, name in session.execute(
            select(Advertiser.id, Advertiser.name).order_by(Advertiser.name)
        )
    ]
    users = list(session.scalars(select(ManualFix.user).distinct().order_by(ManualFix.user)))
    return HistoryFilterOptions(advertisers=advertisers, users=users)


# --- helpers -----------------------------------------------------------------------------------


def _rows_query(history_filter: HistoryFilter) -> Select[*tuple[Any, ...]]:
    return (
        select(
            ManualFix.id,
            ManualFix.created_at,
            Advertiser.name,
            ManualFix.user,
            ManualFix.source,
            ManualFix.field,
            ManualFix.old_value,
            ManualFix.new_value,
            ManualFix.image_key,
            ManualFix.image_url,
            ManualFix.sync_status,
            ManualFix.synced_at,
            ManualFix.sync_attempts,
            ManualFix.last_sync_error,
            ManualFix.superseded_fix_id,
        )
        .outerjoin(Advertiser, Advertiser.id == ManualFix.advertiser_id)
        .where(*_conditions(history_filter))
        # The id breaks ties between fixes of one bulk transaction (same created_at).
        .order_by(ManualFix.created_at.desc(), ManualFix.id.desc())
    )


def _conditions(history_filter: HistoryFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    f = history_filter
    if f.advertiser_ids:
        conditions.append(ManualFix.advertiser_id.in_(f.advertiser_ids))
    if f.users:
        conditions.append(ManualFix.user.in_(f.users))
    if f.field:
        conditions.append(ManualFix.field == f.field)
    if f.value and f.value.strip():
        value = f.value.strip().lower()
        conditions.append(
            or_(func.lower(ManualFix.old_value) == value, func.lower(ManualFix.new_value) == value)
        )
    # Half-open UTC bounds on created_at (its index serves them): [from 00:00, to + 1 day 00:00).
    if f.date_from:
        conditions.append(ManualFix.created_at >= _utc_midnight(f.date_from))
    if f.date_to:
        conditions.append(ManualFix.created_at < _utc_midnight(f.date_to + timedelta(days=1)))
    if f.sync_status:
        conditions.append(ManualFix.sync_status == f.sync_status)
    if f.source:
        conditions.append(ManualFix.source == f.source)
    return conditions


def _utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _row(values: Sequence[Any]) -> HistoryRow:
    data = dict(zip(HISTORY_COLUMNS, values, strict=True))
    data["created_at"] = as_utc(data["created_at"])
    data["synced_at"] = as_utc(data["synced_at"])
    return HistoryRow(**data)


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value
