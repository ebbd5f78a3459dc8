"""The manifest of a dataset version: one row per image, and its canonical CSV.

A :class:`Manifest` keeps its rows sorted by ``sha256`` (the content key, unique within a
manifest), so two manifests with the same content are equal and serialize to the same bytes
whatever order their rows were built in; :meth:`Manifest.manifest_sha256` is what freezing a version
records and what a replay compares.

Two CSV forms:

- the **full** form (:meth:`Manifest.to_csv`, read back by :meth:`Manifest.from_csv`): every row,
  every field, excluded rows included with their reason; this is what is stored and hashed;
- the **export** form (:meth:`Manifest.export_csv`): the training rows only (no exclusion), with
  the columns of :data:`EXPORT_COLUMNS`, written as ``manifest.csv`` next to an ImageFolder tree.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from db.vocab import COLORS, IMAGE_TYPES
from tagging.errors import InvalidInput

TRAIN: Final = "train"
TEST: Final = "test"
SPLITS: tuple[str, ...] = (TRAIN, TEST)
"""The values of :attr:`ManifestRow.split` besides ``None`` (not assigned, or excluded)."""

Box = tuple[int, int, int, int]
"""A crop box ``(left, top, right, bottom)`` in pixels of the stored image, right and bottom
exclusive (PIL's convention)."""

Embeddings = Mapping[str, np.ndarray]
"""Feature vectors (e.g. the model's penultimate layer, :func:`tagging.ml.embed.embed`) by
``sha256``: a mapping rather than a bare matrix so that no caller can misalign rows."""

EXPORT_COLUMNS: tuple[str, ...] = (
    "sha256",
    "path",
    "image_type",
    "color",
    "split",
    "advertiser",
    "page_url",
    "cluster",
    "origin",
)
"""The columns of an exported ``manifest.csv``, in order."""

FULL_COLUMNS: tuple[str, ...] = (
    *EXPORT_COLUMNS,
    "exclusion",
    "width",
    "height",
    "phash",
    "crop",
)
"""The columns of the stored (full) form: the export columns, then the rest."""

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PHASH_RE = re.compile(r"^[0-9a-f]{16}$")


def origin_parent(version: str) -> str:
    """The origin of a row carried over from parent ``version``: ``parent:<version>``."""
    return f"parent:{version}"


def from_parent(origin: str) -> bool:
    """Whether a row of this origin was carried over from the parent version."""
    return origin.startswith("parent:")


def origin_fix(fix_id: int, user: str) -> str:
    """The origin of a row that comes from team fix ``fix_id``: ``fix:17 by alice``."""
    return f"fix:{fix_id} by {user}"


def origin_generated(seed: int) -> str:
    """The origin of a generated (synthetic) training image: ``generated:seed=7``."""
    return f"generated:seed={seed}"


def origin_relabel(fix_origin: str, old: str, new: str) -> str:
    """The origin of a relabelled row: the fix, then what it changed.

    ``fix:17 by alice; relabel Stock->Dealer``.
    """
    return f"{fix_origin}; relabel {old}->{new}"


def relabel(row: ManifestRow, *, image_type: str, color: str | None, fix: str) -> ManifestRow:
    """``row`` with new labels from team fix ``fix``, the change recorded in its origin.

    A fix that changes nothing returns ``row`` untouched (its origin stays). The color is named in
    the origin only when it changed (``fix:17 by alice; relabel Stock/Red->Stock/Blue``).
    """
    if (image_type, color) == (row.image_type, row.color):
        return row
    old, new = row.image_type, image_type
    if color != row.color:
        old, new = _with_color(row.image_type, row.color), _with_color(image_type, color)
    return row.replace(image_type=image_type, color=color, origin=origin_relabel(fix, old, new))


def _with_color(image_type: str, color: str | None) -> str:
    return image_type if color is None else f"{image_type}/{color}"


@dataclass(frozen=True, kw_only=True)
class ManifestRow:
    """One image of a dataset version.

    Attributes:
        sha256: SHA-256 of the stored image bytes: the content key, unique in a manifest.
        path: Where the bytes are stored (the content-addressed archive's path or key).
        image_type: The Image Type label, one of :data:`db.vocab.IMAGE_TYPES`.
        color: The Color label, one of :data:`db.vocab.COLORS`; ``None`` when there is none
            (placeholders).
        origin: Where the row comes from: :func:`origin_parent`, :func:`origin_fix`,
            :func:`origin_generated`, :func:`origin_relabel`.
        width: Width of the stored image in pixels.
        height: Height of the stored image in pixels.
        split: ``"train"``, ``"test"``, or ``None`` (not assigned yet, or excluded).
        advertiser: The advertiser whose page showed the image; ``None`` for generated images.
        page_url: The vehicle page (one car's photos), which the split keeps on one side.
        cluster: The near-duplicate cluster, ``None`` for an image without a near-duplicate.
        exclusion: Why the row is left out of training (``"too small: 90x60 < 200x150"``), or
            ``None`` for a training row. Excluded rows stay in the manifest for the audit.
        phash: The 64-bit perceptual hash as 16 hex digits
            (:func:`tagging.ingest.images.perceptual_hash`), or ``None`` when unknown.
        crop: The part of the image to train on, or ``None`` for the whole image.
    """

    sha256: str
    path: str
    image_type: str
    color: str | None
    origin: str
    width: int
    height: int
    split: str | None = None
    advertiser: str | None = None
    page_url: str | None = None
    cluster: int | None = None
    exclusion: str | None = None
    phash: str | None = None
    crop: Box | None = None

    def __post_init__(self) -> None:
        # Rows come from the database, a CSV or a recipe's inputs: refuse a bad value here, once,
        # rather than let a step misbehave on it.
        if not _SHA256_RE.match(self.sha256):
            raise InvalidInput(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.image_type not in IMAGE_TYPES:
            raise InvalidInput(f"{self.sha256[:12]}: unknown Image Type {self.image_type!r}")
        if self.color is not None and self.color not in COLORS:
            raise InvalidInput(f"{self.sha256[:12]}: unknown color {self.color!r}")
        if self.split is not None and self.split not in SPLITS:
            raise InvalidInput(f"{self.sha256[:12]}: split must be train, test or empty")
        if not self.path or not self.origin:
            raise InvalidInput(f"{self.sha256[:12]}: path and origin must not be empty")
        if self.width < 0 or self.height < 0:
            raise InvalidInput(f"{self.sha256[:12]}: negative size {self.width}x{self.height}")
        if self.phash is not None and not _PHASH_RE.match(self.phash):
            raise InvalidInput(f"{self.sha256[:12]}: phash must be 16 hex digits")
        if self.exclusion == "":
            raise InvalidInput(f"{self.sha256[:12]}: an exclusion needs a reason")
        if self.crop is not None:
            left, top, right, bottom = self.crop
            if not (0 <= left < right <= self.width and 0 <= top < bottom <= self.height):
                raise InvalidInput(
                    f"{self.sha256[:12]}: crop {self.crop} is not inside {self.width}x{self.height}"
                )

    @property
    def included(self) -> bool:
        """Whether the row is a training row (not excluded)."""
        return self.exclusion is None

    def replace(self, **changes: Any) -> ManifestRow:
        """A copy with some fields changed (validated again); ``self`` when nothing changes."""
        # Most steps touch few rows: skipping the copy and its validation for the others keeps a
        # 50,000-row replay fast.
        if all(getattr(self, name) == value for name, value in changes.items()):
            return self
        return dataclasses.replace(self, **changes)

    def excluded(self, reason: str) -> ManifestRow:
        """This row excluded for ``reason``; an already excluded row keeps its first reason."""
        if self.exclusion is not None:
            return self
        return dataclasses.replace(self, exclusion=reason, split=None)


@dataclass(frozen=True, init=False)
class Manifest:
    """The rows of a dataset version, sorted by ``sha256``.

    Immutable: every step returns a new manifest. Iterating yields the rows in canonical order.

    Raises:
        InvalidInput: Two rows share a ``sha256``.
    """

    rows: tuple[ManifestRow, ...]

    def __init__(self, rows: Iterable[ManifestRow] = ()) -> None:
        """Sort ``rows`` into canonical order and check that their ``sha256`` are unique."""
        ordered = tuple(sorted(rows, key=lambda row: row.sha256))
        for before, after in itertools.pairwise(ordered):
            if before.sha256 == after.sha256:
                raise InvalidInput(f"sha256 {before.sha256[:12]}… appears twice in the manifest")
        object.__setattr__(self, "rows", ordered)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def included(self) -> tuple[ManifestRow, ...]:
        """The training rows (no exclusion), in canonical order."""
        return tuple(row for row in self.rows if row.exclusion is None)

    def by_sha256(self) -> dict[str, ManifestRow]:
        """The rows by content key."""
        return {row.sha256: row for row in self.rows}

    def map(self, change: Callable[[ManifestRow], ManifestRow]) -> Manifest:
        """A manifest of ``change(row)`` for every row."""
        return Manifest(change(row) for row in self.rows)

    def to_csv(self) -> bytes:
        """The full, canonical form: every row and field, UTF-8, ``\\n`` line ends."""
        return _write_csv(self.rows, FULL_COLUMNS)

    def export_csv(self) -> bytes:
        """The export form: the training rows only, with :data:`EXPORT_COLUMNS`."""
        return _write_csv(self.included(), EXPORT_COLUMNS)

    def manifest_sha256(self) -> str:
        """SHA-256 of :meth:`to_csv`: equal for equal content, different for any change."""
        return hashlib.sha256(self.to_csv()).hexdigest()

    @classmethod
    def from_csv(cls, data: bytes) -> Manifest:
        """Parse the full form written by :meth:`to_csv`.

        Raises:
            InvalidInput: Not the full form's header, or a row with a bad value (its line named).
        """
        reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
        if tuple(reader.fieldnames or ()) != FULL_COLUMNS:
            raise InvalidInput(f"manifest CSV header must be {','.join(FULL_COLUMNS)}")
        rows = []
        for line, record in enumerate(reader, start=2):
            try:
                rows.append(_parse_row(record))
            except (InvalidInput, ValueError) as exc:
                raise InvalidInput(f"manifest CSV line {line}: {exc}") from exc
        return cls(rows)


def _cell(value: object) -> str:
    if value is None:
        return ""  # every optional field's empty value is invalid as a real value, so "" is None
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value)
    return str(value)


def _write_csv(rows: Iterable[ManifestRow], columns: tuple[str, ...]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in columns])
    return out.getvalue().encode("utf-8")


def _parse_row(record: Mapping[str, str]) -> ManifestRow:
    def optional(name: str) -> str | None:
        return record[name] or None

    def optional_int(name: str) -> int | None:
        return int(record[name]) if record[name] else None

    crop_text = record["crop"]
    crop: Box | None = None
    if crop_text:
        left, top, right, bottom = (int(part) for part in crop_text.split(","))
        crop = (left, top, right, bottom)
    return ManifestRow(
        sha256=record["sha256"],
        path=record["path"],
        image_type=record["image_type"],
        color=optional("color"),
        origin=record["origin"],
        width=int(record["width"]),
        height=int(record["height"]),
        split=optional("split"),
        advertiser=optional("advertiser"),
        page_url=optional("page_url"),
        cluster=optional_int("cluster"),
        exclusion=optional("exclusion"),
        phash=optional("phash"),
        crop=crop,
    )
