"""A small demo-like world for the dataset tests: advertisers, images with real bytes and
hashes, and team fixes recorded through the fix use case."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy.orm import Session, sessionmaker

from db.fixes import FixChange
from db.models import Image, ItemStatus, Role, Scrape, ScrapeStatus, SitemapItem, utcnow
from db.vocab import IMAGE_TYPES
from tagging.datasets.archive import LocalArchive
from tagging.errors import FetchError
from tagging.fixes import record_fixes
from tagging.ingest.fetch import FetchResult
from tagging.ingest.images import perceptual_hash
from tests.tagging.curation.factory import picture
from tests.utils.factories import actor, make_advertiser

ANALYST = actor(Role.ANALYST, "alice")
DEVELOPER = actor(Role.DEVELOPER, "dev")


def jpeg(image: PILImage.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class World:
    archive: LocalArchive
    urls: dict[str, bytes] = field(default_factory=dict)
    """Image URL → bytes (what a CDN would serve)."""
    shas: list[str] = field(default_factory=list)


def build_world(sessions: sessionmaker[Session], root: Path, *, archived: bool = True) -> World:
    """30 fixed images: every class on many vehicle pages, a near-duplicate pair with one label
    on two advertisers' pages, and a near-duplicate pair labelled two ways (a conflict)."""
    world = World(LocalArchive(root / "archive"))
    pictures: list[tuple[bytes, str, str]] = []  # bytes, true type, page
    for i in range(28):
        pictures.append((jpeg(picture(100 + i, (320, 240))), IMAGE_TYPES[i % 3], f"p{i // 2}"))
    # Near-duplicates of pictures 0 and 1: re-encoded and resized copies on other pages.
    copy0 = jpeg(PILImage.open(io.BytesIO(pictures[0][0])).resize((300, 225)), quality=70)
    copy1 = jpeg(PILImage.open(io.BytesIO(pictures[1][0])).resize((300, 225)), quality=70)
    pictures.append((copy0, pictures[0][1], "copy-a"))
    pictures.append(
        (copy1, "Placeholder" if pictures[1][1] != "Placeholder" else "Dealer", "copy-b")
    )
    with sessions.begin() as session:
        sunrise = make_advertiser(session, "Sunrise Motors")
        summit = make_advertiser(session, "Summit Auto Group")
        scrapes = {}
        for advertiser in (sunrise, summit):
            scrape = Scrape(
                advertiser_id=advertiser.id,
                status=ScrapeStatus.SUCCEEDED,
                finished_at=utcnow(),
                item_count=0,
            )
            session.add(scrape)
            session.flush()
            scrapes[advertiser.id] = scrape
        item_ids = []
        for index, (data, truth, page) in enumerate(pictures):
            advertiser = summit if page.startswith("copy") else sunrise
            key = f"{index:032x}"
            url = f"https://cdn.example/{key}.jpg"
            decoded = PILImage.open(io.BytesIO(data))
            sha = hashlib.sha256(data).hexdigest()
            session.add(
                Image(
                    image_key=key,
                    url=url,
                    sha256=sha,
                    phash=perceptual_hash(decoded.convert("RGB")),
                    width=decoded.width,
                    height=decoded.height,
                )
            )
            wrong = IMAGE_TYPES[(IMAGE_TYPES.index(truth) + 1) % 3]
            item = SitemapItem(
                scrape_id=scrapes[advertiser.id].id,
                advertiser_id=advertiser.id,
                position=index,
                page_url=f"https://{advertiser.id}.example/vehicles/{page}",
                image_url=url,
                image_key=key,
                ml_image_type=wrong,
                ml_color=None if wrong == "Placeholder" else "Red",
                image_type=wrong,
                color=None if wrong == "Placeholder" else "Red",
                status=ItemStatus.OK,
            )
            session.add(item)
            session.flush()
            item_ids.append((item.id, truth))
            world.urls[url] = data
            world.shas.append(sha)
            if archived:
                world.archive.put(data)
        record_fixes(
            session,
            ANALYST,
            [FixChange(item_id, "image_type", truth) for item_id, truth in item_ids],
            refresh=False,
        )
    return world


def add_fixed_image(
    sessions: sessionmaker[Session],
    world: World,
    data: bytes,
    label: str,
    *,
    page: str,
    advertiser: str = "Sunrise Motors",
) -> str:
    """One more image on ``advertiser``'s latest scrape, fixed by the analyst to ``label``;
    returns its sha256."""
    from sqlalchemy import select

    from db.advertisers import get_advertiser

    sha = hashlib.sha256(data).hexdigest()
    key = sha[:32]
    url = f"https://cdn.example/{key}.jpg"
    decoded = PILImage.open(io.BytesIO(data))
    with sessions.begin() as session:
        owner = get_advertiser(session, advertiser)
        scrape = session.scalars(
            select(Scrape).where(Scrape.advertiser_id == owner.id).order_by(Scrape.id.desc())
        ).first()
        assert scrape is not None
        session.add(
            Image(
                image_key=key,
                url=url,
                sha256=sha,
                phash=perceptual_hash(decoded.convert("RGB")),
                width=decoded.width,
                height=decoded.height,
            )
        )
        item = SitemapItem(
            scrape_id=scrape.id,
            advertiser_id=owner.id,
            position=1000,
            page_url=f"https://{owner.id}.example/vehicles/{page}",
            image_url=url,
            image_key=key,
            ml_image_type="Dealer",
            ml_color="Red",
            image_type="Dealer",
            color="Red",
            status=ItemStatus.OK,
        )
        session.add(item)
        session.flush()
        record_fixes(session, ANALYST, [FixChange(item.id, "image_type", label)], refresh=False)
    world.urls[url] = data
    world.archive.put(data)
    return sha


class FakeCDN:
    """Serves the world's bytes, or fails every fetch (``down``): stands in for the guarded
    client, whose own tests cover the network."""

    def __init__(self, urls: dict[str, bytes], *, down: bool = False) -> None:
        self.urls, self.down, self.calls = urls, down, 0

    def get(self, url: str, **_: object) -> FetchResult:
        self.calls += 1
        if self.down or url not in self.urls:
            raise FetchError(f"{url}: connection refused")
        return FetchResult(url=url, status=200, headers={}, body=self.urls[url], elapsed=0.0)
