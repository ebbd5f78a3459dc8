"""The ML server's own store: classifications cached by image_key, and thumbnails.

It is separate from the app database on purpose: the ML server owns it, and several server
processes can share one (PostgreSQL) while the default is a SQLite file of its own. It is a cache,
created with ``create_all``; dropping it costs re-classification, never a manual fix (those live in
the app database's history and are pushed again). A new nullable column is added to an existing
store in place (:meth:`MLCache._open`), so that it keeps its entries; any other change of the tables
bumps :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import fcntl
import hashlib
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import ClassVar, Literal, cast

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from db.engine import create_private_file, make_session_factory, sqlite_file, upsert
from db.models import as_utc, utcnow
from db.vocab import DEFAULT_IMAGE_TYPE, PLACEHOLDER
from tagging.server.schemas import ColorSource, ImageFix, ImageRecord, ImageResult, TypeSource


class CacheBase(DeclarativeBase):
    __table__: ClassVar[Table]
    """Every model declares ``__tablename__``, so it maps a :class:`Table` (not any FromClause)."""


SCHEMA_VERSION = "2"
"""Bumped when the store's tables change in a way other than a new nullable column (which
:meth:`MLCache._open` adds in place): a store of another version is emptied and rebuilt (a new
generation, so that the app pushes its fixes again)."""


class CachedImage(CacheBase):
    """The model's answer for one image_key: a prediction, never overwritten by a fix."""

    __tablename__ = "cached_images"

    image_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str | None] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    content_length: Mapped[int | None] = mapped_column(Integer)
    image_type: Mapped[str] = mapped_column(String(32))
    color: Mapped[str | None] = mapped_column(String(32))
    confidence: Mapped[float | None] = mapped_column(Float)
    probabilities: Mapped[dict[str, float] | None] = mapped_column(JSON(none_as_null=True))
    """Every Image Type class's probability; None in entries cached before they were kept."""
    type_source: Mapped[str] = mapped_column(String(16), default="model")
    color_source: Mapped[str] = mapped_column(String(16), default="model")
    """``model``, or ``none`` when the color model was not asked."""
    model_version: Mapped[str | None] = mapped_column(String(64))
    color_model_version: Mapped[str | None] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64))
    phash: Mapped[str | None] = mapped_column(String(16))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    thumbnail: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LabelFix(CacheBase):
    """The newest manual value of one field of one image_key, for the team or one advertiser."""

    __tablename__ = "label_fixes"

    image_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    field: Mapped[str] = mapped_column(String(16), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    """``""`` for a team fix (everyone), else the advertiser whose override it is."""
    value: Mapped[str | None] = mapped_column(String(32))
    fix_id: Mapped[str] = mapped_column(String(64))
    fixed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UrlVersion(CacheBase):
    """The last image_key seen at a URL, and what HTTP caching says about asking for it again.

    While ``fresh_until`` is ahead, the URL's image is taken as unchanged without a request; once
    it is past, a conditional GET with the validators asks the CDN (a 304 costs no body), or a
    HEAD when the CDN gave no validators. Rows written before these columns existed have them
    NULL: stale, no validators, i.e. a HEAD, as before.
    """

    __tablename__ = "url_versions"

    url: Mapped[str] = mapped_column(Text, primary_key=True)
    image_key: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    fetched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When the CDN last answered for this URL (200, 304 or HEAD)."""
    max_age: Mapped[int | None] = mapped_column(Integer)
    """The lifetime that answer gave, in seconds (None: stale at once); a 304 that states none
    keeps it (RFC 9111 4.3.4)."""
    fresh_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """``fetched_at + max_age``: until then no request is made."""
    etag: Mapped[str | None] = mapped_column(Text)
    """Validators for the conditional GET (None under ``no-store``)."""
    last_modified: Mapped[str | None] = mapped_column(Text)


class AppliedFix(CacheBase):
    """Fix ids already applied, so that a retried push never applies a fix twice."""

    __tablename__ = "applied_fixes"

    fix_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    image_key: Mapped[str] = mapped_column(String(64), index=True)
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CacheMeta(CacheBase):
    """The store's schema version and generation."""

    __tablename__ = "cache_meta"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(64))


TEAM = ""
"""The ``owner`` of a team fix."""

MODEL_COLUMNS = [
    c.name for c in CachedImage.__table__.columns if c.name not in ("image_key", "created_at")
]


@dataclass(frozen=True)
class CacheEntry:
    """A detached copy of one cached row, safe to use across threads."""

    image_key: str
    url: str | None
    image_type: str
    color: str | None
    confidence: float | None
    probabilities: dict[str, float] | None
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


@dataclass(frozen=True)
class UrlState:
    """What the store knows of one URL: its last image_key and how fresh that answer is."""

    image_key: str
    fetched_at: datetime | None = None
    max_age: int | None = None
    fresh_until: datetime | None = None
    etag: str | None = None
    last_modified: str | None = None

    def is_fresh(self, now: datetime) -> bool:
        """Whether the image may be taken as unchanged at ``now`` without asking the CDN."""
        until = as_utc(self.fresh_until)
        return until is not None and now < until

    def row(self, url: str, now: datetime) -> dict[str, object]:
        return {
            "url": url,
            "image_key": self.image_key,
            "seen_at": now,
            "fetched_at": self.fetched_at,
            "max_age": self.max_age,
            "fresh_until": self.fresh_until,
            "etag": self.etag,
            "last_modified": self.last_modified,
        }


_URL_STATE_COLUMNS = [
    "image_key",
    "seen_at",
    "fetched_at",
    "max_age",
    "fresh_until",
    "etag",
    "last_modified",
]
"""The :class:`UrlVersion` columns a new answer for a URL overwrites."""


class MLCache:
    """Reads and writes of the ML server's store; every method is its own short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = make_session_factory(engine)
        self.generation = self._open()

    def _open(self) -> str:
        """Create the tables (emptying a store of another schema version); the generation id.

        A store of this version that lacks a nullable column added since is given it in place:
        its entries stay (with NULL there), and so does its generation. All of it runs under
        :func:`store_lock`, so that any number of processes may open one store at once (uvicorn's
        workers, replicas, ``serve`` commands, tests): a rebuild is never undone by another
        opener's, and every opener reads the same generation.
        """
        with store_lock(self.engine):
            return self._open_locked()

    def _open_locked(self) -> str:
        CacheBase.metadata.create_all(self.engine)
        with self._sessions.begin() as session:
            version = session.get(CacheMeta, "schema")
            generation = session.get(CacheMeta, "generation")
            current = (
                version is not None and version.value == SCHEMA_VERSION and generation is not None
            )
            generation_id = generation.value if generation is not None else None
        if current and generation_id is not None and self._add_new_columns():
            return generation_id
        # A new store, or one written by another version: start empty, under a new generation.
        CacheBase.metadata.drop_all(self.engine)
        CacheBase.metadata.create_all(self.engine)
        with self._sessions.begin() as session:
            upsert(
                session,
                CacheMeta.__table__,
                [
                    {"key": "schema", "value": SCHEMA_VERSION},
                    {"key": "generation", "value": uuid.uuid4().hex},
                ],
                key=["key"],
                update=[],
            )
        with self._sessions() as session:
            return session.get_one(CacheMeta, "generation").value

    def _add_new_columns(self) -> bool:
        """Add the models' nullable columns that the store's tables lack; False if another is
        missing (the store must then be rebuilt).

        Several server processes may open one store at once: an ALTER that fails because another
        process added the column first is fine.
        """
        missing = self._missing_columns()
        if any(not column.nullable for column in missing):
            return False
        dialect = self.engine.dialect
        quote = dialect.identifier_preparer
        for column in missing:
            statement = (
                f"ALTER TABLE {quote.format_table(column.table)} "
                f"ADD COLUMN {quote.format_column(column)} {column.type.compile(dialect=dialect)}"
            )
            try:
                with self.engine.begin() as connection:
                    connection.exec_driver_sql(statement)
            except DBAPIError:
                if any(other is column for other in self._missing_columns()):
                    raise
        return True

    def _missing_columns(self) -> list[Column]:
        """The models' columns that the store's tables lack."""
        inspector = inspect(self.engine)
        missing = []
        for table in CacheBase.metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            missing += [column for column in table.columns if column.name not in present]
        return missing

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
        return {url: state.image_key for url, state in self.url_states(urls).items()}

    def url_states(self, urls: Iterable[str]) -> dict[str, UrlState]:
        """The last image_key seen at each URL and its freshness, for the URLs seen before."""
        urls = list(set(urls))
        known: dict[str, UrlState] = {}
        columns = [getattr(UrlVersion, name) for name in _URL_STATE_COLUMNS if name != "seen_at"]
        with self._sessions() as session:
            for chunk in _chunks(urls, 500):
                rows = session.execute(
                    select(UrlVersion.url, *columns).where(UrlVersion.url.in_(chunk))
                )
                known.update({row[0]: UrlState(*row[1:]) for row in rows})
        return known

    def store(
        self, entries: list[CacheEntry], url_keys: Mapping[str, str | UrlState]
    ) -> list[CacheEntry]:
        """Cache freshly classified images and remember which key each URL had.

        Only predictions are stored here: manual fixes live apart (:class:`LabelFix`) and are laid
        over the prediction when an answer is given (:meth:`resolve`). Returns the entries.

        Args:
            url_keys: per URL its key, or its key with the answer's freshness.
        """
        now = utcnow()
        with self._sessions.begin() as session:
            rows = [{**entry.__dict__, "created_at": now, "updated_at": now} for entry in entries]
            upsert(session, CachedImage.__table__, rows, key=["image_key"], update=MODEL_COLUMNS)
            self._remember_urls(session, url_keys, now)
        return list(entries)

    def touch_urls(self, url_keys: Mapping[str, str | UrlState]) -> None:
        """Record the key seen at each URL (after a HEAD, a 304 or a GET that hit the cache),
        with the freshness of that answer when given."""
        if not url_keys:
            return
        with self._sessions.begin() as session:
            self._remember_urls(session, url_keys, utcnow())

    @staticmethod
    def _remember_urls(
        session: Session, url_keys: Mapping[str, str | UrlState], now: datetime
    ) -> None:
        states = {
            url: state if isinstance(state, UrlState) else UrlState(state)
            for url, state in url_keys.items()
        }
        upsert(
            session,
            UrlVersion.__table__,
            [state.row(url, now) for url, state in states.items()],
            key=["url"],
            update=_URL_STATE_COLUMNS,
        )

    def record(self, image_key: str, advertiser: str | None = None) -> ImageRecord | None:
        """What the cache knows of ``image_key`` (with ``advertiser``'s overrides), or None."""
        with self._sessions() as session:
            row = session.get(CachedImage, image_key)
            fixes = _fixes(session, [image_key], advertiser).get(image_key, {})
            if row is None and not fixes:
                return None
            return _record(session, image_key, row, fixes)

    def thumbnail(self, image_key: str) -> bytes | None:
        with self._sessions() as session:
            return session.scalar(
                select(CachedImage.thumbnail).where(CachedImage.image_key == image_key)
            )

    def apply_fix(self, image_key: str, fix: ImageFix) -> tuple[bool, ImageRecord]:
        """Record a manual value of ``image_key``: a team fix, or ``fix.advertiser``'s override.

        Returns ``(applied, record)``. Pushes are retried until acknowledged, so they may arrive
        twice or out of order: a ``fix_id`` seen before changes nothing, and a field keeps the value
        of the newest fix (``fixed_at``, then ``fix_id``) that set it. The prediction is never
        touched; a key not classified yet keeps the fix for when it is.
        """
        owner = fix.advertiser or TEAM
        fixed_at = as_utc(fix.fixed_at) or utcnow()
        order = (fixed_at, fix.fix_id or "")
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
                    return False, self._record_in(session, image_key, fix.advertiser)
            values: dict[str, str | None] = {}
            if fix.image_type is not None:
                values["image_type"] = fix.image_type
            if fix.color is not None or fix.clear_color:
                values["color"] = fix.color
            applied = False
            for field, value in values.items():
                current = session.get(LabelFix, (image_key, field, owner), with_for_update=True)
                if current is None:
                    session.add(
                        LabelFix(
                            image_key=image_key,
                            field=field,
                            owner=owner,
                            value=value,
                            fix_id=fix.fix_id or "",
                            fixed_at=fixed_at,
                        )
                    )
                    applied = True
                elif order >= (as_utc(current.fixed_at) or fixed_at, current.fix_id):
                    current.value, current.fix_id, current.fixed_at = (
                        value,
                        fix.fix_id or "",
                        fixed_at,
                    )
                    applied = True
            if fix.url:
                row = session.get(CachedImage, image_key)
                if row is not None and not row.url:
                    row.url = fix.url
            session.flush()
            return applied, self._record_in(session, image_key, fix.advertiser)

    def _record_in(self, session: Session, image_key: str, advertiser: str | None) -> ImageRecord:
        row = session.get(CachedImage, image_key)
        return _record(
            session, image_key, row, _fixes(session, [image_key], advertiser).get(image_key, {})
        )

    def resolve(self, results: list[ImageResult], advertiser: str | None) -> list[ImageResult]:
        """Lay the team's fixes and ``advertiser``'s overrides over the model's answers.

        ``ml_image_type`` / ``ml_color`` keep the prediction; ``image_type`` / ``color`` become the
        value for this advertiser (override, else team fix, else prediction). A Placeholder has no
        color unless the advertiser's own override gives one.
        """
        keys = [r.image_key for r in results if r.image_key and r.error is None]
        if not keys:
            return [
                r.model_copy(update={"ml_image_type": r.image_type, "ml_color": r.color})
                for r in results
            ]
        with self._sessions() as session:
            fixes = _fixes(session, keys, advertiser)
        resolved = []
        for result in results:
            update: dict[str, object] = {
                "ml_image_type": result.image_type,
                "ml_color": result.color,
            }
            if result.image_key and result.error is None:
                found = fixes.get(result.image_key, {})
                labels = _laid_over(
                    Labels(
                        result.image_type, result.color, result.type_source, result.color_source
                    ),
                    found,
                )
                update.update(asdict(labels))
            resolved.append(result.model_copy(update=update))
        return resolved

    def count(self) -> int:
        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(CachedImage)) or 0


STORE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"tagdesk ml cache store").digest()[:8], "big") >> 1
"""The PostgreSQL advisory lock every opener of a store takes (a positive 63-bit key)."""


@contextmanager
def store_lock(engine: Engine) -> Iterator[None]:
    """Hold the lock that every opener of the store behind ``engine`` takes.

    Creating a store is the one step that must not run twice at once: a store of another schema
    version is emptied and rebuilt, which a second process doing the same would undo (and on
    PostgreSQL two ``CREATE TABLE`` at once fail). Opening a current store under the lock costs
    a few milliseconds, once per process.

    PostgreSQL: a session advisory lock (released when its connection closes, also when the
    process dies). SQLite: ``flock`` on ``<file>.lock`` beside the file (a SQLite store is one
    machine's; the lock is released when the process dies). Anything else (in-memory SQLite):
    no lock.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": STORE_LOCK_KEY})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": STORE_LOCK_KEY})
                connection.commit()
        return
    path = sqlite_file(engine.url.render_as_string(hide_password=False))
    if path is None:
        yield
        return
    lock = path.with_name(path.name + ".lock")
    create_private_file(lock)
    with lock.open("rb") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _entry(row: CachedImage) -> CacheEntry:
    return CacheEntry(**{f: getattr(row, f) for f in CacheEntry.__dataclass_fields__})


Found = dict[str, tuple[str | None, Literal["fix", "override"]]]
"""Per field: the manual value and its source (``fix`` or ``override``)."""


def _fixes(session: Session, keys: list[str], advertiser: str | None) -> dict[str, Found]:
    """The manual values of ``keys`` for ``advertiser`` (its overrides beat team fixes)."""
    owners = [TEAM] if not advertiser else [TEAM, advertiser]
    found: dict[str, Found] = {}
    for chunk in _chunks(sorted(set(keys)), 500):
        rows = session.scalars(
            select(LabelFix).where(LabelFix.image_key.in_(chunk), LabelFix.owner.in_(owners))
        )
        for row in sorted(rows, key=lambda r: r.owner != TEAM):  # team first, overrides last
            source: Literal["fix", "override"] = "fix" if row.owner == TEAM else "override"
            found.setdefault(row.image_key, {})[row.field] = (row.value, source)
    return found


@dataclass(frozen=True)
class Labels:
    image_type: str | None
    color: str | None
    type_source: TypeSource | None
    color_source: ColorSource | None


def _laid_over(prediction: Labels, found: Found) -> Labels:
    """The prediction with the manual values over it (and no color on a Placeholder)."""
    image_type, type_source = found.get(
        "image_type", (prediction.image_type, prediction.type_source)
    )
    color, color_source = found.get("color", (prediction.color, prediction.color_source))
    if image_type == PLACEHOLDER and color_source != "override" and color is not None:
        color, color_source = None, type_source
    return Labels(image_type, color, type_source, color_source)


def _record(session: Session, image_key: str, row: CachedImage | None, found: Found) -> ImageRecord:
    fix_ids = list(
        session.scalars(
            select(AppliedFix.fix_id)
            .where(AppliedFix.image_key == image_key)
            .order_by(AppliedFix.applied_at, AppliedFix.fix_id)
        )
    )
    ml_type = row.image_type if row is not None else None
    ml_color = row.color if row is not None else None
    prediction = Labels(
        ml_type,
        ml_color,
        cast(TypeSource, row.type_source) if row is not None else "model",
        cast(ColorSource, row.color_source) if row is not None else "none",
    )
    values = _laid_over(prediction, found)
    return ImageRecord(
        image_key=image_key,
        url=row.url if row is not None else None,
        image_type=values.image_type or DEFAULT_IMAGE_TYPE,
        color=values.color,
        ml_image_type=ml_type,
        ml_color=ml_color,
        type_source=values.type_source or "model",
        color_source=values.color_source or "none",
        model_version=row.model_version if row is not None else None,
        color_model_version=row.color_model_version if row is not None else None,
        sha256=row.sha256 if row is not None else None,
        phash=row.phash if row is not None else None,
        width=row.width if row is not None else None,
        height=row.height if row is not None else None,
        applied_fix_ids=fix_ids,
    )


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
