"""The label model: what value an advertiser gets for an image, and where it comes from.

For each image an advertiser shows there are three layers, each stored with who, when and why:

* the **ML prediction** (``sitemap_items.ml_image_type``, ``ml_color``), never overwritten by a fix;
* a **team fix** (:attr:`FixScope.TEAM`): an analyst's decision, for every advertiser showing that
  image: the same image_key, or the same content (sha256) under a new key;
* an **advertiser override** (:attr:`FixScope.ADVERTISER`): that advertiser's own fix, for it alone.

The value an advertiser gets is its override, else the team fix, else (for color, when its feed
gives colors) the feed color, else the prediction. A Placeholder has no color unless the advertiser
says so (its override or its feed). The app database is the system of record: a scrape resolves
every item here, from the fixes it stores, whatever the ML cache remembers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.accounts import SYSTEM_ACTOR
from db.models import FixScope, FixSource, Image, LabelSource, ManualFix, SyncStatus
from db.vocab import PLACEHOLDER

FIELDS = ("image_type", "color")

_CHUNK = 500


@dataclass(frozen=True)
class CurrentFix:
    """The latest manual value of one field of one image, in one scope."""

    fix_id: int
    image_key: str
    sha256: str | None
    field: str
    value: str | None
    scope: str
    advertiser_id: int | None
    user: str


@dataclass(frozen=True)
class Resolution:
    """One item's current values and their sources, and the fix each manual value came from."""

    image_type: str
    image_type_source: str
    color: str | None
    color_source: str
    carried: tuple[CurrentFix, ...] = ()
    """Fixes of the same content under another image_key, to record again under this one."""


class FixIndex:
    """The current fixes of a set of images, looked up by image_key or by content sha256."""

    def __init__(self, fixes: Iterable[CurrentFix]) -> None:
        self._by_key: dict[tuple[str, str, str, int | None], CurrentFix] = {}
        self._by_sha: dict[tuple[str, str, str, int | None], CurrentFix] = {}
        for fix in fixes:  # oldest first: a later fix replaces an earlier one
            owner = fix.advertiser_id if fix.scope == FixScope.ADVERTISER else None
            self._by_key[(fix.image_key, fix.field, fix.scope, owner)] = fix
            if fix.sha256:
                self._by_sha[(fix.sha256, fix.field, fix.scope, owner)] = fix

    def latest(
        self, image_key: str, sha256: str | None, field: str, scope: str, owner: int | None
    ) -> CurrentFix | None:
        """The newest fix of this image (by key, or by content) for ``field`` in ``scope``."""
        by_key = self._by_key.get((image_key, field, scope, owner))
        by_sha = self._by_sha.get((sha256, field, scope, owner)) if sha256 else None
        found = [f for f in (by_key, by_sha) if f is not None]
        return max(found, key=lambda f: f.fix_id) if found else None


def load_fix_index(
    session: Session, *, image_keys: Collection[str], sha256s: Collection[str] = ()
) -> FixIndex:
    """Every fix of these images (by key, or by content under any key), oldest first."""
    keys = sorted(set(image_keys))
    shas = sorted({s for s in sha256s if s})
    rows: dict[int, CurrentFix] = {}
    query = (
        select(
            ManualFix.id,
            ManualFix.image_key,
            Image.sha256,
            ManualFix.field,
            ManualFix.new_value,
            ManualFix.scope,
            ManualFix.advertiser_id,
            ManualFix.user,
        )
        .outerjoin(Image, Image.image_key == ManualFix.image_key)
        .order_by(ManualFix.id)
    )
    for chunk in _chunks(keys):
        for row in session.execute(query.where(ManualFix.image_key.in_(chunk))):
            rows[row.id] = CurrentFix(*row)
    for chunk in _chunks(shas):
        for row in session.execute(query.where(Image.sha256.in_(chunk))):
            rows[row.id] = CurrentFix(*row)
    return FixIndex(rows[i] for i in sorted(rows))


def resolve(
    index: FixIndex,
    *,
    advertiser_id: int,
    image_key: str | None,
    sha256: str | None,
    ml_image_type: str,
    ml_color: str | None,
    ml_answered: bool,
    feed_color: str | None = None,
    color_from_feed: bool = False,
) -> Resolution:
    """The values advertiser ``advertiser_id`` gets for one image (see the module docstring).

    Args:
        ml_answered: False when the ML system gave no value (the defaults stand in for it).
        feed_color: the feed's color, already matched to the color list where it names one.
    """
    base_source = LabelSource.ML if ml_answered else LabelSource.DEFAULT
    values: dict[str, tuple[str | None, str]] = {
        "image_type": (ml_image_type, base_source),
        "color": (feed_color, LabelSource.FEED) if color_from_feed else (ml_color, base_source),
    }
    carried: list[CurrentFix] = []
    if image_key:
        for field in FIELDS:
            override = index.latest(image_key, sha256, field, FixScope.ADVERTISER, advertiser_id)
            team = index.latest(image_key, sha256, field, FixScope.TEAM, None)
            chosen = override or team
            if chosen is None:
                continue
            source = LabelSource.OVERRIDE if override is not None else LabelSource.FIX
            values[field] = (chosen.value, source)
            if chosen.image_key != image_key:
                carried.append(chosen)
    image_type, type_source = values["image_type"]
    color, color_source = values["color"]
    advertisers_word = color_source in (LabelSource.OVERRIDE, LabelSource.FEED)
    if image_type == PLACEHOLDER and not advertisers_word and color is not None:
        # The seed's rule: a placeholder has no color (only the advertiser's own word, its
        # override or its feed, gives it one).
        color, color_source = None, type_source
    return Resolution(
        image_type=image_type or PLACEHOLDER,
        image_type_source=type_source,
        color=color,
        color_source=color_source,
        carried=tuple(carried),
    )


def carry_over(
    session: Session,
    fixes: Sequence[tuple[CurrentFix, str, str, int]],
) -> list[int]:
    """Record fixes again under the image_key their content now has (history: ``carry_over``).

    Args:
        fixes: ``(fix, new image_key, image URL, advertiser id)`` per fix to carry; each is recorded
            once per (image_key, field, scope, owner) even if listed more than once.

    Returns:
        The new history rows' ids (pending sync, like any fix).
    """
    seen: set[tuple[str, str, str, int | None]] = set()
    added: list[ManualFix] = []
    for fix, image_key, image_url, advertiser_id in fixes:
        owner = fix.advertiser_id if fix.scope == FixScope.ADVERTISER else None
        identity = (image_key, fix.field, fix.scope, owner)
        if identity in seen:
            continue
        seen.add(identity)
        row = ManualFix(
            image_key=image_key,
            image_url=image_url,
            advertiser_id=owner if owner is not None else advertiser_id,
            field=fix.field,
            old_value=None,
            new_value=fix.value,
            user=SYSTEM_ACTOR,  # carried by the scrape; the fix it repeats names its author
            source=FixSource.CARRY_OVER,
            scope=fix.scope,
            sync_status=SyncStatus.PENDING,
            superseded_fix_id=None,
        )
        session.add(row)
        added.append(row)
    session.flush()
    return [row.id for row in added]


def current_fix_ids(session: Session) -> list[int]:
    """The id of the newest fix of every (image_key, field, scope, owner): what the ML cache
    must hold (pushed again when it lost its memory)."""
    latest: dict[tuple[str, str, str, int | None], int] = {}
    query = select(
        ManualFix.id, ManualFix.image_key, ManualFix.field, ManualFix.scope, ManualFix.advertiser_id
    ).order_by(ManualFix.id)
    for fix_id, key, field, scope, advertiser_id in session.execute(query):
        owner = advertiser_id if scope == FixScope.ADVERTISER else None
        latest[(key, field, scope, owner)] = fix_id
    return sorted(latest.values())


def _chunks(values: Sequence[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield list(values[start : start + _CHUNK])


__all__ = [
    "FIELDS",
    "CurrentFix",
    "FixIndex",
    "Resolution",
    "carry_over",
    "current_fix_ids",
    "load_fix_index",
    "resolve",
]
