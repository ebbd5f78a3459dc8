"""Loading what the detectors need from the database, in a handful of queries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from db.models import (
    Advertiser,
    Finding,
    Image,
    ItemStatus,
    ManualFix,
    Scrape,
    ScrapeStatus,
    SitemapItem,
    as_utc,
)
from db.review import thumbnails
from db.vocab import DEFAULT_IMAGE_TYPE, SHARED_CDN_CONFLICT
from tests.tagging.detectors.reference.base import (
    DEFAULT_THRESHOLDS,
    AdvertiserFacts,
    Facts,
    FixFacts,
    ImageFacts,
    ItemFacts,
    ScrapeFacts,
    Thresholds,
)
from tests.tagging.detectors.reference.common import PHOTO_TYPES

_CHUNK = 500


def load_facts(
    session: Session,
    *,
    advertiser_id: int | None = None,
    scrape_id: int | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Facts:
    """What the detectors need, in a handful of queries.

    Args:
        advertiser_id: whose own findings are being recomputed (None: everyone's). The other
            advertisers' latest scrapes are loaded all the same: some detectors compare them.
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
    counts: dict[int, dict[tuple[str, str], int]] = defaultdict(dict)
    for chunk in _chunks(scrape_ids):
        for sid, status, ml_type, count in session.execute(
            select(
                SitemapItem.scrape_id, SitemapItem.status, SitemapItem.ml_image_type, func.count()
            )
            .where(SitemapItem.scrape_id.in_(chunk))
            .group_by(SitemapItem.scrape_id, SitemapItem.status, SitemapItem.ml_image_type)
        ):
            counts[sid][(status, ml_type)] = count
    scrapes: dict[int, list[ScrapeFacts]] = defaultdict(list)
    for row in recent:
        by = counts.get(row.id, {})
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
            )
        )

    latest_ids = [s[0].id for s in scrapes.values()]
    items: dict[int, list[ItemFacts]] = defaultdict(list)
    for chunk in _chunks(latest_ids):
        for item_row in session.execute(
            select(
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
            .where(SitemapItem.scrape_id.in_(chunk))
            .order_by(SitemapItem.scrape_id, SitemapItem.position, SitemapItem.id)
        ):
            items[item_row.advertiser_id].append(ItemFacts(**item_row._asdict()))

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

    keys = {i.image_key for its in items.values() for i in its if i.image_key}
    keys |= {f.image_key for f in fixes}
    images: dict[str, ImageFacts] = {}
    for chunk in _chunks(sorted(keys)):
        for image_row in session.execute(
            select(Image.image_key, Image.sha256, Image.phash, Image.width, Image.height).where(
                Image.image_key.in_(chunk)
            )
        ):
            images[image_row.image_key] = ImageFacts(**image_row._asdict())

    scope = None if advertiser_id is None else frozenset({advertiser_id})
    seen_before: dict[int, dict[str, str]] = {}
    previous_keys: dict[int, set[str]] = {}
    for adv, history in scrapes.items():
        if (scope is not None and adv not in scope) or len(history) < 2:
            continue
        previous_ids = [s.id for s in history[1:]]
        previous_keys[adv] = set(
            session.scalars(
                select(SitemapItem.image_key)
                .where(SitemapItem.scrape_id == history[1].id, SitemapItem.image_key.is_not(None))
                .distinct()
            )
        )
        # Only the URLs that now look like an ML non-answer need their past.
        urls = sorted(
            {
                i.image_url
                for i in items.get(adv, [])
                if i.status == ItemStatus.OK
                and i.ml_image_type == DEFAULT_IMAGE_TYPE
                and i.ml_color is None
            }
        )
        seen: dict[str, str] = {}
        for chunk in _chunks(urls):
            for url, ml_type in session.execute(
                select(SitemapItem.image_url, SitemapItem.ml_image_type).where(
                    SitemapItem.scrape_id.in_(previous_ids),
                    SitemapItem.status == ItemStatus.OK,
                    SitemapItem.ml_image_type.in_(PHOTO_TYPES),
                    SitemapItem.image_url.in_(chunk),
                )
            ):
                seen[url] = ml_type
        seen_before[adv] = seen

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
        items=dict(items),
        images=images,
        fixes=fixes,
        seen_before=seen_before,
        previous_keys=previous_keys,
        settled=settled,
        scope=scope,
        thumbnails=lambda wanted: thumbnails(session, list(wanted)),
    )


def _chunks(values: Sequence[Any]) -> Iterable[list[Any]]:
    values = list(values)
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]
