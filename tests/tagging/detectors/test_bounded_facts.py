"""The detectors read the database in bounded queries, and find exactly what they found when they
loaded every latest item as Python objects (SQLite and PostgreSQL).

The reference is the code before the change (``tests/tagging/detectors/reference``, verbatim but
for its imports), run on the same random worlds: several advertisers and scrapes, images shared
between advertisers, repeated in a sitemap, re-published under new keys, near copies, outages,
legacy colors and fixes that disagree.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor
from db.findings import Candidate
from db.fixes import FixChange, apply_fixes
from db.models import Role, SitemapItem
from db.vocab import FIX_NOT_STICKING, NEAR_DUPLICATES, SHARED_CDN_CONFLICT
from tagging.detectors.base import DEFAULT_THRESHOLDS, Thresholds
from tagging.detectors.facts import load_facts
from tagging.detectors.registry import detect_all
from tests.tagging.detectors.reference import base as reference_base
from tests.tagging.detectors.reference.facts import load_facts as reference_load_facts
from tests.tagging.detectors.reference.registry import detect_all as reference_detect_all
from tests.utils.world import World, phash, picture, thumbnail_of

LOOSE = Thresholds(
    outage_min_items=2,
    outage_excess_share=0.05,
    shift_min_share=0.05,
    shift_min_items=1,
    fix_rate_min=0.05,
    fix_rate_min_items=1,
    fix_rate_factor=1.0,
    fix_rate_min_peers=1,
    evidence_limit=3,
)

TYPES = ("Dealer", "Stock", "Placeholder")
COLORS = ("Red", "Black", "White", None, "N/A", " n/a ")


def _family_image(rng: random.Random, family: int, variant: int) -> dict[str, Any]:
    """A picture of ``family``: near hashes, the same thumbnail, sometimes the same bytes."""
    bits = (0x9E3779B97F4A7C15 * (family + 1)) & (2**64 - 1)
    for _ in range(variant % 4):
        bits ^= 1 << rng.randrange(64)
    return {
        "hash_": phash(bits),
        "sha": f"{family:02d}" * 32 if rng.random() < 0.3 else None,
        "size": (480, 360) if rng.random() < 0.8 else (400, 300),
        "thumb": _THUMBS[family % len(_THUMBS)] if rng.random() < 0.9 else None,
    }


_THUMBS = [thumbnail_of(picture(seed)) for seed in range(3)]


def build_world(session: Session, seed: int) -> None:
    """Advertisers with a few scrapes each and fixes on their latest items."""
    rng = random.Random(seed)
    world = World(session)
    advertisers = [
        world.advertiser(f"Dealer {seed}-{n}", color_from_feed=rng.random() < 0.3)
        for n in range(rng.randint(2, 4))
    ]
    shared = [f"s{seed}-shared-{n}" for n in range(6)]
    families = {name: rng.randrange(6) for name in shared}
    images: dict[str, dict[str, Any]] = {}
    for advertiser in advertisers:
        names = [f"s{seed}-{advertiser.id}-{n}" for n in range(rng.randint(6, 14))]
        for scrape_number in range(rng.randint(1, 4)):
            rows = []
            current = list(names)
            if scrape_number and rng.random() < 0.5:  # re-published: the same picture, new name
                old = rng.choice(current)
                current[current.index(old)] = f"{old}-v{scrape_number}"
                families[f"{old}-v{scrape_number}"] = families.setdefault(old, rng.randrange(6))
            current += rng.sample(shared, rng.randint(0, 3))
            if rng.random() < 0.4:
                current.append(rng.choice(current))  # listed twice
            outage = rng.random() < 0.25
            for name in current:
                family = families.setdefault(name, rng.randrange(40))
                image = images.setdefault(name, _family_image(rng, family, rng.randrange(8)))
                kind = rng.random()
                status = "ok"
                if outage and kind < 0.5:
                    status = "ml_failure"
                elif kind < 0.05:
                    status = "error"
                image_type = rng.choice(TYPES)
                color = rng.choice(COLORS)
                ml_type = image_type if rng.random() < 0.8 else rng.choice(TYPES)
                if outage and kind < 0.7:
                    ml_type, color = "Placeholder", None
                rows.append(
                    {
                        "name": name,
                        "type": "Placeholder" if status != "ok" else image_type,
                        "color": color,
                        "ml_type": "Placeholder" if status != "ok" else ml_type,
                        "ml_color": None if status != "ok" or ml_type == "Placeholder" else color,
                        "feed_color": color if rng.random() < 0.5 else "Blue",
                        "status": status,
                        "url": f"https://cdn.example/{name}.jpg",
                        "image": {k: v for k, v in image.items() if v is not None},
                    }
                )
            scrape = world.scrape(advertiser, rows)
            _fix_some(session, rng, scrape.id, advertiser.name)
    _republished(session, world, rng, advertisers[0], seed)


def _republished(
    session: Session, world: World, rng: random.Random, advertiser: Any, seed: int
) -> None:
    """A fixed image re-published under a new key, with its bytes or only its look."""
    same_bytes = rng.random() < 0.5
    image = {"hash_": phash(0xF0F0 + seed), "thumb": _THUMBS[0], "sha": f"{seed:02x}" * 32}
    first = world.scrape(advertiser, [{"name": f"rep-{seed}", "image": image}])
    item = session.scalars(select(SitemapItem).where(SitemapItem.scrape_id == first.id)).one()
    apply_fixes(
        session,
        Actor(username="ana", role=Role.ANALYST),
        [FixChange(item.id, "image_type", "Stock")],
    )
    new_image = {**image, "hash_": phash(0xF0F1 + seed)}
    if not same_bytes:
        new_image["sha"] = f"{seed + 1:02x}" * 32
    world.scrape(advertiser, [{"name": f"rep-{seed}-new", "image": new_image}])


def _fix_some(session: Session, rng: random.Random, scrape_id: int, name: str) -> None:
    items = session.scalars(
        select(SitemapItem).where(
            SitemapItem.scrape_id == scrape_id, SitemapItem.image_key.is_not(None)
        )
    ).all()
    for item in rng.sample(list(items), min(len(items), rng.randint(0, 5))):
        field = rng.choice(["image_type", "image_type", "color"])
        value = rng.choice(TYPES) if field == "image_type" else rng.choice(["Red", "Black"])
        user = rng.choice(["ana", "bo", f"advertiser:{name}"])
        apply_fixes(
            session, Actor(username=user, role=Role.ANALYST), [FixChange(item.id, field, value)]
        )
    session.flush()


def _as_compared(candidates: list[Candidate]) -> list[tuple[Any, ...]]:
    return [
        (
            c.detector,
            c.subject,
            c.advertiser_id,
            c.scrape_id,
            c.severity,
            c.explanation,
            c.evidence,
            c.fingerprint,
        )
        for c in candidates
    ]


def _both(
    session: Session, t: Thresholds, **scope: Any
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    before = reference_detect_all(
        reference_load_facts(session, thresholds=reference_base.Thresholds(**vars(t)), **scope),
        reference_base.Thresholds(**vars(t)),
    )
    after = detect_all(load_facts(session, thresholds=t, **scope), t)
    return _as_compared(before), _as_compared(after)


@pytest.mark.parametrize("seed", range(12))
def test_findings_are_those_of_the_items_loaded_in_full(
    sessions: sessionmaker[Session], seed: int
) -> None:
    with sessions.begin() as session:
        build_world(session, seed)
    with sessions() as session:
        advertiser_ids = sorted({i for i in session.scalars(select(SitemapItem.advertiser_id))})
        for t in (DEFAULT_THRESHOLDS, LOOSE):
            before, after = _both(session, t)
            assert after == before
            scoped_before, scoped_after = _both(session, t, advertiser_id=advertiser_ids[0])
            assert scoped_after == scoped_before


def test_the_random_worlds_exercise_the_detectors(sessions: sessionmaker[Session]) -> None:
    """The comparison above means something: the worlds give most detectors findings."""
    detectors: set[str] = set()
    with sessions.begin() as session:
        for seed in range(12):
            build_world(session, seed)
    with sessions() as session:
        for t in (DEFAULT_THRESHOLDS, LOOSE):
            detectors |= {c.detector for c in detect_all(load_facts(session, thresholds=t), t)}
    assert {SHARED_CDN_CONFLICT, NEAR_DUPLICATES, FIX_NOT_STICKING} <= detectors
    assert len(detectors) >= 6
