"""The advertiser API: advertisers fix their own images' Image Type and Color from their front end.

Run it with ``python -m tagging api``. Every ``/v1`` endpoint needs
``Authorization: Bearer <advertiser token>`` (made by an admin on the Accounts page); ``/health``
needs none. OpenAPI docs at ``/docs``.

A fix names an image of the advertiser's latest finished scrape by its URL or its image_key. All
fixes of a request are recorded in one transaction (all or nothing), as history rows with source
``advertiser``, then pushed to the ML server's cache right away. That push is best effort: when the
ML server is down the fixes stay pending, the answer says ``"sync": "pending"``, and the regular
sender pushes them later.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy import func, or_, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from db.accounts import Actor, advertiser_for_token
from db.engine import make_engine, make_session_factory, migrate
from db.fixes import FIELDS, FixChange
from db.history import HistoryFilter, history_rows
from db.models import Advertiser, FixSource, ManualFix, Role, SitemapItem, SyncStatus
from db.scrapes import latest_scrape
from db.vocab import COLORS, IMAGE_TYPES
from tagging.config import Settings
from tagging.errors import AuthenticationError, TaggingError
from tagging.fixes import push_pending, record_fixes
from tagging.ingest.fetch import MAX_URL_LENGTH
from tagging.server.client import MLClient
from tagging.server.limits import MIB, BodyLimit, bearer_token

log = logging.getLogger(__name__)

MAX_FIXES = 500
"""Fixes per request: one transaction locks that many items at most."""
PUSH_TIMEOUT_SECONDS = 10.0
"""The ML push happens while the advertiser waits: a slow ML server leaves fixes pending."""
IMAGE_KEY_PATTERN = r"^[0-9a-f]{16,64}$"
MAX_REQUEST_BYTES = 2 * MIB
"""The largest request body: 500 fixes with URLs of the longest allowed length are ~1.1 MiB."""
UNAUTHORIZED = "missing, unknown or revoked advertiser token"
CALLER_SCOPE_KEY = "tagging.advertiser"
"""Where the body limit leaves the :class:`Caller` it authenticated, for the route to reuse."""


# --- schemas -----------------------------------------------------------------------------------


class FixIn(BaseModel):
    """One fix: an image of the advertiser's latest scrape, by URL or image_key, and a value."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="The image's URL in the sitemap.",
    )
    image_key: str | None = Field(
        default=None, pattern=IMAGE_KEY_PATTERN, description="The image_key Tagdesk reported."
    )
    field: Literal["image_type", "color"]
    value: str = Field(
        max_length=64,
        description=(
            f"image_type: one of {', '.join(IMAGE_TYPES)}. color: one of {', '.join(COLORS)}."
        ),
    )

    @field_validator("value")
    @classmethod
    def _allowed_value(cls, value: str, info: ValidationInfo) -> str:
        field_name = info.data.get("field")
        if field_name is None:
            return value  # the field itself is invalid, and reported so
        allowed = FIELDS[field_name]
        # Only listed values get through, which also refuses any markup or script in a value.
        if value not in allowed:
            raise ValueError(f"not a valid {field_name}: use one of {', '.join(allowed)}")
        return value

    @model_validator(mode="after")
    def _names_an_image(self) -> FixIn:
        if self.image_url is None and self.image_key is None:
            raise ValueError("give the image's image_url or image_key")
        return self


class FixesIn(BaseModel):
    """Up to 500 fixes, recorded all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    fixes: list[FixIn] = Field(min_length=1, max_length=MAX_FIXES)


class FixesOut(BaseModel):
    """What a ``POST /v1/fixes`` recorded."""

    fix_ids: list[int]
    """One history row per change made (a fix to the value the image has already is skipped)."""
    unchanged: int
    sync: Literal["synced", "pending"]
    """``pending`` when the ML server's cache has not acknowledged every fix yet."""


class FixRecord(BaseModel):
    """One fix to the advertiser's images, whoever made it (``source`` says from where)."""

    id: int
    created_at: datetime
    source: str
    field: str
    old_value: str | None
    new_value: str | None
    image_key: str
    image_url: str
    sync_status: str
    synced_at: datetime | None


class FixHistory(BaseModel):
    fixes: list[FixRecord]


class ApiHealth(BaseModel):
    status: Literal["ok"]


# --- state and dependencies --------------------------------------------------------------------


@dataclass
class ApiState:
    """What the lifespan opens once and every request shares."""

    sessions: sessionmaker[Session]
    ml: MLClient


@dataclass(frozen=True)
class Caller:
    """The advertiser whose token authenticated the request."""

    id: int
    name: str

    @property
    def actor(self) -> Actor:
        # Advertisers may fix their own images only, which the item lookup enforces; the
        # analyst role is what lets record_fixes record a fix at all.
        return Actor(username=f"advertiser:{self.name}"[:200], role=Role.ANALYST)


bearer = HTTPBearer(auto_error=False, description="An advertiser token.")


def get_state(request: Request) -> ApiState:
    """What the lifespan opened."""
    return request.app.state.advertiser_api


def get_session(state: Annotated[ApiState, Depends(get_state)]) -> Iterator[Session]:
    """A read-only session for the request (writes open their own transaction)."""
    with state.sessions() as session:
        yield session


def caller_for_token(state: ApiState, token: str | None) -> Caller | None:
    """The advertiser owning ``token``, or None when it is missing, unknown or revoked."""
    if not token:
        return None
    try:
        # Its own short transaction: the token's last use is recorded even if the fixes fail.
        with state.sessions.begin() as session:
            advertiser = advertiser_for_token(session, token)
            return Caller(id=advertiser.id, name=advertiser.name)
    except AuthenticationError:
        return None


def authenticated(
    request: Request,
    state: Annotated[ApiState, Depends(get_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The advertiser owning the bearer token; 401 when it is missing, unknown or revoked."""
    # A request with a body was authenticated by the body limit already, before its body was read.
    known = request.scope.get(CALLER_SCOPE_KEY)
    if isinstance(known, Caller):
        return known
    caller = caller_for_token(state, credentials.credentials if credentials else None)
    if caller is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=UNAUTHORIZED,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller


AnyState = Annotated[ApiState, Depends(get_state)]
ReadSession = Annotated[Session, Depends(get_session)]
Authenticated = Annotated[Caller, Depends(authenticated)]


# --- the app -----------------------------------------------------------------------------------


def create_advertiser_api(settings: Settings) -> FastAPI:
    """Build the advertiser API. The engine and the ML client open in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        ml = MLClient.from_settings(settings)
        ml.timeout = PUSH_TIMEOUT_SECONDS
        app.state.advertiser_api = ApiState(sessions=make_session_factory(engine), ml=ml)
        try:
            yield
        finally:
            ml.client.close()
            engine.dispose()

    app = FastAPI(
        title="Tagdesk advertiser API",
        summary="Advertisers fix the Image Type and Color of their own vehicle images.",
        version="1.0",
        lifespan=lifespan,
    )

    async def body_sender_is_an_advertiser(scope: Scope) -> bool:
        state: ApiState = app.state.advertiser_api
        caller = await run_in_threadpool(caller_for_token, state, bearer_token(scope))
        if caller is None:
            return False
        scope[CALLER_SCOPE_KEY] = caller  # the route's dependency takes it from there
        return True

    # The token is checked, and the size capped, before a byte of any body is read. Added
    # before no_sniffing, so it runs inside it and its answers get the same headers.
    app.add_middleware(
        BodyLimit,
        max_bytes=MAX_REQUEST_BYTES,
        authenticate=body_sender_is_an_advertiser,
        unauthorized=UNAUTHORIZED,
    )

    @app.middleware("http")
    async def no_sniffing(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        # Answers echo advertiser-supplied strings: keep browsers from reading JSON as HTML,
        # and keep one advertiser's answers out of shared caches.
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.url.path.startswith("/v1/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/health", tags=["ops"])
    def health(state: AnyState) -> ApiHealth:
        """Liveness, including the database. Needs no token."""
        try:
            with state.sessions() as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            log.warning("health check: the database is unreachable: %s", exc)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, detail="the database is unreachable"
            ) from None
        return ApiHealth(status="ok")

    @app.post(
        "/v1/fixes",
        tags=["fixes"],
        responses={
            401: {"description": "Missing, unknown or revoked token."},
            404: {"description": "An image that is not in your latest scrape: nothing recorded."},
            422: {"description": "An invalid fix: nothing recorded."},
        },
    )
    def post_fixes(body: FixesIn, caller: Authenticated, state: AnyState) -> FixesOut:
        """Record fixes to images of your latest finished scrape, all or nothing.

        Each fix names an image by ``image_url`` or ``image_key`` (both: both must match). The
        fixes are pushed to the ML cache right away; ``sync`` says whether that worked.
        """
        try:
            with state.sessions.begin() as session:
                changes = _resolve(session, caller.id, body.fixes)
                outcome = record_fixes(
                    session,
                    caller.actor,
                    changes,
                    source=FixSource.ADVERTISER,
                    advertiser_id=caller.id,
                )
        except TaggingError as exc:
            # Each error class carries its status: not found 404, permission 403, invalid 422...
            raise HTTPException(exc.http_status, detail=str(exc)) from None
        return FixesOut(
            fix_ids=outcome.fix_ids,
            unchanged=outcome.unchanged,
            sync=_push(state, outcome.fix_ids),
        )

    @app.get("/v1/fixes", tags=["fixes"])
    def get_fixes(
        caller: Authenticated,
        session: ReadSession,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> FixHistory:
        """The fixes to your images, newest first: yours and Tagdesk's analysts'."""
        rows = history_rows(
            session, HistoryFilter(advertiser_ids=(caller.id,)), limit=limit, offset=offset
        )
        return FixHistory(
            fixes=[
                # Users' names and sync errors are internal: only what and when is shown.
                FixRecord(
                    id=row.id,
                    created_at=row.created_at,
                    source=row.source,
                    field=row.field,
                    old_value=row.old_value,
                    new_value=row.new_value,
                    image_key=row.image_key,
                    image_url=row.image_url,
                    sync_status=row.sync_status,
                    synced_at=row.synced_at,
                )
                for row in rows
            ]
        )

    return app


def run(settings: Settings, host: str = "127.0.0.1", port: int = 8810) -> None:
    """Serve the advertiser API (``python -m tagging api``) until interrupted."""
    import uvicorn

    migrate(settings.database_url, create=settings.creates_database)
    uvicorn.run(create_advertiser_api(settings), host=host, port=port, log_level="warning")


# --- helpers -----------------------------------------------------------------------------------


def _resolve(session: Session, advertiser_id: int, fixes: Sequence[FixIn]) -> list[FixChange]:
    """The changes that ``fixes`` make to items of the advertiser's latest successful scrape.

    That scrape succeeded or completed with errors: a failed scrape (no items) or one still
    running is never the one fixes apply to.

    Raises:
        HTTPException: 422 naming every color fix when the advertiser's feed gives the colors
            (as the review page, which disables the color then); 404 naming every fix whose
            image is not in that scrape (another advertiser's image looks exactly like an
            unknown one), 422 naming every fix whose image could not be fetched by that scrape
            (it has no image_key to fix).
    """
    advertiser = session.get_one(Advertiser, advertiser_id)
    if advertiser.color_from_feed:
        colors = [
            {"index": index, "image_url": fix.image_url, "image_key": fix.image_key}
            for index, fix in enumerate(fixes)
            if fix.field == "color"
        ]
        if colors:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail={
                    "message": "your feed gives the colors of your images, so Tagdesk does not "
                    "classify them: correct a color in your feed, not here. Nothing was recorded",
                    "fixes": colors,
                },
            )
    scrape = latest_scrape(session, advertiser_id, successful=True)
    found: list[tuple[int, str | None, str | None]] = []
    if scrape is not None:
        urls = {f.image_url for f in fixes if f.image_url is not None}
        keys = {f.image_key for f in fixes if f.image_key is not None}
        matches = []
        if urls:
            matches.append(SitemapItem.image_url.in_(urls))
        if keys:
            matches.append(SitemapItem.image_key.in_(keys))
        found = [
            (item_id, url, key)
            for item_id, url, key in session.execute(
                select(SitemapItem.id, SitemapItem.image_url, SitemapItem.image_key)
                .where(SitemapItem.scrape_id == scrape.id, or_(*matches))
                .order_by(SitemapItem.position)
            )
        ]
    changes: list[FixChange] = []
    missing: list[dict[str, Any]] = []
    unfetched: list[dict[str, Any]] = []
    for index, fix in enumerate(fixes):
        candidates = [
            (item_id, key)
            for item_id, url, key in found
            if (fix.image_url is None or url == fix.image_url)
            and (fix.image_key is None or key == fix.image_key)
        ]
        named = {"index": index, "image_url": fix.image_url, "image_key": fix.image_key}
        if not candidates:
            missing.append(named)
            continue
        # One change per image_key: record_fixes updates every item of the scrape sharing it.
        by_key: dict[str, int] = {}
        for item_id, key in candidates:
            if key is not None:
                by_key.setdefault(key, item_id)
        if not by_key:
            unfetched.append(named)
            continue
        changes.extend(
            FixChange(item_id=item_id, field=fix.field, new_value=fix.value)
            for item_id in by_key.values()
        )
    if missing:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail={
                "message": "not among the images of your latest scrape: nothing was recorded",
                "fixes": missing,
            },
        )
    if unfetched:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail={
                "message": "your latest scrape could not fetch these images, so they cannot be "
                "fixed: nothing was recorded",
                "fixes": unfetched,
            },
        )
    return changes


def _push(state: ApiState, fix_ids: list[int]) -> Literal["synced", "pending"]:
    """Push ``fix_ids`` to the ML cache now; whatever fails stays pending for the sender."""
    if not fix_ids:
        return "synced"
    try:
        push_pending(state.sessions, state.ml, fix_ids=fix_ids)
        # Counted afterwards, because another sender may have pushed some of them meanwhile.
        with state.sessions() as session:
            pending = session.scalar(
                select(func.count())
                .select_from(ManualFix)
                .where(ManualFix.id.in_(fix_ids), ManualFix.sync_status == SyncStatus.PENDING)
            )
    except (TaggingError, SQLAlchemyError) as exc:
        # The fixes are committed already: the answer must not turn into an error.
        log.warning("pushing fixes %s to the ML cache failed: %s", fix_ids, exc)
        return "pending"
    return "pending" if pending else "synced"
