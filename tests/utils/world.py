"""Crafted data for the weird-result detectors: :class:`World` builds advertisers, scrapes,
images and fixes in one session as scrapes would, and the scenario builders below make each case.

Shared by ``tests/tagging/detectors``, ``tests/db/test_findings.py`` and
``tests/views/test_weird.py``.
"""

from __future__ import annotations

import hashlib
import io
import random
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor
from db.findings import FindingView, list_findings
from db.fixes import FixChange, apply_fixes
from db.models import (
    Advertiser,
    FixSource,
    Image,
    ItemStatus,
    ManualFix,
    Role,
    Scrape,
    ScrapeStatus,
    SitemapItem,
    SyncStatus,
    Thumbnail,
    utcnow,
)
from db.vocab import COLORS
from tagging.detectors.refresh import refresh_findings


def picture(seed: int, size: tuple[int, int] = (480, 360)) -> PILImage.Image:
    """A smooth random picture: different seeds look nothing alike."""
    rng = random.Random(seed)
    small = PILImage.new("RGB", (6, 4))
    small.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(24)])
    return small.resize(size, PILImage.Resampling.BICUBIC)


def thumbnail_of(image: PILImage.Image, quality: int = 85) -> bytes:
    thumb = image.copy()
    thumb.thumbnail((240, 180))
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=quality)
    return out.getvalue()


def phash(bits: int) -> str:
    """A perceptual hash with exactly these bits set (so distances are known)."""
    return f"{bits:016x}"


FAR = [phash(random.Random(i).getrandbits(64)) for i in range(400)]
"""Perceptual hashes of unrelated pictures (random: ~32 bits apart)."""


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


class World:
    """Builds advertisers, scrapes, images and fixes in one session, like scrapes would."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.far = iter(FAR)

    def advertiser(self, name: str, *, color_from_feed: bool = False) -> Advertiser:
        advertiser = Advertiser(
            name=name, sitemap_url=f"https://{name.lower().replace(' ', '-')}.example/sitemap.xml"
        )
        advertiser.color_from_feed = color_from_feed
        self.session.add(advertiser)
        self.session.flush()
        return advertiser

    def image(
        self,
        name: str,
        *,
        sha: str | None = None,
        hash_: str | bool | None = True,
        size: tuple[int, int] = (480, 360),
        thumb: bytes | None = None,
    ) -> str:
        """Store an image version (once) and return its key."""
        key = key_of(name)
        if self.session.get(Image, key) is None:
            self.session.add(
                Image(
                    image_key=key,
                    url=f"https://cdn.example/{name}.jpg",
                    sha256=sha or hashlib.sha256(name.encode()).hexdigest(),
                    phash=next(self.far) if hash_ is True else (hash_ or None),
                    width=size[0],
                    height=size[1],
                )
            )
            if thumb is not None:
                self.session.add(Thumbnail(image_key=key, jpeg=thumb))
            self.session.flush()
        return key

    def scrape(
        self,
        advertiser: Advertiser,
        rows: list[dict[str, Any]],
        *,
        finished: bool = True,
    ) -> Scrape:
        """A scrape whose items are ``rows``: name, type, color, ml_type, ml_color, status, url.

        Rows with a ``name`` get an image (``image=`` kwargs for :meth:`image`) unless their status
        is an image error.
        """
        scrape = Scrape(
            advertiser_id=advertiser.id,
            status=ScrapeStatus.SUCCEEDED,
            finished_at=utcnow() if finished else None,
            item_count=len(rows),
        )
        self.session.add(scrape)
        self.session.flush()
        for position, row in enumerate(rows):
            status = row.get("status", ItemStatus.OK)
            name = row.get("name")
            key = None
            if name and status != ItemStatus.ML_FAILURE and status != ItemStatus.ERROR:
                key = self.image(name, **row.get("image", {}))
            image_type = row.get("type", "Dealer")
            color = row.get("color", "Red" if image_type != "Placeholder" else None)
            self.session.add(
                SitemapItem(
                    scrape_id=scrape.id,
                    advertiser_id=advertiser.id,
                    position=position,
                    page_url=f"https://dealer.example/vehicles/{position}",
                    image_url=row.get("url") or f"https://cdn.example/{name or position}.jpg",
                    title=f"Car {position}",
                    image_key=key,
                    ml_image_type=row.get("ml_type", image_type),
                    ml_color=row.get("ml_color", color),
                    feed_color=row.get("feed_color"),
                    image_type=image_type,
                    color=color,
                    status=status,
                )
            )
        self.session.flush()
        return scrape

    def item(self, scrape: Scrape, name: str) -> SitemapItem:
        return self.session.scalars(
            select(SitemapItem).where(
                SitemapItem.scrape_id == scrape.id, SitemapItem.image_key == key_of(name)
            )
        ).one()

    def fix(
        self,
        scrape: Scrape,
        name: str,
        value: str,
        *,
        field: str = "image_type",
        user: str = "ana",
        source: FixSource = FixSource.ANALYST,
    ) -> int:
        """A fix through :func:`db.fixes.apply_fixes`, marked synced (no ML server here).

        A fix to Placeholder keeps the image's color here (an explicit "same color" beside it),
        the trace the "Placeholder fixed by the advertiser" detector looks for.
        """
        item = self.item(scrape, name)
        changes = [FixChange(item.id, field, value)]
        if field == "image_type" and value == "Placeholder" and item.color in COLORS:
            changes.append(FixChange(item.id, "color", item.color))
        outcome = apply_fixes(
            self.session,
            Actor(username=user, role=Role.ANALYST),
            changes,
            source=source,
        )
        for fix_id in outcome.fix_ids:
            self.session.get_one(ManualFix, fix_id).sync_status = SyncStatus.SYNCED
        self.session.flush()
        return outcome.fix_ids[0]


def photos(prefix: str, n: int, stock_every: int = 3) -> list[dict[str, Any]]:
    """``n`` ordinary photos: every ``stock_every``-th one Stock, the rest Dealer."""
    return [
        {"name": f"{prefix}-{i}", "type": "Stock" if i % stock_every == 0 else "Dealer"}
        for i in range(n)
    ]


def placeholders(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"name": f"{prefix}-ph{i}", "type": "Placeholder"} for i in range(n)]


def outage_rows(prefix: str, failed: int, ok: int = 14) -> list[dict[str, Any]]:
    return photos(prefix, ok) + [
        {"name": f"{prefix}-f{i}", "type": "Placeholder", "status": ItemStatus.ML_FAILURE}
        for i in range(failed)
    ]


def shared_cdn(session: Session) -> tuple[World, Scrape, Scrape]:
    world = World(session)
    lakeside, metro = world.advertiser("Lakeside Auto"), world.advertiser("Metro Car Center")
    shared = [{"name": "shared-1", "url": "https://cdn.shared/1.jpg"}]
    return (
        world,
        world.scrape(lakeside, shared + photos("l", 4)),
        world.scrape(metro, shared + photos("m", 4)),
    )


def republished(session: Session, *, same_bytes: bool = True, **image: Any) -> tuple[World, Scrape]:
    """Sunrise fixed ``old`` (Dealer → Stock); the next scrape shows ``new`` instead."""
    world = World(session)
    sunrise = world.advertiser("Sunrise Motors")
    old_image = {"sha": "a" * 64, "hash_": phash(0xF0F0), "thumb": thumbnail_of(picture(1))}
    first = world.scrape(sunrise, [{"name": "old", **{"image": old_image}}, *photos("s", 5)])
    world.fix(first, "old", "Stock")
    new_image = {**old_image, "sha": "a" * 64 if same_bytes else "b" * 64, **image}
    second = world.scrape(sunrise, [{"name": "new", "image": new_image}, *photos("s", 5)])
    return world, second


def near_pair(
    session: Session,
    *,
    fixed: bool = True,
    thumb: bytes | None = None,
    names: tuple[str, str] = ("Sunrise Motors", "Summit Auto Group"),
) -> World:
    """A photo of the first advertiser and a near copy at the second, relabelled Stock there."""
    world = World(session)
    sunrise, summit = world.advertiser(names[0]), world.advertiser(names[1])
    original = {"hash_": phash(0xABCD), "thumb": thumbnail_of(picture(7))}
    copy = {"hash_": phash(0xABCF), "thumb": thumb or thumbnail_of(picture(7).resize((400, 300)))}
    world.scrape(sunrise, [{"name": "orig", "image": original}, *photos("sun", 4)])
    scrape = world.scrape(summit, [{"name": "copy", "image": copy}, *photos("sum", 4)])
    if fixed:
        world.fix(scrape, "copy", "Stock", user="advertiser:Summit", source="advertiser")
    return world


def refresh(sessions: sessionmaker[Session], **kwargs: Any) -> list[FindingView]:
    with sessions.begin() as session:
        refresh_findings(session, **kwargs)
    with sessions() as session:
        return list_findings(session)


def of(findings: list[FindingView], detector: str) -> list[FindingView]:
    return [f for f in findings if f.detector == detector]
