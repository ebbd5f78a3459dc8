"""The advertiser API over real HTTP on loopback, on items from a real scrape of the demo.

demo CDN → scrape → ML server → app database; then the advertiser API (uvicorn) records fixes
in that database and pushes them to the same ML server's cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import create_advertiser_token, revoke_advertiser_token
from db.advertisers import get_advertiser
from db.engine import make_engine, make_session_factory
from db.fixes import FixChange, apply_fixes
from db.history import HistoryFilter, history_rows
from db.models import AdvertiserToken, ItemStatus, ManualFix, Role, SitemapItem
from db.scrapes import latest_scrape, scrape_items
from db.vocab import COLORS, IMAGE_TYPES
from tagging.api.app import MAX_FIXES, create_advertiser_api
from tagging.demo.generate import DemoInventory
from tagging.demo.setup import register_demo_advertisers
from tagging.errors import Conflict, InvalidInput, NotFoundError, PermissionDenied, TaggingError
from tagging.fixes import push_pending
from tagging.ingest.fetch import client_from_settings
from tagging.ingest.scrape import ScrapeConfig, run_scrape
from tagging.server.client import MLClient
from tagging.testing import UvicornThread
from tests.utils.factories import actor
from tests.utils.servers import ML_TOKEN

OURS = "sunrise-motors"
THEIRS = "summit-auto-group"


def scrape(settings: object, sessions: sessionmaker[Session], name: str) -> int:
    """A real scrape of ``name`` (as ``python -m tagging scrape``); returns its item count."""
    client = client_from_settings(settings)  # type: ignore[arg-type]
    ml = MLClient.from_settings(settings)  # type: ignore[arg-type]
    try:
        summary = run_scrape(sessions, name, ml=ml, client=client, config=ScrapeConfig())
    finally:
        client.close()
        ml.client.close()
    return summary.items


@dataclass
class World:
    """Two scraped demo advertisers, their tokens, and the advertiser API serving them."""

    settings: object
    sessions: sessionmaker[Session]
    api: str
    ml: str
    ours: str
    ours_id: int
    theirs_id: int
    token: str
    their_token: str
    revoked_token: str
    items: list[SitemapItem]
    """Our latest scrape's items that have an image (OK status), in sitemap order."""
    their_items: list[SitemapItem]


@pytest.fixture
def world(app_settings: object, demo_dir: Path, cdn: object) -> Iterator[World]:
    inventory = DemoInventory.load(demo_dir)
    register_demo_advertisers(app_settings, inventory, cdn.url)  # type: ignore[arg-type, attr-defined]
    engine = make_engine(app_settings.database_url)  # type: ignore[attr-defined]
    sessions = make_session_factory(engine)
    ours, theirs = inventory.advertiser(OURS).name, inventory.advertiser(THEIRS).name
    for name in (ours, theirs):
        assert scrape(app_settings, sessions, name) > 0
    admin = actor(Role.ADMIN)
    with sessions.begin() as session:
        ours_id = get_advertiser(session, ours).id
        theirs_id = get_advertiser(session, theirs).id
        token = create_advertiser_token(session, admin, ours_id, "front end", system=True)
        their_token = create_advertiser_token(session, admin, theirs_id, system=True)
        revoked_token = create_advertiser_token(session, admin, ours_id, "old", system=True)
        old = session.scalars(select(AdvertiserToken).where(AdvertiserToken.label == "old")).one()
        revoke_advertiser_token(session, admin, old.id, system=True)
    with sessions() as session:
        items, their_items = (
            [
                i
                for i in scrape_items(session, latest_scrape(session, advertiser_id).id)  # type: ignore[union-attr]
                if i.status == ItemStatus.OK and i.image_key
            ]
            for advertiser_id in (ours_id, theirs_id)
        )
    assert items and their_items
    with UvicornThread(create_advertiser_api(app_settings)) as api:  # type: ignore[arg-type]
        yield World(
            settings=app_settings,
            sessions=sessions,
            api=api.url,
            ml=app_settings.ml_url,  # type: ignore[attr-defined]
            ours=ours,
            ours_id=ours_id,
            theirs_id=theirs_id,
            token=token,
            their_token=their_token,
            revoked_token=revoked_token,
            items=items,
            their_items=their_items,
        )
    engine.dispose()


def post(url: str, token: str | None, body: object, **headers: str) -> httpx.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{url}/v1/fixes", json=body, headers=headers, timeout=30)


def other(values: tuple[str, ...], current: str | None) -> str:
    return next(v for v in values if v != current)


def fix_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(ManualFix)) or 0


def ml_record(world: World, image_key: str, advertiser: str | None = None) -> dict[str, object]:
    response = httpx.get(
        f"{world.ml}/images/{image_key}",
        params={"advertiser": advertiser} if advertiser else None,
        headers={"Authorization": f"Bearer {ML_TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_fixing_own_images_records_history_and_updates_the_ml_cache(world: World) -> None:
    by_url, by_key = world.items[0], world.items[1]
    new_type = other(IMAGE_TYPES, by_url.image_type)
    new_color = other(COLORS, by_key.color)
    response = post(
        world.api,
        world.token,
        {
            "fixes": [
                {"image_url": by_url.image_url, "field": "image_type", "value": new_type},
                {"image_key": by_key.image_key, "field": "color", "value": new_color},
            ]
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["unchanged"] == 0 and body["sync"] == "synced"
    assert len(body["fix_ids"]) == 2
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"

    with world.sessions() as session:
        rows = history_rows(session, HistoryFilter(source="advertiser"))
        assert sorted(r.id for r in rows) == sorted(body["fix_ids"])
        for row in rows:
            assert row.advertiser == world.ours
            assert row.user == f"advertiser:{world.ours}"
            assert row.sync_status == "synced" and row.synced_at is not None
        fixed_type = session.get_one(SitemapItem, by_url.id)
        fixed_color = session.get_one(SitemapItem, by_key.id)
        assert fixed_type.image_type == new_type and fixed_color.color == new_color

    # The ML server's own cache answers the fixed values to this advertiser from now on: its
    # overrides are its alone, and the model's answer stays beside them.
    type_record = ml_record(world, by_url.image_key, world.ours)  # type: ignore[arg-type]
    color_record = ml_record(world, by_key.image_key, world.ours)  # type: ignore[arg-type]
    assert (type_record["image_type"], type_record["type_source"]) == (new_type, "override")
    assert (color_record["color"], color_record["color_source"]) == (new_color, "override")
    assert type_record["ml_image_type"] == by_url.ml_image_type
    for_everyone = ml_record(world, by_url.image_key)  # type: ignore[arg-type]
    assert (for_everyone["image_type"], for_everyone["type_source"]) == (
        by_url.ml_image_type,
        "model",
    )
    with world.sessions() as session:
        uids = {session.get_one(ManualFix, i).uid for i in body["fix_ids"]}
    assert uids <= set(type_record["applied_fix_ids"]) | set(  # type: ignore[arg-type]
        color_record["applied_fix_ids"]  # type: ignore[arg-type]
    )

    # The same fixes again change nothing and record nothing.
    again = post(
        world.api,
        world.token,
        {"fixes": [{"image_url": by_url.image_url, "field": "image_type", "value": new_type}]},
    )
    assert again.status_code == 200
    assert again.json() == {"fix_ids": [], "unchanged": 1, "sync": "synced"}

    # The advertiser's history: its fixes, newest first, without internal user names.
    history = httpx.get(
        f"{world.api}/v1/fixes",
        params={"limit": 10},
        headers={"Authorization": f"Bearer {world.token}"},
        timeout=30,
    )
    assert history.status_code == 200
    fixes = history.json()["fixes"]
    assert sorted(f["id"] for f in fixes) == sorted(body["fix_ids"])
    assert all(f["source"] == "advertiser" and "user" not in f for f in fixes)
    assert history.headers["cache-control"] == "no-store"


def test_history_shows_only_the_advertisers_own_images(world: World) -> None:
    with world.sessions.begin() as session:
        analyst = actor()
        mine = world.items[2]
        theirs = world.their_items[0]
        apply_fixes(
            session,
            analyst,
            [
                FixChange(mine.id, "image_type", other(IMAGE_TYPES, mine.image_type)),
                FixChange(theirs.id, "image_type", other(IMAGE_TYPES, theirs.image_type)),
            ],
        )
    headers = {"Authorization": f"Bearer {world.token}"}
    fixes = httpx.get(f"{world.api}/v1/fixes", headers=headers, timeout=30).json()["fixes"]
    assert [(f["image_key"], f["source"]) for f in fixes] == [(mine.image_key, "analyst")]
    their_headers = {"Authorization": f"Bearer {world.their_token}"}
    theirs_seen = httpx.get(f"{world.api}/v1/fixes", headers=their_headers, timeout=30).json()
    assert [f["image_key"] for f in theirs_seen["fixes"]] == [theirs.image_key]
    too_many = httpx.get(f"{world.api}/v1/fixes?limit=501", headers=headers, timeout=30)
    assert too_many.status_code == 422


def test_another_advertisers_image_is_404_and_nothing_is_written(world: World) -> None:
    mine, theirs = world.items[0], world.their_items[0]
    body = {
        "fixes": [
            {"image_url": mine.image_url, "field": "image_type", "value": "Stock"},
            {"image_url": theirs.image_url, "field": "image_type", "value": "Stock"},
            {"image_key": "f" * 32, "field": "color", "value": "Red"},
            # Our URL with their key is not ours either.
            {
                "image_url": mine.image_url,
                "image_key": theirs.image_key,
                "field": "color",
                "value": "Red",
            },
        ]
    }
    response = post(world.api, world.token, body)
    assert response.status_code == 404, response.text
    detail = response.json()["detail"]
    assert [f["index"] for f in detail["fixes"]] == [1, 2, 3]
    assert detail["fixes"][0]["image_url"] == theirs.image_url
    assert fix_count(world.sessions) == 0
    with world.sessions() as session:
        assert session.get_one(SitemapItem, mine.id).image_type == mine.image_type
        assert session.get_one(SitemapItem, theirs.id).image_type == theirs.image_type
    # The other advertiser may fix it with its own token.
    assert post(world.api, world.their_token, {"fixes": [body["fixes"][1]]}).status_code == 200


def test_an_image_the_scrape_could_not_fetch_is_422(world: World) -> None:
    item = world.items[0]
    with world.sessions.begin() as session:
        session.execute(
            update(SitemapItem)
            .where(SitemapItem.id == item.id)
            .values(image_key=None, status=ItemStatus.ERROR, error="HTTP 404")
        )
    response = post(
        world.api,
        world.token,
        {"fixes": [{"image_url": item.image_url, "field": "image_type", "value": "Stock"}]},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]["fixes"][0]["index"] == 0
    assert fix_count(world.sessions) == 0


def test_library_errors_answer_their_own_status(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the library raises while recording answers that error's ``http_status``."""
    item = world.items[0]
    body = {"fixes": [{"image_url": item.image_url, "field": "image_type", "value": "Stock"}]}
    cases: list[tuple[TaggingError, int]] = [
        (Conflict("the finding was handled meanwhile"), 409),
        (InvalidInput("not a valid image_type"), 422),
        (NotFoundError("no sitemap item 1"), 404),
        (PermissionDenied("may not fix"), 403),
        (TaggingError("something else"), 400),
    ]
    for error, expected in cases:

        def refuse(*_: object, error: TaggingError = error, **__: object) -> None:
            raise error

        monkeypatch.setattr("tagging.api.app.record_fixes", refuse)
        response = post(world.api, world.token, body)
        assert response.status_code == expected, (error, response.text)
        assert response.json() == {"detail": str(error)}
    assert fix_count(world.sessions) == 0


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-token", "Bearer", "Basic dXNlcjpwYXNz", "revoked", "ml-token"],
)
def test_missing_wrong_or_revoked_token_is_401(world: World, authorization: str | None) -> None:
    if authorization == "revoked":
        authorization = f"Bearer {world.revoked_token}"
    elif authorization == "ml-token":
        authorization = f"Bearer {ML_TOKEN}"  # the ML server's token is no advertiser's
    headers = {"Authorization": authorization} if authorization else {}
    item = world.items[0]
    body = {"fixes": [{"image_url": item.image_url, "field": "image_type", "value": "Stock"}]}
    response = httpx.post(f"{world.api}/v1/fixes", json=body, headers=headers, timeout=30)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    listing = httpx.get(f"{world.api}/v1/fixes", headers=headers, timeout=30)
    assert listing.status_code == 401
    assert fix_count(world.sessions) == 0
    assert httpx.get(f"{world.api}/health", timeout=30).json() == {"status": "ok"}


def _fix(**overrides: object) -> dict[str, object]:
    return {"image_key": "0" * 32, "field": "image_type", "value": "Stock", **overrides}


@pytest.mark.parametrize(
    "body",
    [
        {"fixes": [_fix(field="title")]},
        {"fixes": [_fix(value="Convertible")]},
        {"fixes": [_fix(field="color", value="Stock")]},
        {"fixes": [_fix(value="<script>alert(1)</script>")]},
        {"fixes": [_fix(field="color", value="Red<img src=x onerror=alert(1)>")]},
        {"fixes": [_fix(value="stock")]},
        {"fixes": [_fix(image_key=None)]},
        {"fixes": [_fix(image_key="../../etc/passwd")]},
        {"fixes": [_fix(extra="x")]},
        {"fixes": []},
        {"fixes": [_fix()] * (MAX_FIXES + 1)},
        {"fix": [_fix()]},
    ],
)
def test_invalid_fixes_are_422_and_nothing_is_written(world: World, body: object) -> None:
    item = world.items[0]
    # A valid fix first: a bad one anywhere refuses the whole request.
    if isinstance(body, dict) and body.get("fixes"):
        body = {
            "fixes": [
                {"image_url": item.image_url, "field": "image_type", "value": "Stock"},
                *body["fixes"],
            ][: MAX_FIXES + 1]
        }
    response = post(world.api, world.token, body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert fix_count(world.sessions) == 0


def test_ml_server_down_leaves_fixes_pending_for_the_sender(world: World) -> None:
    down = replace(world.settings, ml_url="http://127.0.0.1:9")  # type: ignore[type-var]
    item = world.items[0]
    new_type = other(IMAGE_TYPES, item.image_type)
    with UvicornThread(create_advertiser_api(down)) as api:  # type: ignore[arg-type]
        response = post(
            api.url,
            world.token,
            {"fixes": [{"image_url": item.image_url, "field": "image_type", "value": new_type}]},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sync"] == "pending" and len(body["fix_ids"]) == 1
    with world.sessions() as session:
        (row,) = history_rows(session, HistoryFilter())
        assert (row.source, row.advertiser, row.sync_status) == (
            "advertiser",
            world.ours,
            "pending",
        )
        assert row.sync_attempts == 1 and row.last_sync_error
        assert session.get_one(SitemapItem, item.id).image_type == new_type
    assert ml_record(world, item.image_key, world.ours)["image_type"] != new_type  # type: ignore[arg-type]

    # The regular sender delivers it once the ML server is back.
    ml = MLClient.from_settings(world.settings)  # type: ignore[arg-type]
    try:
        report = push_pending(world.sessions, ml)
    finally:
        ml.client.close()
    assert report.synced == 1 and report.pending == 0
    assert ml_record(world, item.image_key, world.ours)["image_type"] == new_type  # type: ignore[arg-type]


def test_health_and_openapi(world: World) -> None:
    assert httpx.get(f"{world.api}/health", timeout=30).json() == {"status": "ok"}
    schema = httpx.get(f"{world.api}/openapi.json", timeout=30).json()
    assert {"/v1/fixes", "/health"} <= set(schema["paths"])
    assert httpx.get(f"{world.api}/docs", timeout=30).status_code == 200


def test_markup_in_a_value_is_refused_and_only_echoed_as_json(world: World) -> None:
    item = world.items[0]
    script = "<script>alert(1)</script>"
    response = post(
        world.api,
        world.token,
        {"fixes": [{"image_url": item.image_url, "field": "color", "value": script}]},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "fixes", 0, "value"]
    assert "not a valid color" in error["msg"]
    assert fix_count(world.sessions) == 0


def test_fixes_resolve_against_the_latest_successful_scrape(world: World) -> None:
    """A newer failed scrape (no items) or a running one does not hide the advertiser's images."""
    from db.models import Scrape, ScrapeStatus, utcnow

    item = world.items[0]
    with world.sessions.begin() as session:
        now = utcnow()
        session.add_all(
            [
                Scrape(
                    advertiser_id=world.ours_id,
                    started_at=now,
                    finished_at=now,
                    status=ScrapeStatus.FAILED,
                    error="the sitemap could not be read",
                ),
                Scrape(advertiser_id=world.ours_id, started_at=now, heartbeat_at=now),
            ]
        )
    new_type = other(IMAGE_TYPES, item.image_type)
    response = post(
        world.api,
        world.token,
        {"fixes": [{"image_url": item.image_url, "field": "image_type", "value": new_type}]},
    )
    assert response.status_code == 200, response.text
    with world.sessions() as session:
        assert session.get_one(SitemapItem, item.id).image_type == new_type


def test_color_fixes_are_refused_when_the_feed_gives_the_colors(world: World) -> None:
    from db.models import Advertiser

    with world.sessions.begin() as session:
        session.execute(
            update(Advertiser).where(Advertiser.id == world.ours_id).values(color_from_feed=True)
        )
    first, second = world.items[0], world.items[1]
    body = {
        "fixes": [
            {"image_url": first.image_url, "field": "image_type", "value": "Stock"},
            {"image_url": second.image_url, "field": "color", "value": other(COLORS, second.color)},
        ]
    }
    response = post(world.api, world.token, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "feed" in detail["message"] and "Nothing was recorded" in detail["message"]
    assert [f["index"] for f in detail["fixes"]] == [1]
    assert fix_count(world.sessions) == 0
    # Image Type fixes stay open to them, and another advertiser's colors too.
    only_type = {"fixes": [body["fixes"][0]]}
    assert post(world.api, world.token, only_type).status_code == 200
    theirs = world.their_items[0]
    their_color = {
        "image_url": theirs.image_url,
        "field": "color",
        "value": other(COLORS, theirs.color),
    }
    assert post(world.api, world.their_token, {"fixes": [their_color]}).status_code == 200
