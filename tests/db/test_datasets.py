"""db.datasets: versions (a frozen one never changes), the pull's label rules, the archive queue."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.datasets import (
    add_version,
    archive_counts,
    delete_draft,
    freeze_version,
    get_version,
    latest_version,
    pulled_images,
    queue_archive,
    replace_draft,
    version_rows,
)
from db.errors import Conflict, NotFoundError
from db.fixes import FixChange, apply_fixes
from db.models import Finding, FindingState, FixSource, Image, ManualFix, Role, SitemapItem
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
