"""The label model: override, else team fix, else feed color, else prediction; by image_key or by
content; a Placeholder has no color unless the advertiser says so."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.labels import carry_over, current_fix_ids, load_fix_index, resolve
from db.models import FixScope, FixSource, Image, LabelSource, ManualFix, SyncStatus, utcnow
from tests.utils.factories import make_advertiser

KEY, NEW_KEY, SHA = "a" * 32, "b" * 32, "f" * 64


def add_fix(
    session: Session,
    field: str,
    value: str | None,
    *,
    key: str = KEY,
    scope: FixScope = FixScope.TEAM,
    advertiser_id: int | None = None,
) -> ManualFix:
    fix = ManualFix(
        image_key=key,
        image_url=f"http://cdn.test/{key}.jpg",
        advertiser_id=advertiser_id,
        field=field,
        old_value=None,
        new_value=value,
        user="ana",
        source=FixSource.ADVERTISER if scope == FixScope.ADVERTISER else FixSource.ANALYST,
        scope=scope,
        sync_status=SyncStatus.SYNCED,
    )
    session.add(fix)
    session.flush()
    return fix


def add_image(session: Session, key: str, sha: str = SHA) -> None:
    now = utcnow()
    session.add(
        Image(
            image_key=key,
            url=f"http://cdn.test/{key}.jpg",
            sha256=sha,
            first_seen=now,
            last_seen=now,
        )
    )
    session.flush()


def test_an_override_beats_a_team_fix_which_beats_the_prediction(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        lakeside, metro = make_advertiser(session, "Lakeside"), make_advertiser(session, "Metro")
        add_image(session, KEY)
        add_fix(session, "image_type", "Stock")
        add_fix(
            session,
            "image_type",
            "Placeholder",
            scope=FixScope.ADVERTISER,
            advertiser_id=lakeside.id,
        )
        index = load_fix_index(session, image_keys=[KEY])

    def of(advertiser_id: int, **kw: object) -> tuple[str, str, str | None, str]:
        options: dict[str, object] = {
            "image_key": KEY,
            "sha256": SHA,
            "ml_image_type": "Dealer",
            "ml_color": "Red",
            "ml_answered": True,
        }
        r = resolve(index, advertiser_id=advertiser_id, **{**options, **kw})  # type: ignore[arg-type]
        return (r.image_type, r.image_type_source, r.color, r.color_source)

    # Lakeside's own override: Placeholder, so its (model) color goes, by the seed's rule.
    assert of(lakeside.id) == ("Placeholder", LabelSource.OVERRIDE, None, LabelSource.OVERRIDE)
    assert of(metro.id) == ("Stock", LabelSource.FIX, "Red", LabelSource.ML)  # the team's
    feed = of(metro.id, feed_color="Blue", color_from_feed=True)
    assert feed[2:] == ("Blue", LabelSource.FEED)
    unknown = resolve(
        index,
        advertiser_id=metro.id,
        image_key=None,
        sha256=None,
        ml_image_type="Placeholder",
        ml_color=None,
        ml_answered=False,
    )
    assert (unknown.image_type, unknown.image_type_source) == ("Placeholder", LabelSource.DEFAULT)


def test_a_fix_follows_the_content_under_a_new_key_and_is_carried_over_once(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        metro = make_advertiser(session, "Metro")
        add_image(session, KEY)
        add_image(session, NEW_KEY)  # the same bytes, re-published
        team = add_fix(session, "color", "Gold")
        index = load_fix_index(session, image_keys=[NEW_KEY], sha256s=[SHA])
        resolution = resolve(
            index,
            advertiser_id=metro.id,
            image_key=NEW_KEY,
            sha256=SHA,
            ml_image_type="Dealer",
            ml_color="Red",
            ml_answered=True,
        )
        assert (resolution.color, resolution.color_source) == ("Gold", LabelSource.FIX)
        assert [f.fix_id for f in resolution.carried] == [team.id]
        url = "http://cdn.test/new.jpg"
        ids = carry_over(session, [(resolution.carried[0], NEW_KEY, url, metro.id)] * 2)
        (row,) = [session.get_one(ManualFix, i) for i in ids]  # listed twice, recorded once
        assert (row.image_key, row.source, row.scope, row.new_value, row.user) == (
            NEW_KEY,
            FixSource.CARRY_OVER,
            FixScope.TEAM,
            "Gold",
            "system",
        )
        assert row.sync_status == SyncStatus.PENDING
        # Now the new key has its own fix: nothing more to carry.
        again = resolve(
            load_fix_index(session, image_keys=[NEW_KEY], sha256s=[SHA]),
            advertiser_id=metro.id,
            image_key=NEW_KEY,
            sha256=SHA,
            ml_image_type="Dealer",
            ml_color="Red",
            ml_answered=True,
        )
        assert again.color == "Gold" and again.carried == ()


def test_current_fix_ids_are_the_newest_per_image_field_and_owner(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        lakeside = make_advertiser(session, "Lakeside")
        add_fix(session, "color", "Gold")
        newest_team = add_fix(session, "color", "Blue")
        override = add_fix(
            session, "color", "Red", scope=FixScope.ADVERTISER, advertiser_id=lakeside.id
        )
        type_fix = add_fix(session, "image_type", "Stock")
        assert current_fix_ids(session) == sorted([newest_team.id, override.id, type_fix.id])
        assert len(session.scalars(select(ManualFix)).all()) == 4
