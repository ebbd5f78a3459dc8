"""The Misclassification page's aggregates: how often, where and how people correct the ML.

Every function takes a Session and a :class:`ChartFilter` and only reads. All aggregation happens
in SQL; what comes back is already aggregated (a few hundred rows at most), never raw items.

Definitions, the same in every function and on the page:

* **Period**: the filter's dates, UTC days ``date_from`` to ``date_to`` included. The **previous
  period** is the same number of days right before it (:meth:`ChartFilter.previous`).
* **Classified images** of a period: the sitemap items with status ``ok`` (the ML system gave an
  answer) of the scrapes *started* in the period. Re-scraping a sitemap classifies its images
  again, so an image counts once per scrape. Items are counted from ``scrape_class_counts``, the
  per-scrape summary that database triggers keep exact (see :class:`db.models.ScrapeClassCount`):
  a few rows per scrape instead of every item.
* **Fixes** of a period: the ``manual_fixes`` rows *created* in the period, by analysts and by
  advertisers. Carry-over fixes are left out everywhere: they re-apply an earlier correction to
  a new version of an image, so counting them would count one correction twice. A fix that is
  reverted later is still a fix (someone corrected something); the revert is a second one.
* **Fix rate**: fixes per 1,000 classified images of the same period (None when nothing was
  classified). Per field (``image_type``, ``color``) or summed over the selected fields.
* **ML value → fixed value** (confusion): per image (``image_key``) and field fixed in the
  period, the ML value of the item its first fix in the period was made on (that fix's old value
  when the item is gone) against the new value of its latest fix in the period (highest id).
  A fix reverted to the ML value lands on the diagonal.
* **Reversal**: a fix in the period that sets back the value an image had before an earlier fix
  of the same field in the period (that fix's old value): back and forth.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Date,
    FromClause,
    Select,
    Subquery,
    case,
    cast,
    func,
    literal_column,
    select,
)
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from db.accounts import Actor, Permission
from db.history import FORMULA_PREFIXES
from db.models import (
    Advertiser,
    FixSource,
    ItemStatus,
    ManualFix,
    Scrape,
    ScrapeClassCount,
    SitemapItem,
)

CHART_FIELDS: tuple[str, ...] = ("image_type", "color")
COUNTED_SOURCES: tuple[str, ...] = (FixSource.ANALYST.value, FixSource.ADVERTISER.value)
"""The fix sources every aggregate counts (carry-overs repeat an earlier correction)."""

PER = 1000
"""Rates are per this many classified images."""

NO_VALUE = "None"
"""How a missing color is named (the review page's name for it too)."""
UNKNOWN_VERSION = "unknown"
"""How an item without a model version is named."""

MOVERS = 3
"""How many advertisers whose fix rate moved most are highlighted."""
MAX_FAILED_SCRAPES = 5000
"""At most this many scrapes with ML failures are listed (the daily share covers them all)."""

Granularity = Literal["day", "week"]
Model = Literal["image_type", "color"]


def can_view_charts(actor: Actor | None) -> bool:
    """Whether ``actor`` may open the Misclassification page (:attr:`Permission.VIEW_CHARTS`:
    managers, developers and admins)."""
    return actor is not None and actor.can(Permission.VIEW_CHARTS)


@dataclass(frozen=True)
class ChartFilter:
    """What the charts are narrowed to.

    Attributes:
        date_from: first UTC day of the period.
        date_to: last UTC day of the period (included).
        advertiser_ids: only these advertisers; empty means all.
        fields: the fields whose fixes count (``image_type``, ``color``); empty means both.
    """

    date_from: date
    date_to: date
    advertiser_ids: tuple[int, ...] = ()
    fields: tuple[str, ...] = CHART_FIELDS

    def __post_init__(self) -> None:
        # Tuples, sorted and de-duplicated: the filter is hashable and equal filters cache alike.
        object.__setattr__(self, "advertiser_ids", tuple(sorted(set(self.advertiser_ids))))
        chosen = tuple(f for f in CHART_FIELDS if f in self.fields) or CHART_FIELDS
        unknown = set(self.fields) - set(CHART_FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}: use image_type or color")
        object.__setattr__(self, "fields", chosen)
        if self.date_to < self.date_from:
            raise ValueError(f"the period ends {self.date_to}, before it starts {self.date_from}")

    @property
    def days(self) -> int:
        """How many days the period has."""
        return (self.date_to - self.date_from).days + 1

    def previous(self) -> ChartFilter:
        """The same filter over the period of the same length right before this one."""
        return dataclasses.replace(
            self,
            date_from=self.date_from - timedelta(days=self.days),
            date_to=self.date_from - timedelta(days=1),
        )

    def bounds(self) -> tuple[datetime, datetime]:
        """Half-open UTC bounds ``[date_from 00:00, date_to + 1 day 00:00)``."""
        return _midnight(self.date_from), _midnight(self.date_to + timedelta(days=1))


# --- result rows -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatePoint:
    """Fixes of one field per 1,000 classified images in one day or week (chart 1)."""

    bucket: date
    """The day, or the Monday of the ISO week (clipped to the period at its edges)."""
    field: str
    fixes: int
    classified: int
    rate: float | None


@dataclass(frozen=True)
class PeriodRate:
    """One field's fix rate over the period and the previous one (the page's headline)."""

    field: str
    fixes: int
    classified: int
    rate: float | None
    previous_fixes: int
    previous_classified: int
    previous_rate: float | None

    @property
    def change(self) -> float | None:
        """``rate - previous_rate``, or None when either is unknown."""
        if self.rate is None or self.previous_rate is None:
            return None
        return self.rate - self.previous_rate


@dataclass(frozen=True)
class ConfusionCell:
    """How many images the ML called ``ml_value`` and people ended up fixing to ``fixed_value``."""

    field: str
    ml_value: str
    fixed_value: str
    images: int
    row_images: int
    """All images of the ML value's row (the denominator of ``share``)."""
    share: float
    """``images / row_images``: of the images the ML called ``ml_value``, the share fixed so."""


@dataclass(frozen=True)
class CellImage:
    """One image behind a confusion cell."""

    image_key: str
    image_url: str
    advertiser_id: int | None
    advertiser: str | None
    scrape_id: int | None
    """The scrape of the item its latest fix was made on (for a link to the review page)."""
    ml_value: str
    fixed_value: str
    fixes: int
    """Fixes of this field of this image in the period."""
    last_fixed_at: datetime


@dataclass(frozen=True)
class AdvertiserRate:
    """One advertiser's fix rate in the period, by who fixed, against the previous period."""

    advertiser_id: int
    advertiser: str
    classified: int
    analyst_fixes: int
    advertiser_fixes: int
    rate: float | None
    analyst_rate: float | None
    advertiser_rate: float | None
    previous_classified: int
    previous_fixes: int
    previous_rate: float | None
    change: float | None
    """``rate - previous_rate``; None when either period classified nothing."""
    moved_most: bool = False
    """One of the :data:`MOVERS` advertisers whose rate changed most (up or down)."""

    @property
    def fixes(self) -> int:
        return self.analyst_fixes + self.advertiser_fixes


@dataclass(frozen=True)
class VersionRate:
    """Fix rate of one model version: fixes of items it classified per 1,000 it classified."""

    model: str
    """``image_type`` (sitemap_items.model_version) or ``color`` (color_model_version)."""
    version: str
    first_seen: datetime | None
    """Start of the first scrape in the period with items of this version."""
    last_seen: datetime | None
    classified: int
    fixes: int
    rate: float | None


@dataclass(frozen=True)
class VersionClass:
    """How often one model version gave one value (its class mix)."""

    model: str
    version: str
    value: str
    items: int
    share: float
    """``items`` over everything this version classified in the period."""


@dataclass(frozen=True)
class VersionStats:
    """Chart 4 for one model: rate per version and the versions' class mixes."""

    model: str
    rates: list[VersionRate] = field(default_factory=list)
    mix: list[VersionClass] = field(default_factory=list)


@dataclass(frozen=True)
class DailyFailures:
    """The share of items with an ML failure over the scrapes started on one day."""

    day: date
    scrapes: int
    items: int
    ml_failures: int
    share: float | None


@dataclass(frozen=True)
class ScrapeFailures:
    """One scrape that had ML failures."""

    scrape_id: int
    advertiser: str
    started_at: datetime
    items: int
    ml_failures: int
    share: float


@dataclass(frozen=True)
class FailureStats:
    """Chart 5: the daily share over every scrape, and the scrapes that had failures."""

    daily: list[DailyFailures] = field(default_factory=list)
    scrapes: list[ScrapeFailures] = field(default_factory=list)


@dataclass(frozen=True)
class FixedImage:
    """An image among the most fixed in the period (chart 6)."""

    image_key: str
    image_url: str
    advertiser_id: int | None
    advertiser: str | None
    scrape_id: int | None
    fixes: int
    type_fixes: int
    color_fixes: int
    reversals: int
    """Fixes that set back a value the image had before (see the module's definitions)."""
    last_fixed_at: datetime
    ml_image_type: str | None
    image_type: str | None
    ml_color: str | None
    color: str | None
    """Values of the item its latest fix was made on (the current ones of that scrape)."""


@dataclass(frozen=True)
class ChartOptions:
    """The choices of the page's filter widgets."""

    advertisers: list[tuple[int, str]]
    """``(id, name)`` of every advertiser, by name."""
    first_day: date | None
    """The first UTC day with a scrape or a fix (None on an empty database)."""
    last_day: date | None


# --- queries -----------------------------------------------------------------------------------


def chart_options(session: Session) -> ChartOptions:
    """Every advertiser, and the days the data spans, for the filter widgets."""
    advertisers = [
        (advertiser_id, name)
        for advertiser_id, name in session.execute(
            select(Advertiser.id, Advertiser.name).order_by(Advertiser.name)
        )
    ]
    first_scrape, last_scrape = session.execute(
        select(func.min(Scrape.started_at), func.max(Scrape.started_at))
    ).one()
    first_fix, last_fix = session.execute(
        select(func.min(ManualFix.created_at), func.max(ManualFix.created_at))
    ).one()
    firsts = [_aware(v).date() for v in (first_scrape, first_fix) if v is not None]
    lasts = [_aware(v).date() for v in (last_scrape, last_fix) if v is not None]
    return ChartOptions(
        advertisers=advertisers,
        first_day=min(firsts) if firsts else None,
        last_day=max(lasts) if lasts else None,
    )


def period_rates(session: Session, chart_filter: ChartFilter) -> list[PeriodRate]:
    """Each selected field's fix rate over the period and over the previous one.

    Two aggregate queries over both periods at once (one on fixes, one on scrapes).
    """
    previous = chart_filter.previous()
    start, end = chart_filter.bounds()
    earlier, _ = previous.bounds()

    now = ManualFix.created_at >= start
    fix_counts: dict[str, tuple[int, int]] = {}
    for field_name, current, before in session.execute(
        select(ManualFix.field, _count_if(now), _count_if(~now))
        .where(*_fix_conditions(chart_filter, start=earlier, end=end))
        .group_by(ManualFix.field)
    ):
        fix_counts[field_name] = (int(current or 0), int(before or 0))

    scrape_now = Scrape.started_at >= start
    classified, previous_classified = session.execute(
        _classified(
            func.coalesce(func.sum(case((scrape_now, ScrapeClassCount.items), else_=0)), 0),
            func.coalesce(func.sum(case((scrape_now, 0), else_=ScrapeClassCount.items)), 0),
        ).where(*_scrape_conditions(chart_filter, start=earlier, end=end))
    ).one()
    classified, previous_classified = int(classified), int(previous_classified)
    rates = []
    for field_name in chart_filter.fields:
        current, before = fix_counts.get(field_name, (0, 0))
        rates.append(
            PeriodRate(
                field=field_name,
                fixes=current,
                classified=classified,
                rate=_rate(current, classified),
                previous_fixes=before,
                previous_classified=previous_classified,
                previous_rate=_rate(before, previous_classified),
            )
        )
    return rates


def correction_rate(
    session: Session, chart_filter: ChartFilter, granularity: Granularity = "week"
) -> list[RatePoint]:
    """Fixes per 1,000 classified images per day or ISO week, per selected field.

    Every bucket of the period is listed, in order, field by field; a bucket in which nothing
    was classified has the rate None.
    """
    if granularity not in ("day", "week"):
        raise ValueError(f"granularity is day or week, not {granularity!r}")
    dialect = session.get_bind().dialect.name
    fix_bucket = _bucket(ManualFix.created_at, granularity, dialect)
    fixes: dict[tuple[date, str], int] = {}
    for bucket, field_name, count in session.execute(
        select(fix_bucket, ManualFix.field, func.count())
        .where(*_fix_conditions(chart_filter))
        .group_by(fix_bucket, ManualFix.field)
    ):
        fixes[(_as_date(bucket), field_name)] = count
    scrape_bucket = _bucket(Scrape.started_at, granularity, dialect)
    classified = {
        _as_date(bucket): int(count or 0)
        for bucket, count in session.execute(
            _classified(scrape_bucket, func.sum(ScrapeClassCount.items))
            .where(*_scrape_conditions(chart_filter))
            .group_by(scrape_bucket)
        )
    }
    points = []
    for field_name in chart_filter.fields:
        for bucket in _buckets(chart_filter, granularity):
            count = fixes.get((bucket, field_name), 0)
            images = classified.get(bucket, 0)
            points.append(RatePoint(bucket, field_name, count, images, _rate(count, images)))
    return points


def confusion(session: Session, chart_filter: ChartFilter, field_name: str) -> list[ConfusionCell]:
    """ML value → fixed value of the images whose ``field_name`` was fixed in the period.

    Each image counts once per field (see the module's definitions). Cells are sorted by ML
    value, then by count, largest first.
    """
    parts = _confusion(chart_filter, field_name)
    counts = [
        (_value(ml), _value(fixed), count)
        for ml, fixed, count in session.execute(
            parts.query.with_only_columns(parts.ml_value, parts.fixed_value, func.count()).group_by(
                parts.ml_value, parts.fixed_value
            )
        )
    ]
    rows: dict[str, int] = {}
    for ml, _, count in counts:
        rows[ml] = rows.get(ml, 0) + count
    cells = [
        ConfusionCell(field_name, ml, fixed, count, rows[ml], count / rows[ml])
        for ml, fixed, count in counts
    ]
    return sorted(cells, key=lambda c: (c.ml_value, -c.images, c.fixed_value))


def confusion_images(
    session: Session,
    chart_filter: ChartFilter,
    field_name: str,
    ml_value: str,
    fixed_value: str,
    *,
    limit: int = 60,
) -> list[CellImage]:
    """The images behind one confusion cell, most recently fixed first, at most ``limit``."""
    parts = _confusion(chart_filter, field_name)
    span, last = parts.span, parts.last
    query = parts.query.where(
        _equals(parts.ml_value, ml_value),
        _equals(parts.fixed_value, fixed_value),
    )
    last_item = aliased(SitemapItem)
    rows = session.execute(
        query.with_only_columns(
            span.c.image_key,
            last.image_url,
            last.advertiser_id,
            Advertiser.name,
            last_item.scrape_id,
            span.c.fixes,
            last.created_at,
        )
        .outerjoin(last_item, last_item.id == last.sitemap_item_id)
        .outerjoin(Advertiser, Advertiser.id == last.advertiser_id)
        .order_by(last.created_at.desc(), span.c.image_key)
        .limit(limit)
    )
    return [
        CellImage(
            image_key=key,
            image_url=url,
            advertiser_id=advertiser_id,
            advertiser=name,
            scrape_id=scrape_id,
            ml_value=ml_value,
            fixed_value=fixed_value,
            fixes=fixes,
            last_fixed_at=_aware(created_at),
        )
        for key, url, advertiser_id, name, scrape_id, fixes, created_at in rows
    ]


def advertiser_rates(session: Session, chart_filter: ChartFilter) -> list[AdvertiserRate]:
    """Each advertiser's fix rate in the period by who fixed, highest first.

    Advertisers that classified nothing and got no fix in the period are left out. The
    :data:`MOVERS` advertisers whose rate changed most since the previous period (up or down,
    when both periods classified something) have ``moved_most`` set.
    """
    start, end = chart_filter.bounds()
    earlier, _ = chart_filter.previous().bounds()
    now = ManualFix.created_at >= start
    fixes: dict[int, dict[str, int]] = {}
    for advertiser_id, analyst, advertiser, before in session.execute(
        select(
            ManualFix.advertiser_id,
            _count_if(now & (ManualFix.source == FixSource.ANALYST.value)),
            _count_if(now & (ManualFix.source == FixSource.ADVERTISER.value)),
            _count_if(~now),
        )
        .where(
            *_fix_conditions(chart_filter, start=earlier, end=end),
            ManualFix.advertiser_id.is_not(None),
        )
        .group_by(ManualFix.advertiser_id)
    ):
        assert advertiser_id is not None  # the query leaves out fixes without an advertiser
        fixes[advertiser_id] = {
            "analyst": int(analyst or 0),
            "advertiser": int(advertiser or 0),
            "before": int(before or 0),
        }
    scrape_now = Scrape.started_at >= start
    classified: dict[int, tuple[int, int]] = {
        advertiser_id: (int(current or 0), int(before or 0))
        for advertiser_id, current, before in session.execute(
            _classified(
                Scrape.advertiser_id,
                func.sum(case((scrape_now, ScrapeClassCount.items), else_=0)),
                func.sum(case((scrape_now, 0), else_=ScrapeClassCount.items)),
            )
            .where(*_scrape_conditions(chart_filter, start=earlier, end=end))
            .group_by(Scrape.advertiser_id)
        )
    }
    ids = set(fixes) | set(classified)
    names: dict[int, str] = {}
    if ids:
        names = {
            advertiser_id: name
            for advertiser_id, name in session.execute(
                select(Advertiser.id, Advertiser.name).where(Advertiser.id.in_(ids))
            )
        }
    rows = []
    for advertiser_id in ids:
        counts = fixes.get(advertiser_id, {"analyst": 0, "advertiser": 0, "before": 0})
        images, previous_images = classified.get(advertiser_id, (0, 0))
        if not images and not counts["analyst"] and not counts["advertiser"]:
            continue  # Active in the previous period only.
        rate = _rate(counts["analyst"] + counts["advertiser"], images)
        previous_rate = _rate(counts["before"], previous_images)
        rows.append(
            AdvertiserRate(
                advertiser_id=advertiser_id,
                advertiser=names.get(advertiser_id, f"#{advertiser_id}"),
                classified=images,
                analyst_fixes=counts["analyst"],
                advertiser_fixes=counts["advertiser"],
                rate=rate,
                analyst_rate=_rate(counts["analyst"], images),
                advertiser_rate=_rate(counts["advertiser"], images),
                previous_classified=previous_images,
                previous_fixes=counts["before"],
                previous_rate=previous_rate,
                change=None if rate is None or previous_rate is None else rate - previous_rate,
            )
        )
    moved = sorted(
        (r for r in rows if r.change),
        key=lambda r: (-abs(r.change or 0.0), r.advertiser),
    )[:MOVERS]
    movers = {r.advertiser_id for r in moved}
    rows = [dataclasses.replace(r, moved_most=r.advertiser_id in movers) for r in rows]
    return sorted(rows, key=lambda r: (-(r.rate if r.rate is not None else -1.0), r.advertiser))


def model_versions(session: Session, chart_filter: ChartFilter, model: Model) -> VersionStats:
    """Fix rate and class mix per model version (Image Type or color model).

    An item belongs to the version that classified it (``model_version`` or
    ``color_model_version``); a fix of the model's field belongs to the version of the item it was
    made on. Versions are ordered by the first scrape that used them.
    """
    if model not in CHART_FIELDS:
        raise ValueError(f"model is image_type or color, not {model!r}")
    counts = ScrapeClassCount
    mix_rows = session.execute(
        select(
            counts.version,
            counts.value,
            func.sum(counts.items),
            func.min(Scrape.started_at),
            func.max(Scrape.started_at),
        )
        .select_from(Scrape)
        .join(
            counts,
            (counts.scrape_id == Scrape.id)
            & (counts.model == model)
            & (counts.status == ItemStatus.OK.value),
        )
        .where(*_scrape_conditions(chart_filter), counts.items > 0)
        .group_by(counts.version, counts.value)
    ).all()
    version = (
        SitemapItem.model_version if model == "image_type" else SitemapItem.color_model_version
    )
    fixes = {
        _version(v): count
        for v, count in session.execute(
            select(version, func.count())
            .select_from(ManualFix)
            .outerjoin(SitemapItem, SitemapItem.id == ManualFix.sitemap_item_id)
            .where(*_fix_conditions(chart_filter, fields=(model,)))
            .group_by(version)
        )
    }
    totals: dict[str, int] = {}
    seen: dict[str, tuple[datetime, datetime]] = {}
    for v, _, count, first, last in mix_rows:
        name = _version(v or None)
        totals[name] = totals.get(name, 0) + int(count)
        first, last = _aware(first), _aware(last)
        if name in seen:
            first, last = min(first, seen[name][0]), max(last, seen[name][1])
        seen[name] = (first, last)
    far = datetime.max.replace(tzinfo=UTC)
    order = sorted(set(totals) | set(fixes), key=lambda n: (seen.get(n, (far, far))[0], n))
    rates = [
        VersionRate(
            model=model,
            version=name,
            first_seen=seen.get(name, (None, None))[0],
            last_seen=seen.get(name, (None, None))[1],
            classified=totals.get(name, 0),
            fixes=fixes.get(name, 0),
            rate=_rate(fixes.get(name, 0), totals.get(name, 0)),
        )
        for name in order
    ]
    rank = {name: i for i, name in enumerate(order)}
    mix = sorted(
        (
            VersionClass(
                model,
                _version(v or None),
                _value(c or None),
                int(count),
                int(count) / totals[_version(v or None)],
            )
            for v, c, count, _, _ in mix_rows
        ),
        key=lambda m: (rank[m.version], -m.items, m.value),
    )
    return VersionStats(model=model, rates=rates, mix=mix)


def ml_failures(session: Session, chart_filter: ChartFilter) -> FailureStats:
    """The share of items with an ML failure per day, and the scrapes that had failures.

    Over every item (whatever its status) of the scrapes started in the period. The fields
    filter does not apply: an ML failure loses both fields.
    """
    dialect = session.get_bind().dialect.name
    day = _bucket(Scrape.started_at, "day", dialect)
    counts = ScrapeClassCount
    failed = func.coalesce(
        func.sum(case((counts.status == ItemStatus.ML_FAILURE.value, counts.items), else_=0)), 0
    )
    items = func.sum(counts.items)

    def query(*columns: Any) -> Select[*tuple[Any, ...]]:
        return (
            select(*columns)
            .select_from(Scrape)
            # One model's rows count each item once.
            .join(counts, (counts.scrape_id == Scrape.id) & (counts.model == "image_type"))
            .where(*_scrape_conditions(chart_filter), counts.items > 0)
        )

    daily = [
        DailyFailures(
            day=_as_date(bucket),
            scrapes=int(scrapes),
            items=int(total or 0),
            ml_failures=int(failures or 0),
            share=int(failures or 0) / int(total) if total else None,
        )
        for bucket, scrapes, total, failures in session.execute(
            query(day, func.count(func.distinct(Scrape.id)), items, failed)
            .group_by(day)
            .order_by(day)
        )
    ]
    scrapes = [
        ScrapeFailures(
            scrape_id=scrape_id,
            advertiser=name,
            started_at=_aware(started),
            items=int(total),
            ml_failures=int(failures),
            share=int(failures) / int(total),
        )
        for scrape_id, name, started, total, failures in session.execute(
            query(Scrape.id, Advertiser.name, Scrape.started_at, items, failed)
            .join(Advertiser, Advertiser.id == Scrape.advertiser_id)
            .group_by(Scrape.id, Advertiser.name, Scrape.started_at)
            .having(failed > 0)
            .order_by(Scrape.started_at, Scrape.id)
            .limit(MAX_FAILED_SCRAPES)
        )
    ]
    return FailureStats(daily=daily, scrapes=scrapes)


def most_fixed_images(
    session: Session, chart_filter: ChartFilter, *, limit: int = 50
) -> list[FixedImage]:
    """The images fixed most often in the period, then those with most reversals, at most ``limit``.

    Counts the selected fields' fixes; ties are broken by the latest fix, newest first.
    """
    conditions = _fix_conditions(chart_filter)
    fixes = func.count()
    reversals = _reversals(chart_filter, session.get_bind().dialect.name)
    last_at = func.max(ManualFix.created_at)
    top = (
        select(
            ManualFix.image_key,
            fixes.label("fixes"),
            _count_if(ManualFix.field == "image_type").label("type_fixes"),
            _count_if(ManualFix.field == "color").label("color_fixes"),
            reversals.expression.label("reversals"),
            last_at.label("last_at"),
            func.max(ManualFix.id).label("last_id"),
        )
        .select_from(reversals.from_)
        .where(*conditions)
        .group_by(ManualFix.image_key)
        .order_by(fixes.desc(), reversals.expression.desc(), last_at.desc(), ManualFix.image_key)
        .limit(limit)
        .subquery()
    )
    last = aliased(ManualFix)
    item = aliased(SitemapItem)
    rows = session.execute(
        select(
            top.c.image_key,
            last.image_url,
            last.advertiser_id,
            Advertiser.name,
            item.scrape_id,
            top.c.fixes,
            top.c.type_fixes,
            top.c.color_fixes,
            top.c.reversals,
            top.c.last_at,
            item.ml_image_type,
            item.image_type,
            item.ml_color,
            item.color,
        )
        .join(last, last.id == top.c.last_id)
        .outerjoin(item, item.id == last.sitemap_item_id)
        .outerjoin(Advertiser, Advertiser.id == last.advertiser_id)
        .order_by(top.c.fixes.desc(), top.c.reversals.desc(), top.c.last_at.desc(), top.c.image_key)
    )
    return [
        FixedImage(
            image_key=key,
            image_url=url,
            advertiser_id=advertiser_id,
            advertiser=name,
            scrape_id=scrape_id,
            fixes=int(count),
            type_fixes=int(type_count or 0),
            color_fixes=int(color_count or 0),
            reversals=int(reversal_count or 0),
            last_fixed_at=_aware(last_fixed),
            ml_image_type=ml_type,
            image_type=image_type,
            ml_color=ml_color,
            color=color,
        )
        for (
            key,
            url,
            advertiser_id,
            name,
            scrape_id,
            count,
            type_count,
            color_count,
            reversal_count,
            last_fixed,
            ml_type,
            image_type,
            ml_color,
            color,
        ) in rows
    ]


# --- CSV ---------------------------------------------------------------------------------------


def rows_csv(rows: Sequence[Any], columns: Sequence[str] | None = None) -> str:
    """Dataclass rows as CSV, header first.

    ``columns`` defaults to every field of the rows' dataclass. Rows of several dataclasses (a
    chart drawn from two tables, e.g. :class:`VersionRate` and :class:`VersionClass`) get the
    union of their fields, in order of appearance, and a first column ``row`` naming each row's
    kind (``version_rate``...); a field a row does not have is left empty.

    Text cells a spreadsheet would evaluate as a formula (starting with ``= + - @``, tab or
    carriage return) are prefixed with a single quote, as in the history export: advertiser names
    and image URLs come from outside. Dates are ISO 8601, missing values empty.
    """
    kinds = list(dict.fromkeys(type(row) for row in rows))
    if columns is None:
        names = [f.name for kind in kinds for f in dataclasses.fields(kind)]
        columns = list(dict.fromkeys(names))
    mixed = len(kinds) > 1
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row", *columns] if mixed else columns)
    for row in rows:
        cells = [_csv_cell(getattr(row, name, None)) for name in columns]
        writer.writerow([_snake(type(row).__name__), *cells] if mixed else cells)
    return buffer.getvalue()


# --- helpers -----------------------------------------------------------------------------------


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _as_date(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(value[:10])  # SQLite's date() gives 'YYYY-MM-DD'


def _rate(fixes: int, classified: int) -> float | None:
    return fixes * PER / classified if classified else None


def _value(value: str | None) -> str:
    return NO_VALUE if value is None else value


def _version(value: str | None) -> str:
    return UNKNOWN_VERSION if value is None else value


def _equals(column: Any, value: str) -> ColumnElement[bool]:
    # NO_VALUE names a NULL (a missing color), which "=" would never match.
    return column.is_(None) if value == NO_VALUE else column == value


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _classified(*columns: Any) -> Select[*tuple[Any, ...]]:
    """``SELECT columns FROM scrapes JOIN`` their classified items' counts (one row per value)."""
    return (
        select(*columns)
        .select_from(Scrape)
        .join(
            ScrapeClassCount,
            (ScrapeClassCount.scrape_id == Scrape.id)
            # Every item is counted once per model: one model's rows count each item once.
            & (ScrapeClassCount.model == "image_type")
            & (ScrapeClassCount.status == ItemStatus.OK.value),
        )
    )


def _fix_conditions(
    chart_filter: ChartFilter,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    fields: Iterable[str] | None = None,
    table: type[ManualFix] = ManualFix,
) -> list[ColumnElement[bool]]:
    period_start, period_end = chart_filter.bounds()
    conditions: list[ColumnElement[bool]] = [
        table.created_at >= (start or period_start),
        table.created_at < (end or period_end),
        table.source.in_(COUNTED_SOURCES),
        table.field.in_(tuple(fields or chart_filter.fields)),
    ]
    if chart_filter.advertiser_ids:
        conditions.append(table.advertiser_id.in_(chart_filter.advertiser_ids))
    return conditions


def _scrape_conditions(
    chart_filter: ChartFilter, *, start: datetime | None = None, end: datetime | None = None
) -> list[ColumnElement[bool]]:
    period_start, period_end = chart_filter.bounds()
    conditions: list[ColumnElement[bool]] = [
        Scrape.started_at >= (start or period_start),
        Scrape.started_at < (end or period_end),
    ]
    if chart_filter.advertiser_ids:
        conditions.append(Scrape.advertiser_id.in_(chart_filter.advertiser_ids))
    return conditions


def _bucket(
    column: InstrumentedAttribute[datetime], granularity: Granularity, dialect: str
) -> ColumnElement[Any]:
    """The UTC day, or the Monday of the ISO week, of a timestamp column.

    Constants are literal SQL, not bound parameters: PostgreSQL would otherwise see the SELECT
    and GROUP BY expressions as different (``$1`` vs ``$3``).
    """
    if dialect == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), column)
        if granularity == "week":
            return cast(func.date_trunc(literal_column("'week'"), utc), Date)
        return cast(utc, Date)
    # SQLite stores UTC text; 'weekday 0' moves to the next Sunday (or stays), -6 days to Monday.
    if granularity == "week":
        return func.date(column, literal_column("'weekday 0'"), literal_column("'-6 days'"))
    return func.date(column)


def _buckets(chart_filter: ChartFilter, granularity: Granularity) -> list[date]:
    if granularity == "day":
        return [chart_filter.date_from + timedelta(days=i) for i in range(chart_filter.days)]
    monday = chart_filter.date_from - timedelta(days=chart_filter.date_from.weekday())
    weeks = []
    while monday <= chart_filter.date_to:
        weeks.append(monday)
        monday += timedelta(days=7)
    return weeks


@dataclass(frozen=True)
class _Confusion:
    """The confusion query's pieces: one row per image whose field was fixed in the period."""

    query: Select[str]
    """``SELECT span.image_key FROM span JOIN first fix JOIN last fix LEFT JOIN first item``."""
    ml_value: ColumnElement[str | None]
    fixed_value: InstrumentedAttribute[str | None]
    span: Subquery
    last: type[ManualFix]


def _confusion(chart_filter: ChartFilter, field_name: str) -> _Confusion:
    if field_name not in CHART_FIELDS:
        raise ValueError(f"unknown field {field_name!r}: use image_type or color")
    first = aliased(ManualFix, name="first_fix")
    last = aliased(ManualFix, name="last_fix")
    item = aliased(SitemapItem, name="first_item")
    span = (
        select(
            ManualFix.image_key,
            func.min(ManualFix.id).label("first_id"),
            func.max(ManualFix.id).label("last_id"),
            func.count().label("fixes"),
        )
        .where(*_fix_conditions(chart_filter, fields=(field_name,)))
        .group_by(ManualFix.image_key)
        .subquery("span")
    )
    ml_column = item.ml_image_type if field_name == "image_type" else item.ml_color
    # The item is gone (its scrape was deleted): the value before the first fix is what we know.
    ml_value = case((item.id.is_(None), first.old_value), else_=ml_column)
    query = (
        select(span.c.image_key)
        .select_from(span)
        .join(first, first.id == span.c.first_id)
        .join(last, last.id == span.c.last_id)
        .outerjoin(item, item.id == first.sitemap_item_id)
    )
    return _Confusion(query, ml_value, last.new_value, span, last)


@dataclass(frozen=True)
class _Reversals:
    """How to count reversals per group of fixes: FROM (with ``manual_fixes``) and an aggregate."""

    from_: FromClause
    expression: ColumnElement[int]


def _reversals(chart_filter: ChartFilter, dialect: str) -> _Reversals:
    """The count of reversals among the fixes of a GROUP BY over ``manual_fixes``.

    A reversal is a fix in the period that sets the value that an earlier fix of the same image
    and field in the period had as its old value. One meaning, in the shape each database runs
    fast (both measured on 50,000 fixes, see bench/charts_bench.py): PostgreSQL hash-joins the
    fixes with the first fix of each (image, field, old value); SQLite, which has no hash join,
    probes ``ix_manual_fixes_key_field_old`` once per fix, where a PostgreSQL subplan per row
    costs twice as much.
    """
    conditions = _fix_conditions(chart_filter)
    if dialect == "postgresql":
        olds = (
            select(
                ManualFix.image_key,
                ManualFix.field,
                ManualFix.old_value,
                func.min(ManualFix.id).label("first_id"),
            )
            .where(*conditions)
            .group_by(ManualFix.image_key, ManualFix.field, ManualFix.old_value)
            .subquery("olds")
        )
        # (image, field, old value) is unique in ``olds``: each fix matches at most one row.
        joined = ManualFix.__table__.outerjoin(
            olds,
            (olds.c.image_key == ManualFix.image_key)
            & (olds.c.field == ManualFix.field)
            & (olds.c.old_value == ManualFix.new_value)
            & (olds.c.first_id < ManualFix.id),
        )
        return _Reversals(joined, func.count(olds.c.first_id))
    earlier = aliased(ManualFix, name="earlier")
    probe = (
        select(earlier.id)
        .where(
            earlier.image_key == ManualFix.image_key,
            earlier.field == ManualFix.field,
            earlier.old_value == ManualFix.new_value,
            earlier.id < ManualFix.id,
            *_fix_conditions(chart_filter, fields=None, table=earlier),
        )
        .exists()
    )
    return _Reversals(ManualFix.__table__, _count_if(probe))


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value
