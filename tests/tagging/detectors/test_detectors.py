"""The weird-result detectors on crafted data (SQLite and PostgreSQL), and one run end to end over
real HTTP: demo CDN → scrape → ML server → fix → re-publish → rescrape → carry over.

The crafted-data helpers here (:class:`World`) are shared with ``tests/db/test_findings.py`` and
``tests/views/test_weird.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor
from db.advertisers import get_advertiser
from db.engine import make_engine, make_session_factory
from db.findings import FindingView, ignore_finding, list_findings, set_auto_carry
from db.fixes import FixChange, apply_fixes
from db.models import (
    Advertiser,
    Finding,
    FindingState,
    FixSource,
    Image,
    ItemStatus,
    ManualFix,
    Role,
    Scrape,
    ScrapeStatus,
    Severity,
    SitemapItem,
    SyncStatus,
    Thumbnail,
    utcnow,
)
from db.scrapes import scrape_items
from db.vocab import (
    ADVERTISER_PLACEHOLDER,
    CRITERIA_SHIFT,
    FIX_NOT_STICKING,
    LEGACY_PLACEHOLDER,
    ML_OUTAGE,
    NEAR_DUPLICATES,
    SHARED_CDN_CONFLICT,
)
from tagging.demo.generate import DemoInventory
from tagging.demo.setup import register_demo_advertisers
from tagging.detectors.cases import DETECTORS, near_pairs
from tagging.detectors.facts import load_facts
from tagging.detectors.refresh import refresh_findings
from tagging.detectors.remedies import carry_over_finding
from tagging.fixes import push_pending
from tagging.ingest.fetch import client_from_settings
from tagging.ingest.images import hash_distance
from tagging.ingest.scrape import ScrapeConfig, ScrapeSummary, run_scrape
from tagging.server.client import MLClient
from tests.conftest import ML_TOKEN
from tests.utils.factories import actor

# --- crafted data --------------------------------------------------------------------------------


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
        """A fix through :func:`db.fixes.apply_fixes`, marked synced (no ML server here)."""
        item = self.item(scrape, name)
        outcome = apply_fixes(
            self.session,
            Actor(username=user, role=Role.ANALYST),
            [FixChange(item.id, field, value)],
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


def refresh(sessions: sessionmaker[Session], **kwargs: Any) -> list[FindingView]:
    with sessions.begin() as session:
        refresh_findings(session, **kwargs)
    with sessions() as session:
        return list_findings(session)


def of(findings: list[FindingView], detector: str) -> list[FindingView]:
    return [f for f in findings if f.detector == detector]


def normal_world(session: Session) -> World:
    """Three advertisers, three ordinary scrapes each, no fix: nothing is weird."""
    world = World(session)
    for name in ("Sunrise Motors", "Lakeside Auto", "Harbor Autos"):
        advertiser = world.advertiser(name)
        rows = (
            photos(name, 24) + placeholders(name, 4) + [{"name": f"{name}-gone", "status": "error"}]
        )
        for _ in range(3):
            world.scrape(advertiser, rows)
    return world


# --- no false alarms -----------------------------------------------------------------------------


def test_normal_scrapes_raise_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        normal_world(session)
    assert refresh(sessions) == []


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_each_detector_is_silent_on_a_normal_scrape(
    sessions: sessionmaker[Session], detector: str
) -> None:
    with sessions.begin() as session:
        normal_world(session)
        assert DETECTORS[detector](load_facts(session)) == []


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param([], id="empty scrape"),
        pytest.param([{"name": "only", "type": "Dealer"}], id="one item"),
        pytest.param([{"name": "only", "type": "Placeholder"}], id="one placeholder"),
        pytest.param(
            [{"name": f"n{i}", "image": {"hash_": None}} for i in range(6)], id="no phash"
        ),
        pytest.param(
            [{"name": f"bad{i}", "image": {"hash_": "not-a-hash"}} for i in range(6)],
            id="garbage phash",
        ),
        pytest.param([{"name": f"e{i}", "status": "error"} for i in range(8)], id="image errors"),
    ],
)
@pytest.mark.parametrize("history", [0, 2], ids=["no history", "history"])
def test_bad_input_raises_nothing_and_does_not_fail(
    sessions: sessionmaker[Session], rows: list[dict[str, Any]], history: int
) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Tiny Cars")
        for _ in range(history):
            world.scrape(advertiser, rows)
        world.scrape(advertiser, rows)
        for detect in DETECTORS.values():
            assert detect(load_facts(session)) == []
    assert refresh(sessions) == []


def test_an_advertiser_never_scraped_or_only_failed_raises_nothing(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        world.advertiser("Never Scraped")
        failed = world.advertiser("Unreadable Sitemap")
        session.add(
            Scrape(advertiser_id=failed.id, status=ScrapeStatus.FAILED, finished_at=utcnow())
        )
    assert refresh(sessions) == []


# --- 1. ML system failed to respond --------------------------------------------------------------


def outage_rows(prefix: str, failed: int, ok: int = 14) -> list[dict[str, Any]]:
    return photos(prefix, ok) + [
        {"name": f"{prefix}-f{i}", "type": "Placeholder", "status": ItemStatus.ML_FAILURE}
        for i in range(failed)
    ]


def test_ml_outage_is_flagged_against_the_baseline_and_relaunch_is_the_remedy(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Sunrise Motors")
        world.scrape(advertiser, photos("a", 18) + placeholders("a", 2))
        scrape = world.scrape(advertiser, outage_rows("a", failed=6))
    (finding,) = of(refresh(sessions), ML_OUTAGE)
    assert finding.severity == Severity.WARNING
    assert finding.scrape_id == scrape.id
    assert finding.explanation.startswith("ML system failed to respond")
    assert "6 got no answer from the ML server" in finding.explanation
    assert "Relaunch the scrape" in finding.explanation
    assert finding.evidence["ml_failures"] == 6
    assert finding.evidence["baseline_share"] == pytest.approx(0.1)
    assert finding.evidence["review"] == {"advertiser": "Sunrise Motors", "status": ["ml_failure"]}
    assert len(finding.evidence["images"]) == 6


def test_a_relaunch_that_fails_again_is_critical_and_a_good_one_resolves_it(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Sunrise Motors")
        world.scrape(advertiser, photos("a", 20))
        first = world.scrape(advertiser, outage_rows("a", failed=20, ok=0))
        again = world.scrape(advertiser, outage_rows("a", failed=20, ok=0))
    findings = of(refresh(sessions), ML_OUTAGE)
    assert [(f.scrape_id, f.severity) for f in findings] == [(again.id, Severity.CRITICAL)]
    assert "tell the dev team" in findings[0].explanation
    assert findings[0].evidence["failed_again_after"] == first.id

    with sessions.begin() as session:
        World(session).scrape(session.get_one(Advertiser, advertiser.id), photos("a", 20))
    assert of(refresh(sessions), ML_OUTAGE) == []
    with sessions() as session:
        (resolved,) = list_findings(session, states=[FindingState.FIXED])
    assert resolved.state_by == "system" and "no longer detected" in (resolved.state_reason or "")


def test_placeholders_without_ml_failure_count_only_when_they_were_photos_before(
    sessions: sessionmaker[Session],
) -> None:
    """The ML server answered "Placeholder, no color" for photos it knew as Dealer/Stock."""
    rows_before = photos("a", 20)
    lost = [
        {**row, "type": "Placeholder", "color": None} if i < 8 else row
        for i, row in enumerate(rows_before)
    ]
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Sunrise Motors")
        world.scrape(advertiser, rows_before)
        world.scrape(advertiser, lost)
    (finding,) = of(refresh(sessions), ML_OUTAGE)
    assert finding.evidence["lost"] == 8 and finding.evidence["ml_failures"] == 0
    assert "were Dealer or Stock photos in earlier scrapes" in finding.explanation


def test_new_placeholders_or_a_few_ml_failures_are_not_an_outage(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        new_inventory = world.advertiser("New Inventory")
        world.scrape(new_inventory, photos("n", 20))
        # Ten new vehicles waiting for photos: real placeholders, never photos before.
        world.scrape(new_inventory, photos("n", 20) + placeholders("n", 10))
        flaky = world.advertiser("Flaky")
        world.scrape(flaky, photos("f", 40))
        world.scrape(flaky, outage_rows("f", failed=2, ok=38))  # 5%: below the share
        no_history = world.advertiser("No History")
        world.scrape(no_history, photos("h", 10) + placeholders("h", 10))
    assert of(refresh(sessions), ML_OUTAGE) == []


def test_a_one_item_scrape_the_ml_server_did_not_answer_is_an_outage(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        world.scrape(world.advertiser("Tiny"), outage_rows("t", failed=1, ok=0))
    assert len(of(refresh(sessions), ML_OUTAGE)) == 1


# --- 2. Placeholder fixed by the advertiser ------------------------------------------------------


def test_placeholder_with_a_color_is_an_advertiser_fix(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Summit Auto Group")
        scrape = world.scrape(advertiser, photos("s", 6))
        world.fix(
            scrape, "s-1", "Placeholder", user="advertiser:Summit", source=FixSource.ADVERTISER
        )
    (finding,) = of(refresh(sessions), ADVERTISER_PLACEHOLDER)
    assert finding.severity == Severity.INFO
    assert "Placeholder with Color Red" in finding.explanation
    assert "advertiser:Summit (advertiser)" in finding.explanation
    assert finding.evidence["suggested_type"] == "Dealer"
    assert finding.evidence["image_key"] == key_of("s-1")


def test_placeholders_with_the_feeds_color_are_normal(sessions: sessionmaker[Session]) -> None:
    """With ``color_from_feed`` every image carries its vehicle's color, placeholders too."""
    with sessions.begin() as session:
        world = World(session)
        valley = world.advertiser("Valley Trucks", color_from_feed=True)
        world.scrape(
            valley,
            [
                {"name": "v0", "type": "Placeholder", "color": "Blue", "feed_color": "blue"},
                {"name": "v1", "type": "Dealer", "color": "Red", "feed_color": "Red"},
            ],
        )
    assert of(refresh(sessions), ADVERTISER_PLACEHOLDER) == []


# --- 3. Legacy cached placeholder ----------------------------------------------------------------


def test_legacy_na_color_is_flagged_per_advertiser(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Metro Car Center")
        legacy = {"type": "Placeholder", "color": "N/A", "ml_color": "N/A"}
        world.scrape(
            advertiser,
            [
                *photos("m", 5),
                {"name": "m-old1", **legacy},
                {"name": "m-old2", **legacy, "color": "n/a"},
            ],
        )
    findings = refresh(sessions)
    (finding,) = of(findings, LEGACY_PLACEHOLDER)
    assert finding.evidence["count"] == 2
    assert finding.explanation.startswith("Legacy cached placeholder")
    assert "relaunch the scrape" in finding.explanation
    assert of(findings, ADVERTISER_PLACEHOLDER) == []  # "N/A" is not a color someone chose


# --- 4. Advertisers sharing a CDN disagree -------------------------------------------------------


def shared_cdn(session: Session) -> tuple[World, Scrape, Scrape]:
    world = World(session)
    lakeside, metro = world.advertiser("Lakeside Auto"), world.advertiser("Metro Car Center")
    shared = [{"name": "shared-1", "url": "https://cdn.shared/1.jpg"}]
    return (
        world,
        world.scrape(lakeside, shared + photos("l", 4)),
        world.scrape(metro, shared + photos("m", 4)),
    )


def test_advertisers_fixing_one_image_differently_disagree(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world, lakeside, metro = shared_cdn(session)
        world.fix(lakeside, "shared-1", "Stock", user="advertiser:Lakeside", source="advertiser")
        # Metro's next scrape showed Lakeside's Stock (one cache entry); Metro puts Dealer back.
        world.fix(metro, "shared-1", "Stock", user="advertiser:Metro")
        world.fix(metro, "shared-1", "Dealer", user="advertiser:Metro")
    (finding,) = of(refresh(sessions), SHARED_CDN_CONFLICT)
    assert "Lakeside Auto says Stock, Metro Car Center says Dealer" in finding.explanation
    assert finding.evidence["current"] == {"Lakeside Auto": "Stock", "Metro Car Center": "Dealer"}
    assert [t["new_value"] for t in finding.evidence["timeline"]] == ["Stock", "Stock", "Dealer"]
    assert {i["advertiser"] for i in finding.evidence["images"]} == {
        "Lakeside Auto",
        "Metro Car Center",
    }


def test_back_and_forth_between_two_people_is_flagged_but_a_self_correction_is_not(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Lakeside Auto")
        scrape = world.scrape(advertiser, photos("l", 4))
        world.fix(scrape, "l-1", "Stock", user="ana")
        world.fix(scrape, "l-1", "Dealer", user="advertiser:Lakeside", source="advertiser")
        world.fix(scrape, "l-1", "Stock", user="ana")
        # One analyst changing her mind twice is not a fight.
        world.fix(scrape, "l-2", "Stock", user="bob")
        world.fix(scrape, "l-2", "Dealer", user="bob")
        world.fix(scrape, "l-2", "Stock", user="bob")
    (finding,) = of(refresh(sessions), SHARED_CDN_CONFLICT)
    assert finding.evidence["image_key"] == key_of("l-1")
    assert "back and forth by advertiser:Lakeside, ana" in finding.explanation


def test_advertisers_agreeing_on_a_shared_image_raise_nothing(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world, lakeside, metro = shared_cdn(session)
        world.fix(lakeside, "shared-1", "Stock", user="advertiser:Lakeside")
        world.fix(metro, "shared-1", "Stock", user="advertiser:Metro")
    assert of(refresh(sessions), SHARED_CDN_CONFLICT) == []


# --- 5. Fix that did not stick -------------------------------------------------------------------


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


def test_a_fixed_image_back_under_a_new_key_with_the_ml_label_did_not_stick(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        _, second = republished(session)
    (finding,) = of(refresh(sessions), FIX_NOT_STICKING)
    assert finding.severity == Severity.WARNING and finding.scrape_id == second.id
    evidence = finding.evidence
    assert (evidence["image_key"], evidence["matched_key"], evidence["match"]) == (
        key_of("new"),
        key_of("old"),
        "sha256",
    )
    assert [(c["field"], c["ml_value"], c["fixed_value"]) for c in evidence["changes"]] == [
        ("image_type", "Dealer", "Stock")
    ]
    assert "same bytes" in finding.explanation and "Carry the fix over" in finding.explanation


def test_a_near_copy_matches_by_perceptual_hash_when_the_thumbnails_agree(
    sessions: sessionmaker[Session],
) -> None:
    copy = thumbnail_of(picture(1).resize((400, 300)), quality=50)
    with sessions.begin() as session:
        republished(session, same_bytes=False, hash_=phash(0xF0F3), thumb=copy)
    (finding,) = of(refresh(sessions), FIX_NOT_STICKING)
    assert (finding.evidence["match"], finding.evidence["distance"]) == ("phash", 2)


@pytest.mark.parametrize(
    "image",
    [
        pytest.param({"hash_": phash(0xF0F3), "thumb": thumbnail_of(picture(2))}, id="look-alike"),
        pytest.param({"hash_": phash(0xF0F3), "size": (640, 480)}, id="other size"),
        pytest.param({"hash_": phash(0xFFFF0000)}, id="far hash"),
        pytest.param({"hash_": None}, id="no phash"),
    ],
)
def test_other_pictures_are_not_taken_for_the_fixed_one(
    sessions: sessionmaker[Session], image: dict[str, Any]
) -> None:
    with sessions.begin() as session:
        republished(session, same_bytes=False, **image)
    assert of(refresh(sessions), FIX_NOT_STICKING) == []


def test_a_fix_that_stuck_or_another_dealers_fix_is_not_flagged(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        sunrise, summit = world.advertiser("Sunrise Motors"), world.advertiser("Summit")
        same = {"sha": "c" * 64}
        first = world.scrape(sunrise, [{"name": "old", "image": same}, {"name": "kept"}])
        world.fix(first, "old", "Stock")
        world.fix(first, "kept", "Stock")
        # The ML cache had the fix: the new key came back already Stock.
        world.scrape(sunrise, [{"name": "new", "type": "Stock", "image": same}, {"name": "kept"}])
        # Summit lists the same file under its own key: case 6, not its fix.
        world.scrape(summit, [{"name": "summit-copy", "image": same}])
    assert of(refresh(sessions), FIX_NOT_STICKING) == []


# --- 6. Near-duplicates labelled differently -----------------------------------------------------


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


def test_near_duplicates_of_two_dealers_labelled_differently(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        near_pair(session)
    (finding,) = of(refresh(sessions), NEAR_DUPLICATES)
    assert finding.severity == Severity.INFO and finding.evidence["distance"] == 1
    labels = sorted((i["advertiser"], i["label"]) for i in finding.evidence["images"])
    assert labels == [("Summit Auto Group", "Stock · Red"), ("Sunrise Motors", "Dealer · Red")]
    assert "conflicting examples" in finding.explanation


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"fixed": False}, id="no fix: the model agrees with itself"),
        pytest.param({"thumb": thumbnail_of(picture(8))}, id="hash alike, picture not"),
    ],
)
def test_look_alikes_that_are_not_conflicting_examples(
    sessions: sessionmaker[Session], kwargs: dict[str, Any]
) -> None:
    with sessions.begin() as session:
        near_pair(session, **kwargs)
    assert of(refresh(sessions), NEAR_DUPLICATES) == []


# --- 7. Different criteria -----------------------------------------------------------------------


def criteria_world(session: Session, *, everyone_jumps: bool = False) -> None:
    world = World(session)
    for name in ("Harbor Autos", "Sunrise Motors", "Lakeside Auto"):
        advertiser = world.advertiser(name)
        for _ in range(3):
            world.scrape(advertiser, photos(name, 30, stock_every=3))  # a third Stock
        jumps = name == "Harbor Autos" or everyone_jumps
        last = photos(name, 30, stock_every=3)
        if jumps:  # two thirds Stock now
            last = [
                {**row, "type": "Stock" if i % 3 != 1 else "Dealer"} for i, row in enumerate(last)
            ]
        world.scrape(advertiser, last)


def test_a_class_share_jump_against_its_own_history_is_flagged(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        criteria_world(session)
    (finding,) = of(refresh(sessions), CRITERIA_SHIFT)
    assert finding.advertiser == "Harbor Autos"
    assert finding.evidence["class"] == "Stock"
    assert finding.evidence["baseline_share"] == pytest.approx(1 / 3, abs=0.01)
    assert finding.evidence["share"] == pytest.approx(2 / 3, abs=0.01)
    assert finding.evidence["review"] == {"advertiser": "Harbor Autos", "type": ["Stock"]}
    assert "from 33%" in finding.explanation and "to 67%" in finding.explanation


def test_a_jump_shared_by_every_advertiser_is_not_criteria(
    sessions: sessionmaker[Session],
) -> None:
    """A new model moves everyone: that is not one advertiser's criteria."""
    with sessions.begin() as session:
        criteria_world(session, everyone_jumps=True)
    assert of(refresh(sessions), CRITERIA_SHIFT) == []


def test_a_fix_rate_far_above_every_other_advertiser(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        world = World(session)
        scrapes = {
            name: world.scrape(world.advertiser(name), photos(name, 20))
            for name in ("Harbor Autos", "Sunrise Motors", "Lakeside Auto")
        }
        for i in range(1, 9):
            world.fix(scrapes["Harbor Autos"], f"Harbor Autos-{i}", "Placeholder")
        world.fix(scrapes["Sunrise Motors"], "Sunrise Motors-1", "Stock")
    findings = of(refresh(sessions), CRITERIA_SHIFT)
    assert [(f.advertiser, f.evidence["kind"]) for f in findings] == [("Harbor Autos", "fix_rate")]
    assert findings[0].evidence["rate"] == pytest.approx(0.4)
    assert findings[0].evidence["review"]["status"] == ["fixed"]


def test_a_fix_rate_without_peers_to_compare_with_is_not_judged(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        scrape = world.scrape(world.advertiser("Alone"), photos("a", 20))
        for i in range(1, 12):
            world.fix(scrape, f"a-{i}", "Placeholder")
    assert of(refresh(sessions), CRITERIA_SHIFT) == []


# --- states: ignored until the evidence changes --------------------------------------------------


def test_ignored_stays_ignored_until_its_evidence_changes(
    sessions: sessionmaker[Session],
) -> None:
    legacy = {"type": "Placeholder", "color": "N/A"}
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Metro Car Center")
        world.scrape(advertiser, [*photos("m", 4), {"name": "old1", **legacy}])
    (finding,) = refresh(sessions)
    with sessions.begin() as session:
        ignore_finding(session, actor(Role.ANALYST, "ana"), finding.id, "old cache, harmless")

    # A new scrape with the same evidence: still ignored, by whom and why kept.
    with sessions.begin() as session:
        World(session).scrape(
            session.get_one(Advertiser, advertiser.id),
            [*photos("m", 4), {"name": "old1", **legacy}],
        )
    assert refresh(sessions) == []
    with sessions() as session:
        (kept,) = list_findings(session, states=None)
    assert (kept.state, kept.state_by, kept.state_reason) == (
        FindingState.IGNORED,
        "ana",
        "old cache, harmless",
    )

    # One more legacy image: the evidence changed, the finding is open again.
    with sessions.begin() as session:
        World(session).scrape(
            session.get_one(Advertiser, advertiser.id),
            [*photos("m", 4), {"name": "old1", **legacy}, {"name": "old2", **legacy}],
        )
    (reopened,) = refresh(sessions)
    assert reopened.id == finding.id and reopened.state == FindingState.OPEN
    assert "reopened, the evidence changed (was ignored by ana: old cache, harmless)" in (
        reopened.state_reason or ""
    )
    assert reopened.evidence["count"] == 2


def test_a_finding_that_disappears_is_fixed_and_reopens_when_it_comes_back(
    sessions: sessionmaker[Session],
) -> None:
    legacy = [{"name": "old1", "type": "Placeholder", "color": "N/A"}]
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Metro Car Center")
        world.scrape(advertiser, photos("m", 4) + legacy)
    (first,) = refresh(sessions)
    for rows, expected in ((photos("m", 4), FindingState.FIXED), (photos("m", 4) + legacy, "open")):
        with sessions.begin() as session:
            World(session).scrape(session.get_one(Advertiser, advertiser.id), rows)
        refresh(sessions)
        with sessions() as session:
            assert session.get_one(Finding, first.id).state == expected


def test_an_advertiser_scoped_refresh_leaves_other_advertisers_findings(
    sessions: sessionmaker[Session],
) -> None:
    legacy = [{"name": "old", "type": "Placeholder", "color": "N/A"}]
    with sessions.begin() as session:
        world = World(session)
        metro, lakeside = world.advertiser("Metro"), world.advertiser("Lakeside")
        world.scrape(metro, photos("m", 3) + legacy)
        world.scrape(lakeside, [*photos("l", 3), {**legacy[0], "name": "old-l"}])
    assert len(refresh(sessions)) == 2
    with sessions.begin() as session:
        World(session).scrape(session.get_one(Advertiser, metro.id), photos("m", 3))
    remaining = refresh(sessions, advertiser_id=metro.id)
    assert [f.advertiser for f in remaining] == ["Lakeside"]


def test_near_pairs_finds_exactly_the_close_hashes() -> None:
    rng = random.Random(3)
    base = [rng.getrandbits(64) for _ in range(60)]
    hashes: dict[str, str | None] = {}
    for i, value in enumerate(base):
        hashes[f"k{i}"] = phash(value)
        flipped = value
        for bit in rng.sample(range(64), rng.randrange(0, 10)):
            flipped ^= 1 << bit
        hashes[f"c{i}"] = phash(flipped)
    hashes.update({"none": None, "junk": "xyz", "upper": "ABCDEF0123456789"})
    valid = {k: v for k, v in hashes.items() if v and len(v) == 16 and v == v.lower()}
    keys = sorted(valid)
    expected = {
        (a, b, hash_distance(valid[a], valid[b]))
        for i, a in enumerate(keys)
        for b in keys[i + 1 :]
        if hash_distance(valid[a], valid[b]) <= 6
    }
    assert set(near_pairs(hashes, 6)) == expected
    assert {d for *_, d in expected} > {0, 6}  # identical and near hashes both exercised


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_prints_open_findings_as_json_and_exits_0(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from tagging.cli.weird import add_weird_parser, cmd_weird

    monkeypatch.setenv("TAGGING_DATABASE_URL", sqlite_url)
    engine = make_engine(sqlite_url)
    with make_session_factory(engine).begin() as session:
        world = World(session)
        world.scrape(
            world.advertiser("Metro"), [{"name": "o", "type": "Placeholder", "color": "N/A"}]
        )
        world.scrape(world.advertiser("Lakeside"), photos("l", 3))
    engine.dispose()
    parser = argparse.ArgumentParser()
    add_weird_parser(parser.add_subparsers(dest="command"))

    assert cmd_weird(parser.parse_args(["weird", "--json"])) == 0
    assert json.loads(capsys.readouterr().out) == []  # nothing computed yet
    assert cmd_weird(parser.parse_args(["weird", "--json", "--refresh"])) == 0
    (finding,) = json.loads(capsys.readouterr().out)
    assert finding["detector"] == LEGACY_PLACEHOLDER and finding["advertiser"] == "Metro"
    assert {"severity", "scrape_id", "explanation", "evidence"} <= set(finding)
    assert finding["evidence"]["images"][0]["image_key"] == key_of("o")

    assert cmd_weird(parser.parse_args(["weird", "Lakeside"])) == 0
    assert capsys.readouterr().out.strip() == "no open findings"
    assert cmd_weird(parser.parse_args(["weird", "metro"])) == 0
    assert "[warning] Legacy cached placeholder · Metro" in capsys.readouterr().out


# --- end to end over real HTTP -------------------------------------------------------------------


class _FlakyML(BaseHTTPRequestHandler):
    """Forwards the first ``answer`` classify calls to the real ML server, then answers 503."""

    target = ""
    answer = 0
    calls = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            type(self).calls += 1
            forward = type(self).calls <= self.answer
        if forward:
            upstream = requests.post(
                self.target + self.path,
                data=body,
                headers={
                    "Authorization": self.headers.get("Authorization", ""),
                    "Content-Type": "application/json",
                },
                timeout=60,
            )
            status, payload = upstream.status_code, upstream.content
        else:
            status, payload = 503, b'{"detail": "overloaded"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_ml(ml_server: object) -> Iterator[str]:
    handler = type("Flaky", (_FlakyML,), {"target": ml_server.url, "answer": 2, "calls": 0})  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _scrape(
    settings: object, sessions: sessionmaker[Session], name: str, **config: Any
) -> ScrapeSummary:
    client = client_from_settings(settings)  # type: ignore[arg-type]
    ml = MLClient.from_settings(settings)  # type: ignore[arg-type]
    try:
        return run_scrape(sessions, name, ml=ml, client=client, config=ScrapeConfig(**config))
    finally:
        client.close()
        ml.client.close()


def test_end_to_end_outage_relaunch_then_republish_and_carry_over(
    app_settings: object, demo_dir: Path, cdn: object, ml_server: object, flaky_ml: str
) -> None:
    register_demo_advertisers(app_settings, DemoInventory.load(demo_dir), cdn.url)  # type: ignore[arg-type, attr-defined]
    engine = make_engine(app_settings.database_url)  # type: ignore[attr-defined]
    sessions = make_session_factory(engine)
    analyst = actor(Role.ANALYST, "ana")
    try:
        # 1. The ML server answers two batches, then fails: the scrape's findings say so.
        lakeside = DemoInventory.load(demo_dir).advertiser("lakeside-auto")
        assert len(lakeside.image_paths()) == sum(len(v.images) for v in lakeside.vehicles)
        flaky = replace(app_settings, ml_url=flaky_ml)  # type: ignore[type-var]
        failed = _scrape(
            flaky, sessions, lakeside.name, batch_size=8, max_consecutive_ml_failures=99
        )
        assert 0 < failed.ml_failures < failed.items and failed.failed == failed.ml_failures
        with sessions() as session:
            (outage,) = list_findings(session, detector=ML_OUTAGE)
        assert outage.scrape_id == failed.scrape_id and outage.severity == Severity.WARNING

        # Relaunch: only the failed images are classified, the rest come from the ML cache.
        relaunched = _scrape(app_settings, sessions, lakeside.name, batch_size=8)
        assert relaunched.classified == failed.ml_failures
        assert relaunched.cached == failed.items - failed.ml_failures
        with sessions() as session:
            assert list_findings(session, detector=ML_OUTAGE) == []

        # 2. Sunrise: a scrape, the CDN moves half the images, two moved ones get fixed.
        sunrise = get_name(sessions, "Sunrise Motors")
        first = _scrape(app_settings, sessions, sunrise)
        moved = republish(app_settings, cdn, share=0.5, seed=1)
        with sessions.begin() as session:
            items = [
                i
                for i in scrape_items(session, first.scrape_id)
                if urlsplit(i.image_url).path in moved and i.image_type in ("Dealer", "Stock")
            ][:2]
            assert len(items) == 2
            changes = [
                FixChange(i.id, "image_type", "Stock" if i.image_type == "Dealer" else "Dealer")
                for i in items
            ]
            fixed = {i.image_url: c.new_value for i, c in zip(items, changes, strict=True)}
            outcome = apply_fixes(session, analyst, changes)
        ml = MLClient.from_settings(app_settings)  # type: ignore[arg-type]
        assert push_pending(sessions, ml, fix_ids=outcome.fix_ids).synced == 2

        # The rescrape sees them under new keys, with the ML labels: the fixes did not stick.
        _scrape(app_settings, sessions, sunrise)
        with sessions() as session:
            unstuck = list_findings(session, detector=FIX_NOT_STICKING)
        assert len(unstuck) == 2
        assert {f.evidence["matched_url"] for f in unstuck} == set(fixed)
        assert all(f.evidence["match"] == "sha256" for f in unstuck)

        # 3. Carry one over by hand: history row with source carry_over, the ML cache has it.
        with sessions.begin() as session:
            carried = carry_over_finding(session, analyst, unstuck[0].id)
        assert push_pending(sessions, ml, fix_ids=carried.fix_ids).synced == 1
        new_key = unstuck[0].evidence["image_key"]
        wanted = fixed[unstuck[0].evidence["matched_url"]]
        record = requests.get(
            f"{ml_server.url}/images/{new_key}",  # type: ignore[attr-defined]
            headers={"Authorization": f"Bearer {ML_TOKEN}"},
            timeout=10,
        )
        assert record.status_code == 200 and record.json()["image_type"] == wanted
        with sessions() as session:
            row = session.scalars(select(ManualFix).where(ManualFix.image_key == new_key)).one()
            assert (row.source, row.user, row.new_value) == (FixSource.CARRY_OVER, "ana", wanted)
            assert row.sync_status == SyncStatus.SYNCED

        # 4. The other one, automatically: the advertiser's option, then every image moves again.
        with sessions.begin() as session:
            set_auto_carry(session, analyst, get_advertiser(session, sunrise).id, True)
        republish(app_settings, cdn, share=1.0, seed=2)
        third = _scrape(app_settings, sessions, sunrise)
        with sessions() as session:
            auto = session.scalars(
                select(ManualFix).where(ManualFix.user == "system").order_by(ManualFix.id)
            ).all()
            assert {f.source for f in auto} == {FixSource.CARRY_OVER}
            assert {f.sync_status for f in auto} == {SyncStatus.SYNCED}
            assert len(auto) == 2  # both fixed pictures, under their third key
            assert list_findings(session, detector=FIX_NOT_STICKING) == []
            now = {i.image_key: i.image_type for i in scrape_items(session, third.scrape_id)}
        for fix in auto:
            assert now[fix.image_key] == fix.new_value
            cached = ml.get_image(fix.image_key)
            assert cached is not None and cached.image_type == fix.new_value
        ml.client.close()
    finally:
        engine.dispose()


def republish(settings: object, cdn: object, *, share: float, seed: int) -> dict[str, str]:
    """POST the demo CDN's admin endpoint through the guarded client: ``{old path: new path}``."""
    url = f"{cdn.url}/_admin/republish?share={share}&seed={seed}"  # type: ignore[attr-defined]
    with client_from_settings(settings) as client:  # type: ignore[arg-type]
        return json.loads(client.request_json("POST", url).body)["paths"]


def get_name(sessions: sessionmaker[Session], name: str) -> str:
    with sessions() as session:
        return get_advertiser(session, name).name


def test_the_demo_stages_every_case(
    app_settings: object, demo_dir: Path, cdn: object, ml_server: object
) -> None:
    """What ``make run`` shows after its first scrape: each detector has a finding."""
    from tagging.demo.stage import stage_weird_cases

    register_demo_advertisers(app_settings, DemoInventory.load(demo_dir), cdn.url)  # type: ignore[arg-type, attr-defined]
    engine = make_engine(app_settings.database_url)  # type: ignore[attr-defined]
    sessions = make_session_factory(engine)
    try:
        for advertiser in DemoInventory.load(demo_dir).advertisers:
            _scrape(app_settings, sessions, advertiser.name)
        report = stage_weird_cases(app_settings, sessions, cdn_url=cdn.url)  # type: ignore[arg-type, attr-defined]
        assert report.skipped is None
        assert set(report.findings) == set(DETECTORS), report
        assert set(report.staged) == set(DETECTORS)
        # Staged once: a second call (a later `make run`) changes nothing.
        again = stage_weird_cases(app_settings, sessions, cdn_url=cdn.url)  # type: ignore[arg-type, attr-defined]
        assert again.skipped and not again.staged
    finally:
        engine.dispose()
