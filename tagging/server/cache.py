"""The ML server's own store: classifications cached by image_key, and thumbnails.

It is separate from the app database on purpose: the ML server owns it, and several server
processes can share one (PostgreSQL) while the default is a SQLite file of its own. It is a cache,
created with ``create_all``; dropping it costs re-classification, never a manual fix (those live in
the app database's history and are pushed again).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from sqlalchemy import (
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from db.engine import make_session_factory, upsert
from db.models import utcnow
from db.vocab import DEFAULT_IMAGE_TYPE
from tagging.server.schemas import ColorSource, ImageFix, ImageRecord, TypeSource


class CacheBase(DeclarativeBase):
    __table__: ClassVar[Table]
    """Every model declares ``__tablename__``, so it maps a :class:`Table` (not any FromClause)."""


class CachedImage(CacheBase):
    __tablename__ = "cached_images"

    image_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str | None] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    content_length: Mapped[int | None] = mapped_column(Integer)
    image_type: Mapped[str] = mapped_column(String(32))
    color: Mapped[str | None] = mapped_column(String(32))
    confidence: Mapped[float | None] = mapped_column(Float)
    type_source: Mapped[str] = mapped_column(String(16), default="model")
    color_source: Mapped[str] = mapped_column(String(16), default="model")
    """``model``, ``manual``, or ``none`` when the color model was not asked."""
    model_version: Mapped[str | None] = mapped_column(String(64))
    color_model_version: Mapped[str | None] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64))
    phash: Mapped[str | None] = mapped_column(String(16))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    thumbnail: Mapped[bytes | None] = mapped_column(LargeBinary)
    type_fix_id: Mapped[int | None] = mapped_column(Integer)
    """Id of the manual fix that set ``image_type``: an older fix arriving late loses."""
    color_fix_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UrlVersion(CacheBase):
    """The last image_key seen at a URL, so an unchanged image costs one HEAD request."""

    __tablename__ = "url_versions"

    url: Mapped[str] = mapped_column(Text, primary_key=True)
    image_key: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AppliedFix(CacheBase):
    """Fix ids already applied, so that a retried push never applies a fix twice."""

    __tablename__ = "applied_fixes"

    fix_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    image_key: Mapped[str] = mapped_column(String(64), index=True)
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


MODEL_COLUMNS = [
    c.name
    for c in CachedImage.__table__.columns
    if c.name not in ("image_key", "created_at", "type_fix_id", "color_fix_id")
]


@dataclass(frozen=True)
class CacheEntry:
    """A detached copy of one cached row, safe to use across threads."""

    image_key: str
    url: str | None
    image_type: str
    color: str | None
    confidence: float | None
    type_source: TypeSource
    color_source: ColorSource
    model_version: str | None
    color_model_version: str | None
    etag: str | None
    last_modified: str | None
    content_length: int | None
    sha256: str | None
    phash: str | None
    width: int | None
    height: int | None
    thumbnail: bytes | None


class MLCache:
    """Reads and writes of the ML server's store; every method is its own short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        CacheBase.metadata.create_all(engine)
        self._sessions = make_session_factory(engine)

    def get_many(self, keys: Iterable[str]) -> dict[str, CacheEntry]:
        """The cached entries among ``keys``."""
        keys = list(set(keys))
        found: dict[str, CacheEntry] = {}
        with self._sessions() as session:
            for chunk in _chunks(keys, 500):
                for row in session.scalars(
                    select(CachedImage).where(CachedImage.image_key.in_(chunk))
                ):
                    found[row.image_key] = _entry(row)
        return found

    def keys_for_urls(self, urls: Iterable[str]) -> dict[str, str]:
        """The last image_key seen at each URL, for the URLs seen before."""
        urls = list(set(urls))
        known: dict[str, str] = {}
        with self._sessions() as session:
            for chunk in _chunks(urls, 500):
                rows = session.execute(
                    select(UrlVersion.url, UrlVersion.image_key).where(UrlVersion.url.in_(chunk))
                )
                known.update({url: key for url, key in rows})
        return known

    def store(self, entries: list[CacheEntry], url_keys: dict[str, str]) -> list[CacheEntry]:
        """Cache freshly classified images and remember which key each URL had.

        A manual value already in the cache wins over the model's: the fix was made for this
        image_key and re-classifying the same key must not undo it. Returns the entries as stored.
        """
        now = utcnow()
        with self._sessions.begin() as session:
            manual = {
                row.image_key: row
                for row in session.scalars(
                    select(CachedImage).where(
                        CachedImage.image_key.in_([e.image_key for e in entries]),
                        (CachedImage.type_source == "manual")
                        | (CachedImage.color_source == "manual"),
                    )
                )
            }
            rows = []
            for entry in entries:
                row = {**entry.__dict__, "created_at": now, "updated_at": now}
                previous = manual.get(entry.image_key)
                if previous is not None and previous.type_source == "manual":
                    row["image_type"], row["type_source"] = previous.image_type, "manual"
                if previous is not None and previous.color_source == "manual":
                    row["color"], row["color_source"] = previous.color, "manual"
                rows.append(row)
            stored = [
                CacheEntry(**{f: row[f] for f in CacheEntry.__dataclass_fields__}) for row in rows
            ]
            upsert(
                session,
                CachedImage.__table__,
                rows,
                key=["image_key"],
                update=MODEL_COLUMNS,
            )
            upsert(
                session,
                UrlVersion.__table__,
                [{"url": u, "image_key": k, "seen_at": now} for u, k in url_keys.items()],
                key=["url"],
                update=["image_key", "seen_at"],
            )
        return stored

    def touch_urls(self, url_keys: dict[str, str]) -> None:
        """Record the key seen at each URL (after a HEAD or a GET that hit the cache)."""
        if not url_keys:
            return
        with self._sessions.begin() as session:
            upsert(
                session,
                UrlVersion.__table__,
                [{"url": u, "image_key": k, "seen_at": utcnow()} for u, k in url_keys.items()],
                key=["url"],
                update=["image_key", "seen_at"],
            )

    def record(self, image_key: str) -> ImageRecord | None:
        """The cached classification of ``image_key``, or None."""
        with self._sessions() as session:
            row = session.get(CachedImage, image_key)
            if row is None:
                return None
            return _record(session, row)

    def thumbnail(self, image_key: str) -> bytes | None:
        with self._sessions() as session:
            return session.scalar(
                select(CachedImage.thumbnail).where(CachedImage.image_key == image_key)
            )

    def apply_fix(self, image_key: str, fix: ImageFix) -> tuple[bool, ImageRecord]:
        """Overwrite the cached type and/or color of ``image_key`` with a manual value.

        Returns ``(applied, record)``. Pushes are retried until acknowledged, so they may arrive
        twice or out of order: a ``fix_id`` seen before changes nothing, and a field keeps the value
        of the newest fix (highest id) that set it. A key not cached yet gets a row holding the fix,
        so the image is classified that way when it is first seen.
        """
        with self._sessions.begin() as session:
            if fix.fix_id is not None:
                new = upsert(
                    session,
                    AppliedFix.__table__,
                    [{"fix_id": fix.fix_id, "image_key": image_key, "applied_at": utcnow()}],
                    key=["fix_id"],
                    update=[],
                )
                if not new:
                    row = session.get(CachedImage, image_key)
                    if row is not None:
                        return False, _record(session, row)
            row = session.get(CachedImage, image_key, with_for_update=True)
            if row is None:
                row = CachedImage(
                    image_key=image_key,
                    url=fix.url,
                    image_type=fix.image_type or DEFAULT_IMAGE_TYPE,
                    color=None,
                    type_source="model",
                    color_source="none",
                    created_at=utcnow(),
                )
                session.add(row)
            order = fix.fix_id if fix.fix_id is not None else 0
            applied = False
            if fix.image_type is not None and order >= (row.type_fix_id or 0):
                row.image_type, row.type_source, row.type_fix_id = fix.image_type, "manual", order
                applied = True
            if (fix.color is not None or fix.clear_color) and order >= (row.color_fix_id or 0):
                row.color, row.color_source, row.color_fix_id = fix.color, "manual", order
                applied = True
            if fix.url and not row.url:
                row.url = fix.url
            row.updated_at = utcnow()
            session.flush()
            return applied, _record(session, row)

    def count(self) -> int:
        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(CachedImage)) or 0


def _entry(row: CachedImage) -> CacheEntry:
    return CacheEntry(**{f: getattr(row, f) for f in CacheEntry.__dataclass_fields__})


def _record(session: Session, row: CachedImage) -> ImageRecord:
    fix_ids = list(
        session.scalars(
            select(AppliedFix.fix_id)
            .where(AppliedFix.image_key == row.image_key)
            .order_by(AppliedFix.fix_id)
        )
    )
    return ImageRecord(
        image_key=row.image_key,
        url=row.url,
        image_type=row.image_type,
        color=row.color,
        type_source=row.type_source,
        color_source=row.color_source,
        model_version=row.model_version,
        color_model_version=row.color_model_version,
        sha256=row.sha256,
        phash=row.phash,
        width=row.width,
        height=row.height,
        applied_fix_ids=fix_ids,
    )


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
