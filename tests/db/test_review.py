"""The review page's queries: counts, filters, pagination, thumbnails."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.errors import InvalidInput
from db.fixes import FixChange, apply_fixes
from db.models import ItemStatus, SitemapItem, Thumbnail
from db.review import (
    BY_CONFIDENCE,
    BY_POSITION,
    FIXED,
    NO_COLOR,
    PENDING_SYNC,
    SORTS,
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


CONFIDENCES = [None, 0.48, 0.6, 0.48, None]
"""Of the seeded items, in sitemap order: a tie; none for position 0 (as if scraped before
migration 0008) nor for the ML failure (position 4)."""


def test_sort_by_confidence_lowest_first_then_none_paged(
    sessions: sessionmaker[Session],
) -> None:
    scrape_id, ids = seed(sessions)
    with sessions.begin() as session:
        for item_id, confidence in zip(ids, CONFIDENCES, strict=True):
            session.get_one(SitemapItem, item_id).ml_confidence = confidence
    by_confidence = ReviewFilter(sort=BY_CONFIDENCE)
    with sessions() as session:

        def page(f: ReviewFilter, offset: int, limit: int) -> list[tuple[int, float | None]]:
            items, _ = review_page(session, scrape_id, f, offset=offset, limit=limit)
            return [(i.position, i.ml_confidence) for i in items]

        # Lowest first; the tie in sitemap order; the items without a confidence last, in order.
        expected = [(1, 0.48), (3, 0.48), (2, 0.6), (0, None), (4, None)]
        assert page(by_confidence, 0, 10) == expected
        pages = [page(by_confidence, offset, 2) for offset in (0, 2, 4)]
        assert pages == [expected[0:2], expected[2:4], expected[4:]]
        assert page(ReviewFilter(), 0, 10) == [(p, c) for p, c in sorted(expected)]
        assert page(ReviewFilter(sort=BY_POSITION), 0, 10) == page(ReviewFilter(), 0, 10)
        # With a filter: the order applies to what matches, and the counts ignore the order.
        dealers = ReviewFilter(image_types=("Dealer",), sort=BY_CONFIDENCE)
        assert page(dealers, 0, 10) == [(1, 0.48), (0, None), (4, None)]
        assert review_page(session, scrape_id, dealers, limit=1)[1] == 3
        assert matching_item_ids(session, scrape_id, dealers) == [ids[0], ids[1], ids[4]]
        assert count_fixable(session, scrape_id, dealers) == 3


def test_an_unknown_sort_is_invalid_input() -> None:
    assert SORTS == (BY_POSITION, BY_CONFIDENCE) == ("position", "confidence")
    with pytest.raises(InvalidInput, match="unknown sort 'newest'"):
        ReviewFilter(sort="newest")


def test_thumbnails(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.add(Thumbnail(image_key="k1", jpeg=b"\xff\xd8jpeg"))
    with sessions() as session:
        assert thumbnails(session, ["k1", "missing"]) == {"k1": b"\xff\xd8jpeg"}
        assert thumbnails(session, []) == {}
