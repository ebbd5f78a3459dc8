"""The Dataset curation page's use cases: a draft version built step by step, then frozen.

A developer starts a **draft** from a parent version (the pull), then walks the page's steps in
order: size, prune, crop, split, extend, balance. Every step has a **preview** (what applying it
would do: counts and example images, computed, never stored) and an **apply**, which grows the
draft's recipe by the step's recipe steps, replays the recipe over the draft's inputs and stores
the manifest (:func:`db.datasets.replace_draft`). **Undo** drops the last page step's recipe steps
and replays again; undoing the pull deletes the draft. A frozen version never changes.

The draft's page state lives beside its recipe, in the version's ``recipe`` column::

    {"recipe": "<Recipe.to_json()>",
     "page": {"applied": [{"step": "size", "recipe_steps": 1, "params": {...}}, ...],
              "pending": [<prune decisions not applied yet>]}}

so a reload, another tab or another developer sees the same draft; the replay of a frozen version
(:func:`tagging.datasets.service.replay_version`) reads ``recipe`` alone.

Prune decisions are collected as **pending** until the prune step is applied. A relabel is a team
fix: it is recorded through :func:`tagging.fixes.record_fixes` in the decision's own transaction
(so it goes to the history and, after the commit, to the ML server), and the decision carries the
fix as its origin. The findings it touches are refreshed by the caller, after the commit and off
the user's wait (:attr:`DecisionOutcome.advertiser_ids`), as the review page does for its fixes.

Every function needs :attr:`db.accounts.Permission.MODELS` and runs one transaction per user
action. No Streamlit here: ``views/curation.py`` calls these functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from PIL import Image as PILImage
from sqlalchemy.orm import Session, sessionmaker

from db import datasets as store
from db.accounts import Actor, Permission, require
from db.datasets import VersionSummary
from db.fixes import FixChange
from db.models import DatasetState
from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER
from tagging.curation.balance import MIN_SHARE, BalanceReport, balance, exclusions_by_reason
from tagging.curation.duplicates import conflicting_clusters, duplicate_clusters
from tagging.curation.label_issues import LabelIssue, issues_by_advertiser
from tagging.curation.manifest import Box, Manifest, ManifestRow, from_parent, origin_fix
from tagging.curation.prune import DROP, KEEP, RELABEL, Decision
from tagging.curation.recipe import (
    CurationInputs,
    DropConflictsStep,
    DuplicatesStep,
    PruneStep,
    Recipe,
    SizeStep,
    SplitStep,
    Step,
    crop_step,
    replay,
)
from tagging.curation.split import NamedTestSet, find_leaks
from tagging.datasets.archive import ArchiveStore
from tagging.datasets.service import (
    LATEST,
    NOT_ARCHIVED,
    archive_pending,
    border_boxes,
    fixes_window,
    load_manifest,
    manifest_counts,
    pull_fixes,
    rank_likely_errors,
    row_to_store,
    store_manifest,
)
from tagging.errors import Conflict, InvalidInput, ModelError
from tagging.fixes import FixPushTarget, push_pending, record_fixes
from tagging.ingest.fetch import GuardedClient

Progress = Callable[[int, int], None]
"""Called with ``(done, total)`` while a long step runs (archiving, finding crop boxes)."""

PULL: Final = "pull"
SIZE: Final = "size"
PRUNE: Final = "prune"
CROP: Final = "crop"
SPLIT: Final = "split"
EXTEND: Final = "extend"
BALANCE: Final = "balance"
PAGE_STEPS: tuple[str, ...] = (PULL, SIZE, PRUNE, CROP, SPLIT, EXTEND, BALANCE)
"""The page's steps, in the order they are applied."""

STEP_TITLES: dict[str, str] = {
    PULL: "Pull",
    SIZE: "Size filter",
    PRUNE: "Prune",
    CROP: "Crop",
    SPLIT: "Split",
    EXTEND: "Extend",
    BALANCE: "Balance",
}

EXAMPLES = 12
"""Example images a preview shows."""
REVIEW_ISSUES = 60
"""Likely label errors the prune review lists (the likeliest first)."""

Action = Literal["keep", "drop", "relabel", "undecided"]


# --- parameters of each step ---------------------------------------------------------------------


@dataclass(frozen=True)
class SizeParams:
    """The size filter: images narrower or lower than this are excluded."""

    min_width: int = 0
    min_height: int = 0


@dataclass(frozen=True)
class PruneParams:
    """The prune step: near-duplicates are clustered, the conflicting clusters nobody kept or
    relabelled are excluded, and the pending decisions are applied."""


@dataclass(frozen=True)
class CropParams:
    """The crop step: the embedded border trim (``borders``) finds the boxes."""

    model: str = "borders"


@dataclass(frozen=True)
class SplitParams:
    """The split: the share of each class in test, and the named per-advertiser test sets."""

    test_fraction: float = 0.2
    named_test_sets: tuple[NamedTestSet, ...] = ()


@dataclass(frozen=True)
class ExtendParams:
    """Extend: parent + accepted new − pruned (a review of what the version now holds)."""


@dataclass(frozen=True)
class BalanceParams:
    """Balance: warn when a class is under ``min_share`` of a split."""

    min_share: float = MIN_SHARE


StepParams = SizeParams | PruneParams | CropParams | SplitParams | ExtendParams | BalanceParams
"""The parameters of any step after the pull."""

_PARAMS_STEP: dict[type, str] = {
    SizeParams: SIZE,
    PruneParams: PRUNE,
    CropParams: CROP,
    SplitParams: SPLIT,
    ExtendParams: EXTEND,
    BalanceParams: BALANCE,
}


def step_of(params: StepParams) -> str:
    """The page step ``params`` belong to."""
    return _PARAMS_STEP[type(params)]


# --- what the page reads -------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One image a preview shows.

    Attributes:
        sha256: The image's content key.
        image_key: A key the app has a thumbnail for, or None.
        archived: Whether its bytes are in the archive (the thumbnail is made from them).
        image_type: Its Image Type in the manifest.
        color: Its Color.
        advertiser: Whose page showed it (advertiser text: show it as text).
        note: Why it is shown (``too small: 90x60 < 200x150``, ``cluster 3``…).
        crop: The crop box the step would record (the "after" thumbnail), or None.
    """

    sha256: str
    image_key: str | None
    archived: bool
    image_type: str
    color: str | None
    advertiser: str | None
    note: str
    crop: Box | None = None


@dataclass(frozen=True)
class ReviewRow:
    """One image of the prune review, in review order.

    Attributes:
        example: The image.
        kind: ``conflict`` (a near-duplicate cluster whose labels disagree) or ``label issue``
            (cleanlab ranks its label as likely wrong).
        group: The cluster number, or the issue's rank.
        suggested: The class the out-of-fold classifier prefers (label issues), or None.
        confidence: The out-of-fold probability of the given label (label issues), or None.
        page_url: The vehicle page (advertiser text).
        exclusion: Why it is excluded now, or None.
        decision: The pending decision about it, as text (``drop: blurry``), or None.
    """

    example: Example
    kind: str
    group: int
    suggested: str | None
    confidence: float | None
    page_url: str | None
    exclusion: str | None
    decision: str | None


@dataclass(frozen=True)
class StepPreview:
    """What applying a step would do, before it is done.

    Attributes:
        step: The page step.
        summary: One sentence: what applying it changes.
        counts: Titled count tables (``by class``, ``by advertiser``…): title → key → count.
        examples: Example images (dropped ones, crops before/after, new images…).
        review: The prune review, in order (conflicts first, then likely label errors).
        advertiser_issues: Prune: the share of each advertiser's rows flagged as likely label
            errors, highest first.
        balance: Balance and split: the counts per split and per advertiser, and the warnings.
        warnings: What needs a look before applying.
        notes: What the preview could not do (no model for the ranking, images not archived).
    """

    step: str
    summary: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: tuple[Example, ...] = ()
    review: tuple[ReviewRow, ...] = ()
    advertiser_issues: dict[str, float] = field(default_factory=dict)
    balance: BalanceReport | None = None
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DraftView:
    """A draft (or just frozen) version as the page shows it.

    Attributes:
        version: The stored version.
        applied: The page steps applied so far, in order (the pull first).
        params: The parameters each applied step was applied with, by step.
        pending: The prune decisions not applied yet, by ``sha256``.
        recipe: The recipe as JSON (what freezing records).
        named_test_sets: The named test sets of the parent's split (kept across versions).
    """

    version: VersionSummary
    applied: tuple[str, ...]
    params: dict[str, dict[str, Any]]
    pending: dict[str, tuple[Decision, ...]]
    recipe: str
    named_test_sets: tuple[NamedTestSet, ...] = ()

    @property
    def number(self) -> int:
        """The version number."""
        return self.version.number

    @property
    def next_step(self) -> str | None:
        """The next page step to apply, or None when every step is applied."""
        for step in PAGE_STEPS:
            if step not in self.applied:
                return step
        return None

    @property
    def frozen(self) -> bool:
        """Whether it is frozen (nothing can change any more)."""
        return self.version.state == DatasetState.FROZEN


@dataclass(frozen=True)
class DecisionRequest:
    """One prune decision a reviewer asks for.

    Attributes:
        sha256: The image.
        action: ``keep``, ``drop`` (with ``reason``), ``relabel`` (with ``image_type``, optionally
            ``color``) or ``undecided`` (forget the pending decision).
    """

    sha256: str
    action: Action
    reason: str | None = None
    image_type: str | None = None
    color: str | None = None


@dataclass(frozen=True)
class DecisionOutcome:
    """What :func:`decide` recorded."""

    draft: DraftView
    fix_ids: tuple[int, ...]
    """The team fixes the relabels recorded (in the history, pushed after the commit)."""
    push_error: str | None
    """None when every new fix reached the ML server, else why some wait (retried later)."""
    advertiser_ids: tuple[int, ...] = ()
    """Whose items the relabels changed, sorted: their findings are not refreshed by
    :func:`decide` (the caller asks for it, e.g. ``BackgroundRefresh.request``)."""


# --- the use cases -------------------------------------------------------------------------------


def current_draft(sessions: sessionmaker[Session], actor: Actor | None) -> DraftView | None:
    """The newest version when it is a draft (the one the page works on), else None.

    Raises:
        PermissionDenied: ``actor`` may not curate datasets.
    """
    require(actor, Permission.MODELS)
    with sessions() as session:
        newest = store.latest_version(session, frozen=False)
        if newest is None or newest.state != DatasetState.DRAFT:
            return None
        return _view(session, newest)


def draft_view(sessions: sessionmaker[Session], actor: Actor | None, number: int) -> DraftView:
    """Version ``number`` as the page shows it.

    Raises:
        PermissionDenied: ``actor`` may not curate datasets.
        NotFoundError: no such version.
    """
    require(actor, Permission.MODELS)
    with sessions() as session:
        return _view(session, store.get_version(session, number))


def last_retrain(models_dir: Path) -> datetime | None:
    """When the production Image Type model was trained (the pull's default cut-off), or None."""
    from tagging.ml.model import list_versions, production_version, read_metadata

    try:
        version = production_version(models_dir)
        if version is None:
            versions = list_versions(models_dir)
            version = versions[-1] if versions else None
        if version is None:
            return None
        created = datetime.fromisoformat(read_metadata(models_dir, version).created_at)
    except (ModelError, ValueError):
        return None
    return created if created.utcoffset() is not None else None


def preview_pull(
    sessions: sessionmaker[Session],
    actor: Actor | None,
    archive: ArchiveStore,
    *,
    parent: int | str | None = LATEST,
    since: datetime | None = None,
) -> StepPreview:
    """What starting a draft would pull: the team fixes since the parent's cut-off (and after
    ``since``), counted by class, advertiser and analyst, with example images.

    Raises:
        PermissionDenied: ``actor`` may not curate datasets.
        NotFoundError: no such parent.
        Conflict: the parent is a draft, or a draft exists already.
        InvalidInput: a naive ``since``.
    """
    require(actor, Permission.MODELS)
    _check_since(since)
    with sessions() as session:
        _no_open_draft(session)
        parent_version = _resolve_parent(session, parent)
        after = _parent_cutoff(parent_version)
        rows = pull_fixes(session, archive, since=since, after_fix_id=after)
        parent_rows = (
            len(store.version_rows(session, parent_version.number)) if parent_version else 0
        )
        keys = store.image_keys_of(session, [row.sha256 for row in rows[:EXAMPLES]])
    excluded = [row for row in rows if row.exclusion is not None]
    where = f"version {parent_version.number}" if parent_version else "an empty version"
    summary = (
        f"Starts a draft from {where} ({parent_rows} images) with {len(rows)} fixed images"
        + (f", {len(excluded)} of them marked conflicting (excluded)" if excluded else "")
        + "."
    )
    notes = []
    unarchived = sum(1 for row in rows if not archive.has(row.sha256))
    if unarchived:
        notes.append(f"{unarchived} pulled images are not archived yet: the pull fetches them.")
    return StepPreview(
        step=PULL,
        summary=summary,
        counts={
            "by class": _count(row.image_type for row in rows),
            "by advertiser": _count(row.advertiser or "(none)" for row in rows),
            "by analyst": _count(_fix_user(row.origin) for row in rows),
        },
        examples=tuple(_example(row, keys, archive, row.origin) for row in rows[:EXAMPLES]),
        warnings=() if rows else ("No team fix since the cut-off: the draft adds nothing.",),
        notes=tuple(notes),
    )


def start_draft(
    sessions: sessionmaker[Session],
    actor: Actor | None,
    archive: ArchiveStore,
    parent: int | str | None,
    since: datetime | None,
    seed: int,
    *,
    client: GuardedClient | None = None,
    progress: Progress | None = None,
) -> DraftView:
    """Pull the team fixes since the parent's cut-off (and after ``since``) into a new draft.

    The pulled images not archived yet are fetched first with ``client`` (outside the
    transaction); the draft is stored in one transaction. Its recipe has no step yet: the
    manifest is the parent's rows plus the new ones.

    Args:
        parent: A version number, ``"latest"`` (the newest frozen version) or None.
        since: Only fixes made after this moment (timezone-aware), or None.
        seed: The recipe's random seed (the split's).
        client: Fetches the images missing from the archive; None fetches nothing.

    Raises:
        PermissionDenied: ``actor`` may not curate datasets.
        NotFoundError: no such parent.
        Conflict: the parent is a draft, or a draft exists already (one draft at a time).
        InvalidInput: a naive ``since``.
    """
    actor = require(actor, Permission.MODELS)
    _check_since(since)
    report = progress or (lambda _done, _total: None)
    if client is not None:
        with sessions() as session:
            parent_version = _resolve_parent(session, parent)
            rows = pull_fixes(
                session, archive, since=since, after_fix_id=_parent_cutoff(parent_version)
            )
        report(0, 1)
        archive_pending(sessions, archive, client, sha256s={row.sha256 for row in rows})
        report(1, 1)
    with sessions.begin() as session:
        _no_open_draft(session)
        parent_version = _resolve_parent(session, parent)
        parent_manifest = Manifest()
        if parent_version is not None:
            parent_manifest = load_manifest(session, parent_version.number)
        after = _parent_cutoff(parent_version)
        until = store.max_fix_id(session)
        new_rows = pull_fixes(session, archive, since=since, after_fix_id=after, until_fix_id=until)
        recipe = Recipe(
            seed=seed,
            parent=str(parent_version.number) if parent_version is not None else None,
            cutoff=since,
        )
        if client is not None:
            # As the CLI's build: a fixed image the archive could not get (its CDN moved it
            # before the archiving round ran) is dropped with its reason, as a recorded decision.
            unarchived = [
                Decision(row.sha256, DROP, reason=NOT_ARCHIVED)
                for row in new_rows
                if not archive.has(row.sha256)
            ]
            if unarchived:
                recipe = recipe.with_step(PruneStep(tuple(unarchived)), before_split=False)
        manifest = replay(recipe, CurationInputs(parent=parent_manifest, new_rows=tuple(new_rows)))
        pulled = _applied(PULL, len(recipe.steps), {"seed": seed})
        stored = store_manifest(
            session,
            manifest,
            parent=parent_version,
            recipe=_recipe_column(recipe, [pulled], {}),
            inputs=fixes_window(after, until, since, new_rows),
            created_by=actor.username,
        )
        return _view(session, stored)


def preview_step(
    sessions: sessionmaker[Session],
    actor: Actor | None,
    archive: ArchiveStore,
    number: int,
    params: StepParams,
    *,
    models_dir: Path | None = None,
    progress: Progress | None = None,
) -> StepPreview:
    """What applying the step of ``params`` to draft ``number`` would do; nothing is stored.

    Args:
        models_dir: Where the Image Type model is, for the prune review's label-issue ranking
            (embeddings of the archived images); None skips the ranking.

    Raises:
        PermissionDenied: ``actor`` may not curate datasets.
        NotFoundError: no such version.
        Conflict: it is frozen, or the step is not the next one.
        InvalidInput: bad parameters.
    """
    require(actor, Permission.MODELS)
    step = step_of(params)
    with sessions() as session:
        version = store.get_version(session, number)
        view = _view(session, version)
        _check_next(view, step)
        manifest = load_manifest(session, number)
    before = manifest
    recipe = Recipe.from_json(view.recipe)
    steps, extra = _recipe_steps(params, view, manifest, archive, progress)
    after = manifest
    for recipe_step in steps:
        after = recipe_step.apply(after, recipe.seed, CurationInputs())
    if isinstance(params, SizeParams):
        return _size_preview(before, after, archive, sessions, params)
    if isinstance(params, PruneParams):
        return _prune_preview(before, after, view, archive, sessions, models_dir, recipe.seed)
    if isinstance(params, CropParams):
        return _crop_preview(before, extra, archive, sessions)
    if isinstance(params, SplitParams):
        return _split_preview(after, params)
    if isinstance(params, ExtendParams):
        return _extend_preview(before, view)
    return _balance_preview(before, params)


def apply_step(
    sessions: sessionmaker[Session],
    actor: Actor | None,
    archive: ArchiveStore,
    number: int,
    params: StepParams,
    *,
    progress: Progress | None = None,
) -> DraftView:
    """Apply the next step to draft ``number``: its recipe grows, the manifest is replayed and
    stored, in one transaction (the crop boxes are found from the pixels first, outside it).

    Raises:
        PermissionDenied: ``actor`` may not curate datasets.
        NotFoundError: no such version.
        Conflict: it is frozen, the step is not the next one, or the draft changed meanwhile.
        InvalidInput: bad parameters.
    """
    require(actor, Permission.MODELS)
    step = step_of(params)
    with sessions() as session:
        seen = store.get_version(session, number)
        view = _view(session, seen)
        _check_next(view, step)
        manifest = load_manifest(session, number)
    steps, _ = _recipe_steps(params, view, manifest, archive, progress)
    with sessions.begin() as session:
        version = store.lock_draft(session, number)
        # The crop boxes were found outside the transaction: refuse if the draft moved since.
        if dict(version.recipe) != seen.recipe or version.manifest_sha256 != seen.manifest_sha256:
            raise Conflict(f"version {number} changed meanwhile: look at it again, then apply")
        page = _page(version.recipe)
        recipe = Recipe.from_json(str(version.recipe["recipe"]))
        for recipe_step in steps:
            recipe = recipe.with_step(recipe_step, before_split=False)
        applied = [*page["applied"], _applied(step, len(steps), _params_json(params))]
        pending = {} if step == PRUNE else page["pending"]
        if step == PRUNE:
            # The decisions are in the recipe now; undoing the step gives them back as pending.
            applied[-1]["decisions"] = page["pending"]
        return _store(session, archive, number, recipe, applied, pending)


def undo_step(
    sessions: sessionmaker[Session], actor: Actor | None, archive: ArchiveStore, number: int
) -> DraftView | None:
    """Undo draft ``number``'s last step: its recipe steps are dropped and the manifest replayed.

    Undoing the pull deletes the draft (returns None). Undoing the prune gives its decisions back
    as pending; the relabels' team fixes stay in the history (they are the team's labels).

    Raises:
        PermissionDenied: ``actor`` may not curate datasets.
        NotFoundError: no such version.
        Conflict: it is frozen.
    """
    require(actor, Permission.MODELS)
    with sessions.begin() as session:
        version = store.lock_draft(session, number)
        page = _page(version.recipe)
        applied = list(page["applied"])
        last = applied.pop() if applied else None
        if last is None or last["step"] == PULL:
            store.delete_draft(session, number)
            return None
        recipe = Recipe.from_json(str(version.recipe["recipe"]))
        keep = len(recipe.steps) - int(last["recipe_steps"])
        recipe = dataclasses.replace(recipe, steps=recipe.steps[:keep])
        pending = dict(page["pending"])
        if last["step"] == PRUNE:
            pending = {**last.get("decisions", {}), **pending}
        return _store(session, archive, number, recipe, applied, pending)


def decide(
    sessions: sessionmaker[Session],
    actor: Actor | None,
    number: int,
    requests: Sequence[DecisionRequest],
    *,
    ml: FixPushTarget | None = None,
) -> DecisionOutcome:
    """Record prune decisions about draft ``number``'s images as pending, in one transaction.

    A relabel is a team fix: it is recorded in the history (:func:`tagging.fixes.record_fixes`)
    in the same transaction, on the newest item showing the image, and pushed to ``ml`` after the
    commit. A keep or relabel of an image excluded as a conflicting near-duplicate also keeps it
    (the reviewer resolved the conflict).

    The findings the relabels touch are **not** refreshed here (the detectors would run inside
    the user's wait): the outcome names the advertisers, and the caller refreshes them, in the
    background (:class:`tagging.detectors.refresh.BackgroundRefresh`) or with
    :func:`tagging.detectors.refresh.refresh_findings`.

    Raises:
        PermissionDenied: ``actor`` may not curate datasets (or record fixes, for a relabel).
        NotFoundError: no such version.
        Conflict: it is frozen, or the prune step is applied already (undo it first).
        InvalidInput: an image not in the draft, a drop without a reason, a relabel without an
            Image Type, or an image no advertiser shows (it cannot be relabelled: drop it).
    """
    actor = require(actor, Permission.MODELS)
    fix_ids: list[int] = []
    advertiser_ids: set[int] = set()
    with sessions.begin() as session:
        version = store.lock_draft(session, number)
        page = _page(version.recipe)
        if PRUNE in [a["step"] for a in page["applied"]]:
            raise Conflict("the prune step is applied: undo it to change its decisions")
        if _next_of([a["step"] for a in page["applied"]]) != PRUNE:
            raise Conflict("apply the steps before Prune first")
        rows = {row["sha256"]: row for row in store.version_rows(session, number)}
        pending: dict[str, list[dict[str, Any]]] = dict(page["pending"])
        for request in requests:
            row = rows.get(request.sha256)
            if row is None:
                raise InvalidInput(f"image {request.sha256[:12]}… is not in version {number}")
            if request.action == "undecided":
                pending.pop(request.sha256, None)
                continue
            decisions = _decisions(session, actor, request, row, fix_ids, advertiser_ids)
            pending[request.sha256] = [_decision_json(d) for d in decisions]
        stored = _store_page(session, version, page["applied"], pending)
    push_error = None
    if fix_ids and ml is not None:
        pushed = push_pending(sessions, ml, fix_ids=fix_ids)
        if pushed.synced < len(fix_ids):
            push_error = pushed.error or "the ML server did not acknowledge every fix"
    return DecisionOutcome(
        draft=stored,
        fix_ids=tuple(fix_ids),
        push_error=push_error,
        advertiser_ids=tuple(sorted(advertiser_ids)),
    )


def freeze(sessions: sessionmaker[Session], actor: Actor | None, number: int) -> VersionSummary:
    """Freeze draft ``number`` once every page step is applied: the recipe and the manifest's
    SHA-256 are recorded for good (the stored rows are hashed again first).

    Raises:
        PermissionDenied: ``actor`` may not curate datasets.
        NotFoundError: no such version.
        Conflict: it is frozen already, a step is not applied, decisions are pending, or its
            rows do not give its recorded SHA-256.
    """
    actor = require(actor, Permission.MODELS)
    with sessions.begin() as session:
        version = store.lock_draft(session, number)
        page = _page(version.recipe)
        missing = [s for s in PAGE_STEPS if s not in [a["step"] for a in page["applied"]]]
        if missing:
            raise Conflict(f"apply every step before freezing: {STEP_TITLES[missing[0]]} is next")
        manifest = load_manifest(session, number)
        if manifest.manifest_sha256() != version.manifest_sha256:
            raise Conflict(f"version {number}'s rows do not match its manifest SHA-256")
        return store.freeze_version(session, number, actor.username)


def thumbnail(
    archive: ArchiveStore, sha256: str, crop: Box | None = None, side: int = 240
) -> bytes:
    """A JPEG thumbnail of an archived image, cut to ``crop`` first (the crop's "after").

    Raises:
        NotFoundError: not archived.
        InvalidInput: the archived bytes do not decode.
    """
    try:
        with PILImage.open(io.BytesIO(archive.get(sha256))) as image:
            picture = image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"archived image {sha256[:12]}… cannot be decoded: {exc}") from exc
    if crop is not None:
        picture = picture.crop(crop)
    picture.thumbnail((side, side))
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=85)
    return out.getvalue()


# --- previews ------------------------------------------------------------------------------------


def _size_preview(
    before: Manifest,
    after: Manifest,
    archive: ArchiveStore,
    sessions: sessionmaker[Session],
    params: SizeParams,
) -> StepPreview:
    dropped = _newly_excluded(before, after)
    with sessions() as session:
        keys = store.image_keys_of(session, [row.sha256 for row in dropped[:EXAMPLES]])
    return StepPreview(
        step=SIZE,
        summary=(
            f"Excludes {len(dropped)} of {len(before.included())} training images smaller than "
            f"{params.min_width}x{params.min_height}."
        ),
        counts={
            "dropped by class": _count(row.image_type for row in dropped),
            "dropped by advertiser": _count(row.advertiser or "(none)" for row in dropped),
        },
        examples=tuple(
            _example(row, keys, archive, f"{row.width}x{row.height}") for row in dropped[:EXAMPLES]
        ),
    )


def _prune_preview(
    before: Manifest,
    after: Manifest,
    view: DraftView,
    archive: ArchiveStore,
    sessions: sessionmaker[Session],
    models_dir: Path | None,
    seed: int,
) -> StepPreview:
    clustered = DuplicatesStep().apply(before, seed, CurationInputs())
    conflicts = conflicting_clusters(clustered)
    notes: list[str] = []
    issues: list[LabelIssue] = []
    if models_dir is not None:
        issues, note = _cached_ranking(clustered, archive, models_dir, seed)
        if note:
            notes.append(note)
    else:
        notes.append("No model given: likely label errors are not ranked.")
    by_sha = clustered.by_sha256()
    order: list[tuple[ManifestRow, str, int, LabelIssue | None]] = []
    seen: set[str] = set()
    for cluster in conflicts:
        for row in cluster.rows:
            order.append((row, "conflict", cluster.cluster, None))
            seen.add(row.sha256)
    for issue in issues[:REVIEW_ISSUES]:
        if issue.sha256 not in seen:
            order.append((by_sha[issue.sha256], "label issue", issue.rank, issue))
            seen.add(issue.sha256)
    # Pending decisions about other images stay visible, so a reviewer can change them.
    for sha in sorted(view.pending):
        if sha not in seen and sha in by_sha:
            order.append((by_sha[sha], "decided", 0, None))
    with sessions() as session:
        keys = store.image_keys_of(session, [row.sha256 for row, *_ in order])
    after_rows = after.by_sha256()
    review = tuple(
        ReviewRow(
            example=_example(row, keys, archive, f"{kind} {group}"),
            kind=kind,
            group=group,
            suggested=issue.suggested if issue else None,
            confidence=round(issue.self_confidence, 3) if issue else None,
            page_url=row.page_url,
            exclusion=after_rows[row.sha256].exclusion,
            decision=_decision_text(view.pending.get(row.sha256, ())),
        )
        for row, kind, group, issue in order
    )
    excluded = _newly_excluded(before, after)
    clusters = duplicate_clusters(clustered)
    relabels = sum(1 for ds in view.pending.values() for d in ds if d.action == RELABEL)
    summary = (
        f"Numbers {len(clusters)} near-duplicate clusters, excludes {len(excluded)} images "
        f"({len(conflicts)} conflicting clusters; undecided conflicting images are left out) and "
        f"applies {len(view.pending)} decisions ({relabels} relabels)."
    )
    counts = {
        "excluded by reason": exclusions_by_reason(Manifest(excluded)),
        "decisions": _count(d.action for ds in view.pending.values() for d in ds[:1]),
    }
    return StepPreview(
        step=PRUNE,
        summary=summary,
        counts=counts,
        review=review,
        advertiser_issues=issues_by_advertiser(clustered, issues) if issues else {},
        notes=tuple(notes),
    )


_RANKINGS: dict[tuple[str, str, str, int], tuple[list[LabelIssue], str | None]] = {}
_RANKINGS_LOCK = threading.Lock()
_RANKINGS_KEPT = 8


def _cached_ranking(
    manifest: Manifest, archive: ArchiveStore, models_dir: Path, seed: int
) -> tuple[list[LabelIssue], str | None]:
    """:func:`rank_likely_errors`, remembered per (archived training rows, model, seed).

    Every prune decision shows the preview again, and the ranking (an embedding pass and
    cross-validated cleanlab, seconds) depends on none of them: only on the rows before the prune,
    which of them are archived, the production model and the seed.
    """
    archived = hashlib.sha256(
        "".join(r.sha256 for r in manifest.included() if archive.has(r.sha256)).encode()
    ).hexdigest()
    key = (manifest.manifest_sha256() + archived, str(models_dir), _model_stamp(models_dir), seed)
    with _RANKINGS_LOCK:
        if key in _RANKINGS:
            return _RANKINGS[key]
    ranking = rank_likely_errors(manifest, archive, models_dir, seed=seed)
    with _RANKINGS_LOCK:
        while len(_RANKINGS) >= _RANKINGS_KEPT:
            _RANKINGS.pop(next(iter(_RANKINGS)))
        _RANKINGS[key] = ranking
    return ranking


def _model_stamp(models_dir: Path) -> str:
    """Changes when another model is promoted (the production pointer's contents)."""
    from tagging.ml.model import production_version  # torch: only once a model is asked for

    try:
        return production_version(models_dir) or ""
    except (OSError, ModelError):
        return ""


def _crop_preview(
    before: Manifest,
    boxes: Mapping[str, Box],
    archive: ArchiveStore,
    sessions: sessionmaker[Session],
) -> StepPreview:
    rows = before.by_sha256()
    cropped = [rows[sha] for sha in sorted(boxes)]
    with sessions() as session:
        keys = store.image_keys_of(session, [row.sha256 for row in cropped[:EXAMPLES]])
    unarchived = sum(
        1 for row in before.included() if row.crop is None and not archive.has(row.sha256)
    )
    notes = (f"{unarchived} training images are not archived: they are trained whole.",)
    return StepPreview(
        step=CROP,
        summary=f"Records a border crop for {len(cropped)} images (the embedded border trim).",
        counts={"cropped by class": _count(row.image_type for row in cropped)},
        examples=tuple(
            dataclasses.replace(
                _example(row, keys, archive, _box_text(row, boxes[row.sha256])),
                crop=boxes[row.sha256],
            )
            for row in cropped[:EXAMPLES]
        ),
        notes=notes if unarchived else (),
    )


def _split_preview(after: Manifest, params: SplitParams) -> StepPreview:
    report = balance(after)
    leaks = find_leaks(after)
    named = {t.advertiser for t in params.named_test_sets}
    pinned = sum(1 for row in after.included() if row.advertiser in named)
    train = sum(report.by_split["train"].values())
    test = sum(report.by_split["test"].values())
    summary = (
        f"Assigns {train} images to train and {test} to test (stratified by class, grouped by "
        f"near-duplicate cluster and vehicle page)"
        + (f"; {pinned} images of named test sets go to test" if pinned else "")
        + "."
    )
    warnings = tuple(f"leak: {leak.train[:12]}… / {leak.test[:12]}… ({leak.why})" for leak in leaks)
    return StepPreview(
        step=SPLIT,
        summary=summary,
        counts={f"{split} by class": counts for split, counts in report.by_split.items()},
        balance=report,
        warnings=warnings,
    )


def _extend_preview(manifest: Manifest, view: DraftView) -> StepPreview:
    carried = [row for row in manifest if from_parent(row.origin)]
    relabelled = [row for row in carried if "; relabel " in row.origin]
    new = [row for row in manifest if not from_parent(row.origin)]
    excluded = [row for row in manifest if row.exclusion is not None]
    training = len(manifest.included())
    summary = (
        f"Version {view.number} = {len(carried)} parent images + {len(new)} new − "
        f"{len(excluded)} excluded = {training} training images."
    )
    return StepPreview(
        step=EXTEND,
        summary=summary,
        counts={
            "composition": {
                "from the parent": len(carried),
                "parent images relabelled": len(relabelled),
                "new (team fixes)": len(new),
                "excluded": len(excluded),
                "training images": training,
            },
            "excluded by reason": exclusions_by_reason(manifest),
        },
    )


def _balance_preview(manifest: Manifest, params: BalanceParams) -> StepPreview:
    if not 0.0 <= params.min_share < 1.0:
        raise InvalidInput("the smallest share must be between 0 and 1")
    report = balance(manifest, min_share=params.min_share)
    return StepPreview(
        step=BALANCE,
        summary=(
            f"Records the balance check (classes under {params.min_share:.0%} of a split warned "
            f"about): {len(report.warnings)} warnings."
        ),
        counts={f"{split} by class": counts for split, counts in report.by_split.items()},
        balance=report,
        warnings=report.warnings,
    )


# --- helpers -------------------------------------------------------------------------------------


def _recipe_steps(
    params: StepParams,
    view: DraftView,
    manifest: Manifest,
    archive: ArchiveStore,
    progress: Progress | None,
) -> tuple[list[Step], dict[str, Box]]:
    """The recipe steps a page step adds (and, for the crop, the boxes found)."""
    if isinstance(params, SizeParams):
        if params.min_width < 0 or params.min_height < 0:
            raise InvalidInput("minimum sizes must not be negative")
        return [SizeStep(params.min_width, params.min_height)], {}
    if isinstance(params, PruneParams):
        decisions = tuple(d for sha in sorted(view.pending) for d in view.pending[sha])
        return [DuplicatesStep(), DropConflictsStep(), PruneStep(decisions)], {}
    if isinstance(params, CropParams):
        if params.model != "borders":
            raise InvalidInput(f"unknown crop model {params.model!r}: only borders is embedded")
        # The parent's rows were looked at when the parent was made: only the new ones now.
        new = [r for r in manifest.included() if r.crop is None and not from_parent(r.origin)]
        boxes = border_boxes(archive, new, progress)
        return ([crop_step(boxes, params.model)] if boxes else []), boxes
    if isinstance(params, SplitParams):
        if not 0.0 < params.test_fraction < 1.0:
            raise InvalidInput("the test share must be between 0 and 1")
        return [
            SplitStep(test_fraction=params.test_fraction, named_test_sets=params.named_test_sets)
        ], {}
    if isinstance(params, BalanceParams) and not 0.0 <= params.min_share < 1.0:
        raise InvalidInput("the smallest share must be between 0 and 1")
    return [], {}  # extend and balance are reviews: the recipe does not change


def _decisions(
    session: Session,
    actor: Actor,
    request: DecisionRequest,
    row: Mapping[str, Any],
    fix_ids: list[int],
    advertiser_ids: set[int],
) -> list[Decision]:
    """The recipe decisions of a request (recording the relabel's team fix: its ids and whose
    items it changed are added to ``fix_ids`` and ``advertiser_ids``)."""
    conflict = bool(row["exclusion"]) and str(row["exclusion"]).startswith("conflicting")
    if request.action == KEEP:
        return [Decision(request.sha256, KEEP)]
    if request.action == DROP:
        reason = (request.reason or "").strip()
        if not reason:
            raise InvalidInput(f"dropping {request.sha256[:12]}… needs a reason")
        return [Decision(request.sha256, DROP, reason=f"pruned: {reason}")]
    if request.action != RELABEL:
        raise InvalidInput(f"unknown decision {request.action!r}")
    if request.image_type not in IMAGE_TYPES:
        raise InvalidInput(f"relabelling needs an Image Type: one of {', '.join(IMAGE_TYPES)}")
    if request.color is not None and request.color not in COLORS:
        raise InvalidInput(f"unknown color {request.color!r}")
    origin = _record_relabel(session, actor, request, fix_ids, advertiser_ids)
    color = None if request.image_type == PLACEHOLDER else request.color
    decisions = [
        Decision(request.sha256, RELABEL, image_type=request.image_type, color=color, origin=origin)
    ]
    # Any conflict is resolved by the reviewer's look at it; nothing else un-excludes.
    if conflict or not row["exclusion"]:
        decisions.append(Decision(request.sha256, KEEP))
    return decisions


def _record_relabel(
    session: Session,
    actor: Actor,
    request: DecisionRequest,
    fix_ids: list[int],
    advertiser_ids: set[int],
) -> str:
    """Record the relabel as a team fix on the newest item showing the image; its origin."""
    item_id = store.newest_item_showing(session, request.sha256)
    if item_id is None:
        raise InvalidInput(
            f"no advertiser shows image {request.sha256[:12]}…: it cannot be relabelled "
            "as a team fix (drop it instead)"
        )
    changes = [FixChange(item_id, "image_type", request.image_type)]
    if request.color is not None and request.image_type != PLACEHOLDER:
        changes.append(FixChange(item_id, "color", request.color))
    # No findings refresh in the user's transaction: decide's caller asks for one afterwards.
    outcome = record_fixes(session, actor, changes, refresh=False)
    fix_ids.extend(outcome.fix_ids)
    advertiser_ids.update(outcome.advertiser_ids)
    # The history row of the Image Type (the latest one, also when it had that value already).
    fix = store.latest_type_fix(session, request.sha256)
    if fix is None:
        raise InvalidInput(f"image {request.sha256[:12]}… has no Image Type fix to relabel from")
    return origin_fix(fix.id, fix.user)


def _view(session: Session, version: VersionSummary) -> DraftView:
    page = _page(version.recipe)
    named: tuple[NamedTestSet, ...] = ()
    if version.parent is not None:
        parent = store.get_version(session, version.parent)
        if "recipe" in parent.recipe:
            for step in Recipe.from_json(str(parent.recipe["recipe"])).steps:
                if isinstance(step, SplitStep):
                    named = step.named_test_sets
    return DraftView(
        version=version,
        applied=tuple(a["step"] for a in page["applied"]),
        params={a["step"]: dict(a.get("params", {})) for a in page["applied"]},
        pending={
            sha: tuple(Decision(**d) for d in ds) for sha, ds in sorted(page["pending"].items())
        },
        recipe=str(version.recipe.get("recipe", "")),
        named_test_sets=named,
    )


def _page(recipe_column: Mapping[str, Any]) -> dict[str, Any]:
    """The page state of a version's recipe column (a version built elsewhere: every step)."""
    page = recipe_column.get("page")
    if not isinstance(page, Mapping):
        return {"applied": [_applied(step, 0, {}) for step in PAGE_STEPS], "pending": {}}
    return {"applied": list(page.get("applied", [])), "pending": dict(page.get("pending", {}))}


def _recipe_column(
    recipe: Recipe, applied: list[dict[str, Any]], pending: Mapping[str, Any]
) -> dict[str, Any]:
    return {"recipe": recipe.to_json(), "page": {"applied": applied, "pending": dict(pending)}}


def _applied(step: str, recipe_steps: int, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"step": step, "recipe_steps": recipe_steps, "params": dict(params)}


def _store(
    session: Session,
    archive: ArchiveStore,
    number: int,
    recipe: Recipe,
    applied: list[dict[str, Any]],
    pending: Mapping[str, Any],
) -> DraftView:
    """Replay ``recipe`` over the draft's inputs and store it with its page state."""
    manifest = replay(recipe, _inputs(session, archive, number))
    stored = store.replace_draft(
        session,
        number,
        recipe=_recipe_column(recipe, applied, pending),
        rows=(row_to_store(row) for row in manifest),
        manifest_sha256=manifest.manifest_sha256(),
        counts=manifest_counts(manifest),
    )
    return _view(session, stored)


def _store_page(
    session: Session,
    version: VersionSummary,
    applied: list[dict[str, Any]],
    pending: Mapping[str, Any],
) -> DraftView:
    """Store new page state only (the rows do not change: no rewrite of the manifest)."""
    page = {"applied": applied, "pending": dict(pending)}
    stored = store.set_draft_recipe(session, version.number, {**version.recipe, "page": page})
    return _view(session, stored)


def _inputs(session: Session, archive: ArchiveStore, number: int) -> CurationInputs:
    """The draft's inputs, read again: the parent's manifest and the recorded window of fixes."""
    version = store.get_version(session, number)
    parent = load_manifest(session, version.parent) if version.parent is not None else Manifest()
    window = version.inputs
    cutoff = window.get("cutoff")
    rows = pull_fixes(
        session,
        archive,
        since=datetime.fromisoformat(str(cutoff)) if cutoff else None,
        after_fix_id=int(window.get("after_fix_id") or 0),
        until_fix_id=int(window.get("until_fix_id") or 0),
    )
    return CurationInputs(parent=parent, new_rows=tuple(rows))


def _no_open_draft(session: Session) -> None:
    newest = store.latest_version(session, frozen=False)
    if newest is not None and newest.state == DatasetState.DRAFT:
        raise Conflict(
            f"version {newest.number} is a draft: finish or undo it before starting another"
        )


def _resolve_parent(session: Session, parent: int | str | None) -> VersionSummary | None:
    if parent is None:
        return None
    if parent == LATEST:
        return store.latest_version(session, frozen=True)
    try:
        number = int(parent)
    except ValueError:
        raise InvalidInput(f"a parent is a version number or 'latest', got {parent!r}") from None
    found = store.get_version(session, number)
    if found.state != DatasetState.FROZEN:
        raise Conflict(f"version {number} is a draft: freeze it first")
    return found


def _parent_cutoff(parent: VersionSummary | None) -> int:
    """The parent's last fix id: a child pulls only the fixes after it."""
    return int(parent.inputs.get("until_fix_id") or 0) if parent is not None else 0


def _check_since(since: datetime | None) -> None:
    if since is not None and since.utcoffset() is None:
        raise InvalidInput("the cut-off date must have a time zone")


def _check_next(view: DraftView, step: str) -> None:
    if view.frozen:
        raise Conflict(f"version {view.number} is frozen: it never changes")
    if view.next_step != step:
        expected = STEP_TITLES[view.next_step] if view.next_step else "nothing (freeze it)"
        raise Conflict(f"{STEP_TITLES[step]} is not the next step: {expected} is")


def _next_of(applied: Sequence[str]) -> str | None:
    return next((step for step in PAGE_STEPS if step not in applied), None)


def _example(
    row: ManifestRow, keys: Mapping[str, str], archive: ArchiveStore, note: str
) -> Example:
    return Example(
        sha256=row.sha256,
        image_key=keys.get(row.sha256),
        archived=archive.has(row.sha256),
        image_type=row.image_type,
        color=row.color,
        advertiser=row.advertiser,
        note=note,
    )


def _newly_excluded(before: Manifest, after: Manifest) -> list[ManifestRow]:
    """The rows ``after`` excludes that ``before`` did not (with their new reason)."""
    was = before.by_sha256()
    return [row for row in after if row.exclusion is not None and was[row.sha256].exclusion is None]


def _count(values: Iterable[str]) -> dict[str, int]:
    """Counts, largest first (then by name)."""
    return dict(sorted(Counter(values).items(), key=lambda item: (-item[1], item[0])))


def _fix_user(origin: str) -> str:
    """``alice`` from ``fix:17 by alice``."""
    return origin.split(" by ", 1)[1] if " by " in origin else origin


def _box_text(row: ManifestRow, box: Box) -> str:
    left, top, right, bottom = box
    return f"{row.width}x{row.height} → {right - left}x{bottom - top}"


def _decision_json(decision: Decision) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(decision).items() if v is not None}


def _decision_text(decisions: Sequence[Decision]) -> str | None:
    if not decisions:
        return None
    first = decisions[0]
    if first.action == DROP:
        return f"drop ({(first.reason or '').removeprefix('pruned: ')})"
    if first.action == RELABEL:
        return f"relabel → {first.image_type}"
    return "keep"


def _params_json(params: StepParams) -> dict[str, Any]:
    data = dataclasses.asdict(params)
    if isinstance(params, SplitParams):
        data["named_test_sets"] = [dataclasses.asdict(t) for t in params.named_test_sets]
    return data


__all__ = [
    "BALANCE",
    "CROP",
    "EXTEND",
    "PAGE_STEPS",
    "PRUNE",
    "PULL",
    "SIZE",
    "SPLIT",
    "STEP_TITLES",
    "BalanceParams",
    "CropParams",
    "DecisionOutcome",
    "DecisionRequest",
    "DraftView",
    "Example",
    "ExtendParams",
    "PruneParams",
    "ReviewRow",
    "SizeParams",
    "SplitParams",
    "StepParams",
    "StepPreview",
    "apply_step",
    "current_draft",
    "decide",
    "draft_view",
    "freeze",
    "last_retrain",
    "preview_pull",
    "preview_step",
    "start_draft",
    "step_of",
    "thumbnail",
    "undo_step",
]
