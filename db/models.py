"""The app database's tables, as typed SQLAlchemy 2.0 models.

Changing a model means writing an Alembic migration in ``db/migrations/versions``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the models use."""
    return datetime.now(UTC)


def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` as an aware UTC datetime: SQLite hands back naive ones, written in UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    __table__: ClassVar[Table]
    """Every model declares ``__tablename__``, so it maps a :class:`Table` (not any FromClause)."""


class ScrapeStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    """Finished, but some items have an image error or an ML failure."""
    FAILED = "failed"
    """The sitemap itself could not be read: no items."""


class ItemStatus(enum.StrEnum):
    OK = "ok"
    ML_FAILURE = "ml_failure"
    """The ML server could not be reached, timed out or answered garbage: defaults applied."""
    ERROR = "error"
    """The image itself failed (fetch refused, 404, corrupt...): defaults applied."""


class FixSource(enum.StrEnum):
    ANALYST = "analyst"
    ADVERTISER = "advertiser"
    CARRY_OVER = "carry_over"
    IMPORT = "import"
    """Recorded from a CSV file (``python -m tagging fixes import``)."""


class FixScope(enum.StrEnum):
    """Whom a manual fix applies to: the label model's two manual layers."""

    TEAM = "team"
    """An analyst's decision: it applies to every advertiser showing the image."""
    ADVERTISER = "advertiser"
    """An advertiser's override: it applies to that advertiser only."""


class LabelSource(enum.StrEnum):
    """Where an item's current value comes from (``report --json``, the review page)."""

    ML = "ml"
    FIX = "fix"
    """A team fix."""
    OVERRIDE = "override"
    """The advertiser's own override."""
    FEED = "feed"
    """The advertiser's feed gives colors."""
    DEFAULT = "default"
    """The seed's default: the ML system returned no value."""


class SyncStatus(enum.StrEnum):
    PENDING = "pending"
    """Written to the history; not acknowledged by the ML server yet (the sender retries)."""
    SYNCED = "synced"


class Role(enum.StrEnum):
    ANALYST = "analyst"
    """Reviews sitemaps, fixes images, relaunches scrapes."""
    DEVELOPER = "developer"
    """All an analyst may, plus the dataset and model pages."""
    MANAGER = "manager"
    """Reads pages and charts; writes nothing."""
    ADMIN = "admin"
    """Manages accounts and advertiser tokens, and may do everything else."""


class Advertiser(Base):
    __tablename__ = "advertisers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    sitemap_url: Mapped[str] = mapped_column(Text)
    color_from_feed: Mapped[bool] = mapped_column(Boolean, default=False)
    """Scrape config: the feed gives each vehicle's color, so the ML color is not applied."""
    auto_carry_fixes: Mapped[bool] = mapped_column(Boolean, default=False)
    """After each scrape, carry manual fixes over to images that came back under a new image_key."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    scrapes: Mapped[list[Scrape]] = relationship(back_populates="advertiser")
    tokens: Mapped[list[AdvertiserToken]] = relationship(back_populates="advertiser")


class Scrape(Base):
    __tablename__ = "scrapes"

    id: Mapped[int] = mapped_column(primary_key=True)
    advertiser_id: Mapped[int] = mapped_column(ForeignKey("advertisers.id", ondelete="CASCADE"))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=utcnow)
    """Set at the start and after every stored batch: a running scrape whose heartbeat is older
    than ``db.scrapes.LEASE`` was abandoned (its process died) (migration 0005)."""
    status: Mapped[str] = mapped_column(String(32), default=ScrapeStatus.RUNNING)
    trigger: Mapped[str] = mapped_column(String(32), default="cli")
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    cached_count: Mapped[int] = mapped_column(Integer, default=0)
    classified_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    """Items with an image error or an ML failure."""
    ml_failure_count: Mapped[int] = mapped_column(Integer, default=0)
    expected_items: Mapped[int | None]
    """How many items the sitemap listed, known once it is read: the progress bar's total."""
    requested_by: Mapped[str | None] = mapped_column(String(200))
    seconds: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)
    """Why the whole scrape failed, or the sitemap problems that did not stop it."""
    sitemap_state: Mapped[dict | None] = mapped_column(JSON(none_as_null=True))
    """What the next scrape needs to tell that the sitemap did not change (migration 0009):
    ``documents`` (each one's URL, ETag, Last-Modified, SHA-256), the sitemap ``problems``,
    ``color_from_feed``; None when the sitemap could not be read whole."""
    chunk_total: Mapped[int | None]
    """A scrape split into chunks (migration 0010): how many, known once the coordinator has read
    the whole sitemap; None while it reads, and for a scrape done in one process."""
    fan_in_by: Mapped[str | None] = mapped_column(String(200))
    """Who finishes a chunked scrape once its last chunk is done (the election of
    ``db.chunks.elect_finisher``), until ``fan_in_until``; then anyone may take over."""
    fan_in_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    advertiser: Mapped[Advertiser] = relationship(back_populates="scrapes")

    __table_args__ = (Index("ix_scrapes_advertiser_started", "advertiser_id", "started_at"),)


class SitemapItem(Base):
    """One image of one vehicle page, as one scrape saw it."""

    __tablename__ = "sitemap_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    scrape_id: Mapped[int] = mapped_column(ForeignKey("scrapes.id", ondelete="CASCADE"))
    advertiser_id: Mapped[int] = mapped_column(ForeignKey("advertisers.id", ondelete="CASCADE"))
    position: Mapped[int]
    page_url: Mapped[str] = mapped_column(Text)
    image_url: Mapped[str] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    image_key: Mapped[str | None] = mapped_column(String(64), index=True)
    ml_image_type: Mapped[str] = mapped_column(String(32))
    """What the ML system said, or "Placeholder" when it said nothing."""
    ml_color: Mapped[str | None] = mapped_column(String(32))
    ml_confidence: Mapped[float | None]
    """The model's probability of ``ml_image_type``: the review page sorts by it, lowest first,
    to show the model's likeliest mistakes first. None when the ML system said nothing."""
    ml_probabilities: Mapped[dict[str, float] | None] = mapped_column(JSON(none_as_null=True))
    """The model's probability of every Image Type class (migration 0008); None when the ML
    system said nothing, or answered from a cache entry older than these."""
    feed_color: Mapped[str | None] = mapped_column(String(64))
    image_type: Mapped[str] = mapped_column(String(32))
    """The current value: the ML value until a manual fix changes it."""
    color: Mapped[str | None] = mapped_column(String(32))
    """The current value: feed color when the scrape config says so, else ML, then manual fixes."""
    image_type_source: Mapped[str] = mapped_column(String(16), default=LabelSource.ML)
    """Where ``image_type`` comes from (:class:`LabelSource`): override, team fix, ML, default."""
    color_source: Mapped[str] = mapped_column(String(16), default=LabelSource.ML)
    status: Mapped[str] = mapped_column(String(32), default=ItemStatus.OK)
    error: Mapped[str | None] = mapped_column(Text)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    model_version: Mapped[str | None] = mapped_column(String(64))
    color_model_version: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        # Unique (migration 0010): an item is stored once per scrape, whichever worker stores it.
        Index("ix_sitemap_items_scrape_position", "scrape_id", "position", unique=True),
        Index("ix_sitemap_items_scrape_type", "scrape_id", "image_type"),
        # The review page sorted by confidence: a page is read off the index, not sorted.
        Index("ix_sitemap_items_scrape_confidence", "scrape_id", "ml_confidence", "position"),
        Index("ix_sitemap_items_image_url", "image_url"),
        # Covers "the ML values and model versions of the fixed items" (db.charts): an index-only
        # lookup per fix, where PostgreSQL would otherwise hash the whole table.
        Index(
            "ix_sitemap_items_id_ml",
            "id",
            "model_version",
            "ml_image_type",
            "color_model_version",
            "ml_color",
        ),
    )


class ChunkState(enum.StrEnum):
    PENDING = "pending"
    """Written, waiting for a worker (its task is queued)."""
    RUNNING = "running"
    """Claimed by ``claimed_by`` until ``lease_until`` (pushed forward while it works)."""
    DONE = "done"


class ScrapeChunk(Base):
    """A slice of one scrape's sitemap that one queue worker classifies and stores (migration
    0010): the coordinator writes them as it reads the sitemap, workers claim them."""

    __tablename__ = "scrape_chunks"

    id: Mapped[int] = mapped_column(primary_key=True)
    scrape_id: Mapped[int] = mapped_column(ForeignKey("scrapes.id", ondelete="CASCADE"))
    number: Mapped[int]
    """0-based, in sitemap order."""
    items: Mapped[list[dict[str, object]]] = mapped_column(JSON)
    """The parsed sitemap items: ``page_url``, ``image_url``, ``position``, ``title``,
    ``feed_color``."""
    item_count: Mapped[int]
    state: Mapped[str] = mapped_column(String(16), default=ChunkState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """How many times a worker claimed it: past a limit its items are stored as ML failures."""
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When its task was last queued: a pending chunk queued long ago lost its message."""
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_scrape_chunks_scrape_number", "scrape_id", "number", unique=True),
        Index("ix_scrape_chunks_state", "state", "scrape_id"),
    )


class ScrapeClassCount(Base):
    """How many items of one scrape have one status and one model version's one value.

    A summary of ``sitemap_items`` that database triggers keep exact on every insert, delete and
    change of these columns (migration 0004), so that charts over millions of items read a few
    rows per scrape (``db.charts``). Each item counts twice: once for its Image Type model
    (``model_version``, ``ml_image_type``) and once for its color model
    (``color_model_version``, ``ml_color``). A missing version or value is stored as ``""``
    (a NULL would escape the primary key).
    """

    __tablename__ = "scrape_class_counts"

    scrape_id: Mapped[int] = mapped_column(
        ForeignKey("scrapes.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(16), primary_key=True)
    """``image_type`` or ``color``."""
    status: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(32), primary_key=True)
    items: Mapped[int] = mapped_column(Integer, default=0)


class Image(Base):
    """One image version, identified by its image_key (URL + response headers)."""

    __tablename__ = "images"

    image_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    content_length: Mapped[int | None]
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    phash: Mapped[str | None] = mapped_column(String(16), index=True)
    width: Mapped[int | None]
    height: Mapped[int | None]
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    fresh_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """Until when the CDN's caching headers (``Cache-Control: max-age``, ``Expires``) say the
    image at ``url`` stays this version, as the ML server last saw it (migration 0009): a
    re-scrape of an unchanged sitemap copies the items of fresh images without asking anyone.
    None: check it on every scrape."""

    # The keys the app has for an image URL (and so its thumbnails): see db.scrapes.
    __table_args__ = (Index("ix_images_url", "url"),)


class Thumbnail(Base):
    """A small JPEG per image_key, kept apart so that listing images stays light."""

    __tablename__ = "thumbnails"

    image_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    jpeg: Mapped[bytes] = mapped_column(LargeBinary)


class ManualFix(Base):
    """The history of manual fixes: what, who, when, from where, and whether the ML cache has it."""

    __tablename__ = "manual_fixes"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(
        String(32), unique=True, index=True, default=lambda: uuid.uuid4().hex
    )
    """Globally unique: what the ML cache remembers, so a restored database never collides."""
    scope: Mapped[str] = mapped_column(String(16), default=FixScope.TEAM)
    """:class:`FixScope`: a team fix, or an override of ``advertiser_id`` only."""
    image_key: Mapped[str] = mapped_column(String(64), index=True)
    image_url: Mapped[str] = mapped_column(Text)
    advertiser_id: Mapped[int | None] = mapped_column(
        ForeignKey("advertisers.id", ondelete="SET NULL"), index=True
    )
    sitemap_item_id: Mapped[int | None] = mapped_column(
        ForeignKey("sitemap_items.id", ondelete="SET NULL")
    )
    field: Mapped[str] = mapped_column(String(32))
    """``image_type`` or ``color``."""
    old_value: Mapped[str | None] = mapped_column(String(64))
    new_value: Mapped[str | None] = mapped_column(String(64))
    user: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(32), default=FixSource.ANALYST)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    sync_status: Mapped[str] = mapped_column(String(32), default=SyncStatus.PENDING, index=True)
    synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sync_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_sync_error: Mapped[str | None] = mapped_column(Text)
    superseded_fix_id: Mapped[int | None] = mapped_column(Integer)
    """The fix this one overwrote when its author had not seen it (a lost race), if any."""

    __table_args__ = (
        Index("ix_manual_fixes_key_field", "image_key", "field", "id"),
        # "Did an earlier fix of this image have this value as its old value?" in one index-only
        # probe (the back-and-forth count of db.charts, on SQLite).
        Index("ix_manual_fixes_key_field_old", "image_key", "field", "old_value", "id"),
    )


class SyncState(Base):
    """Small facts the app keeps about its peers, e.g. the ML cache generation it last filled."""

    __tablename__ = "sync_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class User(Base):
    """A person who signs in. OpenID Connect users are matched by ``email``."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(200), unique=True)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text)
    """argon2id; None for an account that signs in through OpenID Connect only."""
    role: Mapped[str] = mapped_column(String(32))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AdvertiserToken(Base):
    """A bearer token with which an advertiser's own front end records fixes."""

    __tablename__ = "advertiser_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    advertiser_id: Mapped[int] = mapped_column(ForeignKey("advertisers.id", ondelete="CASCADE"))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    """Only the hash is stored: the token is shown once, when it is made."""
    label: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    advertiser: Mapped[Advertiser] = relationship(back_populates="tokens")


class UserSession(Base):
    """A signed-in browser (:mod:`db.user_sessions`): its cookie holds a random token, this row
    only the token's SHA-256, and the idle and absolute limits are checked against its times."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    """The cookie's token, hashed; None until the browser has claimed the session's handoff."""
    handoff_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    """The one-time code with which the browser fetches its cookie, hashed; None once used."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When it was signed out."""

    user: Mapped[User] = relationship()


class FindingState(enum.StrEnum):
    OPEN = "open"
    FIXED = "fixed"
    """Remedied, or no longer detected (then ``state_by`` is ``system``)."""
    IGNORED = "ignored"
    """Accepted as it is, with a reason; stays ignored until its evidence changes."""


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"
    """Tell the dev team (e.g. the ML server failed again after a relaunch)."""


class Finding(Base):
    """A "weird result" a detector found (:mod:`tagging.detectors`), with its evidence and state."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(primary_key=True)
    detector: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(200))
    """What the finding is about, unique per detector (a scrape, an image, a pair...)."""
    advertiser_id: Mapped[int | None] = mapped_column(
        ForeignKey("advertisers.id", ondelete="CASCADE"), index=True
    )
    scrape_id: Mapped[int | None] = mapped_column(ForeignKey("scrapes.id", ondelete="SET NULL"))
    severity: Mapped[str] = mapped_column(String(16), default=Severity.WARNING)
    explanation: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict] = mapped_column(JSON)
    """Image keys, URLs, item ids and figures, as JSON."""
    fingerprint: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the evidence's stable facts: a change reopens an ignored finding."""
    state: Mapped[str] = mapped_column(String(16), default=FindingState.OPEN)
    state_reason: Mapped[str | None] = mapped_column(Text)
    state_by: Mapped[str | None] = mapped_column(String(200))
    state_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    settled_fix_id: Mapped[int | None] = mapped_column(Integer)
    """Manual fixes up to this id were settled by a remedy ("choose one value")."""
    conflicting: Mapped[bool] = mapped_column(Boolean, default=False)
    """Marked as conflicting examples, to keep out of the training sets."""
    detected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    """When the evidence last changed."""

    __table_args__ = (
        UniqueConstraint("detector", "subject"),
        Index("ix_findings_state_severity", "state", "severity"),
    )


class DatasetState(enum.StrEnum):
    DRAFT = "draft"
    """Being built: its recipe and rows may still be replaced."""
    FROZEN = "frozen"
    """Final: its recipe, rows and manifest SHA-256 never change (``db.datasets``)."""


class DatasetVersion(Base):
    """One version of the training set (migration 0011): a recipe over its parent and inputs."""

    __tablename__ = "dataset_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    """The version's public name (``dataset show 3``); 1, 2, … in order of creation."""
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="RESTRICT"), index=True
    )
    recipe: Mapped[dict[str, object]] = mapped_column(JSON)
    """:meth:`tagging.curation.recipe.Recipe.to_json`, parsed; for a first version the
    generator's description."""
    inputs: Mapped[dict[str, object]] = mapped_column(JSON)
    """What the recipe ran over: ``kind`` (``fixes`` or ``generated``), the fix window
    (``cutoff``, ``until_fix_id``) and ``inputs_sha256``, so that a replay reads the same ones."""
    state: Mapped[str] = mapped_column(String(16), default=DatasetState.DRAFT)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    frozen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the full manifest CSV of its rows (``Manifest.manifest_sha256``)."""
    counts: Mapped[dict[str, object]] = mapped_column(JSON)
    """Rows, per split and class, exclusions by reason: what lists show without the rows."""


class DatasetRow(Base):
    """One image of one dataset version: a :class:`tagging.curation.manifest.ManifestRow`."""

    __tablename__ = "dataset_rows"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    image_type: Mapped[str] = mapped_column(String(32))
    color: Mapped[str | None] = mapped_column(String(32))
    origin: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    split: Mapped[str | None] = mapped_column(String(8))
    advertiser: Mapped[str | None] = mapped_column(String(200))
    page_url: Mapped[str | None] = mapped_column(Text)
    cluster: Mapped[int | None] = mapped_column(Integer)
    exclusion: Mapped[str | None] = mapped_column(Text)
    phash: Mapped[str | None] = mapped_column(String(16))
    crop: Mapped[str | None] = mapped_column(String(64))
    """``left,top,right,bottom``, as in the manifest CSV; None for the whole image."""

    __table_args__ = (
        Index("ix_dataset_rows_version_sha256", "version_id", "sha256", unique=True),
        # "Which versions hold this image?" (the page's image history).
        Index("ix_dataset_rows_sha256", "sha256"),
    )


class ArchiveState(enum.StrEnum):
    PENDING = "pending"
    """Queued by a fix; not stored yet (or the last attempt failed: see ``last_error``)."""
    STORED = "stored"


class ArchiveEntry(Base):
    """An image whose bytes the dataset archive must keep (migration 0011): queued in the
    transaction of the fix that made it a training candidate, stored later (``db.datasets``)."""

    __tablename__ = "archive_entries"

    image_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    image_url: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    """The stored bytes' SHA-256 once stored (the archive's key)."""
    state: Mapped[str] = mapped_column(String(16), default=ArchiveState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobState(enum.StrEnum):
    QUEUED = "queued"
    """Recorded, its task waiting in a queue for a worker."""
    RUNNING = "running"
    """Taken by a worker, which beats ``heartbeat_at`` while it works (``db.jobs.LEASE``)."""
    DONE = "done"
    FAILED = "failed"
    """Its ``error`` says why; a running job whose heartbeat is older than the lease reads as
    failed too (the worker stopped)."""


class Job(Base):
    """A long piece of work run on a task queue, with its progress (migration 0012): a dataset
    build, later a training. Pages and the CLI read it (``db.jobs``); only its worker writes it
    once it runs."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    """What it does: ``dataset_build``, ``training``…"""
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    requested_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """Pushed forward by every progress report and by the worker's heartbeat thread."""
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    """Of the current phase; None while it is not known."""
    phase: Mapped[str | None] = mapped_column(String(200))
    """The step under way, in a few words ("archiving images", "embedding", "split"…)."""
    params: Mapped[dict[str, object]] = mapped_column(JSON)
    """What was asked, as JSON: the worker reads everything it needs from here."""
    result: Mapped[dict[str, object] | None] = mapped_column(JSON(none_as_null=True))
    """What a done job produced (a summary: e.g. the version built and its counts)."""
    error: Mapped[str | None] = mapped_column(Text)
    """Why a failed job failed, in one line."""

    __table_args__ = (
        # "The newest jobs of one kind" (the pages' lists) and "the running ones" (the expiry).
        Index("ix_jobs_kind_id", "kind", "id"),
        Index("ix_jobs_state", "state"),
    )


__all__ = [
    "Advertiser",
    "AdvertiserToken",
    "Base",
    "Finding",
    "FindingState",
    "FixSource",
    "Image",
    "ItemStatus",
    "Job",
    "JobState",
    "ManualFix",
    "Role",
    "Scrape",
    "ScrapeClassCount",
    "ScrapeStatus",
    "Severity",
    "SitemapItem",
    "SyncStatus",
    "Thumbnail",
    "User",
]
