"""Storage of dataset versions, their manifests, the fixes a version pulls, and the archive queue.

A version is a row of ``dataset_versions`` (recipe, inputs, state, counts, the manifest's SHA-256)
and its manifest, one ``dataset_rows`` row per image. A **frozen** version never changes: every
function here that writes a version refuses a frozen one with :class:`Conflict`. Rows travel as
plain mappings of :data:`ROW_FIELDS` (the manifest's fields; ``crop`` as ``"l,t,r,b"``): the
manifest type itself is :class:`tagging.curation.manifest.ManifestRow`, which ``db`` may not import.

The pull (:func:`pulled_images`) reads the label model's team decisions: fixes by the team (any
source but ``advertiser``, in either scope: an analyst's re-tag of an override is the team's
decision too) and advertisers' overrides an analyst accepted. It is deterministic for a window of
fix ids, so a replay reads exactly what the build read.

The lookups the Dataset curation page needs (a thumbnail per content hash, the item a relabel
is recorded on, the fix a relabel's origin names) are here too, by content hash (``sha256``).

The archive queue (``archive_entries``) is an outbox: a fix queues its image in its own
transaction (one cheap insert, no network), and the bytes are fetched later.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.errors import Conflict, NotFoundError
from db.models import (
    Advertiser,
    ArchiveEntry,
    ArchiveState,
    DatasetRow,
    DatasetState,
    DatasetVersion,
    Finding,
    FindingState,
    FixSource,
    Image,
    ManualFix,
    SitemapItem,
    Thumbnail,
    as_utc,
    utcnow,
)

ROW_FIELDS: tuple[str, ...] = (
    "sha256",
    "path",
    "image_type",
    "color",
    "origin",
    "width",
    "height",
    "split",
    "advertiser",
    "page_url",
    "cluster",
    "exclusion",
    "phash",
    "crop",
)
"""The fields of a stored manifest row, as :class:`DatasetRow` columns."""

_CHUNK = 500


# --- versions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionSummary:
    """One version as lists show it (no rows). Datetimes are timezone-aware UTC."""

    id: int
    number: int
    parent: int | None
    """The parent's number."""
    state: str
    created_by: str
    created_at: datetime
    frozen_at: datetime | None
    manifest_sha256: str
    counts: dict[str, Any]
    recipe: dict[str, Any]
    inputs: dict[str, Any]


def add_version(
    session: Session,
    *,
    parent_id: int | None,
    recipe: Mapping[str, Any],
    inputs: Mapping[str, Any],
    created_by: str,
    rows: Iterable[Mapping[str, Any]],
    manifest_sha256: str,
    counts: Mapping[str, Any],
) -> VersionSummary:
    """Store a new draft version with its rows, numbered after the last one.

    Raises:
        NotFoundError: ``parent_id`` is not a version.
        Conflict: the parent is a draft (it could still change under its child).
    """
    if parent_id is not None:
        parent = session.get(DatasetVersion, parent_id)
        if parent is None:
            raise NotFoundError(f"no dataset version with id {parent_id}")
        if parent.state != DatasetState.FROZEN:
            raise Conflict(f"version {parent.number} is a draft: freeze it before extending it")
    number = (session.scalar(select(func.max(DatasetVersion.number))) or 0) + 1
    version = DatasetVersion(
        number=number,
        parent_id=parent_id,
        recipe=dict(recipe),
        inputs=dict(inputs),
        state=DatasetState.DRAFT,
        created_by=created_by,
        created_at=utcnow(),
        manifest_sha256=manifest_sha256,
        counts=dict(counts),
    )
    session.add(version)
    session.flush()
    _insert_rows(session, version.id, rows)
    return _summary(session, version)


def replace_draft(
    session: Session,
    number: int,
    *,
    recipe: Mapping[str, Any],
    rows: Iterable[Mapping[str, Any]],
    manifest_sha256: str,
    counts: Mapping[str, Any],
) -> VersionSummary:
    """Replace a draft's recipe and rows (a step applied or undone on the page).

    Raises:
        NotFoundError: no such version.
        Conflict: it is frozen.
    """
    version = _writable(session, number)
    version.recipe = dict(recipe)
    version.manifest_sha256 = manifest_sha256
    version.counts = dict(counts)
    session.execute(delete(DatasetRow).where(DatasetRow.version_id == version.id))
    _insert_rows(session, version.id, rows)
    return _summary(session, version)


def freeze_version(session: Session, number: int, frozen_by: str) -> VersionSummary:
    """Freeze a draft: from now on its recipe, rows and SHA-256 never change.

    Raises:
        NotFoundError: no such version.
        Conflict: it is frozen already.
    """
    version = _writable(session, number)
    version.state = DatasetState.FROZEN
    version.frozen_at = utcnow()
    session.flush()
    return _summary(session, version)


def delete_draft(session: Session, number: int) -> None:
    """Delete a draft and its rows (a build thrown away).

    Raises:
        NotFoundError: no such version.
        Conflict: it is frozen, or another version extends it.
    """
    version = _writable(session, number)
    child = session.scalar(
        select(DatasetVersion.number).where(DatasetVersion.parent_id == version.id)
    )
    if child is not None:
        raise Conflict(f"version {child} extends version {number}: it cannot be deleted")
    session.delete(version)
    session.flush()


def get_version(session: Session, number: int) -> VersionSummary:
    """Version ``number``.

    Raises:
        NotFoundError: there is none.
    """
    version = session.scalar(select(DatasetVersion).where(DatasetVersion.number == number))
    if version is None:
        raise NotFoundError(f"no dataset version {number}")
    return _summary(session, version)


def latest_version(session: Session, *, frozen: bool = True) -> VersionSummary | None:
    """The newest version (only frozen ones with ``frozen``), or None."""
    query = select(DatasetVersion).order_by(DatasetVersion.number.desc()).limit(1)
    if frozen:
        query = query.where(DatasetVersion.state == DatasetState.FROZEN)
    version = session.scalar(query)
    return _summary(session, version) if version is not None else None


def list_versions(session: Session) -> list[VersionSummary]:
    """Every version, newest first."""
    versions = session.scalars(select(DatasetVersion).order_by(DatasetVersion.number.desc()))
    numbers = {i: n for i, n in session.execute(select(DatasetVersion.id, DatasetVersion.number))}
    return [_summary(session, v, numbers) for v in versions]


def version_rows(session: Session, number: int) -> list[dict[str, Any]]:
    """The manifest rows of version ``number``, by ``sha256``.

    Raises:
        NotFoundError: no such version.
    """
    version_id = session.scalar(select(DatasetVersion.id).where(DatasetVersion.number == number))
    if version_id is None:
        raise NotFoundError(f"no dataset version {number}")
    columns = [getattr(DatasetRow, name) for name in ROW_FIELDS]
    query = select(*columns).where(DatasetRow.version_id == version_id).order_by(DatasetRow.sha256)
    return [dict(zip(ROW_FIELDS, values, strict=True)) for values in session.execute(query)]


def lock_draft(session: Session, number: int) -> VersionSummary:
    """Version ``number``, locked until the caller's transaction ends, which must be a draft.

    Take it first in a transaction that reads the draft's state and writes it back (a step, an
    undo, a decision, the freeze): a concurrent one waits, then sees the new state.

    Raises:
        NotFoundError: no such version.
        Conflict: it is frozen.
    """
    return _summary(session, _writable(session, number))


def set_draft_recipe(session: Session, number: int, recipe: Mapping[str, Any]) -> VersionSummary:
    """Replace a draft's ``recipe`` column only (the page state changed, not the rows: the
    manifest is not rewritten).

    Raises:
        NotFoundError: no such version.
        Conflict: it is frozen.
    """
    version = _writable(session, number)
    # A new dict, not a change in place: the JSON column only sees an assignment.
    version.recipe = dict(recipe)
    session.flush()
    return _summary(session, version)


def _writable(session: Session, number: int) -> DatasetVersion:
    """Version ``number``, locked, which must be a draft."""
    version = session.scalar(
        select(DatasetVersion).where(DatasetVersion.number == number).with_for_update()
    )
    if version is None:
        raise NotFoundError(f"no dataset version {number}")
    if version.state == DatasetState.FROZEN:
        raise Conflict(f"version {number} is frozen: it never changes (build a new one)")
    return version


def _insert_rows(session: Session, version_id: int, rows: Iterable[Mapping[str, Any]]) -> None:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append({"version_id": version_id, **{name: row[name] for name in ROW_FIELDS}})
        if len(batch) >= _CHUNK:
            session.execute(DatasetRow.__table__.insert(), batch)
            batch = []
    if batch:
        session.execute(DatasetRow.__table__.insert(), batch)


def _summary(
    session: Session, version: DatasetVersion, numbers: Mapping[int, int] | None = None
) -> VersionSummary:
    parent = None
    if version.parent_id is not None:
        if numbers is not None:
            parent = numbers.get(version.parent_id)
        else:
            parent = session.scalar(
                select(DatasetVersion.number).where(DatasetVersion.id == version.parent_id)
            )
    return VersionSummary(
        id=version.id,
        number=version.number,
        parent=parent,
        state=version.state,
        created_by=version.created_by,
        created_at=as_utc(version.created_at) or utcnow(),
        frozen_at=as_utc(version.frozen_at),
        manifest_sha256=version.manifest_sha256,
        counts=dict(version.counts),
        recipe=dict(version.recipe),
        inputs=dict(version.inputs),
    )


# --- the pull: team decisions since a cut-off ----------------------------------------------------


@dataclass(frozen=True)
class PulledImage:
    """One fixed image's team-decided labels and facts, as the pull finds them.

    Attributes:
        fix_id: The latest Image Type fix of the image in the window (its origin).
        user: Who made it.
        image_key: The image version it was made on.
        image_url: Where the image was.
        sha256: Content SHA-256 (``images.sha256``).
        phash: Perceptual hash, or None.
        width: Original width (0 when unknown).
        height: Original height (0 when unknown).
        image_type: The decided Image Type.
        color: The decided color: the latest color fix, else the prediction; None when unknown.
        advertiser: The advertiser whose item was fixed.
        page_url: Its vehicle page.
        conflicting: A reviewer marked the image as a conflicting example (Weird results).
    """

    fix_id: int
    user: str
    image_key: str
    image_url: str
    sha256: str
    phash: str | None
    width: int
    height: int
    image_type: str
    color: str | None
    advertiser: str | None
    page_url: str | None
    conflicting: bool


@dataclass(frozen=True)
class Pull:
    """What :func:`pulled_images` found."""

    images: list[PulledImage]
    """One per content sha256, in order of their fix (the newest decision last)."""
    unhashed: int
    """Fixed images the app has no content hash for (never fetched whole): left out."""


def max_fix_id(session: Session) -> int:
    """The newest fix's id (0 for none): the upper end of a build's window."""
    return session.scalar(select(func.max(ManualFix.id))) or 0


def pulled_images(
    session: Session,
    *,
    after_fix_id: int,
    until_fix_id: int,
    since: datetime | None,
    accepted_reason: str,
) -> Pull:
    """The images whose Image Type the team decided in a window of fixes.

    An image is pulled when it has an eligible Image Type fix with ``after_fix_id < id <=
    until_fix_id`` (and made after ``since``, when given). Eligible: a fix by the team (any source
    but ``advertiser``), or an advertiser's override of an image whose finding an analyst
    accepted (ignored with ``accepted_reason``). Its labels are those of the latest eligible fixes
    up to ``until_fix_id`` (the window's upper end, so later fixes never change a replay).

    Args:
        after_fix_id: Fixes with a larger id only (the parent's ``until_fix_id``; 0 for all).
        until_fix_id: Fixes with this id or a smaller one only.
        since: Fixes made after this moment only, or None.
        accepted_reason: The ``state_reason`` of an accepted finding.
    """
    accepted, conflicting = _reviewed_keys(session, accepted_reason)
    query = (
        select(
            ManualFix.id,
            ManualFix.user,
            ManualFix.image_key,
            ManualFix.image_url,
            ManualFix.field,
            ManualFix.new_value,
            ManualFix.source,
            ManualFix.advertiser_id,
            ManualFix.created_at,
            SitemapItem.page_url,
            SitemapItem.ml_color,
        )
        .outerjoin(SitemapItem, SitemapItem.id == ManualFix.sitemap_item_id)
        .where(ManualFix.id <= until_fix_id, ManualFix.field.in_(("image_type", "color")))
        .order_by(ManualFix.id)
    )
    latest_type: dict[str, Any] = {}
    latest_color: dict[str, Any] = {}
    in_window: set[str] = set()
    since_utc = as_utc(since)
    for fix in session.execute(query):
        if (
            fix.source == FixSource.ADVERTISER
            and (fix.advertiser_id, fix.image_key) not in accepted
        ):
            continue
        if fix.field == "color":
            latest_color[fix.image_key] = fix
            continue
        latest_type[fix.image_key] = fix
        made = as_utc(fix.created_at)
        if fix.id > after_fix_id and (since_utc is None or (made is not None and made > since_utc)):
            in_window.add(fix.image_key)
    keys = sorted(in_window)
    images = _images(session, keys)
    names = {i: name for i, name in session.execute(select(Advertiser.id, Advertiser.name))}
    by_sha: dict[str, PulledImage] = {}
    unhashed = 0
    for key in sorted(keys, key=lambda k: latest_type[k].id):
        fix = latest_type[key]
        image = images.get(key)
        if image is None or not image.sha256:
            unhashed += 1
            continue
        color_fix = latest_color.get(key)
        color = color_fix.new_value if color_fix is not None else fix.ml_color
        by_sha.pop(image.sha256, None)  # the newest decision on the same content wins, last
        by_sha[image.sha256] = PulledImage(
            fix_id=fix.id,
            user=fix.user,
            image_key=key,
            image_url=fix.image_url,
            sha256=image.sha256,
            phash=image.phash,
            width=image.width or 0,
            height=image.height or 0,
            image_type=fix.new_value,
            color=color,
            advertiser=names.get(fix.advertiser_id),
            page_url=fix.page_url,
            conflicting=key in conflicting,
        )
    return Pull(images=list(by_sha.values()), unhashed=unhashed)


def _reviewed_keys(
    session: Session, accepted_reason: str
) -> tuple[set[tuple[int | None, str]], set[str]]:
    """``(advertiser id, image_key)`` of accepted overrides; image_keys marked conflicting."""
    accepted: set[tuple[int | None, str]] = set()
    conflicting: set[str] = set()
    query = select(Finding.advertiser_id, Finding.evidence, Finding.state, Finding.state_reason)
    query = query.where(
        (Finding.conflicting.is_(True))
        | ((Finding.state == FindingState.IGNORED) & (Finding.state_reason == accepted_reason))
    )
    for advertiser_id, evidence, state, reason in session.execute(query):
        keys = _evidence_keys(evidence or {})
        if state == FindingState.IGNORED and reason == accepted_reason:
            accepted.update((advertiser_id, key) for key in keys)
        else:
            conflicting.update(keys)
    return accepted, conflicting


def _evidence_keys(evidence: Mapping[str, Any]) -> set[str]:
    keys = {evidence["image_key"]} if isinstance(evidence.get("image_key"), str) else set()
    for image in evidence.get("images") or ():
        if isinstance(image, Mapping) and isinstance(image.get("image_key"), str):
            keys.add(image["image_key"])
    return keys


def _images(session: Session, keys: Sequence[str]) -> dict[str, Image]:
    found: dict[str, Image] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = list(keys[start : start + _CHUNK])
        found.update(
            (i.image_key, i)
            for i in session.scalars(select(Image).where(Image.image_key.in_(chunk)))
        )
    return found


# --- the images a curation step shows, and the fixes it records ---------------------------------


@dataclass(frozen=True)
class FixRef:
    """One history row, as a manifest row's origin names it (``fix:17 by alice``)."""

    id: int
    user: str


def image_keys_of(session: Session, sha256s: Collection[str]) -> dict[str, str]:
    """An image_key with a thumbnail per content hash in ``sha256s``, for showing the image.

    Of several image versions with the same bytes, the one seen last wins (then the largest
    key). Hashes without a thumbnailed version are left out.
    """
    found: dict[str, str] = {}
    wanted = sorted(set(sha256s))
    for start in range(0, len(wanted), _CHUNK):
        query = (
            select(Image.sha256, Image.image_key)
            .join(Thumbnail, Thumbnail.image_key == Image.image_key)
            .where(Image.sha256.in_(wanted[start : start + _CHUNK]))
            .order_by(Image.last_seen, Image.image_key)
        )
        for sha, key in session.execute(query):
            found[str(sha)] = key  # ascending: the newest is written last
    return found


def newest_item_showing(session: Session, sha256: str) -> int | None:
    """The id of the newest sitemap item (any advertiser, any scrape) whose image has these
    bytes, or None when no item shows them (a team fix needs an item to be recorded on)."""
    return session.scalar(
        select(SitemapItem.id)
        .join(Image, Image.image_key == SitemapItem.image_key)
        .where(Image.sha256 == sha256)
        .order_by(SitemapItem.id.desc())
        .limit(1)
    )


def latest_type_fix(session: Session, sha256: str) -> FixRef | None:
    """The newest Image Type history row (any source) of any image version with these bytes,
    or None when there is none."""
    row = session.execute(
        select(ManualFix.id, ManualFix.user)
        .join(Image, Image.image_key == ManualFix.image_key)
        .where(Image.sha256 == sha256, ManualFix.field == "image_type")
        .order_by(ManualFix.id.desc())
        .limit(1)
    ).first()
    return FixRef(id=row.id, user=row.user) if row is not None else None


# --- the archive queue ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveJob:
    """An image to archive: where to fetch it, and the content hash the app knows for it."""

    image_key: str
    image_url: str
    expected_sha256: str | None
    attempts: int


def queue_archive(session: Session, fix_ids: Collection[int]) -> int:
    """Queue the images of these fixes for the archive, in the caller's transaction.

    One ``INSERT … ON CONFLICT DO NOTHING``: an image queued already (by another fix, even one in
    a concurrent transaction) is left alone, so queueing can never fail the fix it belongs to.

    Returns:
        How many images were named (queued now or before).
    """
    if not fix_ids:
        return 0
    query = select(ManualFix.image_key, ManualFix.image_url).where(
        ManualFix.id.in_(sorted(fix_ids))
    )
    values = {key: url for key, url in session.execute(query)}
    if not values:
        return 0
    rows = [
        {
            "image_key": key,
            "image_url": url,
            "state": ArchiveState.PENDING,
            "attempts": 0,
            "queued_at": utcnow(),
        }
        for key, url in sorted(values.items())
    ]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(ArchiveEntry).values(rows).on_conflict_do_nothing())
    return len(rows)


def queue_images(session: Session, images: Iterable[tuple[str, str]]) -> None:
    """Queue ``(image_key, image_url)`` pairs (those the dataset pull finds unarchived)."""
    rows = [
        {
            "image_key": key,
            "image_url": url,
            "state": ArchiveState.PENDING,
            "attempts": 0,
            "queued_at": utcnow(),
        }
        for key, url in images
    ]
    if rows:
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        session.execute(insert(ArchiveEntry).values(rows).on_conflict_do_nothing())


def image_urls(session: Session, sha256s: Collection[str]) -> list[tuple[str, str]]:
    """``(image_key, url)`` of one image version per content hash in ``sha256s`` (its newest)."""
    found: dict[str, tuple[str, str]] = {}
    shas = sorted(sha256s)
    for start in range(0, len(shas), _CHUNK):
        query = (
            select(Image.sha256, Image.image_key, Image.url)
            .where(Image.sha256.in_(shas[start : start + _CHUNK]))
            .order_by(Image.last_seen, Image.image_key)
        )
        for sha, key, url in session.execute(query):
            if sha is not None:
                found[sha] = (key, url)
    return sorted(found.values())


def pending_archive(
    session: Session, *, image_keys: Collection[str] | None = None, limit: int = 1000
) -> list[ArchiveJob]:
    """Images still to archive, least tried first."""
    query = (
        select(ArchiveEntry.image_key, ArchiveEntry.image_url, Image.sha256, ArchiveEntry.attempts)
        .outerjoin(Image, Image.image_key == ArchiveEntry.image_key)
        .where(ArchiveEntry.state == ArchiveState.PENDING)
        .order_by(ArchiveEntry.attempts, ArchiveEntry.queued_at, ArchiveEntry.image_key)
        .limit(limit)
    )
    if image_keys is not None:
        query = query.where(ArchiveEntry.image_key.in_(sorted(image_keys)))
    return [ArchiveJob(*row) for row in session.execute(query)]


def mark_archived(session: Session, image_key: str, sha256: str) -> None:
    """The image's bytes are in the archive under ``sha256``."""
    entry = session.get_one(ArchiveEntry, image_key)
    entry.state = ArchiveState.STORED
    entry.sha256 = sha256
    entry.attempts += 1
    entry.stored_at = utcnow()
    entry.last_error = None


def mark_archive_failed(session: Session, image_key: str, error: str) -> None:
    """An attempt failed: the image stays pending, with the error, for the next round."""
    entry = session.get_one(ArchiveEntry, image_key)
    entry.attempts += 1
    entry.last_error = error[:1000]


def archive_counts(session: Session) -> dict[str, int]:
    """Queue entries by state (``pending``, ``stored``)."""
    query = select(ArchiveEntry.state, func.count()).group_by(ArchiveEntry.state)
    counts = {state.value: 0 for state in ArchiveState}
    counts.update({state: n for state, n in session.execute(query)})
    return counts


__all__ = [
    "ROW_FIELDS",
    "ArchiveJob",
    "FixRef",
    "Pull",
    "PulledImage",
    "VersionSummary",
    "add_version",
    "archive_counts",
    "delete_draft",
    "freeze_version",
    "get_version",
    "image_keys_of",
    "image_urls",
    "latest_type_fix",
    "latest_version",
    "list_versions",
    "lock_draft",
    "mark_archive_failed",
    "mark_archived",
    "max_fix_id",
    "newest_item_showing",
    "pending_archive",
    "pulled_images",
    "queue_archive",
    "queue_images",
    "replace_draft",
    "set_draft_recipe",
    "version_rows",
]
