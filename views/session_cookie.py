"""The session cookie: its HTTP routes (served beside the app by ``serve.py``) and the page side.

Streamlit reads cookies (``st.context.cookies``, from the connection's handshake) but a script
cannot set one: its answers travel over the WebSocket, not in an HTTP response. So, after a
sign-in, the page runs a one-line ``fetch`` that trades the session's one-time handoff code
(:func:`db.user_sessions.claim_handoff`) at ``POST /api/session`` for the token, which the
response sets as an ``HttpOnly; SameSite=Strict`` cookie: no script can read it, no other site
can send it, and it never appears in a URL. After a sign-out, ``DELETE /api/session`` drops the
cookie, but only a dead one (signed out, expired, unknown): a session is ended by revoking its
row (:func:`views.common.sign_out`), never by this route.
"""

from __future__ import annotations

import json
from functools import cache
from urllib.parse import urlsplit

import streamlit as st
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from db.engine import make_engine, make_session_factory
from db.user_sessions import check_session, claim_handoff
from tagging.config import Settings
from views.common import COOKIE_HANDOFF, FORGET_COOKIE, SESSION_COOKIE, SESSION_IDLE, SESSION_MAX

API_PATH = "api/session"
_HIDDEN = "session_cookie"
"""The key of the hidden container that holds the page's cookie script."""


def base_path() -> str:
    """``/`` or ``/<server.baseUrlPath>/``."""
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}/" if base else "/"


@cache
def route_sessions() -> sessionmaker[Session]:
    """The routes' own session factory: they run outside any script run, where Streamlit's
    caches (:func:`views.common.session_factory`) are not meant to be used. The pages have
    migrated the database before any browser can call a route."""
    return make_session_factory(make_engine(Settings.from_env().database_url))


def _same_origin(request: Request) -> bool:
    """Only the app's own pages may call the routes (a cross-site form or fetch may not)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def no_store(response: Response) -> Response:
    """``response``, never kept by any cache (the routes' refusals and cookie answers)."""
    response.headers["Cache-Control"] = "no-store"
    return response


async def _claim(request: Request) -> Response:
    if not _same_origin(request):
        return no_store(Response(status_code=403))
    try:
        handoff = (await request.json())["handoff"]
    except (ValueError, KeyError, TypeError):
        return no_store(Response(status_code=400))
    if not isinstance(handoff, str):
        return no_store(Response(status_code=400))

    def claim() -> str | None:
        with route_sessions().begin() as session:
            return claim_handoff(session, handoff, idle=SESSION_IDLE, max_age=SESSION_MAX)

    token = await run_in_threadpool(claim)
    if token is None:
        return no_store(Response(status_code=403))
    response = no_store(Response(status_code=204))
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(SESSION_MAX.total_seconds()),
        path=base_path(),
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


async def _forget(request: Request) -> Response:
    if not _same_origin(request):
        return no_store(Response(status_code=403))
    token = request.cookies.get(SESSION_COOKIE)
    response = no_store(Response(status_code=204))
    if not token:
        return response

    def alive() -> bool:
        with route_sessions().begin() as session:
            return check_session(
                session, token=token, idle=SESSION_IDLE, max_age=SESSION_MAX
            ).active

    if not await run_in_threadpool(alive):
        response.delete_cookie(
            SESSION_COOKIE,
            path=base_path(),
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
    return response


def routes() -> list[Route]:
    """The HTTP routes of the session cookie, for ``st.App(routes=...)``."""
    path = base_path() + API_PATH
    return [
        Route(path, _claim, methods=["POST"]),
        Route(path, _forget, methods=["DELETE"]),
    ]


def sync_session_cookie() -> None:
    """Have the browser fetch its cookie after a sign-in, or drop it after a sign-out.

    Call on every run of the frame, before the page: the script is in a hidden container, so it
    takes no room. The handoff is repeated until the browser has claimed it (the next run sees
    it claimed) or it has expired; a repeated claim is refused and harmless.
    """
    handoff = st.session_state.get(COOKIE_HANDOFF)
    forget = st.session_state.pop(FORGET_COOKIE, False)
    if handoff is None and not forget:
        return
    url = json.dumps(base_path() + API_PATH)
    if handoff is not None:
        body = json.dumps(json.dumps({"handoff": handoff[0]}))
        call = (
            f"fetch({url}, {{method: 'POST', credentials: 'same-origin', "
            f"headers: {{'Content-Type': 'application/json'}}, body: {body}}})"
        )
    else:
        call = f"fetch({url}, {{method: 'DELETE', credentials: 'same-origin'}})"
    with st.container(key=_HIDDEN):
        st.html(
            f"<style>.st-key-{_HIDDEN} {{display: none}}</style><script>{call};</script>",
            unsafe_allow_javascript=True,
        )
