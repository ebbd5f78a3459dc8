"""The ML server's API, as Pydantic models shared by the server and its client."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from db.vocab import COLORS, IMAGE_TYPES

MAX_BATCH = 256

TypeSource = Literal["model", "manual"]
"""Who set a cached Image Type: the model, or a manual fix."""
ColorSource = Literal["model", "manual", "none"]
"""Who set a cached color; ``none`` when the color model was not asked or failed."""


class ClassifyRequest(BaseModel):
    """A batch of image URLs to classify."""

    urls: list[str] = Field(min_length=1, max_length=MAX_BATCH)
    color: bool = True
    """False when the scrape takes color from the feed: the color model is not called."""
    thumbnails: bool = True
    """Include a base64 JPEG thumbnail per classified image."""


class ImageResult(BaseModel):
    """What the ML system says about one URL. ``image_type`` is None when it could not say."""

    url: str
    image_key: str | None = None
    image_type: str | None = None
    color: str | None = None
    confidence: float | None = None
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
    error: str | None = None
    """A human-readable reason when the image could not be classified."""
    error_code: str | None = None


class ClassifyResponse(BaseModel):
    results: list[ImageResult]
    model_version: str
    color_model_version: str


class ImageRecord(BaseModel):
    """The cached classification of one image_key."""

    image_key: str
    url: str | None
    image_type: str
    color: str | None
    type_source: str
    color_source: str
    model_version: str | None
    color_model_version: str | None
    sha256: str | None
    phash: str | None
    width: int | None
    height: int | None
    applied_fix_ids: list[int] = Field(default_factory=list)


class ImageFix(BaseModel):
    """A manual fix pushed to the cache. ``fix_id`` makes the push idempotent."""

    image_type: str | None = None
    color: str | None = None
    clear_color: bool = False
    """Set the color to None (a Placeholder has no color)."""
    fix_id: int | None = None
    url: str | None = None
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
