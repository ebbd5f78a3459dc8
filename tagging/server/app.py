"""The ML server: a small FastAPI app around the classification pipeline (:mod:`.pipeline`).

Run it with ``python -m tagging serve``. Every endpoint but ``/health`` needs
``Authorization: Bearer $TAGGING_ML_TOKEN``. OpenAPI docs at ``/docs``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import torch
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Scope

from db.engine import make_engine
from tagging.config import Settings
from tagging.errors import ConfigError
from tagging.ingest.fetch import client_from_settings
from tagging.ml.color import ColorModel, color_model_from_settings
from tagging.ml.inference import TypeClassifier
from tagging.server.cache import MLCache
from tagging.server.limits import MIB, BodyLimit, bearer_token
from tagging.server.pipeline import ClassificationPipeline, PipelineConfig
from tagging.server.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    FixResult,
    Health,
    ImageFix,
    ImageRecord,
)
from tagging.server.stages import StageClock

ImageKey = Annotated[str, Path(pattern=r"^[0-9a-f]{16,64}$", description="An image_key")]

MAX_REQUEST_BYTES = 1 * MIB
"""The largest request body: a /classify batch (at most 256 URLs) is a few hundred KiB of JSON."""


@dataclass
class ServerState:
    """What the lifespan loads once and every request shares."""

    token: str
    pipeline: ClassificationPipeline
    cache: MLCache
    clock: StageClock
    """CPU per stage, on with ``TAGGING_ML_PROFILE_DIR`` (:mod:`.stages`)."""


bearer = HTTPBearer(auto_error=False)


def get_state(request: Request) -> ServerState:
    """What the lifespan loaded."""
    return request.app.state.tagging


def authorized(
    state: Annotated[ServerState, Depends(get_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ServerState:
    """The server state, once the bearer token is checked (in constant time)."""
    if credentials is None or not secrets.compare_digest(
        credentials.credentials.encode(), state.token.encode()
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return state


AnyState = Annotated[ServerState, Depends(get_state)]
State = Annotated[ServerState, Depends(authorized)]


def create_app(
    settings: Settings | None = None,
    *,
    classifier: TypeClassifier | None = None,
    color_model: ColorModel | None = None,
    pipeline_config: PipelineConfig | None = None,
) -> FastAPI:
    """Build the ML server app. The model, the cache and the clients load in the lifespan."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.ml_token:
            raise ConfigError("the ML server needs a token: set TAGGING_ML_TOKEN")
        # One intra-op thread: requests run inference concurrently from the threadpool, and on a
        # small machine extra torch threads fight the decoders for cores (measured 4× slower).
        torch.set_num_threads(1)
        client = client_from_settings(settings)
        engine = make_engine(settings.ml_cache_url, create=True)  # the server's own store
        cache = MLCache(engine)
        clock = StageClock.from_env()
        pipeline = ClassificationPipeline(
            client=client,
            classifier=classifier or TypeClassifier.load(settings.models_dir),
            color_model=color_model or color_model_from_settings(settings, client),
            cache=cache,
            config=pipeline_config,
            clock=clock,
        )
        app.state.tagging = ServerState(
            token=settings.ml_token, pipeline=pipeline, cache=cache, clock=clock
        )
        try:
            yield
        finally:
            pipeline.close()
            client.close()
            engine.dispose()

    app = FastAPI(
        title="Tagdesk ML server",
        summary="Image Type and Color classification, cached by image_key.",
        version="1.0",
        lifespan=lifespan,
    )

    async def token_ok(scope: Scope) -> bool:
        token = bearer_token(scope)
        return token is not None and secrets.compare_digest(
            token.encode(), (settings.ml_token or "").encode()
        )

    # The token is checked, and the size capped, before a byte of any body is read.
    app.add_middleware(BodyLimit, max_bytes=MAX_REQUEST_BYTES, authenticate=token_ok)

    @app.get("/health", tags=["ops"])
    def health(state: AnyState) -> Health:
        """Liveness and what is loaded. Needs no token."""
        return Health(
            status="ok",
            model_version=state.pipeline.classifier.version,
            color_model_version=state.pipeline.color_model.version,
            cache_size=state.cache.count(),
            cache_generation=state.cache.generation,
        )

    @app.post("/classify", tags=["classification"], response_model=ClassifyResponse)
    def classify(body: ClassifyRequest, state: State) -> Response:
        """Classify a batch of image URLs: one result per URL, errors included, cache first.

        ``image_type`` and ``color`` are the values for ``advertiser`` (its overrides, else the
        team's fixes, else the model's answer); ``ml_image_type`` and ``ml_color`` the model's.
        An image the CDN's caching headers call fresh costs no request to the CDN; no thumbnail
        is sent for a key listed in ``known_keys``.
        """
        clock = state.clock
        results = state.pipeline.classify(
            body.urls, color=body.color, thumbnails=body.thumbnails, known_keys=body.known_keys
        )
        with clock.stage("fixes laid over (cache read)"):
            results = state.cache.resolve(results, body.advertiser)
        with clock.stage("response JSON"):
            # Serialized here, once, by pydantic's core: returned as a model, FastAPI would
            # validate the whole response again before serializing it (a 64-image answer is a
            # few hundred KiB of JSON, thumbnails included).
            content = ClassifyResponse(
                results=results,
                model_version=state.pipeline.classifier.version,
                color_model_version=state.pipeline.color_model.version,
            ).model_dump_json()
        clock.dump()
        return Response(content, media_type="application/json")

    @app.get("/images/{image_key}", tags=["cache"])
    def get_image(
        image_key: ImageKey,
        state: State,
        advertiser: Annotated[str | None, Query(max_length=200)] = None,
    ) -> ImageRecord:
        """The cached classification of one image_key, with the team's fixes (and ``advertiser``'s
        overrides) laid over the model's answer."""
        record = state.cache.record(image_key, advertiser)
        if record is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{image_key} is not cached")
        return record

    @app.put("/images/{image_key}", tags=["cache"])
    def put_image(image_key: ImageKey, fix: ImageFix, state: State) -> FixResult:
        """Record a manual fix: the team's, or with ``advertiser`` that advertiser's override.

        Idempotent per ``fix_id``; the model's answer is kept apart and never overwritten.
        """
        if fix.image_type is None and fix.color is None and not fix.clear_color:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail="nothing to change: give image_type or color",
            )
        applied, record = state.cache.apply_fix(image_key, fix)
        return FixResult(image_key=image_key, applied=applied, record=record)

    @app.get(
        "/images/{image_key}/thumbnail",
        tags=["cache"],
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    def get_thumbnail(image_key: ImageKey, state: State) -> Response:
        """The small JPEG made when the image was first decoded."""
        jpeg = state.cache.thumbnail(image_key)
        if jpeg is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no thumbnail for {image_key}")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    return app
