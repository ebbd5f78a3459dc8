"""Scrapes and their items (db.scrapes): writing a scrape batch by batch, and reading them back.

The orchestration (sitemap, ML server, batches) is tested end to end in
tests/tagging/ingest/test_scrape.py; here each storage function on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import (
    Image,
    ManualFix,
    Scrape,
    ScrapeStatus,
    SitemapItem,
    Thumbnail,
    as_utc,
    utcnow,
)
from db.scrapes import (
    LEASE,
    ScrapeCounts,
    beat,
    copy_fresh_items,
    expire_abandoned_scrapes,
    finish_scrape,
    items_fixed_since,
    latest_scrape,
    recent_scrapes,
    running_scrape,
    scrape_items,
    scrapes_of,
    set_expected_items,
    set_item_labels,
    stale_items,
    start_scrape,
    store_batch,
    thumbnail_keys,
)
from tests.utils.factories import make_advertiser


def item_row(scrape: Scrape, position: int, key: str) -> dict[str, Any]:
    return {
        "scrape_id": scrape.id,
        "advertiser_id": scrape.advertiser_id,
        "position": position,
        "page_url": f"https://dealer.example/vehicles/{position}",
        "image_url": f"https://cdn.example/{key}.jpg",
        "image_key": key,
        "ml_image_type": "Dealer",
        "image_type": "Dealer",
        "color": "Red",
        "ml_color": "Red",
    }


def image_row(key: str, seen: datetime, url: str | None = None) -> dict[str, Any]:
    return {
        "image_key": key,
        "url": url or f"https://cdn.example/{key}.jpg",
        "sha256": key * 2,
        "first_seen": seen,
        "last_seen": seen,
    }


def key(n: int) -> str:
    return f"{n:032x}"


def scrape_at(session: Session, advertiser_id: int, started: datetime, **values: Any) -> Scrape:
    scrape = Scrape(advertiser_id=advertiser_id, started_at=started, **values)
    session.add(scrape)
    session.flush()
    return scrape


def test_start_scrape_is_running_and_knows_who_asked(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        advertiser = make_advertiser(session)
        scrape = start_scrape(session, advertiser.id, trigger="app", requested_by="ana")
        assert scrape.id is not None  # flushed: the caller can use its id at once
        scrape_id = scrape.id
    with sessions.begin() as session:
        set_expected_items(session, scrape_id, 42)
    with sessions() as session:
        stored = session.get_one(Scrape, scrape_id)
        assert (stored.status, stored.trigger, stored.requested_by) == (
            ScrapeStatus.RUNNING,
            "app",
            "ana",
        )
        assert stored.finished_at is None and stored.started_at is not None
        assert (stored.expected_items, stored.item_count) == (42, 0)


def test_store_batch_adds_items_images_thumbnails_and_counts(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        scrape = start_scrape(
            session, make_advertiser(session).id, trigger="cli", requested_by=None
        )
        store_batch(
            session,
            scrape.id,
            ScrapeCounts(items=2, cached=1, classified=1),
            [item_row(scrape, 0, key(1)), item_row(scrape, 1, key(2))],
            [image_row(key(1), utcnow()), image_row(key(2), utcnow())],
            [{"image_key": key(1), "jpeg": b"one"}],
        )
        store_batch(
            session,
            scrape.id,
            ScrapeCounts(items=3, cached=1, classified=1, failed=1, ml_failures=1),
            [item_row(scrape, 2, key(3))],
            [image_row(key(3), utcnow())],
            [],
        )
        scrape_id = scrape.id
    with sessions() as session:
        stored = session.get_one(Scrape, scrape_id)
        counts = (
            stored.item_count,
            stored.cached_count,
            stored.classified_count,
            stored.failed_count,
            stored.ml_failure_count,
        )
        assert counts == (3, 1, 1, 1, 1)  # the running counts of the last batch
        assert stored.finished_at is None and stored.status == ScrapeStatus.RUNNING
        assert [i.image_key for i in scrape_items(session, scrape_id)] == [key(1), key(2), key(3)]
        assert set(session.scalars(select(Image.image_key))) == {key(1), key(2), key(3)}
        assert session.get_one(Thumbnail, key(1)).jpeg == b"one"


def test_store_batch_keeps_a_known_thumbnail_and_updates_last_seen(
    sessions: sessionmaker[Session],
) -> None:
    long_ago = utcnow() - timedelta(days=30)
    with sessions.begin() as session:
        advertiser = make_advertiser(session)
        first = start_scrape(session, advertiser.id, trigger="cli", requested_by=None)
        store_batch(
            session,
            first.id,
            ScrapeCounts(items=1),
            [item_row(first, 0, key(1))],
            [image_row(key(1), long_ago)],
            [{"image_key": key(1), "jpeg": b"first thumbnail"}],
        )
        advertiser_id = advertiser.id
    now = utcnow()
    with sessions.begin() as session:
        second = start_scrape(session, advertiser_id, trigger="cli", requested_by=None)
        store_batch(
            session,
            second.id,
            ScrapeCounts(items=2),
            [item_row(second, 0, key(1)), item_row(second, 1, key(2))],
            [image_row(key(1), now, url="https://other.example/moved.jpg"), image_row(key(2), now)],
            [
                {"image_key": key(1), "jpeg": b"second thumbnail"},
                {"image_key": key(2), "jpeg": b"new thumbnail"},
            ],
        )
    with sessions() as session:
        image = session.get_one(Image, key(1))
        assert as_utc(image.last_seen) == now  # seen again
        assert as_utc(image.first_seen) == long_ago  # ... the rest of the row is the first one
        assert image.url == f"https://cdn.example/{key(1)}.jpg"
        assert session.get_one(Thumbnail, key(1)).jpeg == b"first thumbnail"
        assert session.get_one(Thumbnail, key(2)).jpeg == b"new thumbnail"


def test_finish_scrape_sets_status_counts_and_finished_at(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        scrape = start_scrape(
            session, make_advertiser(session).id, trigger="cli", requested_by=None
        )
        scrape_id = scrape.id
    before = utcnow()
    with sessions.begin() as session:
        finish_scrape(
            session,
            scrape_id,
            status=ScrapeStatus.COMPLETED_WITH_ERRORS,
            counts=ScrapeCounts(items=10, cached=4, classified=3, failed=3, ml_failures=2),
            seconds=12.5,
            error="2 items got no answer from the ML server",
        )
    with sessions() as session:
        stored = session.get_one(Scrape, scrape_id)
        assert stored.status == ScrapeStatus.COMPLETED_WITH_ERRORS
        finished = as_utc(stored.finished_at)
        assert finished is not None and before <= finished <= utcnow()
        assert (
            stored.item_count,
            stored.cached_count,
            stored.classified_count,
            stored.failed_count,
            stored.ml_failure_count,
        ) == (10, 4, 3, 3, 2)
        assert (stored.seconds, stored.error) == (12.5, "2 items got no answer from the ML server")
        assert latest_scrape(session, stored.advertiser_id).id == scrape_id  # type: ignore[union-attr]


def test_latest_scrape_is_the_newest_finished_one_unless_asked(
    sessions: sessionmaker[Session],
) -> None:
    now = utcnow()
    with sessions.begin() as session:
        sunrise, harbor = make_advertiser(session), make_advertiser(session, "Harbor Autos")
        assert latest_scrape(session, sunrise.id) is None
        scrape_at(session, sunrise.id, now - timedelta(days=2), finished_at=now)
        new = scrape_at(session, sunrise.id, now - timedelta(days=1), finished_at=now)
        scrape_at(session, sunrise.id, now - timedelta(days=3), finished_at=now)  # older
        running = scrape_at(session, sunrise.id, now)
        scrape_at(session, harbor.id, now, finished_at=now)  # another advertiser's
        sunrise_id, new_id, running_id = sunrise.id, new.id, running.id
    with sessions() as session:
        assert latest_scrape(session, sunrise_id).id == new_id  # type: ignore[union-attr]
        assert latest_scrape(session, sunrise_id, finished=False).id == running_id  # type: ignore[union-attr]


def test_scrape_items_are_the_scrapes_own_in_sitemap_order(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        advertiser = make_advertiser(session)
        scrape = start_scrape(session, advertiser.id, trigger="cli", requested_by=None)
        other = start_scrape(session, advertiser.id, trigger="cli", requested_by=None)
        # Stored out of order, and another scrape's item in between.
        session.add_all(
            [
                SitemapItem(**item_row(scrape, 2, key(3))),
                SitemapItem(**item_row(other, 0, key(9))),
                SitemapItem(**item_row(scrape, 0, key(1))),
                SitemapItem(**item_row(scrape, 1, key(2))),
            ]
        )
        scrape_id, other_id = scrape.id, other.id
    with sessions() as session:
        items = scrape_items(session, scrape_id)
        assert [(i.position, i.image_key) for i in items] == [(0, key(1)), (1, key(2)), (2, key(3))]
        assert [i.image_key for i in scrape_items(session, other_id)] == [key(9)]
        assert scrape_items(session, 999_999) == []


def test_recent_scrapes_and_scrapes_of_are_newest_first(sessions: sessionmaker[Session]) -> None:
    now = utcnow()
    with sessions.begin() as session:
        sunrise, harbor = make_advertiser(session), make_advertiser(session, "Harbor Autos")
        s1 = scrape_at(session, sunrise.id, now - timedelta(hours=3), finished_at=now)
        h1 = scrape_at(session, harbor.id, now - timedelta(hours=2), finished_at=now)
        s2 = scrape_at(session, sunrise.id, now - timedelta(hours=1))  # running: listed too
        ids = {"s1": s1.id, "h1": h1.id, "s2": s2.id, "sunrise": sunrise.id, "harbor": harbor.id}
    with sessions() as session:
        recent = recent_scrapes(session)
        assert [(s.id, name) for s, name in recent] == [
            (ids["s2"], "Sunrise Motors"),
            (ids["h1"], "Harbor Autos"),
            (ids["s1"], "Sunrise Motors"),
        ]
        assert [s.id for s, _ in recent_scrapes(session, limit=2)] == [ids["s2"], ids["h1"]]
        assert [s.id for s in scrapes_of(session, ids["sunrise"])] == [ids["s2"], ids["s1"]]
        assert [s.id for s in scrapes_of(session, ids["sunrise"], limit=1)] == [ids["s2"]]
        assert [s.id for s in scrapes_of(session, ids["harbor"])] == [ids["h1"]]


def test_running_scrape_ignores_finished_and_stale_ones(sessions: sessionmaker[Session]) -> None:
    now = utcnow()
    with sessions.begin() as session:
        advertiser = make_advertiser(session)
        assert running_scrape(session, advertiser.id) is None  # never scraped
        scrape_at(session, advertiser.id, now - timedelta(minutes=5), finished_at=now)
        assert running_scrape(session, advertiser.id) is None  # only a finished one
        # A worker died without finishing its scrape: no heartbeat for the lease, it no longer
        # counts (however recently it started).
        silent = now - LEASE - timedelta(seconds=1)
        scrape_at(session, advertiser.id, now - timedelta(minutes=3), heartbeat_at=silent)
        assert running_scrape(session, advertiser.id) is None
        # A long scrape whose heartbeat is fresh counts, however long ago it started.
        fresh = scrape_at(
            session,
            advertiser.id,
            now - timedelta(hours=5),
            heartbeat_at=now - LEASE + timedelta(seconds=30),
        )
        advertiser_id, fresh_id = advertiser.id, fresh.id
    with sessions() as session:
        assert running_scrape(session, advertiser_id).id == fresh_id  # type: ignore[union-attr]
    with sessions.begin() as session:
        finish_scrape(
            session,
            fresh_id,
            status=ScrapeStatus.SUCCEEDED,
            counts=ScrapeCounts(),
            seconds=1.0,
            error=None,
        )
    with sessions() as session:
        assert running_scrape(session, advertiser_id) is None


def test_start_store_and_beat_push_the_heartbeat(sessions: sessionmaker[Session]) -> None:
    old = utcnow() - timedelta(hours=1)
    with sessions.begin() as session:
        advertiser = make_advertiser(session)
        scrape = start_scrape(session, advertiser.id, trigger="cli", requested_by=None)
        assert as_utc(scrape.heartbeat_at) > utcnow() - timedelta(minutes=1)  # type: ignore[operator]
        scrape.heartbeat_at = old
        scrape_id = scrape.id

    def heartbeat() -> datetime:
        with sessions() as session:
            moment = as_utc(session.get_one(Scrape, scrape_id).heartbeat_at)
            assert moment is not None
            return moment

    with sessions.begin() as session:
        store_batch(session, scrape_id, ScrapeCounts(), [], [], [])
    assert heartbeat() > old + timedelta(minutes=30)
    with sessions.begin() as session:
        session.get_one(Scrape, scrape_id).heartbeat_at = old
    with sessions.begin() as session:
        beat(session, scrape_id)
    assert heartbeat() > old + timedelta(minutes=30)


def test_expire_abandoned_scrapes_fails_only_silent_running_ones(
    sessions: sessionmaker[Session],
) -> None:
    now = utcnow()
    silent_since = now - LEASE - timedelta(minutes=1)
    with sessions.begin() as session:
        advertiser, other = make_advertiser(session), make_advertiser(session, "Other Motors")
        dead = scrape_at(session, advertiser.id, silent_since, heartbeat_at=silent_since)
        alive = scrape_at(session, advertiser.id, now - timedelta(hours=3), heartbeat_at=now)
        done = scrape_at(
            session,
            advertiser.id,
            silent_since,
            heartbeat_at=silent_since,
            finished_at=now,
            status=ScrapeStatus.SUCCEEDED,
        )
        elsewhere = scrape_at(session, other.id, silent_since, heartbeat_at=silent_since)
        ids = dead.id, alive.id, done.id, elsewhere.id
    with sessions.begin() as session:
        assert expire_abandoned_scrapes(session, advertiser.id) == [ids[0]]
    with sessions.begin() as session:
        assert expire_abandoned_scrapes(session) == [ids[3]]
        assert expire_abandoned_scrapes(session) == []
    with sessions() as session:
        dead, alive, done, elsewhere = (session.get_one(Scrape, i) for i in ids)
        assert dead.status == ScrapeStatus.FAILED and dead.finished_at is not None
        assert dead.error == f"abandoned: no heartbeat since {silent_since:%Y-%m-%d %H:%M:%S} UTC"
        assert alive.status == ScrapeStatus.RUNNING and alive.finished_at is None
        assert done.status == ScrapeStatus.SUCCEEDED and done.error is None
        assert elsewhere.status == ScrapeStatus.FAILED


# --- re-scraping an unchanged sitemap ----------------------------------------------------------


def test_copy_fresh_items_copies_fresh_ok_items_and_leaves_the_rest_stale(
    sessions: sessionmaker[Session],
) -> None:
    now = utcnow()
    with sessions.begin() as session:
        advertiser_id = make_advertiser(session).id
        old = start_scrape(session, advertiser_id, trigger="cli", requested_by=None)
        items = [item_row(old, n, key(n)) for n in range(5)]
        items[1] |= {"image_type": "Stock", "image_type_source": "fix", "ml_confidence": 0.7}
        items[3] |= {"status": "error", "error": "404", "image_key": None}
        items[4]["image_key"] = key(99)  # an image never stored: no freshness known
        images = [image_row(key(n), now) | {"fresh_until": None} for n in range(4)]
        images[0]["fresh_until"] = now + timedelta(hours=1)
        images[1]["fresh_until"] = now + timedelta(minutes=1)
        images[2]["fresh_until"] = now - timedelta(seconds=1)  # gone stale
        store_batch(session, old.id, ScrapeCounts(items=5), items, images, [])
        new = start_scrape(session, advertiser_id, trigger="cli", requested_by=None)
        old_id, new_id = old.id, new.id
    with sessions.begin() as session:
        assert copy_fresh_items(session, old_id, new_id, now) == 2
    with sessions() as session:
        copied = scrape_items(session, new_id)
        assert [(i.position, i.image_key, i.cached) for i in copied] == [
            (0, key(0), True),
            (1, key(1), True),
        ]
        # Everything is copied as it was, the resolved labels and their sources included.
        assert (copied[1].image_type, copied[1].image_type_source) == ("Stock", "fix")
        assert copied[1].ml_confidence == 0.7 and copied[1].advertiser_id == advertiser_id
        assert [(s.position, s.image_key) for s in stale_items(session, old_id, now)] == [
            (2, key(2)),
            (3, None),
            (4, key(99)),
        ]
        page = stale_items(session, old_id, now, after=2, limit=1)
        assert [s.position for s in page] == [3]
        assert stale_items(session, old_id, now + timedelta(hours=2))[0].position == 0
        assert len(scrape_items(session, old_id)) == 5  # the old scrape keeps its items


def test_items_fixed_since_finds_fixes_by_key_and_by_content(
    sessions: sessionmaker[Session],
) -> None:
    now = utcnow()
    with sessions.begin() as session:
        advertiser_id = make_advertiser(session).id
        scrape = start_scrape(session, advertiser_id, trigger="cli", requested_by=None)
        images = [image_row(key(n), now) for n in range(4)]
        images[2]["sha256"] = "same-bytes"  # item 2's picture was fixed under another key
        images[3] |= {"sha256": "same-bytes", "url": "https://cdn.example/moved.jpg"}
        store_batch(
            session,
            scrape.id,
            ScrapeCounts(items=3),
            [item_row(scrape, n, key(n)) for n in range(3)],
            images,
            [],
        )

        def fix(image_key: str, created: datetime) -> None:
            session.add(
                ManualFix(
                    image_key=image_key,
                    image_url="u",
                    field="image_type",
                    new_value="Stock",
                    user="ana",
                    created_at=created,
                )
            )

        fix(key(0), now - timedelta(days=1))  # before: already resolved
        fix(key(1), now + timedelta(seconds=1))
        fix(key(3), now + timedelta(seconds=2))
        scrape_id = scrape.id
    with sessions() as session:
        found = items_fixed_since(session, scrape_id, now)
        assert [(i.image_key, i.sha256) for i in found] == [
            (key(1), key(1) * 2),
            (key(2), "same-bytes"),
        ]
        assert found[0].image_type == "Dealer" and found[0].image_type_source == "ml"
    with sessions.begin() as session:
        set_item_labels(
            session,
            [{"id": found[0].id, "image_type": "Stock", "image_type_source": "fix",
              "color": "Red", "color_source": "ml"}],
        )  # fmt: skip
    with sessions() as session:
        item = session.get_one(SitemapItem, found[0].id)
        assert (item.image_type, item.image_type_source) == ("Stock", "fix")


def test_thumbnail_keys_are_the_urls_keys_with_a_thumbnail(
    sessions: sessionmaker[Session],
) -> None:
    now = utcnow()
    with sessions.begin() as session:
        scrape = start_scrape(
            session, make_advertiser(session).id, trigger="cli", requested_by=None
        )
        url = "https://cdn.example/car.jpg"
        store_batch(
            session,
            scrape.id,
            ScrapeCounts(),
            [],
            [image_row(key(1), now, url), image_row(key(2), now, url), image_row(key(3), now)],
            [{"image_key": key(1), "jpeg": b"a"}, {"image_key": key(3), "jpeg": b"c"}],
        )
    with sessions() as session:
        assert thumbnail_keys(session, [url, "https://cdn.example/other.jpg"]) == {key(1)}
        assert thumbnail_keys(session, []) == set()


def test_store_batch_renews_the_freshness_it_is_given(sessions: sessionmaker[Session]) -> None:
    now = utcnow()
    with sessions.begin() as session:
        scrape = start_scrape(
            session, make_advertiser(session).id, trigger="cli", requested_by=None
        )
        first = image_row(key(1), now) | {"fresh_until": now + timedelta(hours=1)}
        store_batch(session, scrape.id, ScrapeCounts(), [], [first], [])
        store_batch(session, scrape.id, ScrapeCounts(), [], [image_row(key(1), now)], [])
        with_freshness = as_utc(session.get_one(Image, key(1)).fresh_until)
        assert with_freshness == now + timedelta(hours=1)  # rows without it leave it alone
        renewed = image_row(key(1), now) | {"fresh_until": None}
        store_batch(session, scrape.id, ScrapeCounts(), [], [renewed], [])
        session.expire_all()
        assert session.get_one(Image, key(1)).fresh_until is None  # stale now: check it again


# --- migration 0010: chunks, and one item per position -------------------------------------------


def test_migration_0010_keeps_the_items_and_makes_positions_unique(database_url: str) -> None:
    """Down to 0009 with a scrape and its items stored, then up: they stay, the chunk columns are
    NULL (a scrape done in one process), and a position can no longer be stored twice."""
    import pytest
    from alembic import command
    from sqlalchemy import insert, inspect
    from sqlalchemy.exc import IntegrityError

    from db.engine import alembic_config, make_engine, make_session_factory, migrate
    from db.models import Advertiser, Scrape, SitemapItem

    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    item = {
        "page_url": "http://a/v/1",
        "image_url": "http://a/1.jpg",
        "ml_image_type": "Dealer",
        "image_type": "Dealer",
        "image_type_source": "ml",
        "color_source": "ml",
        "status": "ok",
        "cached": False,
    }
    command.downgrade(alembic_config(database_url), "0009")
    try:
        assert "scrape_chunks" not in inspect(engine).get_table_names()
        with sessions.begin() as session:
            # Core, naming the columns: the model has the columns of 0010.
            advertiser_id = session.execute(
                insert(Advertiser)
                .values(name="a", sitemap_url="http://a/")
                .returning(Advertiser.id)
            ).scalar_one()
            scrape_id = session.execute(
                insert(Scrape.__table__)
                .values(advertiser_id=advertiser_id, status="succeeded", trigger="cli")
                .returning(Scrape.__table__.c.id)
            ).scalar_one()
            rows = [
                {**item, "scrape_id": scrape_id, "advertiser_id": advertiser_id, "position": p}
                for p in (0, 1)
            ]
            session.execute(insert(SitemapItem.__table__), rows)
        migrate(database_url)
        assert "scrape_chunks" in inspect(engine).get_table_names()
        indexes = {i["name"]: i for i in inspect(engine).get_indexes("sitemap_items")}
        assert indexes["ix_sitemap_items_scrape_position"]["unique"]
        with sessions() as session:
            scrape = session.get_one(Scrape, scrape_id)
            assert (scrape.chunk_total, scrape.fan_in_by, scrape.fan_in_until) == (None,) * 3
            positions = session.scalars(
                select(SitemapItem.position).where(SitemapItem.scrape_id == scrape_id)
            ).all()
            assert sorted(positions) == [0, 1]
        with pytest.raises(IntegrityError), sessions.begin() as session:
            session.execute(insert(SitemapItem.__table__), [rows[1]])
    finally:
        migrate(database_url)  # the PostgreSQL database is shared by the session's tests
        engine.dispose()


def test_a_batch_holding_a_stored_position_stores_nothing(sessions: sessionmaker[Session]) -> None:
    """The last guard of a chunk's worker that lost its chunk: its whole batch rolls back."""
    import pytest
    from sqlalchemy import func
    from sqlalchemy.exc import IntegrityError

    from db.models import Advertiser, Scrape, SitemapItem
    from db.scrapes import ScrapeCounts, store_batch

    with sessions.begin() as session:
        advertiser = Advertiser(name="a", sitemap_url="http://a/")
        session.add(advertiser)
        session.flush()
        scrape = Scrape(advertiser_id=advertiser.id)
        session.add(scrape)
        session.flush()
        ids = (advertiser.id, scrape.id)

    def rows(*positions: int) -> list[dict[str, Any]]:
        return [
            {
                "scrape_id": ids[1],
                "advertiser_id": ids[0],
                "position": p,
                "page_url": "http://a/v",
                "image_url": f"http://a/{p}.jpg",
                "ml_image_type": "Dealer",
                "image_type": "Dealer",
                "status": "ok",
            }
            for p in positions
        ]

    with sessions.begin() as session:
        store_batch(
            session, ids[1], ScrapeCounts(items=2, classified=2), rows(0, 1), [], [], add=True
        )
    with pytest.raises(IntegrityError), sessions.begin() as session:
        store_batch(
            session, ids[1], ScrapeCounts(items=2, classified=2), rows(1, 2), [], [], add=True
        )
    with sessions() as session:
        count = select(func.count()).select_from(SitemapItem)
        assert session.scalar(count) == 2
        assert session.get_one(Scrape, ids[1]).item_count == 2  # the counts rolled back too
