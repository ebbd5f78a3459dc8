"""The review grid's pictures as plain HTTP routes, served beside the app by ``serve.py``.

A thumbnail never changes for its ``image_key`` (the key is derived from the image's URL and
response headers), so ``/api/thumb/<image_key>`` is sent with ``immutable`` and a year's
``max-age``: the browser downloads each one once, whatever page or filter shows it again. The
large view's ``/api/original/<item id>`` is fetched by the server through the one guarded client
(the browser never contacts an advertiser's CDN), and falls back to the thumbnail when the original
is gone or unreachable.

Both need a signed-in session (the HttpOnly cookie, :mod:`views.session_cookie`): a picture is
sent only to the app's own pages, and ``private`` keeps shared caches from storing it.
"""

from __future__ import annotations

import re
import time
from functools import cache
from threading import Lock

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from db.review import items_by_id, thumbnails
from db.user_sessions import check_session
from tagging.config import Settings
from tagging.errors import TaggingError
from tagging.ingest.originals import fetch_original
from views.common import SESSION_COOKIE, SESSION_IDLE, SESSION_MAX
from views.session_cookie import no_store, route_sessions

THUMB_PATH = "api/thumb"
ORIGINAL_PATH = "api/original"
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""An ``image_key`` (hex in practice): anything else is refused before any query."""
_CHECKED_SECONDS = 30.0
"""How long a session seen active is trusted without a query: a page's 96 thumbnails cost one."""
_IMMUTABLE = "private, max-age=31536000, immutable"
_ORIGINAL_CACHE = "private, max-age=600"


@cache
def _settings() -> Settings:
    return Settings.from_env()


class _SeenSessions:
    """Cookie tokens recently checked active, so that a page of thumbnails costs one query."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = Lock()

    def fresh(self, token: str) -> bool:
        with self._lock:
            return self._until.get(token, 0.0) > time.monotonic()

    def note(self, token: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._until) > 10_000:  # (forget the expired ones now and then)
                self._until = {t: u for t, u in self._until.items() if u > now}
            self._until[token] = now + _CHECKED_SECONDS


_seen = _SeenSessions()


async def _signed_in(request: Request) -> bool:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return False
    if _seen.fresh(token):
        return True

    def active() -> bool:
        with route_sessions().begin() as session:
            return check_session(
                session, token=token, idle=SESSION_IDLE, max_age=SESSION_MAX
            ).active

    if await run_in_threadpool(active):
        _seen.note(token)
        return True
    return False


def _jpeg(body: bytes, cache_control: str, etag: str | None = None) -> Response:
    response = Response(body, media_type="image/jpeg")
    response.headers["Cache-Control"] = cache_control
    response.headers["X-Content-Type-Options"] = "nosniff"
    if etag is not None:
        response.headers["ETag"] = f'"{etag}"'
    return response


def _refused(status: int) -> Response:
    return no_store(Response(status_code=status))


async def _thumbnail(request: Request) -> Response:
    image_key = str(request.path_params["image_key"]).removesuffix(".jpg")
    if not _KEY.match(image_key):
        return _refused(404)
    if not await _signed_in(request):
        return _refused(401)
    if request.headers.get("if-none-match") == f'"{image_key}"':
        response = Response(status_code=304)
        response.headers["Cache-Control"] = _IMMUTABLE
        return response

    def read() -> bytes | None:
        with route_sessions()() as session:
            return thumbnails(session, [image_key]).get(image_key)

    body = await run_in_threadpool(read)
    if body is None:
        return _refused(404)
    return _jpeg(body, _IMMUTABLE, etag=image_key)


async def _original(request: Request) -> Response:
    try:
        item_id = int(request.path_params["item_id"])
    except ValueError:
        return _refused(404)
    if not await _signed_in(request):
        return _refused(401)

    def read() -> bytes | None:
        with route_sessions()() as session:
            found = items_by_id(session, [item_id])
            if not found:
                return None
            url, image_key = found[0].image_url, found[0].image_key
        try:
            return fetch_original(_settings(), url)
        except TaggingError:  # gone, blocked, too slow or not an image: the thumbnail instead
            if image_key is None:
                return None
            with route_sessions()() as session:
                return thumbnails(session, [image_key]).get(image_key)

    body = await run_in_threadpool(read)
    if body is None:
        return _refused(404)
    return _jpeg(body, _ORIGINAL_CACHE)


def media_routes(base_path: str) -> list[Route]:
    """The routes, under ``base_path`` (``/`` or ``/<server.baseUrlPath>/``)."""
    return [
        Route(f"{base_path}{THUMB_PATH}/{{image_key}}", _thumbnail, methods=["GET"]),
        Route(f"{base_path}{ORIGINAL_PATH}/{{item_id}}", _original, methods=["GET"]),
    ]
