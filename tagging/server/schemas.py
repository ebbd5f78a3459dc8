"""The ML server's API, as Pydantic models shared by the server and its client."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from db.vocab import COLORS, IMAGE_TYPES

MAX_BATCH = 256
MAX_KNOWN_KEYS = 4 * MAX_BATCH
"""The most ``known_keys`` one request may list (a few versions per URL of a full batch)."""

ImageKeyText = Annotated[str, Field(min_length=1, max_length=64)]

TypeSource = Literal["model", "fix", "override"]
"""Where an Image Type comes from: the model, a team fix, or the asking advertiser's override."""
ColorSource = Literal["model", "fix", "override", "none"]
"""Where a color comes from; ``none`` when the color model was not asked or failed."""


class ClassifyRequest(BaseModel):
    """A batch of image URLs to classify."""

    urls: list[str] = Field(min_length=1, max_length=MAX_BATCH)
    color: bool = True
    """False when the scrape takes color from the feed: the color model is not called."""
    thumbnails: bool = True
    """Include a base64 JPEG thumbnail per classified image."""
    advertiser: str | None = Field(default=None, max_length=200)
    """Who is asking: its own overrides apply to its answer (and no one else's)."""
    known_keys: list[ImageKeyText] = Field(default_factory=list, max_length=MAX_KNOWN_KEYS)
    """image_keys the asker already has a thumbnail for: their results carry none (a re-scrape
    then moves no thumbnail bytes for images that did not change)."""


class ImageResult(BaseModel):
    """What the ML system says about one URL. ``image_type`` is None when it could not say.

    ``image_type`` and ``color`` are the values for the asking advertiser (its override, else the
    team's fix, else the prediction); ``ml_image_type`` and ``ml_color`` are always the model's.
    """

    url: str
    image_key: str | None = None
    image_type: str | None = None
    color: str | None = None
    ml_image_type: str | None = None
    ml_color: str | None = None
    confidence: float | None = None
    """The model's probability of ``ml_image_type``; fixes and overrides leave it as it is."""
    probabilities: dict[str, float] | None = None
    """The model's probability of every Image Type class (``ml_image_type`` is the most
    probable); like ``confidence``, the prediction's, whatever fixes say. None when the image
    could not be classified, or was cached before the server kept them."""
    cached: bool = False
    model_version: str | None = None
    color_model_version: str | None = None
    type_source: TypeSource | None = None
    color_source: ColorSource | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_length: int | None = None
    sha256: str | None = None
    phash: str | None = None
    width: int | None = None
    height: int | None = None
    thumbnail_b64: str | None = None
    """A small JPEG, unless thumbnails were not asked for or the asker named the key as known."""
    fresh_until: datetime | None = None
    """Until when the image counts as unchanged by the CDN's caching headers (``Cache-Control:
    max-age``, ``Expires``): the ML server makes no request for it before then, and a re-scrape
    of an unchanged sitemap copies its item without asking. None: check it every time."""
    error: str | None = None
    """A human-readable reason when the image could not be classified."""
    error_code: str | None = None


class ClassifyResponse(BaseModel):
    results: list[ImageResult]
    model_version: str
    color_model_version: str


class ImageRecord(BaseModel):
    """The cached classification of one image_key: the prediction, and the values with fixes."""

    image_key: str
    url: str | None
    image_type: str
    color: str | None
    ml_image_type: str | None = None
    """The model's answer; None when the image was never classified (only fixed)."""
    ml_color: str | None = None
    type_source: TypeSource
    color_source: ColorSource
    model_version: str | None
    color_model_version: str | None
    sha256: str | None
    phash: str | None
    width: int | None
    height: int | None
    applied_fix_ids: list[str] = Field(default_factory=list)


class ImageFix(BaseModel):
    """A manual fix pushed to the cache. ``fix_id`` makes the push idempotent.

    Without ``advertiser`` it is a team fix, for everyone; with it, that advertiser's override.
    Pushes are retried, so they may arrive twice or out of order: a field keeps the value of the
    newest fix (``fixed_at``, then ``fix_id``) that set it.
    """

    image_type: str | None = None
    color: str | None = None
    clear_color: bool = False
    """Set the color to None (a Placeholder has no color)."""
    fix_id: str | None = Field(default=None, min_length=1, max_length=64)
    """The fix's globally unique id (the app's ``manual_fixes.uid``)."""
    fixed_at: datetime | None = None
    """When the fix was made; orders fixes that arrive out of order."""
    advertiser: str | None = Field(default=None, min_length=1, max_length=200)
    url: str | None = Field(default=None, max_length=4096)
    """The image URL, kept when the key is not cached yet."""

    @field_validator("image_type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is not None and value not in IMAGE_TYPES:
            raise ValueError(f"image_type must be one of {', '.join(IMAGE_TYPES)}")
        return value

    @field_validator("color")
    @classmethod
    def _known_color(cls, value: str | None) -> str | None:
        if value is not None and value not in COLORS:
            raise ValueError(f"color must be one of {', '.join(COLORS)}")
        return value


class FixResult(BaseModel):
    image_key: str
    applied: bool
    """False when this fix_id had already been applied: nothing changed the second time."""
    record: ImageRecord


class Health(BaseModel):
    status: Literal["ok"]
    model_version: str
    color_model_version: str
    cache_size: int
    cache_generation: str
    """Changes whenever the cache store starts empty: the app then pushes every fix again."""
