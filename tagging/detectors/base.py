"""What every detector takes: the :class:`Facts` the database holds and the :class:`Thresholds`.

The facts are plain frozen dataclasses, filled by :func:`tagging.detectors.facts.load_facts`
(the only module here that reads the database); a detector only reads them. The items of the
latest scrapes are not among them: a scrape may hold 500,000. A detector asks for the few it
needs through :attr:`Facts.source` (an :class:`ItemSource`: counts, filtered pages, lookups by
image_key), so that memory stays bounded whatever the size of a scrape.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class Thresholds:
    """How sure a detector must be before it speaks; the defaults are the production ones."""

    history: int = 5
    """Previous scrapes that make an advertiser's baseline."""
    outage_min_items: int = 3
    """Images that must have got the defaults (fewer in a smaller scrape: all of them)."""
    outage_min_share: float = 0.10
    """Share of the scrape that must have got the defaults."""
    outage_excess_share: float = 0.15
    """For images the ML server did answer: Placeholder share over the advertiser's baseline."""
    outage_critical_share: float = 0.5
    """Share of the scrape left without an answer (the outage's suspects) that makes an outage
    critical at once: most of the sitemap has the defaults, the relaunch is urgent. A smaller
    outage is a warning, until a relaunch fails too (then critical, whatever its size)."""
    max_phash_distance: int = 6
    """Perceptual hashes this many bits apart or fewer are "the same picture"..."""
    max_thumbnail_difference: float = 8.0
    """... if their thumbnails, shrunk to 16x12 RGB, also differ by at most this much per channel
    on average (0-255). A grey-level pHash alone pairs many look-alike photos of different cars:
    on the demo, re-encoded copies stay under 8 while nearly all such look-alikes are above."""
    shift_min_share: float = 0.20
    """A class share (of the Dealer and Stock photos) must move this much, beyond the fleet's."""
    shift_min_items: int = 5
    fix_rate_min: float = 0.15
    """Share of an advertiser's current images with a fix by or for it."""
    fix_rate_min_items: int = 5
    fix_rate_factor: float = 3.0
    """... and this many times the median advertiser's rate (plus 10 points)."""
    fix_rate_min_peers: int = 2
    """Advertisers to compare with; fewer and the fix rate is not judged."""
    evidence_limit: int = 48
    """Images kept in a finding's evidence (the count is always complete)."""


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class AdvertiserFacts:
    id: int
    name: str
    color_from_feed: bool = False


@dataclass(frozen=True)
class ScrapeFacts:
    """One scrape's counts, over the items the ML server answered for (``ok``)."""

    id: int
    advertiser_id: int
    items: int
    ml_failures: int
    ok: int
    ok_types: Mapping[str, int]
    """Items with status ok by the Image Type the ML server returned."""
    counts: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """Items by (status, Image Type the ML server returned or the default it got)."""


@dataclass(frozen=True)
class ItemFacts:
    id: int
    scrape_id: int
    advertiser_id: int
    position: int
    image_url: str
    image_key: str | None
    ml_image_type: str
    ml_color: str | None
    image_type: str
    color: str | None
    status: str
    feed_color: str | None = None


@dataclass(frozen=True)
class ImageFacts:
    image_key: str
    sha256: str | None
    phash: str | None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class FixFacts:
    id: int
    image_key: str
    image_url: str
    advertiser_id: int | None
    item_id: int | None
    field: str
    old_value: str | None
    new_value: str | None
    user: str
    source: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class ItemFilter:
    """Which items of a scrape a detector asks for: every condition set must hold.

    Plain data, translated into SQL by :mod:`tagging.detectors.facts`.
    """

    statuses: tuple[str, ...] | None = None
    with_key: bool = False
    """Only items with an image_key."""
    image_type: str | None = None
    ml_image_type: str | None = None
    ml_color_is_null: bool = False
    color_is_not_null: bool = False
    color_contains: str | None = None
    """Lower-cased, the color contains this (a coarse filter: the detector decides exactly)."""
    photo_before_in: tuple[int, ...] = ()
    """Only items whose image URL was a Dealer or Stock photo the ML server answered for (status
    ok) in one of these scrapes."""
    image_sha256_in: Collection[str] | None = None
    """Only items whose image (by image_key) has one of these content hashes."""


class ItemSource(Protocol):
    """The items of scrapes and the images they show, read in bounded pieces.

    Items come in sitemap order (position, then id) unless said otherwise.
    """

    def items(
        self, scrape_id: int, where: ItemFilter, *, first_of_key: bool = False
    ) -> Iterator[ItemFacts]:
        """The items of ``scrape_id`` that ``where`` selects, streamed in pages.

        Args:
            first_of_key: only items that are the first of their image_key in the whole scrape
                (whatever ``where`` says about the earlier ones); items without a key are left out.
        """
        ...

    def count(self, scrape_id: int, where: ItemFilter) -> int:
        """How many items of ``scrape_id`` ``where`` selects."""
        ...

    def ids(self, scrape_id: int, where: ItemFilter) -> list[int]:
        """The ids of the items of ``scrape_id`` that ``where`` selects, in sitemap order."""
        ...

    def first_items(self, scrape_id: int, keys: Collection[str]) -> dict[str, ItemFacts]:
        """The first item of ``scrape_id`` (any status) of each of these image_keys it lists."""
        ...

    def first_items_of(
        self, scrape_ids: Collection[int], keys: Collection[str]
    ) -> dict[tuple[int, str], ItemFacts]:
        """:meth:`first_items` of several scrapes at once, by (scrape id, image_key)."""
        ...

    def first_item_by_url(self, scrape_id: int, url: str) -> ItemFacts | None:
        """The first item of ``scrape_id`` with an image_key whose image URL is ``url``."""
        ...

    def keys_in(self, scrape_id: int, keys: Collection[str]) -> set[str]:
        """Which of these image_keys ``scrape_id`` lists."""
        ...

    def distinct_keys(self, scrape_id: int) -> int:
        """How many different image_keys ``scrape_id`` lists."""
        ...

    def images(self, keys: Collection[str]) -> dict[str, ImageFacts]:
        """The stored images of these image_keys (missing ones are left out)."""
        ...

    def item_images(
        self, scrape_id: int, where: ItemFilter
    ) -> Iterator[tuple[int, str, ImageFacts]]:
        """``(item id, image URL, image)`` of the items ``where`` selects that have a stored
        image, streamed in pages, in no particular order (an image may come more than once)."""
        ...


@dataclass
class Facts:
    """What the detectors know. ``scrapes[a][0]`` is advertiser ``a``'s latest scrape."""

    advertisers: dict[int, AdvertiserFacts]
    scrapes: dict[int, list[ScrapeFacts]]
    source: ItemSource
    """The items of the scrapes and their images, read on demand in bounded pieces."""
    fixes: list[FixFacts] = field(default_factory=list)
    """The manual-fix history, oldest first."""
    settled: dict[str, int] = field(default_factory=dict)
    """Shared-CDN subjects → the last fix id a "choose one value" settled."""
    scope: frozenset[int] | None = None
    """Advertisers whose own findings are recomputed (None: all); global detectors see all."""
    thumbnails: Callable[[Sequence[str]], Mapping[str, bytes]] | None = None
    """Loads thumbnail JPEGs by image_key, only for the few pairs a hash says look alike."""
    _signatures: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False)

    def listed(self) -> list[tuple[int, ScrapeFacts]]:
        """``(advertiser, its latest scrape)`` of every advertiser whose latest scrape has items.

        In the order the detectors have always reported in: by latest scrape id within each run
        of 500 advertisers (by advertiser id).
        """
        latest = [(a, s[0]) for a, s in self.scrapes.items() if s]
        ordered: list[tuple[int, ScrapeFacts]] = []
        for start in range(0, len(latest), 500):
            ordered += sorted(latest[start : start + 500], key=lambda pair: pair[1].id)
        return [(a, s) for a, s in ordered if s.items]

    def look_alike(self, key_a: str, key_b: str, t: Thresholds) -> bool:
        """Whether two images' thumbnails confirm what their perceptual hashes say.

        Without a thumbnail for both, nothing is confirmed: a false alarm is as bad as a miss.
        """
        missing = [k for k in (key_a, key_b) if k not in self._signatures]
        if missing:
            found = self.thumbnails(missing) if self.thumbnails is not None else {}
            for key in missing:
                self._signatures[key] = _signature(found.get(key))
        a, b = self._signatures[key_a], self._signatures[key_b]
        if a is None or b is None:
            return False
        return float(np.abs(a - b).mean()) <= t.max_thumbnail_difference

    def in_scope(self, advertiser_id: int) -> bool:
        return self.scope is None or advertiser_id in self.scope

    def name(self, advertiser_id: int | None) -> str:
        advertiser = self.advertisers.get(advertiser_id) if advertiser_id is not None else None
        return advertiser.name if advertiser else "an unknown advertiser"

    def latest_scrape_id(self, advertiser_id: int) -> int | None:
        scrapes = self.scrapes.get(advertiser_id)
        return scrapes[0].id if scrapes else None


def _signature(jpeg: bytes | None) -> np.ndarray | None:
    """A thumbnail as 16x12 RGB floats, or None when there is none or it does not decode."""
    if not jpeg:
        return None
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            small = image.convert("RGB").resize((16, 12), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return np.asarray(small, dtype=np.float32)


__all__ = [
    "DEFAULT_THRESHOLDS",
    "AdvertiserFacts",
    "Facts",
    "FixFacts",
    "ImageFacts",
    "ItemFacts",
    "ItemFilter",
    "ItemSource",
    "ScrapeFacts",
    "Thresholds",
]
