"""The review page's queries: counts, filters, pagination, thumbnails."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.fixes import FixChange, apply_fixes
from db.models import ItemStatus, SitemapItem, Thumbnail
from db.review import (
    FIXED,
    NO_COLOR,
    PENDING_SYNC,
    ReviewFilter,
    count_fixable,
    matching_item_ids,
    review_counts,
    review_page,
    thumbnails,
)
from tests.utils.factories import actor, make_advertiser, make_scrape

ITEMS = [
    ("Dealer", "Red"),
    ("Dealer", "Blue"),
    ("Stock", "Red"),
    ("Placeholder", None),
    ("Dealer", None),
]


def seed(sessions: sessionmaker[Session]) -> tuple[int, list[int]]:
    with sessions.begin() as session:
        scrape = make_scrape(session, make_advertiser(session), ITEMS)
        ids = list(
            session.scalars(
                select(SitemapItem.id)
                .where(SitemapItem.scrape_id == scrape.id)
                .order_by(SitemapItem.position)
            )
        )
        session.get_one(SitemapItem, ids[4]).status = ItemStatus.ML_FAILURE
        session.get_one(SitemapItem, ids[4]).title = "100%_off <b>sale</b>"
    return scrape.id, ids


def test_counts(sessions: sessionmaker[Session]) -> None:
    scrape_id, ids = seed(sessions)
    with sessions.begin() as session:
        apply_fixes(session, actor(), [FixChange(ids[0], "image_type", "Stock")])
    with sessions() as session:
        counts = review_counts(session, scrape_id)
    assert counts.total == 5
    assert counts.by_type == {"Dealer": 2, "Stock": 2, "Placeholder": 1}
    assert counts.by_color == {"Red": 2, "Blue": 1, NO_COLOR: 2}
    assert counts.by_status[ItemStatus.ML_FAILURE] == 1
    assert (counts.by_status[FIXED], counts.by_status[PENDING_SYNC]) == (1, 1)


def test_filters_combine(sessions: sessionmaker[Session]) -> None:
    scrape_id, ids = seed(sessions)
    with sessions() as session:

        def positions(f: ReviewFilter) -> list[int]:
            items, total = review_page(session, scrape_id, f)
            assert total == len(items)
            return [i.position for i in items]

        assert positions(ReviewFilter()) == [0, 1, 2, 3, 4]
        assert positions(ReviewFilter(image_types=("Dealer",))) == [0, 1, 4]
        assert positions(ReviewFilter(colors=(NO_COLOR,))) == [3, 4]
        assert positions(ReviewFilter(colors=("Red", NO_COLOR))) == [0, 2, 3, 4]
        assert positions(ReviewFilter(image_types=("Dealer",), colors=("Red",))) == [0]
        assert positions(ReviewFilter(statuses=(ItemStatus.ML_FAILURE,))) == [4]
        # LIKE wildcards in the search text are literal characters.
        assert positions(ReviewFilter(text="100%_OFF")) == [4]
        assert positions(ReviewFilter(text="%")) == [4]
        assert positions(ReviewFilter(text="vehicles/2")) == [2]
        assert matching_item_ids(session, scrape_id, ReviewFilter(image_types=("Dealer",))) == [
            ids[0],
            ids[1],
            ids[4],
        ]


def test_the_fixable_count_is_the_number_of_matching_ids(sessions: sessionmaker[Session]) -> None:
    scrape_id, ids = seed(sessions)
    with sessions.begin() as session:
        unfetched = session.get_one(SitemapItem, ids[1])  # a Dealer image that could not be fetched
        unfetched.image_key, unfetched.status = None, ItemStatus.ERROR
    with sessions() as session:
        dealers = ReviewFilter(image_types=("Dealer",))
        assert review_page(session, scrape_id, dealers)[1] == 3
        assert matching_item_ids(session, scrape_id, dealers) == [ids[0], ids[4]]
        assert count_fixable(session, scrape_id, dealers) == 2
        assert count_fixable(session, scrape_id, ReviewFilter(text="nothing like it")) == 0


def test_fixed_and_pending_filters_follow_the_history(sessions: sessionmaker[Session]) -> None:
    scrape_id, ids = seed(sessions)
    with sessions.begin() as session:
        apply_fixes(session, actor(), [FixChange(ids[2], "color", "Gold")])
    with sessions() as session:
        fixed, _ = review_page(session, scrape_id, ReviewFilter(statuses=(FIXED,)))
        assert [(i.id, i.fixes, i.pending, i.color, i.ml_color) for i in fixed] == [
            (ids[2], 1, True, "Gold", "Red")
        ]
        pending, _ = review_page(session, scrape_id, ReviewFilter(statuses=(PENDING_SYNC,)))
        assert [i.id for i in pending] == [ids[2]]


def test_pagination(sessions: sessionmaker[Session]) -> None:
    scrape_id, _ = seed(sessions)
    with sessions() as session:
        first, total = review_page(session, scrape_id, ReviewFilter(), offset=0, limit=2)
        last, _ = review_page(session, scrape_id, ReviewFilter(), offset=4, limit=2)
    assert total == 5
    assert [i.position for i in first] == [0, 1] and [i.position for i in last] == [4]


def test_thumbnails(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.add(Thumbnail(image_key="k1", jpeg=b"\xff\xd8jpeg"))
    with sessions() as session:
        assert thumbnails(session, ["k1", "missing"]) == {"k1": b"\xff\xd8jpeg"}
        assert thumbnails(session, []) == {}
