"""Dataset curation as user actions: pull, build, freeze, list, show, export, replay, archive.

The only curation module that touches the database (``db.datasets``) and the network (the
archive's fetches, through the guarded client). The steps themselves are the pure functions of
:mod:`tagging.curation`, run by :func:`tagging.curation.recipe.replay`.

A version records its **inputs** beside its recipe: the fix window (``after_fix_id`` <
id <= ``until_fix_id``, and the ``cutoff`` date when one was given) and the SHA-256 of the new rows
that window gave. A replay pulls the same window again, so later fixes never change it; when the
inputs' hash differs anyway (an accepted override was re-opened), the report says the inputs, not
the code, changed.

Building and freezing need :attr:`db.accounts.Permission.MODELS` (developers and admins).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.orm import Session, sessionmaker

from db import datasets as store
from db.accounts import Actor, Permission, require
from db.datasets import PulledImage, VersionSummary
from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER
from tagging.curation.balance import balance, exclusions_by_reason
from tagging.curation.crop import crop_image, find_crops
from tagging.curation.duplicates import CONFLICT, embedding_pairs, phash_pairs
from tagging.curation.groups import components
from tagging.curation.label_issues import LabelIssue, issues_by_advertiser, rank_label_issues
from tagging.curation.manifest import (
    SPLITS,
    TEST,
    TRAIN,
    Manifest,
    ManifestRow,
    origin_fix,
    origin_generated,
)
from tagging.curation.prune import DROP, Decision
from tagging.curation.recipe import (
    CurationInputs,
    PruneStep,
    Recipe,
    SplitStep,
    crop_step,
    replay,
    stages,
)
from tagging.curation.split import NamedTestSet, find_leaks
from tagging.datasets.archive import ArchiveStore
from tagging.detectors.remedies import ACCEPTED
from tagging.errors import (
    Conflict,
    FetchError,
    ImageDecodeError,
    InvalidInput,
    ModelError,
    NotFoundError,
)
from tagging.ingest.fetch import GuardedClient
from tagging.ingest.images import decode_image, hash_distance, perceptual_hash
from tagging.ingest.originals import MAX_ORIGINAL_BYTES

Progress = Callable[[int, int], None]
"""Called with ``(done, total)`` of the current phase (archiving, then building)."""

Phase = Callable[[str], None]
"""Called with the name of each phase of a build as it starts (:data:`BUILD_PHASES`): a
background job shows it beside its progress."""

ARCHIVING = "archiving images"
CROPPING = "finding borders"
EMBEDDING = "embedding"
RANKING = "cleanlab"
SPLITTING = "split"
STORING = "storing"
BUILD_PHASES = (ARCHIVING, CROPPING, EMBEDDING, RANKING, SPLITTING, STORING)
"""The phases of :func:`build_version`, in order (the model's two only with a model)."""

MARKED_CONFLICTING = "marked conflicting"
"""The exclusion of an image a reviewer marked as a conflicting example on Weird results."""

LATEST = "latest"

GENERATED = "generated"
"""The ``kind`` of a first version's inputs: the generated set the production model learnt on."""

EMBEDDING_THRESHOLD = 0.998
"""Cosine similarity of the production model's penultimate features from which two training rows
may be near-duplicates to the model."""

EMBEDDING_MAX_PHASH = 12
"""The pHash distance an embedding pair must also be within.

Measured on the production TypeNet (8 × 8 = 64 features): two *different* renders of one class
have a nearest neighbour at cosine 0.998 (median; 0.9998 at the 90th percentile), a re-encoded
and resized copy 0.999, a mirror 0.996. Its embedding alone cannot tell a copy from a look-alike,
so it only confirms what a looser pHash suggests (re-encodes, resizes, watermarks that move the
hash past :data:`tagging.curation.duplicates.MAX_DISTANCE`), instead of linking half a class."""

LABEL_ISSUES_KEPT = 25
"""How many of the ranked likely label errors a version's report keeps (the page shows them)."""

MIN_ROWS_FOR_ISSUES = 12
"""Fewer training rows than this give the label-issue ranking nothing to learn from (the page's
ranking, :func:`rank_likely_errors`)."""


@dataclass(frozen=True)
class VersionReport:
    """A stored version and what it holds (``dataset build``, ``show``).

    Attributes:
        version: The version as stored.
        by_split: ``split → Image Type → training rows``.
        exclusions: Excluded rows by kind of reason.
        warnings: Balance warnings, and images the build could not use.
        prune: What the model-assisted prune found (:func:`model_prune`), empty when it did not
            run: the embedding conflicts it excluded, the ranked likely label errors and the
            advertisers whose fixes the ranking flags most, and the inference time.
    """

    version: VersionSummary
    by_split: dict[str, dict[str, int]]
    exclusions: dict[str, int]
    warnings: tuple[str, ...] = ()
    prune: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``--json``)."""
        v = self.version
        return {
            "version": v.number,
            "parent": v.parent,
            "state": v.state,
            "created_by": v.created_by,
            "created_at": v.created_at.isoformat(),
            "frozen_at": v.frozen_at.isoformat() if v.frozen_at else None,
            "manifest_sha256": v.manifest_sha256,
            "rows": v.counts.get("rows"),
            "by_split": self.by_split,
            "exclusions": self.exclusions,
            "warnings": list(self.warnings),
            "prune": self.prune,
            "recipe": v.recipe,
            "inputs": v.inputs,
        }


@dataclass(frozen=True)
class ReplayReport:
    """What :func:`replay_version` found."""

    version: int
    stored_sha256: str
    replayed_sha256: str
    same_inputs: bool

    @property
    def same(self) -> bool:
        """Whether the replay gave a byte-identical manifest."""
        return self.stored_sha256 == self.replayed_sha256

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``--json``)."""
        return {
            "version": self.version,
            "same": self.same,
            "stored_sha256": self.stored_sha256,
            "replayed_sha256": self.replayed_sha256,
            "same_inputs": self.same_inputs,
        }


@dataclass
class ArchiveReport:
    """What one :func:`archive_pending` round did."""

    stored: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_version` wrote."""

    out_dir: Path
    images: int
    by_split: dict[str, dict[str, int]]


# --- rows ----------------------------------------------------------------------------------------


def row_to_store(row: ManifestRow) -> dict[str, Any]:
    """A manifest row as :mod:`db.datasets` stores it."""
    values = {name: getattr(row, name) for name in store.ROW_FIELDS}
    values["crop"] = ",".join(str(v) for v in row.crop) if row.crop is not None else None
    return values


def row_from_store(values: Mapping[str, Any]) -> ManifestRow:
    """A stored row as a manifest row."""
    crop = None
    if values["crop"]:
        left, top, right, bottom = (int(v) for v in str(values["crop"]).split(","))
        crop = (left, top, right, bottom)
    return ManifestRow(**{**values, "crop": crop})


def load_manifest(session: Session, number: int) -> Manifest:
    """Version ``number``'s manifest.

    Raises:
        NotFoundError: No such version.
    """
    return Manifest(row_from_store(values) for values in store.version_rows(session, number))


def pulled_row(image: PulledImage, archive: ArchiveStore) -> ManifestRow:
    """The manifest row of a pulled image (split unassigned)."""
    color = image.color if image.color in COLORS else None
    if image.image_type == PLACEHOLDER:
        color = None  # a placeholder shows no vehicle: it teaches no color
    return ManifestRow(
        sha256=image.sha256,
        path=archive.key(image.sha256),
        image_type=image.image_type if image.image_type in IMAGE_TYPES else PLACEHOLDER,
        color=color,
        origin=origin_fix(image.fix_id, image.user),
        width=image.width,
        height=image.height,
        advertiser=image.advertiser,
        page_url=image.page_url,
        phash=image.phash,
        exclusion=MARKED_CONFLICTING if image.conflicting else None,
    )


def pull_fixes(
    session: Session,
    archive: ArchiveStore,
    *,
    since: datetime | None = None,
    after_fix_id: int = 0,
    until_fix_id: int | None = None,
) -> list[ManifestRow]:
    """The manifest rows of the team's decisions in a window of fixes, in fix order.

    Team fixes and accepted advertiser overrides (:func:`db.datasets.pulled_images`), with the
    sha256, size and pHash of the ``images`` table, the advertiser and the vehicle page. An image a
    reviewer marked as conflicting comes excluded (:data:`MARKED_CONFLICTING`).
    """
    until = store.max_fix_id(session) if until_fix_id is None else until_fix_id
    pull = store.pulled_images(
        session,
        after_fix_id=after_fix_id,
        until_fix_id=until,
        since=since,
        accepted_reason=ACCEPTED,
    )
    return [pulled_row(image, archive) for image in pull.images]


def inputs_sha256(rows: Iterable[ManifestRow]) -> str:
    """SHA-256 of the new rows in their order (order matters: the last fix wins)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(Manifest([row]).to_csv())
    return digest.hexdigest()


NOT_ARCHIVED = "not archived: the image could not be fetched when the version was built"
"""The exclusion of a fixed image the archive does not hold (its CDN moved or removed it)."""


# --- the use cases -------------------------------------------------------------------------------


def build_version(
    sessions: sessionmaker[Session],
    actor: Actor | None,
    archive: ArchiveStore,
    *,
    parent: int | str | None = LATEST,
    since: datetime | None = None,
    min_size: tuple[int, int] = (0, 0),
    seed: int = 0,
    test_fraction: float = 0.2,
    client: GuardedClient | None = None,
    progress: Progress | None = None,
    named_test_sets: Sequence[NamedTestSet] = (),
    models_dir: Path | None = None,
    phase: Phase | None = None,
) -> VersionReport:
    """Run the automatic steps and store the result as a draft version.

    Pull (the fixes since the parent's cut-off, or since ``since``), archive the pulled images
    that are not archived yet (with ``client``), then extend the parent, drop small images,
    cluster near-duplicates and drop the conflicting ones, crop borders and split.

    With ``models_dir``, the whole prune runs too (:func:`model_prune`): the production model's
    embeddings find the near-duplicates pHash misses (their conflicting clusters are excluded, as
    recorded drop decisions), and cleanlab ranks the likely label errors, which the version's
    report lists for a person to decide on: the automatic build never drops on them.

    Args:
        parent: A version number, ``"latest"`` (the newest frozen version, none for a first
            build) or None (no parent).
        since: Only fixes made after this moment (timezone-aware); default: after the parent's.
        min_size: ``(width, height)`` of the size filter.
        named_test_sets: Per-advertiser test sets, added to those the parent's recipe names (a
            named test set is kept across versions; a new one with the same name replaces it).
        models_dir: Where the production Image Type model is (read locally, never downloaded);
            None: no embedding pass and no label-issue ranking.
        client: Fetches the images missing from the archive; None fetches nothing (the rows stay,
            and the export names what is missing).
        progress: Told ``(done, total)`` within each phase.
        phase: Told each phase's name as it starts (:data:`BUILD_PHASES`).

    Raises:
        PermissionDenied: ``actor`` may not curate datasets.
        NotFoundError: no such parent.
        Conflict: the parent is a draft.
        InvalidInput: a naive ``since``, or bad parameters.
    """
    actor = require(actor, Permission.MODELS)
    report = progress or (lambda _done, _total: None)
    begin = phase or (lambda _name: None)
    with sessions() as session:
        parent_version = _resolve_parent(session, parent)
        parent_manifest = Manifest()
        after = 0
        if parent_version is not None:
            if parent_version.state != "frozen":
                raise Conflict(f"version {parent_version.number} is a draft: freeze it first")
            parent_manifest = load_manifest(session, parent_version.number)
            after = int(parent_version.inputs.get("until_fix_id") or 0)
        if since is not None:
            after = 0  # an explicit date replaces the parent's cut-off
        until = store.max_fix_id(session)
        new_rows = pull_fixes(session, archive, since=since, after_fix_id=after, until_fix_id=until)
    if client is not None:
        begin(ARCHIVING)
        archive_pending(
            sessions, archive, client, sha256s={r.sha256 for r in new_rows}, progress=report
        )
    inherited = _named_test_sets(parent_version)
    recipe = Recipe.default(
        seed=seed,
        parent=str(parent_version.number) if parent_version is not None else None,
        cutoff=since,
        min_size=min_size,
        test_fraction=test_fraction,
        named_test_sets=merge_test_sets(inherited, named_test_sets),
    )
    inputs = CurationInputs(parent=parent_manifest, new_rows=tuple(new_rows))
    if client is not None:
        # A fixed image the CDN moved or removed before it was archived can't be trained on:
        # it is dropped with its reason, as a recorded decision (a replay needs no archive), so
        # the export never stops on it. Without a client nothing was fetched: the rows stay.
        unarchived = [
            Decision(row.sha256, DROP, reason=NOT_ARCHIVED)
            for row in new_rows
            if not archive.has(row.sha256)
        ]
        if unarchived:
            recipe = recipe.with_step(PruneStep(tuple(unarchived)))
    # The crop boxes are found once, from the pixels, and recorded in the recipe: a replay needs
    # neither the pixels nor the crop model.
    begin(CROPPING)
    boxes = border_boxes(archive, new_rows, report)
    if boxes:
        recipe = recipe.with_step(crop_step(boxes))
    prune: dict[str, Any] = {}
    if models_dir is not None:
        begin(EMBEDDING)
        recipe, prune = model_prune(
            recipe, inputs, archive, models_dir, progress=report, phase=begin
        )
    begin(SPLITTING)
    manifest = replay(recipe, inputs)
    report(1, 1)
    window = fixes_window(after, until, since, new_rows)
    if prune:
        window["prune"] = prune
    begin(STORING)
    with sessions.begin() as session:
        stored = store_manifest(
            session,
            manifest,
            parent=parent_version,
            recipe={"recipe": recipe.to_json()},
            inputs=window,
            created_by=actor.username,
        )
    return _report(stored, manifest)


def fixes_window(
    after: int, until: int, since: datetime | None, new_rows: Sequence[ManifestRow]
) -> dict[str, Any]:
    """A fixes-pulled version's ``inputs``: the fix-id window, the cut-off, and the pulled rows'
    count and digest (:func:`inputs_sha256`)."""
    return {
        "kind": "fixes",
        "after_fix_id": after,
        "until_fix_id": until,
        "cutoff": since.isoformat() if since is not None else None,
        "new_rows": len(new_rows),
        "inputs_sha256": inputs_sha256(new_rows),
    }


def store_manifest(
    session: Session,
    manifest: Manifest,
    *,
    parent: VersionSummary | None,
    recipe: Mapping[str, Any],
    inputs: Mapping[str, Any],
    created_by: str,
) -> VersionSummary:
    """Store ``manifest`` as a new draft version (its rows, SHA-256 and counts) under ``parent``."""
    return store.add_version(
        session,
        parent_id=parent.id if parent is not None else None,
        recipe=recipe,
        inputs=inputs,
        created_by=created_by,
        rows=(row_to_store(row) for row in manifest),
        manifest_sha256=manifest.manifest_sha256(),
        counts=manifest_counts(manifest),
    )


def merge_test_sets(
    inherited: Sequence[NamedTestSet], added: Sequence[NamedTestSet]
) -> tuple[NamedTestSet, ...]:
    """The parent's named test sets plus ``added``, by name (an added one replaces its
    namesake), sorted by name so that the recipe's text does not depend on the order given."""
    by_name = {test_set.name: test_set for test_set in (*inherited, *added)}
    return tuple(by_name[name] for name in sorted(by_name))


def _named_test_sets(version: VersionSummary | None) -> tuple[NamedTestSet, ...]:
    """The named test sets of ``version``'s recipe (its split steps'), none without a parent."""
    if version is None or "recipe" not in version.recipe:
        return ()
    recipe = Recipe.from_json(str(version.recipe["recipe"]))
    return tuple(
        test_set
        for step in recipe.steps
        if isinstance(step, SplitStep)
        for test_set in step.named_test_sets
    )


def model_prune(
    recipe: Recipe,
    inputs: CurationInputs,
    archive: ArchiveStore,
    models_dir: Path,
    *,
    threshold: float = EMBEDDING_THRESHOLD,
    max_phash: int = EMBEDDING_MAX_PHASH,
    progress: Progress | None = None,
    phase: Phase | None = None,
) -> tuple[Recipe, dict[str, Any]]:
    """The model-assisted part of the prune, on the manifest just before the split.

    1. Embed every archived training row with the production model's penultimate layer
       (:func:`tagging.ml.embed.embed`; the model is read from ``models_dir``, never downloaded).
    2. Link the rows whose embeddings are at least ``threshold`` alike (faiss k-NN) and whose
       pHashes are within ``max_phash`` bits (see :data:`EMBEDDING_MAX_PHASH` for why both); a
       linked cluster whose rows disagree on the Image Type is excluded, as pHash's are. The
       exclusions are recorded as drop decisions (a :class:`PruneStep`), so a replay needs
       neither the pixels nor the model.
    3. Rank the likely label errors with cleanlab on out-of-fold probabilities
       (:func:`tagging.curation.label_issues.rank_label_issues`). Advisory only: the report lists
       them, and the advertisers they come from, for a person to decide on the page.

    ``phase`` is told :data:`RANKING` once the embeddings are done (steps 2 and 3).

    Returns:
        The recipe with the drop decisions (unchanged when there are none), and the report stored
        in the version's inputs (``prune``). Inference and ranking are timed apart.
    """
    before_split = _before_split(recipe, inputs)
    rows = [row for row in before_split.included() if archive.has(row.sha256)]
    found = embed_rows(rows, archive, models_dir, progress=progress)
    embedded, vectors, embeddings = found.rows, found.vectors, found.by_sha256()
    if phase is not None:
        phase(RANKING)

    started = time.perf_counter()
    pairs = [
        (a, b)
        for a, b in (embedding_pairs(vectors, threshold) if len(embedded) > 1 else [])
        if embedded[a].phash is not None
        and embedded[b].phash is not None
        and hash_distance(embedded[a].phash or "", embedded[b].phash or "") <= max_phash
    ]
    groups = components(len(embedded), pairs)
    members: dict[int, list[ManifestRow]] = {}
    for row, label in zip(embedded, groups, strict=True):
        members.setdefault(label, []).append(row)
    conflicts = [
        sorted(linked, key=lambda r: r.sha256)
        for linked in members.values()
        if len({row.image_type for row in linked}) > 1
    ]
    conflicts.sort(key=lambda linked: linked[0].sha256)
    decisions: list[Decision] = []
    described = []
    for number, cluster in enumerate(conflicts, start=1):
        names = sorted({row.image_type for row in cluster})
        reason = f"{CONFLICT}: embedding cluster {number} ({', '.join(names)})"
        decisions += [Decision(row.sha256, DROP, reason=reason) for row in cluster]
        described.append(
            {
                "cluster": number,
                "labels": names,
                "rows": [
                    {"sha256": r.sha256, "image_type": r.image_type, "origin": r.origin}
                    for r in cluster
                ],
            }
        )
    if decisions:
        recipe = recipe.with_step(PruneStep(tuple(decisions)))
    pruned = _before_split(recipe, inputs)
    scored = Manifest(row for row in pruned.included() if row.sha256 in embeddings)
    issues = rank_label_issues(scored, embeddings, seed=recipe.seed) if len(scored) > 2 else []
    origins = {row.sha256: row.origin for row in scored}
    shares = issues_by_advertiser(scored, issues)
    ranking_seconds = time.perf_counter() - started
    return recipe, {
        "model": found.model,
        "embedded": len(embedded),
        "not_embedded": len(before_split.included()) - len(embedded),
        "embedding_threshold": threshold,
        "embedding_max_phash": max_phash,
        "embedding_conflicts": described,
        "label_issues_total": len(issues),
        "label_issues": [
            {
                "rank": issue.rank,
                "sha256": issue.sha256,
                "given": issue.given,
                "suggested": issue.suggested,
                "self_confidence": round(issue.self_confidence, 4),
                "advertiser": issue.advertiser,
                "origin": origins[issue.sha256],
            }
            for issue in issues[:LABEL_ISSUES_KEPT]
        ],
        "advertisers": {name: round(share, 4) for name, share in shares.items() if share > 0},
        "inference_seconds": round(found.seconds, 2),
        "ranking_seconds": round(ranking_seconds, 2),
    }


@dataclass(frozen=True)
class Embedded:
    """The production model's penultimate features of the rows it could read (:func:`embed_rows`).

    Attributes:
        model: The model's version.
        rows: The rows embedded, in order (those whose image could not be read are left out).
        vectors: One row of features per embedded row.
        seconds: How long decoding and inference took.
    """

    model: str
    rows: list[ManifestRow]
    vectors: np.ndarray
    seconds: float

    def by_sha256(self) -> dict[str, np.ndarray]:
        """The features by image SHA-256."""
        return {row.sha256: self.vectors[i] for i, row in enumerate(self.rows)}


def embed_rows(
    rows: Sequence[ManifestRow],
    archive: ArchiveStore,
    models_dir: Path,
    *,
    progress: Progress | None = None,
) -> Embedded:
    """Embed the archived images of ``rows`` (cropped to their crop box) with the production
    model's penultimate layer (:func:`tagging.ml.embed.embed`; the model is read from
    ``models_dir``, never downloaded). Images the archive lacks or cannot decode are skipped.

    Raises:
        ModelError: no usable model in ``models_dir``.
    """
    from tagging.ml.embed import embed
    from tagging.ml.model import load_artifact

    report = progress or (lambda _done, _total: None)
    artifact = load_artifact(models_dir)
    started = time.perf_counter()
    pictures: list[PILImage.Image] = []
    embedded: list[ManifestRow] = []
    report(0, len(rows))
    for done, row in enumerate(rows, start=1):
        try:
            picture = decode_image(archive.get(row.sha256)).image
        except (ImageDecodeError, NotFoundError):
            continue
        if row.crop is not None:
            # The decode may be draft-scaled: the box is in the stored size's pixels.
            sx, sy = picture.width / max(row.width, 1), picture.height / max(row.height, 1)
            left, top, right, bottom = row.crop
            box = (int(left * sx), int(top * sy), max(int(right * sx), 1), max(int(bottom * sy), 1))
            picture = crop_image(picture, box)
        pictures.append(picture)
        embedded.append(row)
        if done % 256 == 0:
            report(done, len(rows))
    vectors = embed(pictures, artifact.model, input_size=artifact.metadata.input_size)
    report(len(rows), len(rows))
    return Embedded(
        model=artifact.metadata.version,
        rows=embedded,
        vectors=vectors,
        seconds=time.perf_counter() - started,
    )


def rank_likely_errors(
    manifest: Manifest, archive: ArchiveStore, models_dir: Path, *, seed: int
) -> tuple[list[LabelIssue], str | None]:
    """cleanlab's ranking of the likely label errors among ``manifest``'s archived training rows,
    over their embeddings (:func:`embed_rows`), or why there is none.

    Returns:
        The ranked issues (likeliest first) and None, or no issue and a note saying why not (too
        few rows, no model, or a ranking that could not run).
    """
    rows = [row for row in manifest.included() if archive.has(row.sha256)]
    if len(rows) < MIN_ROWS_FOR_ISSUES:
        return [], f"Too few archived training images ({len(rows)}) to rank likely label errors."
    try:
        found = embed_rows(rows, archive, models_dir)
    except ModelError as exc:
        return [], f"No model to rank likely label errors: {exc}"
    try:
        return rank_label_issues(Manifest(found.rows), found.by_sha256(), seed=seed), None
    except (InvalidInput, ValueError) as exc:
        return [], f"Likely label errors not ranked: {exc}"


def _before_split(recipe: Recipe, inputs: CurationInputs) -> Manifest:
    """The manifest after every step but the split (what the prune looks at)."""
    manifest = Manifest()
    for name, stage in stages(recipe, inputs):
        if name == SplitStep.name:
            break
        manifest = stage
    return manifest


# --- the first version: the generated set the production model was trained on ------------------


@dataclass(frozen=True)
class _Rendered:
    index: int
    data: bytes
    phash: str
    width: int
    height: int


def _render_chunk(job: tuple[dict[str, Any], int, int]) -> list[_Rendered]:
    """Worker: re-render generated images ``start … stop - 1`` as training rendered them.

    Module-level so that a ``spawn`` pool can pickle it. The same draws, in the same order, as
    :func:`tagging.ml.data._render_range` (quality, then size, then the scene), so the JPEG bytes
    are the ones the model's training decoded.
    """
    from tagging.ml.data import sample_rng, sample_spec
    from tagging.ml.synth import render

    config_values, start, stop = job
    config = _dataset_config(config_values)
    low, high = config.jpeg_quality
    out = []
    for index in range(start, stop):
        spec = sample_spec(config, index)
        rng = sample_rng(config.seed, index)
        quality = rng.randint(low, high)
        size = config.image_sizes[rng.randrange(len(config.image_sizes))]
        buffer = io.BytesIO()
        render(spec.image_type, spec.color, rng, size).save(buffer, format="JPEG", quality=quality)
        data = buffer.getvalue()
        # Hashed as the ML server hashes a scraped image (the draft decode), so generated rows and
        # fixed ones compare on the same footing.
        phash = perceptual_hash(decode_image(data).image)
        out.append(_Rendered(index, data, phash, size[0], size[1]))
    return out


def _dataset_config(values: Mapping[str, Any]) -> Any:
    from tagging.ml.data import SyntheticDatasetConfig

    return SyntheticDatasetConfig(
        seed=int(values["seed"]),
        n_per_class=int(values["n_per_class"]),
        jpeg_quality=(int(values["jpeg_quality"][0]), int(values["jpeg_quality"][1])),
        image_sizes=tuple((int(w), int(h)) for w, h in values["image_sizes"]),
        input_size=int(values["input_size"]),
        workers=1,
    )


def render_generated(
    config_values: Mapping[str, Any],
    *,
    workers: int = 2,
    progress: Progress | None = None,
    chunk_size: int = 64,
) -> list[_Rendered]:
    """Every image of a generated training set, in index order, with its pHash.

    Args:
        config_values: The model metadata's ``training_data["config"]``.
        workers: Rendering processes (``1``: in this one).
    """
    config = _dataset_config(config_values)
    total = config.total
    jobs = [
        (dict(config_values), s, min(s + chunk_size, total)) for s in range(0, total, chunk_size)
    ]
    report = progress or (lambda _done, _total: None)
    out: list[_Rendered] = []
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            out += _render_chunk(job)
            report(len(out), total)
        return out
    # spawn, as training renders: forking a process that runs torch's thread pools can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        for chunk in pool.map(_render_chunk, jobs):
            out += chunk
            report(len(out), total)
    return out


def first_version(
    sessions: sessionmaker[Session],
    actor: Actor | None,
    archive: ArchiveStore,
    models_dir: Path,
    *,
    model_version: str | None = None,
    workers: int = 2,
    progress: Progress | None = None,
) -> VersionReport:
    """Version 1: the generated training set the production model was trained on, frozen.

    The model's metadata names the generator, its seed, its configuration and counts; every image
    is rendered again from them (deterministically: the same bytes the training decoded),
    archived, hashed, and recorded as a row with origin ``generated:seed=N``, no advertiser and no
    vehicle page. Later versions extend it, so every version's lineage ends in what the
    production model learnt from.

    **The split.** The model's own train/validation split was stratified per class but not
    grouped: the generator draws placeholder cards and studio shots from a few templates, so
    dozens of images are near-duplicates (pHash ≤ 6) of one another, and its validation set leaks.
    Version 1 does not copy it: it runs the recipe's grouped split over its clusters (seeded with
    the model's seed, with the model's validation share), so it is leak-free by construction, and
    its inputs record the model's split (``model_split``: counts and the near-duplicate pairs it
    had across train and validation).

    Args:
        model_version: The model whose training set to record; default the production model.
        workers: Rendering processes.
        progress: ``(done, total)`` of the rendering.

    Raises:
        PermissionDenied: ``actor`` may not curate datasets.
        Conflict: versions exist already (version 1 is made once).
        ModelError: no such model, or its metadata names no generated training set.
    """
    from tagging.errors import ModelError
    from tagging.ml.model import list_versions as model_versions
    from tagging.ml.model import production_version, read_metadata
    from tagging.ml.train import stratified_split

    actor = require(actor, Permission.MODELS)
    with sessions() as session:
        if store.latest_version(session, frozen=False) is not None:
            raise Conflict("dataset versions exist already: version 1 is made once")
    version = model_version or production_version(models_dir)
    if version is None:
        known = model_versions(models_dir)
        if not known:
            raise ModelError(f"no Image Type model in {models_dir}: train one first")
        version = known[-1]
    metadata = read_metadata(models_dir, version)
    data = metadata.training_data
    config = data.get("config")
    if not isinstance(config, Mapping) or "seed" not in config:
        raise ModelError(f"model {version}'s metadata names no generated training set")
    seed = int(config["seed"])
    rendered = render_generated(config, workers=workers, progress=progress)
    specs = _dataset_config(config)
    from tagging.ml.data import sample_spec

    rows: dict[str, ManifestRow] = {}
    for item in rendered:
        sha = archive.put(item.data)
        spec = sample_spec(specs, item.index)
        rows.setdefault(
            sha,
            ManifestRow(
                sha256=sha,
                path=archive.key(sha),
                image_type=spec.image_type,
                color=spec.color,
                origin=origin_generated(seed),
                width=item.width,
                height=item.height,
                phash=item.phash,
            ),
        )
    new_rows = Manifest(rows.values())
    model_split = _model_split(rendered, specs, stratified_split, metadata.train_config)
    val_fraction = float(metadata.train_config.get("val_fraction", 0.2))
    recipe = Recipe.default(seed=seed, test_fraction=val_fraction)
    manifest = replay(recipe, CurationInputs(new_rows=tuple(new_rows)))
    inputs = {
        "kind": GENERATED,
        "generator": data.get("generator"),
        "seed": seed,
        "config": dict(config),
        "counts": data.get("counts"),
        "model": version,
        "model_split": model_split,
        "until_fix_id": 0,
        "new_rows": len(new_rows),
        "inputs_sha256": inputs_sha256(new_rows),
    }
    with sessions.begin() as session:
        store.add_version(
            session,
            parent_id=None,
            recipe={"recipe": recipe.to_json()},
            inputs=inputs,
            created_by=actor.username,
            rows=(row_to_store(row) for row in manifest),
            manifest_sha256=manifest.manifest_sha256(),
            counts=manifest_counts(manifest),
        )
        # Nothing to review in a generator's output: frozen at once, so builds can extend it.
        stored = store.freeze_version(session, 1, actor.username)
    return _report(stored, manifest)


def _model_split(
    rendered: Sequence[_Rendered],
    config: Any,
    stratified_split: Callable[[np.ndarray, float, int], tuple[np.ndarray, np.ndarray]],
    train_config: Mapping[str, Any],
) -> dict[str, Any]:
    """The model's own train/validation split of the generated set, and how much it leaked."""
    from db.vocab import IMAGE_TYPES as TYPES
    from tagging.ml.data import sample_spec

    labels = np.array(
        [TYPES.index(sample_spec(config, item.index).image_type) for item in rendered],
        dtype=np.int64,
    )
    val_fraction = float(train_config.get("val_fraction", 0.2))
    _, val_idx = stratified_split(labels, val_fraction, int(config.seed))
    in_val = np.zeros(len(rendered), dtype=bool)
    in_val[val_idx] = True
    pairs = phash_pairs([item.phash for item in rendered])
    leaks = sum(1 for a, b in pairs if in_val[a] != in_val[b])
    return {
        "val_fraction": val_fraction,
        TRAIN: int((~in_val).sum()),
        TEST: int(in_val.sum()),
        "near_duplicate_pairs": len(pairs),
        "leaking_pairs": leaks,
        "note": "the model's validation split (here: test) was not grouped by near-duplicates; "
        "this version's split is",
    }


def ensure_first_version(
    sessions: sessionmaker[Session],
    actor: Actor | None,
    archive: ArchiveStore,
    models_dir: Path,
    *,
    workers: int = 2,
    progress: Progress | None = None,
) -> VersionReport | None:
    """Make version 1 (:func:`first_version`) when there is no version yet; None otherwise."""
    with sessions() as session:
        if store.latest_version(session, frozen=False) is not None:
            return None
    return first_version(sessions, actor, archive, models_dir, workers=workers, progress=progress)


def freeze(sessions: sessionmaker[Session], actor: Actor | None, number: int) -> VersionSummary:
    """Freeze draft ``number``: its recipe, rows and manifest SHA-256 never change again.

    The stored rows are hashed again first: a draft whose rows do not give its recorded SHA-256
    is refused rather than frozen.

    Raises:
        PermissionDenied: ``actor`` may not curate datasets.
        NotFoundError: no such version.
        Conflict: it is frozen already, or its rows do not match its SHA-256.
    """
    actor = require(actor, Permission.MODELS)
    with sessions.begin() as session:
        manifest = load_manifest(session, number)
        recorded = store.get_version(session, number).manifest_sha256
        if manifest.manifest_sha256() != recorded:
            raise Conflict(f"version {number}'s rows do not match its manifest SHA-256")
        return store.freeze_version(session, number, actor.username)


def list_versions(sessions: sessionmaker[Session]) -> list[VersionSummary]:
    """Every version, newest first."""
    with sessions() as session:
        return store.list_versions(session)


def show_version(sessions: sessionmaker[Session], number: int) -> VersionReport:
    """Version ``number`` with its counts per split and class and its exclusions.

    Raises:
        NotFoundError: no such version.
    """
    with sessions() as session:
        version = store.get_version(session, number)
        manifest = load_manifest(session, number)
    return _report(version, manifest)


def version_manifest(sessions: sessionmaker[Session], number: int) -> Manifest:
    """Version ``number``'s manifest (the page's grids and charts)."""
    with sessions() as session:
        return load_manifest(session, number)


def export_version(
    sessions: sessionmaker[Session], archive: ArchiveStore, number: int, out_dir: Path
) -> ExportReport:
    """Write ``manifest.csv`` and an ImageFolder tree ``{train,test}/{class}/<sha256>.jpg``.

    The split is checked first (:func:`tagging.curation.split.find_leaks`: no vehicle page, no
    cluster and no pHash distance ≤ 6 across train and test), and every training image must be in
    the archive; nothing is written otherwise. Crops are applied; every image is written as JPEG.

    Raises:
        NotFoundError: no such version, or training images missing from the archive.
        Conflict: the split leaks, or ``out_dir`` holds files already.
    """
    with sessions() as session:
        manifest = load_manifest(session, number)
    leaks = find_leaks(manifest)
    if leaks:
        first = leaks[0]
        raise Conflict(
            f"version {number} leaks across train and test ({len(leaks)} pairs, e.g. "
            f"{first.train[:12]}… / {first.test[:12]}…: {first.why}): not exported"
        )
    rows = [row for row in manifest.included() if row.split in SPLITS]
    missing = [row.sha256 for row in rows if not archive.has(row.sha256)]
    if missing:
        raise NotFoundError(
            f"{len(missing)} images of version {number} are not in the archive (e.g. "
            f"{missing[0][:12]}…): run `python -m tagging dataset archive`, then export again"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise Conflict(f"{out_dir} is not empty: export into a new folder")
    for split in SPLITS:
        for name in IMAGE_TYPES:
            (out_dir / split / name).mkdir(parents=True, exist_ok=True)
    for row in rows:
        target = out_dir / str(row.split) / row.image_type / f"{row.sha256}.jpg"
        data = archive.get(row.sha256)
        try:
            with PILImage.open(io.BytesIO(data)) as image:
                if row.crop is None and image.format == "JPEG":
                    # The archived bytes as they are: a new encoding would move the picture's
                    # perceptual hash (2–4 bits seen), and with it the leak check's distances.
                    image.load()  # decodable: a corrupt archive entry is refused, not copied
                    target.write_bytes(data)
                    continue
                picture = crop_image(image.convert("RGB"), row.crop)
                picture.save(target, format="JPEG", quality=95)
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"archived image {row.sha256[:12]}… cannot be decoded: {exc}"
            ) from exc
    (out_dir / "manifest.csv").write_bytes(manifest.export_csv())
    return ExportReport(out_dir=out_dir, images=len(rows), by_split=balance(manifest).by_split)


def replay_version(
    sessions: sessionmaker[Session], archive: ArchiveStore, number: int
) -> ReplayReport:
    """Rebuild version ``number`` from its recipe and inputs; compare the manifests' SHA-256.

    The inputs are read again: the parent's stored manifest, and the fixes of the recorded window
    (or, for a generated first version, its stored rows, which are the generator's output).

    Raises:
        NotFoundError: no such version.
    """
    with sessions() as session:
        version = store.get_version(session, number)
        recipe = Recipe.from_json(str(version.recipe["recipe"]))
        parent = Manifest()
        if version.parent is not None:
            parent = load_manifest(session, version.parent)
        inputs = version.inputs
        if inputs.get("kind") == "generated":
            # The generator's output is the stored rows as they came in: every step's mark off.
            stored = load_manifest(session, number)
            new_rows: list[ManifestRow] = [
                row.replace(cluster=None, split=None, exclusion=None, crop=None) for row in stored
            ]
        else:
            cutoff = inputs.get("cutoff")
            new_rows = pull_fixes(
                session,
                archive,
                since=datetime.fromisoformat(str(cutoff)) if cutoff else None,
                after_fix_id=int(inputs.get("after_fix_id") or 0),
                until_fix_id=int(inputs.get("until_fix_id") or 0),
            )
    same_inputs = inputs_sha256(new_rows) == inputs.get("inputs_sha256")
    manifest = replay(recipe, CurationInputs(parent=parent, new_rows=tuple(new_rows)))
    return ReplayReport(
        version=number,
        stored_sha256=version.manifest_sha256,
        replayed_sha256=manifest.manifest_sha256(),
        same_inputs=same_inputs,
    )


def archive_pending(
    sessions: sessionmaker[Session],
    archive: ArchiveStore,
    client: GuardedClient,
    *,
    sha256s: Iterable[str] | None = None,
    limit: int = 1000,
    progress: Progress | None = None,
) -> ArchiveReport:
    """Fetch queued images through the guarded client and store them (the retry job).

    Each image is fetched outside any transaction, checked against the content hash the app knows
    for it (a CDN that now serves other bytes at that URL gives no archive entry), and marked
    stored or failed in a short transaction of its own. A failure leaves the image pending for the
    next round; the fix it came from is never touched.

    Args:
        sha256s: Also queue, and archive, the fixed images with these hashes (a build's pull);
            default: only what is queued.
        progress: Told ``(done, total)`` as the images are fetched.
    """
    result = ArchiveReport()
    with sessions.begin() as session:
        if sha256s is not None:
            wanted = set(sha256s)
            keys = _unarchived_keys(session, archive, wanted)
            store.queue_images(session, keys)
        jobs = store.pending_archive(session, limit=limit)
    report = progress or (lambda _done, _total: None)
    for done, job in enumerate(jobs):
        report(done, len(jobs))
        if job.expected_sha256 and archive.has(job.expected_sha256):
            with sessions.begin() as session:
                store.mark_archived(session, job.image_key, job.expected_sha256)
            result.stored += 1
            continue
        try:
            body = client.get(job.image_url, accept=("image/",), max_bytes=MAX_ORIGINAL_BYTES).body
            sha = hashlib.sha256(body).hexdigest()
            if job.expected_sha256 and sha != job.expected_sha256:
                raise FetchError(f"{job.image_url} now serves other bytes than the fixed image")
            archive.put(body)
        except (FetchError, ImageDecodeError, OSError) as exc:
            with sessions.begin() as session:
                store.mark_archive_failed(session, job.image_key, str(exc))
            result.failed += 1
            result.errors.append(f"{job.image_url}: {exc}")
            continue
        with sessions.begin() as session:
            store.mark_archived(session, job.image_key, sha)
        result.stored += 1
    report(len(jobs), len(jobs))
    return result


# --- helpers -------------------------------------------------------------------------------------


def manifest_counts(manifest: Manifest) -> dict[str, Any]:
    """What a version's list entry shows without its rows."""
    return {
        "rows": len(manifest),
        "included": len(manifest.included()),
        "by_split": balance(manifest).by_split,
        "exclusions": exclusions_by_reason(manifest),
    }


def _report(version: VersionSummary, manifest: Manifest) -> VersionReport:
    report = balance(manifest)
    prune = version.inputs.get("prune")
    return VersionReport(
        version=version,
        by_split=report.by_split,
        exclusions=exclusions_by_reason(manifest),
        warnings=report.warnings,
        prune=dict(prune) if isinstance(prune, Mapping) else {},
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
    return store.get_version(session, number)


def _unarchived_keys(
    session: Session, archive: ArchiveStore, sha256s: set[str]
) -> list[tuple[str, str]]:
    """``(image_key, url)`` of one fixed image per hash in ``sha256s`` that is not archived."""
    missing = {sha for sha in sha256s if not archive.has(sha)}
    return store.image_urls(session, missing) if missing else []


def border_boxes(
    archive: ArchiveStore, rows: Iterable[ManifestRow], progress: Progress | None = None
) -> dict[str, tuple[int, int, int, int]]:
    """The embedded crop model's boxes for those of ``rows`` that are included and archived.

    The parent's rows are the caller's to leave out: their crops were found when the parent was
    made.
    """
    progress = progress or (lambda _done, _total: None)
    todo = [row for row in rows if row.exclusion is None and archive.has(row.sha256)]
    boxes: dict[str, tuple[int, int, int, int]] = {}
    for done, row in enumerate(todo, start=1):
        try:
            with PILImage.open(io.BytesIO(archive.get(row.sha256))) as image:
                image.load()
                if image.size != (row.width, row.height):
                    continue  # boxes are in the recorded size's pixels
                boxes.update(find_crops({row.sha256: image}))
        except (OSError, ValueError, NotFoundError):
            continue  # not decodable here: trained whole, or dropped by its other checks
        progress(done, len(todo))
    return boxes


__all__ = [
    "BUILD_PHASES",
    "GENERATED",
    "LATEST",
    "MARKED_CONFLICTING",
    "ArchiveReport",
    "Embedded",
    "ExportReport",
    "ReplayReport",
    "VersionReport",
    "archive_pending",
    "border_boxes",
    "build_version",
    "embed_rows",
    "ensure_first_version",
    "export_version",
    "first_version",
    "fixes_window",
    "freeze",
    "inputs_sha256",
    "list_versions",
    "load_manifest",
    "manifest_counts",
    "merge_test_sets",
    "model_prune",
    "pull_fixes",
    "rank_likely_errors",
    "render_generated",
    "replay_version",
    "row_from_store",
    "row_to_store",
    "show_version",
    "store_manifest",
    "version_manifest",
]
