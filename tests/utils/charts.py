"""Crafted scrapes and fixes with explicit dates, for the Misclassification charts' tests."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from db.models import Advertiser, FixSource, ManualFix, Scrape, SitemapItem

Row = tuple[str, str, str, str | None, str | None, str | None]
"""(key, status, ML type, ML color, model version, color model version)."""


def add_scrape(
    session: Session, advertiser: Advertiser, started: datetime, rows: list[Row]
) -> tuple[Scrape, list[SitemapItem]]:
    """A finished scrape with these items, its counters consistent with them."""
    failed = sum(status != "ok" for _, status, *_ in rows)
    scrape = Scrape(
        advertiser_id=advertiser.id,
        started_at=started,
        finished_at=started,
        status="completed_with_errors" if failed else "succeeded",
        item_count=len(rows),
        classified_count=len(rows) - failed,
        failed_count=failed,
        ml_failure_count=sum(status == "ml_failure" for _, status, *_ in rows),
    )
    session.add(scrape)
    session.flush()
    items = []
    for position, (key, status, ml_type, ml_color, version, color_version) in enumerate(rows):
        item = SitemapItem(
            scrape_id=scrape.id,
            advertiser_id=advertiser.id,
            position=position,
            page_url=f"https://dealer.example/{key}",
            image_url=f"https://cdn.example/{key}.jpg",
            image_key=None if status == "error" else key,
            ml_image_type=ml_type,
            ml_color=ml_color,
            image_type=ml_type,
            color=ml_color,
            status=status,
            model_version=version,
            color_model_version=color_version,
        )
        session.add(item)
        items.append(item)
    session.flush()
    return scrape, items


def add_fix(
    session: Session,
    item: SitemapItem,
    field: str,
    old: str | None,
    new: str,
    when: datetime,
    *,
    source: FixSource = FixSource.ANALYST,
    user: str = "alice",
) -> int:
    """A fix of ``item`` made at ``when`` (history only: the item keeps its values)."""
    fix = ManualFix(
        image_key=item.image_key,
        image_url=item.image_url,
        advertiser_id=item.advertiser_id,
        sitemap_item_id=item.id,
        field=field,
        old_value=old,
        new_value=new,
        user=user,
        source=source,
        created_at=when,
    )
    session.add(fix)
    session.flush()
    return fix.id
