"""The review grid's picture routes (``views.media``), through Starlette's TestClient on the
routes ``serve.py`` mounts, against a migrated database (SQLite and PostgreSQL).

"Unreachable" originals are real: a loopback address the guarded client refuses (not
allow-listed), or an allow-listed loopback port nothing listens on; a reachable one is a
loopback HTTP server.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette

import views.media
import views.session_cookie
from db.accounts import create_user, set_disabled
from db.engine import make_engine, make_session_factory
from db.models import Role, SitemapItem, Thumbnail, UserSession, utcnow
from db.user_sessions import claim_handoff, open_session, revoke_session
from tagging.ingest.originals import ORIGINAL_SIZE
from tests.utils.factories import make_advertiser, make_scrape
from tests.utils.servers import closed_port, static_server
from views.common import SESSION_COOKIE, SESSION_IDLE, SESSION_MAX

with warnings.catch_warnings():
    # Starlette would have its test client on httpx2 now; the httpx installed works the same.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (20, 160, 40)).save(out, format="PNG")
    return out.getvalue()


ORIGINAL = png((1600, 1200))


@pytest.fixture
def image_server() -> Iterator[str]:
    """``host:port`` of a loopback server of one original image, ``/original.png``."""
    with static_server({"/original.png": (ORIGINAL, "image/png")}) as host:
        yield host


@dataclass
class Media:
    sessions: sessionmaker[Session]
    client: TestClient
    item_ids: list[int]
    keys: list[str]
    thumbs: dict[str, bytes]
    allow: Callable[[str], None]

    def cookie(self, username: str = "ana") -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={token_for(self.sessions, username)}"}


def token_for(sessions: sessionmaker[Session], username: str) -> str:
    """A signed-in session's cookie token, as the sign-in and the browser's claim make it."""
    with sessions.begin() as session:
        opened = open_session(session, username)
    with sessions.begin() as session:
        token = claim_handoff(session, opened.handoff, idle=SESSION_IDLE, max_age=SESSION_MAX)
    assert token is not None
    return token


@pytest.fixture
def media(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Media]:
    """The routes under ``/`` with an account ``ana``, one scrape of three items, and stored
    thumbnails for the first two (the third has none)."""
    monkeypatch.setenv("TAGGING_DATABASE_URL", database_url)
    monkeypatch.setenv("TAGGING_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TAGGING_ML_TOKEN", "unused")
    monkeypatch.delenv("TAGGING_ALLOWED_HOSTS", raising=False)
    # The module keeps its factory, settings and recently checked tokens for the process.
    monkeypatch.setattr(views.media, "_seen", views.media._SeenSessions())
    views.session_cookie.route_sessions.cache_clear()
    views.media._settings.cache_clear()

    def allow(host: str) -> None:
        monkeypatch.setenv("TAGGING_ALLOWED_HOSTS", host)
        views.media._settings.cache_clear()

    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        create_user(session, None, "ana", Role.ANALYST, email="ana@example.com", system=True)
        scrape = make_scrape(session, make_advertiser(session), [("Dealer", "Red")] * 3)
        items = list(
            session.scalars(
                select(SitemapItem)
                .where(SitemapItem.scrape_id == scrape.id)
                .order_by(SitemapItem.position)
            )
        )
        keys = [str(i.image_key) for i in items]
        thumbs = {keys[0]: jpeg((200, 0, 0)), keys[1]: jpeg((0, 0, 200))}
        session.add_all(Thumbnail(image_key=k, jpeg=v) for k, v in thumbs.items())
        item_ids = [i.id for i in items]
    app = Starlette(routes=views.media.media_routes("/"))
    with TestClient(app) as client:
        yield Media(sessions, client, item_ids, keys, thumbs, allow)
    views.session_cookie.route_sessions().kw["bind"].dispose()
    views.session_cookie.route_sessions.cache_clear()
    views.media._settings.cache_clear()
    engine.dispose()


def set_image_url(media: Media, item_id: int, url: str, *, image_key: str | None = "keep") -> None:
    with media.sessions.begin() as session:
        item = session.get_one(SitemapItem, item_id)
        item.image_url = url
        if image_key != "keep":
            item.image_key = image_key


# --- signed in or not -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cookie",
    [
        None,
        f"{SESSION_COOKIE}=",
        f"{SESSION_COOKIE}=not-a-session-token",
        f"{SESSION_COOKIE}={'x' * 5000}",
        "other_cookie=1",
    ],
)
def test_without_a_signed_in_session_nothing_is_sent(media: Media, cookie: str | None) -> None:
    headers = {"Cookie": cookie} if cookie else {}
    for path in (f"/api/thumb/{media.keys[0]}", f"/api/original/{media.item_ids[0]}"):
        response = media.client.get(path, headers=headers)
        assert response.status_code == 401, path
        assert response.content == b""
        assert response.headers["cache-control"] == "no-store"


def test_a_revoked_session_is_refused(media: Media) -> None:
    token = token_for(media.sessions, "ana")
    with media.sessions.begin() as session:
        assert revoke_session(session, token=token)
    response = media.client.get(
        f"/api/thumb/{media.keys[0]}", headers={"Cookie": f"{SESSION_COOKIE}={token}"}
    )
    assert response.status_code == 401


def test_an_expired_session_is_refused(media: Media) -> None:
    token = token_for(media.sessions, "ana")
    with media.sessions.begin() as session:  # idle longer than allowed
        session.execute(
            update(UserSession).values(last_seen_at=utcnow() - SESSION_IDLE - SESSION_IDLE / 10)
        )
    response = media.client.get(
        f"/api/original/{media.item_ids[0]}", headers={"Cookie": f"{SESSION_COOKIE}={token}"}
    )
    assert response.status_code == 401


def test_a_disabled_account_s_session_is_refused(media: Media) -> None:
    headers = media.cookie()
    with media.sessions.begin() as session:
        set_disabled(session, None, "ana", True, system=True)
    assert media.client.get(f"/api/thumb/{media.keys[0]}", headers=headers).status_code == 401


def test_a_page_of_thumbnails_costs_one_session_check_until_it_is_stale(
    media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[str] = []
    real = views.media.check_session

    def counted(*args: object, **kwargs: object) -> object:
        checks.append(str(kwargs.get("token")))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(views.media, "check_session", counted)
    headers = media.cookie()
    for key in [*media.keys[:2]] * 3:
        assert media.client.get(f"/api/thumb/{key}", headers=headers).status_code == 200
    assert len(checks) == 1
    # Once the check is stale, the session is checked again: a revoked one is then refused.
    monkeypatch.setattr(views.media, "_seen", views.media._SeenSessions())
    with media.sessions.begin() as session:
        revoke_session(session, token=checks[0])
    assert media.client.get(f"/api/thumb/{media.keys[0]}", headers=headers).status_code == 401
    assert len(checks) == 2


# --- thumbnails -----------------------------------------------------------------------------------


def test_a_thumbnail_is_sent_once_for_good(media: Media) -> None:
    key = media.keys[0]
    response = media.client.get(f"/api/thumb/{key}", headers=media.cookie())
    assert response.status_code == 200
    assert response.content == media.thumbs[key]
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-content-type-options"] == "nosniff"
    cache_control = [d.strip() for d in response.headers["cache-control"].split(",")]
    assert {"private", "immutable", "max-age=31536000"} <= set(cache_control)
    assert response.headers["etag"] == f'"{key}"'
    # Each key its own picture; a ".jpg" ending is the same picture.
    other = media.client.get(f"/api/thumb/{media.keys[1]}.jpg", headers=media.cookie())
    assert other.status_code == 200 and other.content == media.thumbs[media.keys[1]]


def test_a_thumbnail_the_browser_has_is_not_sent_again(media: Media) -> None:
    key, headers = media.keys[0], media.cookie()
    response = media.client.get(
        f"/api/thumb/{key}", headers={**headers, "If-None-Match": f'"{key}"'}
    )
    assert response.status_code == 304 and response.content == b""
    assert "immutable" in response.headers["cache-control"]
    # Another picture's tag: this one is sent.
    response = media.client.get(
        f"/api/thumb/{key}", headers={**headers, "If-None-Match": f'"{media.keys[1]}"'}
    )
    assert response.status_code == 200 and response.content == media.thumbs[key]
    # Signed out: no 304 either (it would tell which pictures exist).
    response = media.client.get(f"/api/thumb/{key}", headers={"If-None-Match": f'"{key}"'})
    assert response.status_code == 401


@pytest.mark.parametrize(
    "key",
    [
        "a.b",  # stored below under this very key: refused before any query
        "a+b",
        "x" * 65,
        "..%2F..%2Fetc%2Fpasswd",
        "%2E%2E",
        "%3Cscript%3E",
        "k%00",
        "a%20b",
    ],
)
def test_a_malformed_key_is_not_found(media: Media, key: str) -> None:
    with media.sessions.begin() as session:
        session.add(Thumbnail(image_key="a.b", jpeg=jpeg((1, 2, 3))))
    response = media.client.get(f"/api/thumb/{key}", headers=media.cookie())
    assert response.status_code == 404
    assert not response.content.startswith(b"\xff\xd8")  # no JPEG


def test_an_unknown_key_is_not_found(media: Media) -> None:
    headers = media.cookie()
    assert media.keys[2] not in media.thumbs  # a scraped image without a thumbnail
    for key in (media.keys[2], "f" * 32, "f" * 64):
        response = media.client.get(f"/api/thumb/{key}", headers=headers)
        assert response.status_code == 404, key
        assert response.headers["cache-control"] == "no-store"


# --- originals ------------------------------------------------------------------------------------


def test_the_original_is_fetched_by_the_server_and_sent(media: Media, image_server: str) -> None:
    media.allow(image_server)
    set_image_url(media, media.item_ids[0], f"http://{image_server}/original.png")
    response = media.client.get(f"/api/original/{media.item_ids[0]}", headers=media.cookie())
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    picture = Image.open(io.BytesIO(response.content))
    assert picture.format == "JPEG" and picture.size == ORIGINAL_SIZE
    cache_control = response.headers["cache-control"]
    assert "private" in cache_control and "immutable" not in cache_control
    assert "etag" not in response.headers


@pytest.mark.parametrize("why", ["blocked", "unreachable", "gone"])
def test_an_original_that_cannot_be_fetched_falls_back_to_the_thumbnail(
    media: Media, image_server: str, why: str
) -> None:
    item_id, key = media.item_ids[1], media.keys[1]
    if why == "blocked":  # loopback, not allow-listed: the guarded client refuses it
        url = f"http://{image_server}/original.png"
    elif why == "unreachable":
        port = closed_port()
        media.allow(f"127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}/original.png"
    else:
        media.allow(image_server)
        url = f"http://{image_server}/removed.png"  # 404
    set_image_url(media, item_id, url)
    response = media.client.get(f"/api/original/{item_id}", headers=media.cookie())
    assert response.status_code == 200
    assert response.content == media.thumbs[key]
    assert "immutable" not in response.headers["cache-control"]


def test_an_original_with_neither_picture_is_not_found(media: Media, image_server: str) -> None:
    headers = media.cookie()
    # Blocked, and no thumbnail stored for its key.
    set_image_url(media, media.item_ids[2], f"http://{image_server}/original.png")
    assert (
        media.client.get(f"/api/original/{media.item_ids[2]}", headers=headers).status_code == 404
    )
    # Blocked, and no image key at all (the scrape could not fetch it).
    set_image_url(media, media.item_ids[0], f"http://{image_server}/original.png", image_key=None)
    assert (
        media.client.get(f"/api/original/{media.item_ids[0]}", headers=headers).status_code == 404
    )


@pytest.mark.parametrize("item", ["999999", "abc", "1.5", "-"])
def test_an_unknown_item_is_not_found(media: Media, item: str) -> None:
    response = media.client.get(f"/api/original/{item}", headers=media.cookie())
    assert response.status_code == 404
    assert response.headers["cache-control"] == "no-store"


def test_the_routes_follow_the_base_path(media: Media) -> None:
    app = Starlette(routes=views.media.media_routes("/tagdesk/"))
    with TestClient(app) as client:
        headers = media.cookie()
        key = media.keys[0]
        assert client.get(f"/tagdesk/api/thumb/{key}", headers=headers).status_code == 200
        assert client.get(f"/api/thumb/{key}", headers=headers).status_code == 404
