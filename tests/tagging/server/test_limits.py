"""Request-body limits of both servers (``tagging.server.limits.BodyLimit``), over real HTTP.

Some requests are written on a raw socket: a head announcing a huge body and no body at all. A
server that read the body before answering would never answer them, so an answer proves that the
refusal came before any of the body was read.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from db.accounts import create_advertiser_token, revoke_advertiser_token
from db.engine import make_engine, make_session_factory
from db.models import AdvertiserToken, Role, SitemapItem
from tagging.api.app import MAX_REQUEST_BYTES as API_MAX_BYTES
from tagging.api.app import create_advertiser_api
from tagging.ingest.fetch import MAX_URL_LENGTH
from tagging.server.app import MAX_REQUEST_BYTES as ML_MAX_BYTES
from tagging.testing import UvicornThread
from tests.tagging.server.test_app import demo_urls
from tests.utils.factories import actor, make_advertiser, make_scrape
from tests.utils.servers import ML_TOKEN, closed_port, ml_settings

AUTH = {"Authorization": f"Bearer {ML_TOKEN}"}


def raw_exchange(base_url: str, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send a request head (and ``body``) on a new connection; the answer once the server closes.

    Returns:
        (status, lower-cased headers, body). Times out (the test fails) if the server waits.
    """
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head_bytes, _, rest = answer.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, rest


def post_head(path: str, *headers: str) -> str:
    return "\n".join([f"POST {path} HTTP/1.1", "Host: test", *headers, ""])


# --- the ML server -----------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic dGVzdA=="])
@pytest.mark.parametrize("framing", ["Content-Length: 1000000000", "Transfer-Encoding: chunked"])
def test_ml_server_refuses_an_unauthenticated_body_before_reading_it(
    ml_server: object, authorization: str | None, framing: str
) -> None:
    auth = [f"Authorization: {authorization}"] if authorization else []
    start = time.monotonic()
    status, headers, body = raw_exchange(
        ml_server.url,  # type: ignore[attr-defined]
        post_head("/classify", "Content-Type: application/json", framing, *auth),
    )
    assert status == 401
    assert time.monotonic() - start < 5
    assert headers["www-authenticate"] == "Bearer"
    assert json.loads(body) == {"detail": "missing or wrong bearer token"}


def test_ml_server_refuses_a_declared_oversized_body_before_reading_it(ml_server: object) -> None:
    status, _, body = raw_exchange(
        ml_server.url,  # type: ignore[attr-defined]
        post_head(
            "/classify",
            f"Authorization: Bearer {ML_TOKEN}",
            "Content-Type: application/json",
            f"Content-Length: {ML_MAX_BYTES + 1}",
        ),
    )
    assert status == 413
    assert "over the 1,048,576-byte cap" in json.loads(body)["detail"]


def test_ml_server_cuts_off_a_chunked_body_at_the_cap(ml_server: object) -> None:
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"urls": ["'
        while sent < 64 * 1024 * 1024:
            sent += 65536
            yield b"a" * 65536

    # httpx sends an iterator chunked, with no Content-Length.
    response = httpx.post(
        f"{ml_server.url}/classify",  # type: ignore[attr-defined]
        content=endless(),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert "over 1,048,576 bytes" in response.json()["detail"]
    assert sent < 32 * 1024 * 1024  # the server stopped the upload long before its end


def test_ml_server_refuses_a_large_unauthenticated_post_from_a_real_client(
    ml_server: object,
) -> None:
    response = httpx.post(
        f"{ml_server.url}/classify",  # type: ignore[attr-defined]
        content=b"x" * (60 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 401


def test_ml_server_still_takes_bodies_under_the_cap_chunked_or_not(
    ml_server: object, cdn: object, demo_dir: Path
) -> None:
    urls = demo_urls(cdn, demo_dir, limit=2)
    payload = json.dumps({"urls": urls, "thumbnails": False}).encode()
    for content in (payload, iter([payload[:10], payload[10:]])):
        response = httpx.post(
            f"{ml_server.url}/classify",  # type: ignore[attr-defined]
            content=content,
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert [r["error"] for r in response.json()["results"]] == [None, None]
    # Requests without a body need no token here; the routes decide (health is public).
    assert httpx.get(f"{ml_server.url}/health", timeout=10).status_code == 200  # type: ignore[attr-defined]


# --- the advertiser API ------------------------------------------------------------------------


@dataclass
class Api:
    url: str
    token: str
    revoked: str
    image_url: str


@pytest.fixture
def api(tmp_path: Path, sqlite_url: str) -> Iterator[Api]:
    """The advertiser API on an app database with one advertiser, one scrape and two tokens."""
    engine = make_engine(sqlite_url)
    sessions = make_session_factory(engine)
    admin = actor(Role.ADMIN)
    with sessions.begin() as session:
        advertiser = make_advertiser(session)
        make_scrape(session, advertiser)
        token = create_advertiser_token(session, admin, advertiser.id, system=True)
        revoked = create_advertiser_token(session, admin, advertiser.id, "old", system=True)
        old = session.scalars(select(AdvertiserToken).where(AdvertiserToken.label == "old")).one()
        revoke_advertiser_token(session, admin, old.id, system=True)
        image_url = session.scalars(select(SitemapItem.image_url).limit(1)).one()
    settings = ml_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'ml.sqlite'}",
        database_url=sqlite_url,
        ml_url=f"http://127.0.0.1:{closed_port()}",
    )
    with UvicornThread(create_advertiser_api(settings)) as server:  # type: ignore[arg-type]
        yield Api(server.url, token, revoked, image_url)
    engine.dispose()


@pytest.mark.parametrize("token", [None, "unknown-token", "revoked"])
def test_api_refuses_an_unauthenticated_body_before_reading_it(api: Api, token: str | None) -> None:
    value = api.revoked if token == "revoked" else token
    auth = [f"Authorization: Bearer {value}"] if value else []
    status, headers, body = raw_exchange(
        api.url,
        post_head(
            "/v1/fixes", "Content-Type: application/json", "Content-Length: 999999999", *auth
        ),
    )
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert headers["x-content-type-options"] == "nosniff"
    assert json.loads(body) == {"detail": "missing, unknown or revoked advertiser token"}


def test_api_refuses_an_oversized_body_before_reading_it(api: Api) -> None:
    status, _, body = raw_exchange(
        api.url,
        post_head(
            "/v1/fixes",
            f"Authorization: Bearer {api.token}",
            "Content-Type: application/json",
            f"Content-Length: {API_MAX_BYTES + 1}",
        ),
    )
    assert status == 413
    assert "over the 2,097,152-byte cap" in json.loads(body)["detail"]


def test_api_takes_a_fix_through_the_limit_and_caps_url_length(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.token}"}
    fix = {"image_url": api.image_url, "field": "image_type", "value": "Stock"}
    chunked = iter([json.dumps({"fixes": [fix]}).encode()])
    response = httpx.post(
        f"{api.url}/v1/fixes",
        content=chunked,
        headers={**headers, "Content-Type": "application/json"},
        timeout=30,
    )
    # Authenticated by the body limit, recorded by the route (the ML server is down: pending).
    assert response.status_code == 200, response.text
    assert response.json()["sync"] == "pending" and len(response.json()["fix_ids"]) == 1

    too_long = {**fix, "image_url": "https://cdn.example/" + "a" * MAX_URL_LENGTH}
    response = httpx.post(
        f"{api.url}/v1/fixes", json={"fixes": [too_long]}, headers=headers, timeout=30
    )
    assert response.status_code == 422
    assert "2048" in response.text
