"""Loading what the detectors need from the database: counts and the fix history up front, the
items of the scrapes on demand in bounded pieces (:class:`SqlItemSource`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from db.models import (
    Advertiser,
    Finding,
    Image,
    ItemStatus,
    ManualFix,
    Scrape,
    ScrapeClassCount,
    ScrapeStatus,
    SitemapItem,
    as_utc,
)
from db.review import thumbnails
from db.vocab import SHARED_CDN_CONFLICT
from tagging.detectors.base import (
    DEFAULT_THRESHOLDS,
    AdvertiserFacts,
    Facts,
    FixFacts,
    ImageFacts,
    ItemFacts,
    ItemFilter,
    ScrapeFacts,
    Thresholds,
)
from tagging.detectors.common import PHOTO_TYPES

_CHUNK = 500
"""Values per ``IN (...)``: under SQLite's historical limit of 999 parameters."""
_PAGE = 500
"""Items per page of a stream."""


def load_facts(
    session: Session,
    *,
    advertiser_id: int | None = None,
    scrape_id: int | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Facts:
    """What the detectors need: the scrapes' counts, the fix history, and a source of items.

    No item is read here: a detector asks :attr:`Facts.source` for the few it needs, so memory
    stays bounded whatever the size of the scrapes. The counts come from
    :class:`~db.models.ScrapeClassCount`, a few rows per scrape.

    Args:
        advertiser_id: whose own findings are being recomputed (None: everyone's). The detectors
            of one advertiser read only its scrapes; those comparing advertisers read the others'
            counts, and their items only where a fix points (shared CDN, near-duplicates).
        scrape_id: a scrape that counts as finished although it is not yet (the scrape calls
            :func:`tagging.ingest.scrape.after_scrape` just before it marks itself finished).
    """
    advertisers = {
        a.id: AdvertiserFacts(a.id, a.name, a.color_from_feed)
        for a in session.scalars(select(Advertiser))
    }
    finished = Scrape.finished_at.is_not(None)
    eligible = or_(finished, Scrape.id == scrape_id) if scrape_id is not None else finished
    rank = (
        func.row_number()
        .over(partition_by=Scrape.advertiser_id, order_by=Scrape.id.desc())
        .label("rank")
    )
    ranked = (
        select(Scrape.id, Scrape.advertiser_id, rank)
        .where(eligible, Scrape.status != ScrapeStatus.FAILED)
        .subquery()
    )
    recent = session.execute(
        select(ranked.c.id, ranked.c.advertiser_id)
        .where(ranked.c.rank <= thresholds.history + 1)
        .order_by(ranked.c.advertiser_id, ranked.c.id.desc())
    ).all()
    scrape_ids = [row.id for row in recent]
    # The per-scrape summary the database's triggers keep exact (db.models.ScrapeClassCount):
    # a few rows per scrape, where counting the items themselves would read them all.
    counts: dict[int, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
    for chunk in _chunks(scrape_ids):
        for sid, status, ml_type, count in session.execute(
            select(
                ScrapeClassCount.scrape_id,
                ScrapeClassCount.status,
                ScrapeClassCount.value,
                func.sum(ScrapeClassCount.items),
            )
            .where(ScrapeClassCount.scrape_id.in_(chunk), ScrapeClassCount.model == "image_type")
            .group_by(ScrapeClassCount.scrape_id, ScrapeClassCount.status, ScrapeClassCount.value)
        ):
            if count:
                counts[sid][(status, ml_type)] += int(count)
    scrapes: dict[int, list[ScrapeFacts]] = defaultdict(list)
    for row in recent:
        by = dict(counts.get(row.id, {}))
        ok_types: dict[str, int] = defaultdict(int)
        for (status, ml_type), count in by.items():
            if status == ItemStatus.OK:
                ok_types[ml_type] += count
        scrapes[row.advertiser_id].append(
            ScrapeFacts(
                id=row.id,
                advertiser_id=row.advertiser_id,
                items=sum(by.values()),
                ml_failures=sum(c for (s, _), c in by.items() if s == ItemStatus.ML_FAILURE),
                ok=sum(ok_types.values()),
                ok_types=dict(ok_types),
                counts=by,
            )
        )

    fixes = [
        FixFacts(
            id=row.id,
            image_key=row.image_key,
            image_url=row.image_url,
            advertiser_id=row.advertiser_id,
            item_id=row.sitemap_item_id,
            field=row.field,
            old_value=row.old_value,
            new_value=row.new_value,
            user=row.user,
            source=row.source,
            created_at=as_utc(row.created_at),
        )
        for row in session.execute(
            select(
                ManualFix.id,
                ManualFix.image_key,
                ManualFix.image_url,
                ManualFix.advertiser_id,
                ManualFix.sitemap_item_id,
                ManualFix.field,
                ManualFix.old_value,
                ManualFix.new_value,
                ManualFix.user,
                ManualFix.source,
                ManualFix.created_at,
            ).order_by(ManualFix.id)
        )
    ]

    scope = None if advertiser_id is None else frozenset({advertiser_id})
    settled = {
        subject: fix_id
        for subject, fix_id in session.execute(
            select(Finding.subject, Finding.settled_fix_id).where(
                Finding.detector == SHARED_CDN_CONFLICT, Finding.settled_fix_id.is_not(None)
            )
        )
        if fix_id is not None
    }
    return Facts(
        advertisers=advertisers,
        scrapes=dict(scrapes),
        source=SqlItemSource(session),
        fixes=fixes,
        settled=settled,
        scope=scope,
        thumbnails=lambda wanted: thumbnails(session, list(wanted)),
    )


_ITEM_COLUMNS = (
    SitemapItem.id,
    SitemapItem.scrape_id,
    SitemapItem.advertiser_id,
    SitemapItem.position,
    SitemapItem.image_url,
    SitemapItem.image_key,
    SitemapItem.ml_image_type,
    SitemapItem.ml_color,
    SitemapItem.image_type,
    SitemapItem.color,
    SitemapItem.status,
    SitemapItem.feed_color,
)


class SqlItemSource:
    """:class:`~tagging.detectors.base.ItemSource` over the app database (SQLite, PostgreSQL).

    Streams are keyset pages of :data:`_PAGE` items along the (scrape_id, position) index: no
    open cursor is held between pages, so other queries can run in between on either database,
    and memory holds one page whatever the size of the scrape.
    """

    def __init__(self, session: Session) -> None:
        self._session = session

    def items(
        self, scrape_id: int, where: ItemFilter, *, first_of_key: bool = False
    ) -> Iterator[ItemFacts]:
        """See :meth:`tagging.detectors.base.ItemSource.items`."""
        if first_of_key:
            where = replace(where, with_key=True)
        for page in self._pages(scrape_id, where, _ITEM_COLUMNS):
            found = [ItemFacts(*row[: len(_ITEM_COLUMNS)]) for row in page]
            if first_of_key:
                firsts = self._first_ids(scrape_id, {i.image_key for i in found if i.image_key})
                found = [i for i in found if firsts.get(i.image_key or "") == i.id]
            yield from found

    def count(self, scrape_id: int, where: ItemFilter) -> int:
        """See :meth:`tagging.detectors.base.ItemSource.count`."""
        query = select(func.count()).select_from(SitemapItem)
        return int(self._session.scalar(query.where(*_conditions(scrape_id, where))) or 0)

    def ids(self, scrape_id: int, where: ItemFilter) -> list[int]:
        """See :meth:`tagging.detectors.base.ItemSource.ids`."""
        return list(
            self._session.scalars(
                select(SitemapItem.id)
                .where(*_conditions(scrape_id, where))
                .order_by(SitemapItem.position, SitemapItem.id)
            )
        )

    def first_items(self, scrape_id: int, keys: Collection[str]) -> dict[str, ItemFacts]:
        """See :meth:`tagging.detectors.base.ItemSource.first_items`."""
        return {key: item for (_, key), item in self.first_items_of([scrape_id], keys).items()}

    def first_items_of(
        self, scrape_ids: Collection[int], keys: Collection[str]
    ) -> dict[tuple[int, str], ItemFacts]:
        """See :meth:`tagging.detectors.base.ItemSource.first_items_of`."""
        found: dict[tuple[int, str], ItemFacts] = {}
        for scrape_chunk in _chunks(sorted(scrape_ids)):
            for chunk in _chunks(sorted(keys)):
                for row in self._session.execute(
                    select(*_ITEM_COLUMNS)
                    .where(
                        SitemapItem.scrape_id.in_(scrape_chunk), SitemapItem.image_key.in_(chunk)
                    )
                    .order_by(SitemapItem.scrape_id, SitemapItem.position, SitemapItem.id)
                ):
                    found.setdefault((row.scrape_id, row.image_key), ItemFacts(**row._asdict()))
        return found

    def first_item_by_url(self, scrape_id: int, url: str) -> ItemFacts | None:
        """See :meth:`tagging.detectors.base.ItemSource.first_item_by_url`."""
        row = self._session.execute(
            select(*_ITEM_COLUMNS)
            .where(
                SitemapItem.scrape_id == scrape_id,
                SitemapItem.image_url == url,
                SitemapItem.image_key.is_not(None),
            )
            .order_by(SitemapItem.position, SitemapItem.id)
            .limit(1)
        ).first()
        return ItemFacts(**row._asdict()) if row is not None else None

    def keys_in(self, scrape_id: int, keys: Collection[str]) -> set[str]:
        """See :meth:`tagging.detectors.base.ItemSource.keys_in`."""
        found: set[str] = set()
        for chunk in _chunks(sorted(keys)):
            found.update(
                self._session.scalars(
                    select(SitemapItem.image_key)
                    .where(SitemapItem.scrape_id == scrape_id, SitemapItem.image_key.in_(chunk))
                    .distinct()
                )
            )
        return found

    def distinct_keys(self, scrape_id: int) -> int:
        """See :meth:`tagging.detectors.base.ItemSource.distinct_keys`."""
        return int(
            self._session.scalar(
                select(func.count(SitemapItem.image_key.distinct())).where(
                    SitemapItem.scrape_id == scrape_id
                )
            )
            or 0
        )

    def images(self, keys: Collection[str]) -> dict[str, ImageFacts]:
        """See :meth:`tagging.detectors.base.ItemSource.images`."""
        found: dict[str, ImageFacts] = {}
        for chunk in _chunks(sorted(keys)):
            for row in self._session.execute(
                select(*_IMAGE_COLUMNS).where(Image.image_key.in_(chunk))
            ):
                found[row.image_key] = ImageFacts(**row._asdict())
        return found

    def item_images(
        self, scrape_id: int, where: ItemFilter
    ) -> Iterator[tuple[int, str, ImageFacts]]:
        """See :meth:`tagging.detectors.base.ItemSource.item_images`."""
        where = replace(where, with_key=True)
        shas = where.image_sha256_in
        parts = (
            [where]
            if shas is None or len(shas) <= _CHUNK
            else [replace(where, image_sha256_in=c) for c in _chunks(sorted(shas))]
        )
        for part in parts:
            yield from self._item_images(scrape_id, part)

    def _item_images(
        self, scrape_id: int, where: ItemFilter
    ) -> Iterator[tuple[int, str, ImageFacts]]:
        for page in self._pages(scrape_id, where, (SitemapItem.image_url,), join_images=True):
            for row in page:
                yield (
                    row.id,
                    row.image_url,
                    ImageFacts(row.image_key, row.sha256, row.phash, row.width, row.height),
                )

    def _pages(
        self,
        scrape_id: int,
        where: ItemFilter,
        columns: Sequence[Any],
        *,
        join_images: bool = False,
    ) -> Iterator[Sequence[Any]]:
        """Keyset pages, in sitemap order, of the items ``where`` selects."""
        query = select(
            *columns,
            SitemapItem.id.label("_id"),
            SitemapItem.position.label("_position"),
        )
        if join_images:
            query = query.add_columns(SitemapItem.id, SitemapItem.image_key, *_IMAGE_COLUMNS[1:])
            query = query.join(Image, Image.image_key == SitemapItem.image_key)
        query = query.where(*_conditions(scrape_id, where)).order_by(
            SitemapItem.position, SitemapItem.id
        )
        after: tuple[int, int] | None = None
        while True:
            page_query = query
            if after is not None:
                position, item_id = after
                page_query = query.where(
                    or_(
                        SitemapItem.position > position,
                        and_(SitemapItem.position == position, SitemapItem.id > item_id),
                    )
                )
            page = self._session.execute(page_query.limit(_PAGE)).all()
            if not page:
                return
            yield page
            if len(page) < _PAGE:
                return
            after = (page[-1]._position, page[-1]._id)

    def _first_ids(self, scrape_id: int, keys: Collection[str]) -> dict[str, int]:
        """The id of the first item of ``scrape_id`` of each of these image_keys."""
        firsts: dict[str, tuple[int, int]] = {}
        for chunk in _chunks(sorted(keys)):
            for key, position, item_id in self._session.execute(
                select(SitemapItem.image_key, SitemapItem.position, SitemapItem.id).where(
                    SitemapItem.scrape_id == scrape_id, SitemapItem.image_key.in_(chunk)
                )
            ):
                if key is None:  # pragma: no cover - IN never matches NULL
                    continue
                if key not in firsts or (position, item_id) < firsts[key]:
                    firsts[key] = (position, item_id)
        return {key: item_id for key, (_, item_id) in firsts.items()}


_IMAGE_COLUMNS = (Image.image_key, Image.sha256, Image.phash, Image.width, Image.height)


def _conditions(scrape_id: int, where: ItemFilter) -> list[ColumnElement[bool]]:
    """``where`` as SQL conditions on the items of ``scrape_id``."""
    conditions: list[ColumnElement[bool]] = [SitemapItem.scrape_id == scrape_id]
    if where.statuses is not None:
        conditions.append(SitemapItem.status.in_([str(s) for s in where.statuses]))
    if where.with_key:
        conditions.append(SitemapItem.image_key.is_not(None))
    if where.image_type is not None:
        conditions.append(SitemapItem.image_type == where.image_type)
    if where.ml_image_type is not None:
        conditions.append(SitemapItem.ml_image_type == where.ml_image_type)
    if where.ml_color_is_null:
        conditions.append(SitemapItem.ml_color.is_(None))
    if where.color_is_not_null:
        conditions.append(SitemapItem.color.is_not(None))
    if where.color_contains is not None:
        conditions.append(
            func.lower(SitemapItem.color).contains(where.color_contains, autoescape=True)
        )
    if where.photo_before_in:
        before = aliased(SitemapItem)
        conditions.append(
            select(before.id)
            .where(
                before.image_url == SitemapItem.image_url,
                before.scrape_id.in_(list(where.photo_before_in)),
                before.status == ItemStatus.OK,
                before.ml_image_type.in_(PHOTO_TYPES),
            )
            .exists()
        )
    if where.image_sha256_in is not None:
        shas = sorted(where.image_sha256_in)
        image = aliased(Image)  # the outer query may join Image itself
        conditions.append(
            select(image.image_key)
            .where(image.image_key == SitemapItem.image_key, image.sha256.in_(shas))
            .exists()
        )
    return conditions


def _chunks(values: Sequence[Any]) -> Iterable[list[Any]]:
    values = list(values)
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]
