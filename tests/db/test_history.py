"""The manual-fix history queries, on SQLite and PostgreSQL, over fixes made by apply_fixes."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor
from db.fixes import FixChange, apply_fixes
from db.history import (
    HISTORY_COLUMNS,
    HistoryFilter,
    history_count,
    history_csv,
    history_filter_options,
    history_rows,
    history_totals,
)
from db.models import Advertiser, FixSource, ManualFix, Role, SitemapItem, SyncStatus
from tests.utils.factories import make_advertiser, make_scrape


def at(day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, micro, tzinfo=UTC)


@dataclass
class Seeded:
    sunrise: int
    harbor: int
    ids: dict[str, int]
    """Fix ids by a short name."""


def record(
    session: Session,
    user: str,
    item: SitemapItem,
    field: str,
    value: str,
    when: datetime,
    *,
    source: FixSource = FixSource.ANALYST,
) -> int:
    """One fix through the real workflow, then dated ``when`` (the tests need exact dates)."""
    outcome = apply_fixes(
        session, Actor(user, Role.ANALYST), [FixChange(item.id, field, value)], source=source
    )
    (fix_id,) = outcome.fix_ids
    session.get_one(ManualFix, fix_id).created_at = when
    session.flush()
    return fix_id


@pytest.fixture
def seeded(sessions: sessionmaker[Session]) -> Seeded:
    """Five fixes over two advertisers, three users, both fields, all sources, around midnight."""
    with sessions.begin() as session:
        sunrise = make_advertiser(session, "Sunrise Motors")
        harbor = make_advertiser(session, "Harbor Autos")
        s_scrape = make_scrape(
            session, sunrise, [("Dealer", "Red"), ("Stock", "Blue"), ("Dealer", "Gray")]
        )
        h_scrape = make_scrape(session, harbor, [("Dealer", "White")], key_prefix="9")
        s_items = list(
            session.scalars(
                select(SitemapItem)
                .where(SitemapItem.scrape_id == s_scrape.id)
                .order_by(SitemapItem.position)
            )
        )
        (h_item,) = session.scalars(select(SitemapItem).where(SitemapItem.scrape_id == h_scrape.id))
        ids = {
            "feb28": record(session, "alice", s_items[0], "image_type", "Stock", at(1) - _us()),
            "mar1_start": record(session, "bob", s_items[1], "color", "Green", at(1)),
            "mar1_end": record(
                session, "alice", s_items[2], "color", "Black", at(1, 23, 59, 59, 999_999)
            ),
            "mar2_start": record(
                session,
                "advertiser:Harbor Autos",
                h_item,
                "image_type",
                "Stock",
                at(2),
                source=FixSource.ADVERTISER,
            ),
            "mar3": record(
                session,
                "carry-over",
                s_items[0],
                "image_type",
                "Dealer",
                at(3, 12),
                source=FixSource.CARRY_OVER,
            ),
        }
        # bob's fix reached the ML cache; the others are pending.
        synced = session.get_one(ManualFix, ids["mar1_start"])
        synced.sync_status = SyncStatus.SYNCED
        synced.synced_at = at(1, 0, 0, 5)
        synced.sync_attempts = 1
        return Seeded(sunrise=sunrise.id, harbor=harbor.id, ids=ids)


def _us() -> timedelta:
    return timedelta(microseconds=1)


def ids_of(sessions: sessionmaker[Session], history_filter: HistoryFilter) -> list[int]:
    with sessions() as session:
        rows = history_rows(session, history_filter)
        assert history_count(session, history_filter) == len(rows)
    return [row.id for row in rows]


def names(seeded: Seeded, *keys: str) -> list[int]:
    return [seeded.ids[key] for key in keys]


ALL_NEWEST_FIRST = ("mar3", "mar2_start", "mar1_end", "mar1_start", "feb28")


def test_rows_are_newest_first_with_every_column(
    sessions: sessionmaker[Session], seeded: Seeded
) -> None:
    with sessions() as session:
        rows = history_rows(session, HistoryFilter())
    assert [r.id for r in rows] == names(seeded, *ALL_NEWEST_FIRST)
    adv, bob = rows[1], rows[3]
    assert adv.advertiser == "Harbor Autos"
    assert (adv.user, adv.source, adv.field) == (
        "advertiser:Harbor Autos",
        "advertiser",
        "image_type",
    )
    assert (adv.old_value, adv.new_value) == ("Dealer", "Stock")
    assert adv.image_key.endswith("90000") and adv.image_url.endswith(".jpg")
    assert adv.created_at == at(2) and adv.created_at.tzinfo is not None
    assert (adv.sync_status, adv.synced_at, adv.sync_attempts) == ("pending", None, 0)
    assert bob.advertiser == "Sunrise Motors"
    assert (bob.sync_status, bob.synced_at, bob.sync_attempts) == ("synced", at(1, 0, 0, 5), 1)
    assert rows[0].superseded_fix_id is None and rows[0].last_sync_error is None


def test_limit_and_offset_page_through_the_same_order(
    sessions: sessionmaker[Session], seeded: Seeded
) -> None:
    with sessions() as session:
        first = history_rows(session, HistoryFilter(), limit=2)
        second = history_rows(session, HistoryFilter(), limit=2, offset=2)
        rest = history_rows(session, HistoryFilter(), limit=2, offset=4)
    assert [r.id for r in first + second + rest] == names(seeded, *ALL_NEWEST_FIRST)


@pytest.mark.parametrize(
    ("make_filter", "expected"),
    [
        (lambda s: HistoryFilter(advertiser_ids=[s.harbor]), ["mar2_start"]),
        (
            lambda s: HistoryFilter(advertiser_ids=[s.sunrise]),
            ["mar3", "mar1_end", "mar1_start", "feb28"],
        ),
        (
            lambda s: HistoryFilter(advertiser_ids=[s.sunrise, s.harbor]),
            list(ALL_NEWEST_FIRST),
        ),
        (lambda s: HistoryFilter(users=["alice"]), ["mar1_end", "feb28"]),
        (lambda s: HistoryFilter(users=["alice", "bob"]), ["mar1_end", "mar1_start", "feb28"]),
        (lambda s: HistoryFilter(field="color"), ["mar1_end", "mar1_start"]),
        (lambda s: HistoryFilter(field="image_type"), ["mar3", "mar2_start", "feb28"]),
        # The value matches the old or the new value, whatever its case.
        (lambda s: HistoryFilter(value="Stock"), ["mar3", "mar2_start", "feb28"]),  # new or old
        (lambda s: HistoryFilter(value=" green "), ["mar1_start"]),
        (lambda s: HistoryFilter(value="Purple"), []),
        (lambda s: HistoryFilter(sync_status="synced"), ["mar1_start"]),
        (
            lambda s: HistoryFilter(sync_status="pending"),
            ["mar3", "mar2_start", "mar1_end", "feb28"],
        ),
        (lambda s: HistoryFilter(source="advertiser"), ["mar2_start"]),
        (lambda s: HistoryFilter(source="carry_over"), ["mar3"]),
        (lambda s: HistoryFilter(source="analyst"), ["mar1_end", "mar1_start", "feb28"]),
        (
            lambda s: HistoryFilter(
                advertiser_ids=[s.sunrise], field="image_type", users=["alice"]
            ),
            ["feb28"],
        ),
        (lambda s: HistoryFilter(users=["nobody"]), []),
    ],
)
def test_each_filter(
    sessions: sessionmaker[Session], seeded: Seeded, make_filter: object, expected: list[str]
) -> None:
    history_filter = make_filter(seeded)  # type: ignore[operator]
    assert ids_of(sessions, history_filter) == names(seeded, *expected)


@pytest.mark.parametrize(
    ("date_from", "date_to", "expected"),
    [
        # A day is [00:00, next day 00:00) UTC: both midnight edges and the last microsecond.
        (date(2026, 3, 1), date(2026, 3, 1), ["mar1_end", "mar1_start"]),
        (date(2026, 3, 2), None, ["mar3", "mar2_start"]),
        (None, date(2026, 2, 28), ["feb28"]),
        (None, date(2026, 3, 1), ["mar1_end", "mar1_start", "feb28"]),
        (date(2026, 2, 28), date(2026, 3, 2), ["mar2_start", "mar1_end", "mar1_start", "feb28"]),
        (date(2026, 3, 4), None, []),
        (date(2026, 3, 2), date(2026, 3, 1), []),
    ],
)
def test_date_range_is_inclusive_in_utc(
    sessions: sessionmaker[Session],
    seeded: Seeded,
    date_from: date | None,
    date_to: date | None,
    expected: list[str],
) -> None:
    history_filter = HistoryFilter(date_from=date_from, date_to=date_to)
    assert ids_of(sessions, history_filter) == names(seeded, *expected)


def test_totals(sessions: sessionmaker[Session], seeded: Seeded) -> None:
    with sessions() as session:
        everything = history_totals(session, HistoryFilter())
        sunrise = history_totals(session, HistoryFilter(advertiser_ids=[seeded.sunrise]))
        none = history_totals(session, HistoryFilter(users=["nobody"]))
    assert everything.total == 5
    assert everything.by_field == {"color": 2, "image_type": 3}
    assert everything.by_source == {"advertiser": 1, "analyst": 3, "carry_over": 1}
    assert everything.pending == 4
    # feb28 and mar3 are two fixes of one image.
    assert everything.distinct_images == 4
    assert everything.distinct_users == 4
    assert (sunrise.total, sunrise.pending, sunrise.distinct_images) == (4, 3, 3)
    assert sunrise.by_source == {"analyst": 3, "carry_over": 1}
    assert (none.total, none.pending, none.distinct_images, none.distinct_users) == (0, 0, 0, 0)
    assert none.by_field == {} and none.by_source == {}


def test_filter_options(sessions: sessionmaker[Session], seeded: Seeded) -> None:
    with sessions.begin() as session:
        make_advertiser(session, "Acme Cars")  # no fix yet, still selectable
    with sessions() as session:
        options = history_filter_options(session)
    assert [name for _, name in options.advertisers] == [
        "Acme Cars",
        "Harbor Autos",
        "Sunrise Motors",
    ]
    assert dict(options.advertisers)[seeded.harbor] == "Harbor Autos"
    assert options.users == ["advertiser:Harbor Autos", "alice", "bob", "carry-over"]


def test_a_deleted_advertiser_keeps_its_fixes_without_a_name(
    sessions: sessionmaker[Session], seeded: Seeded
) -> None:
    with sessions.begin() as session:
        # A Core delete, as the database's ON DELETE rules see it (the ORM would null children).
        session.execute(delete(Advertiser).where(Advertiser.id == seeded.harbor))
    with sessions() as session:
        rows = history_rows(session, HistoryFilter(source="advertiser"))
    assert [(r.id, r.advertiser) for r in rows] == [(seeded.ids["mar2_start"], None)]


def test_csv_has_every_matching_row_and_quotes_properly(
    sessions: sessionmaker[Session], seeded: Seeded
) -> None:
    with sessions() as session:
        text = history_csv(session, HistoryFilter())
        rows = history_rows(session, HistoryFilter())
        sunrise_only = history_csv(session, HistoryFilter(advertiser_ids=[seeded.sunrise]))
    parsed = list(csv.reader(io.StringIO(text)))
    assert tuple(parsed[0]) == HISTORY_COLUMNS
    assert [int(r[0]) for r in parsed[1:]] == [r.id for r in rows]
    bob = dict(zip(HISTORY_COLUMNS, parsed[4], strict=True))
    assert bob["user"] == "bob" and bob["new_value"] == "Green"
    assert bob["created_at"] == "2026-03-01T00:00:00+00:00"
    assert bob["synced_at"] == "2026-03-01T00:00:05+00:00"
    assert bob["superseded_fix_id"] == "" and bob["last_sync_error"] == ""
    assert len(list(csv.reader(io.StringIO(sunrise_only)))) == 1 + 4


def test_csv_neutralizes_formulas_and_survives_commas_quotes_newlines(
    sessions: sessionmaker[Session],
) -> None:
    hostile = {
        '=HYPERLINK("http://evil.example","x")': "=",
        "+cmd|' /C calc'!A0": "+",
        "-2+3": "-",
        "@SUM(A1:A2)": "@",
    }
    tricky_url = 'https://cdn.example/a,b"c\nd\r\n e.jpg'
    with sessions.begin() as session:
        advertiser = make_advertiser(session, 'Quote "Motors", Inc.')
        scrape = make_scrape(session, advertiser, [("Dealer", "Red")] * (len(hostile) + 1))
        items = list(
            session.scalars(
                select(SitemapItem)
                .where(SitemapItem.scrape_id == scrape.id)
                .order_by(SitemapItem.position)
            )
        )
        for item, url in zip(items, [*hostile, tricky_url], strict=True):
            item.image_url = url
        session.flush()
        for position, item in enumerate(items):
            user = list(hostile)[position] if position < len(hostile) else "plain, user"
            record(session, user[:200], item, "image_type", "Stock", at(5, 0, position))
    with sessions() as session:
        text = history_csv(session, HistoryFilter())
    parsed = [dict(zip(HISTORY_COLUMNS, r, strict=True)) for r in csv.reader(io.StringIO(text))][1:]
    by_url = {row["image_url"]: row for row in parsed}
    for value in hostile:
        row = by_url["'" + value]  # prefixed with a single quote: shown as text, not evaluated
        assert row["user"] == "'" + value
    for row in parsed:
        for name, cell in row.items():
            assert not cell.startswith(("=", "+", "-", "@")), (name, cell)
    plain = by_url[tricky_url]  # commas, quotes and newlines round-trip through the quoting
    assert plain["user"] == "plain, user"
    assert plain["advertiser"] == 'Quote "Motors", Inc.'
    assert plain["old_value"] == "Dealer" and plain["new_value"] == "Stock"
