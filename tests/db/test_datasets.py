"""db.datasets: versions (a frozen one never changes), the pull's label rules, the archive queue."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.datasets import (
    FixRef,
    add_version,
    archive_counts,
    delete_draft,
    freeze_version,
    get_version,
    image_keys_of,
    latest_type_fix,
    latest_version,
    lock_draft,
    newest_item_showing,
    pulled_images,
    queue_archive,
    replace_draft,
    set_draft_recipe,
    version_rows,
)
from db.errors import Conflict, NotFoundError
from db.fixes import FixChange, apply_fixes
from db.models import (
    Finding,
    FindingState,
    FixSource,
    Image,
    ManualFix,
    Role,
    SitemapItem,
    Thumbnail,
)
from tests.utils.factories import actor, make_advertiser, make_scrape

ACCEPTED = "accepted: the last word"
ROW = {
    "sha256": "a" * 64,
    "path": "aa/" + "a" * 64,
    "image_type": "Dealer",
    "color": "Red",
    "origin": "fix:1 by alice",
    "width": 640,
    "height": 480,
    "split": "train",
    "advertiser": "Sunrise Motors",
    "page_url": "https://dealer.example/1",
    "cluster": None,
    "exclusion": None,
    "phash": "0123456789abcdef",
    "crop": "0,10,640,470",
}


def _draft(session: Session) -> int:
    version = add_version(
        session,
        parent_id=None,
        recipe={"recipe": "{}"},
        inputs={"kind": "fixes"},
        created_by="dev",
        rows=[ROW],
        manifest_sha256="f" * 64,
        counts={"rows": 1},
    )
    return version.number


def test_a_frozen_version_refuses_every_write(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        number = _draft(session)
        assert version_rows(session, number) == [ROW]
        replace_draft(
            session, number, recipe={"recipe": "{}"}, rows=[], manifest_sha256="e" * 64, counts={}
        )
        assert version_rows(session, number) == []
        freeze_version(session, number, "dev")
    with sessions.begin() as session:
        assert get_version(session, number).state == "frozen"
        assert latest_version(session) is not None
        with pytest.raises(Conflict):
            replace_draft(session, number, recipe={}, rows=[ROW], manifest_sha256="", counts={})
        with pytest.raises(Conflict):
            freeze_version(session, number, "dev")
        with pytest.raises(Conflict):
            delete_draft(session, number)
        with pytest.raises(NotFoundError):
            get_version(session, number + 1)


def test_a_draft_cannot_be_a_parent_and_can_be_deleted(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        number = _draft(session)
        parent_id = get_version(session, number).id
        with pytest.raises(Conflict):
            add_version(
                session,
                parent_id=parent_id,
                recipe={},
                inputs={},
                created_by="dev",
                rows=[],
                manifest_sha256="",
                counts={},
            )
    with sessions.begin() as session:
        delete_draft(session, number)
        assert latest_version(session, frozen=False) is None


def test_the_pull_takes_team_fixes_and_accepted_overrides_only(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        advertiser = make_advertiser(session)
        make_scrape(session, advertiser, [("Dealer", "Red"), ("Stock", "Blue"), ("Dealer", "Gray")])
        ids = [i.id for i in session.scalars(select(SitemapItem).order_by(SitemapItem.position))]
        for n, key in enumerate(
            session.scalars(select(SitemapItem.image_key).order_by(SitemapItem.position))
        ):
            session.add(Image(image_key=key, url=f"u{n}", sha256=f"{n}" * 64, width=9, height=9))
        apply_fixes(
            session, actor(Role.ANALYST, "alice"), [FixChange(ids[0], "image_type", "Stock")]
        )
        apply_fixes(
            session,
            actor(),
            [FixChange(ids[1], "image_type", "Dealer"), FixChange(ids[2], "image_type", "Stock")],
            source=FixSource.ADVERTISER,
            advertiser_id=advertiser.id,
        )
        keys = list(session.scalars(select(SitemapItem.image_key).order_by(SitemapItem.position)))
        session.add(
            Finding(
                detector="advertiser_placeholder",
                subject="x",
                advertiser_id=advertiser.id,
                explanation="",
                evidence={"image_key": keys[1]},
                fingerprint="f",
                state=FindingState.IGNORED,
                state_reason=ACCEPTED,
            )
        )
        session.add(
            Finding(
                detector="near_duplicates",
                subject="y",
                explanation="",
                evidence={"images": [{"image_key": keys[0]}]},
                fingerprint="g",
                conflicting=True,
            )
        )
        session.flush()
        until = session.scalar(select(ManualFix.id).order_by(ManualFix.id.desc()))
        assert until is not None
        pull = pulled_images(
            session, after_fix_id=0, until_fix_id=until, since=None, accepted_reason=ACCEPTED
        )
    pulled = {p.image_key: p for p in pull.images}
    assert set(pulled) == {keys[0], keys[1]}  # the override nobody accepted stays out
    assert pulled[keys[0]].image_type == "Stock" and pulled[keys[0]].user == "alice"
    assert pulled[keys[0]].conflicting and not pulled[keys[1]].conflicting
    assert pulled[keys[0]].color == "Red"  # the prediction: no color fix
    assert pulled[keys[0]].page_url == "https://dealer.example/vehicles/0"


def test_queueing_an_image_twice_is_harmless(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        scrape = make_scrape(session, make_advertiser(session))
        item = session.scalars(
            select(SitemapItem).where(SitemapItem.scrape_id == scrape.id)
        ).first()
        assert item is not None
        outcome = apply_fixes(session, actor(), [FixChange(item.id, "image_type", "Stock")])
        assert queue_archive(session, outcome.fix_ids) == 1
        assert queue_archive(session, outcome.fix_ids) == 1
        assert archive_counts(session) == {"pending": 1, "stored": 0}


def test_lock_draft_refuses_a_frozen_or_missing_version(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        number = _draft(session)
        locked = lock_draft(session, number)
        assert (locked.number, locked.state, locked.recipe) == (number, "draft", {"recipe": "{}"})
        freeze_version(session, number, "dev")
    with sessions.begin() as session:
        with pytest.raises(Conflict):
            lock_draft(session, number)
        with pytest.raises(Conflict):
            set_draft_recipe(session, number, {"recipe": "{}", "page": {}})
        with pytest.raises(NotFoundError):
            lock_draft(session, number + 1)
    with sessions() as session:
        assert get_version(session, number).recipe == {"recipe": "{}"}


def test_set_draft_recipe_keeps_the_rows_and_their_sha256(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        number = _draft(session)
    with sessions.begin() as session:
        stored = set_draft_recipe(session, number, {"recipe": "{}", "page": {"pending": {"a": 1}}})
        assert stored.recipe["page"] == {"pending": {"a": 1}}
    with sessions() as session:
        again = get_version(session, number)
        assert again.recipe == {"recipe": "{}", "page": {"pending": {"a": 1}}}
        assert again.manifest_sha256 == "f" * 64 and again.counts == {"rows": 1}
        assert version_rows(session, number) == [ROW]


def test_lock_draft_serializes_read_then_write_of_the_page(
    sessions: sessionmaker[Session],
) -> None:
    """Each thread locks the draft, reads a counter in its recipe and writes it back: without the
    lock, PostgreSQL's read committed would lose updates."""
    with sessions.begin() as session:
        number = _draft(session)
        set_draft_recipe(session, number, {"recipe": "{}", "count": 0})
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(5):
                with sessions.begin() as session:
                    version = lock_draft(session, number)
                    count = int(version.recipe["count"])
                    set_draft_recipe(session, number, {**version.recipe, "count": count + 1})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with sessions() as session:
        assert get_version(session, number).recipe["count"] == 20


SHA_A, SHA_B, SHA_C, SHA_UNKNOWN = "a" * 64, "b" * 64, "c" * 64, "d" * 64


def test_image_keys_of_takes_the_newest_thumbnailed_version(
    sessions: sessionmaker[Session],
) -> None:
    def seen(day: int) -> datetime:
        return datetime(2024, 5, day, tzinfo=UTC)

    with sessions.begin() as session:
        session.add_all(
            [
                Image(image_key="old", url="u/old", sha256=SHA_A, last_seen=seen(1)),
                Image(image_key="new", url="u/new", sha256=SHA_A, last_seen=seen(2)),
                # Newest of all, but without a thumbnail: nothing to show it with.
                Image(image_key="bare", url="u/bare", sha256=SHA_A, last_seen=seen(3)),
                Image(image_key="b", url="u/b", sha256=SHA_B, last_seen=seen(1)),
                Image(image_key="c", url="u/c", sha256=SHA_C, last_seen=seen(1)),
            ]
        )
        session.add_all(Thumbnail(image_key=key, jpeg=b"jpeg") for key in ("old", "new", "b"))
    with sessions() as session:
        found = image_keys_of(session, [SHA_A, SHA_B, SHA_C, SHA_UNKNOWN, SHA_A])
        assert found == {SHA_A: "new", SHA_B: "b"}
        assert image_keys_of(session, []) == {}


def _items_showing(session: Session) -> tuple[list[int], list[int]]:
    """Two advertisers' items: the first's show SHA_A and SHA_B, the second's (newer) SHA_A
    through another image version (another key, same bytes)."""
    first = make_scrape(session, make_advertiser(session), [("Dealer", "Red"), ("Stock", "Blue")])
    second = make_scrape(
        session, make_advertiser(session, "Summit Auto Group"), [("Stock", "Red")], key_prefix="9"
    )
    ids: list[list[int]] = []
    for scrape, shas in ((first, [SHA_A, SHA_B]), (second, [SHA_A])):
        items = list(
            session.scalars(
                select(SitemapItem)
                .where(SitemapItem.scrape_id == scrape.id)
                .order_by(SitemapItem.position)
            )
        )
        for item, sha in zip(items, shas, strict=True):
            session.add(Image(image_key=item.image_key, url=item.image_url, sha256=sha))
        ids.append([item.id for item in items])
    # Bytes the app knows, but no item shows.
    session.add(Image(image_key="c" * 32, url="u/c", sha256=SHA_C))
    session.flush()
    return ids[0], ids[1]


def test_newest_item_showing_the_bytes_wins(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        first, second = _items_showing(session)
    with sessions() as session:
        assert newest_item_showing(session, SHA_A) == second[0]  # not first[0]: older
        assert newest_item_showing(session, SHA_B) == first[1]
        assert newest_item_showing(session, SHA_C) is None
        assert newest_item_showing(session, SHA_UNKNOWN) is None


def test_latest_type_fix_of_the_bytes_ignores_other_fields(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        first, second = _items_showing(session)
        apply_fixes(
            session, actor(Role.ANALYST, "alice"), [FixChange(first[0], "image_type", "Stock")]
        )
        bob = apply_fixes(
            session, actor(Role.ANALYST, "bob"), [FixChange(second[0], "image_type", "Dealer")]
        )
        # A later color fix of the same bytes is not an Image Type decision.
        apply_fixes(session, actor(Role.ANALYST, "carol"), [FixChange(first[0], "color", "Blue")])
    with sessions() as session:
        assert latest_type_fix(session, SHA_A) == FixRef(id=bob.fix_ids[0], user="bob")
        assert latest_type_fix(session, SHA_B) is None  # shown, never fixed
        assert latest_type_fix(session, SHA_UNKNOWN) is None
