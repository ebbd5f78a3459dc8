"""What several detectors share: the label constants, perceptual-hash pairing and the helpers
that word a finding's explanation and evidence the same way in every case."""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeGuard

from db.models import Severity
from tagging.detectors.base import Facts, FixFacts, ItemFacts
from tagging.ingest.images import hash_distance

LEGACY_COLORS = frozenset({"n/a"})
"""Colors the old system stored for placeholders (compared lower-cased)."""

PHOTO_TYPES = ("Dealer", "Stock")
"""The classes whose balance tells criteria apart (a Placeholder surge is an outage, case 1)."""

SEVERITY_ORDER: dict[str, int] = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}

_PHASH = re.compile(r"[0-9a-f]{16}")


def valid_phash(value: str | None) -> TypeGuard[str]:
    """Whether ``value`` is a 64-bit perceptual hash: 16 lower-case hex digits.

    As :func:`tagging.ingest.images.perceptual_hash` makes them.
    """
    return value is not None and _PHASH.fullmatch(value) is not None


def near_pairs(
    hashes: Mapping[str, str | None], max_distance: int
) -> Iterator[tuple[str, str, int]]:
    """Pairs of keys whose 64-bit perceptual hashes differ in at most ``max_distance`` bits.

    Multi-index hashing: the hash is cut into ``max_distance + 1`` bands; two hashes that differ
    in at most ``max_distance`` bits agree exactly on at least one band (pigeonhole), so only keys
    sharing a band are compared, instead of every pair. Keys without a valid hash are skipped.

    Yields:
        ``(key_a, key_b, distance)`` with ``key_a < key_b``, each pair once.
    """
    by_hash: dict[str, list[str]] = defaultdict(list)
    for key, value in hashes.items():
        if valid_phash(value):
            by_hash[value].append(key)
    bands = max_distance + 1
    edges = [round(64 * i / bands) for i in range(bands + 1)]
    buckets: dict[tuple[int, int], list[str]] = defaultdict(list)
    for value in by_hash:
        number = int(value, 16)
        for band in range(bands):
            width = edges[band + 1] - edges[band]
            if width:
                buckets[(band, (number >> edges[band]) & ((1 << width) - 1))].append(value)
    for keys in by_hash.values():  # identical hashes: distance 0
        for a, b in each_pair(sorted(keys)):
            yield a, b, 0
    seen: set[tuple[str, str]] = set()
    for members in buckets.values():
        for x, y in each_pair(sorted(members)):
            if (x, y) in seen:
                continue
            seen.add((x, y))
            distance = hash_distance(x, y)
            if distance <= max_distance:
                for a in by_hash[x]:
                    for b in by_hash[y]:
                        yield (a, b, distance) if a < b else (b, a, distance)


class HashIndex:
    """Keys by 64-bit perceptual hash, to find those near a hash seen later (one at a time).

    The multi-index hashing of :func:`near_pairs` with one side held in memory: a stream of
    hashes (a whole scrape's) is matched against a few (the fixed images') without holding it.
    """

    def __init__(self, hashes: Mapping[str, str | None], max_distance: int) -> None:
        self._max = max_distance
        self._by_hash: dict[str, list[str]] = defaultdict(list)
        for key, value in hashes.items():
            if valid_phash(value):
                self._by_hash[value].append(key)
        bands = max_distance + 1
        self._bands = [
            (low, high - low)
            for low, high in itertools.pairwise(round(64 * i / bands) for i in range(bands + 1))
            if high > low
        ]
        self._buckets: dict[tuple[int, int], list[str]] = defaultdict(list)
        for value in self._by_hash:
            for band, bits in self._band_bits(int(value, 16)):
                self._buckets[(band, bits)].append(value)

    def _band_bits(self, number: int) -> Iterator[tuple[int, int]]:
        for low, width in self._bands:
            yield low, (number >> low) & ((1 << width) - 1)

    def near(self, value: str | None) -> Iterator[tuple[str, int]]:
        """``(key, distance)`` of the keys whose hash is at most ``max_distance`` bits from
        ``value`` (none when ``value`` is not a valid hash)."""
        if not self._by_hash or not valid_phash(value):
            return
        seen: set[str] = set()
        for band in self._band_bits(int(value, 16)):
            for other in self._buckets.get(band, ()):
                if other in seen:
                    continue
                seen.add(other)
                distance = hash_distance(value, other)
                if distance <= self._max:
                    for key in self._by_hash[other]:
                        yield key, distance


def each_pair(values: list[str]) -> Iterator[tuple[str, str]]:
    """Every pair of ``values``, once each, in their order."""
    for i, a in enumerate(values):
        for b in values[i + 1 :]:
            yield a, b


def share_of(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def possessive(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def evidence_image(item: ItemFacts, facts: Facts, label: str | None = None) -> dict[str, Any]:
    """One image of a finding's evidence, as the page and the CLI show it."""
    return {
        "image_key": item.image_key,
        "image_url": item.image_url,
        "item_id": item.id,
        "advertiser": facts.name(item.advertiser_id),
        "label": label if label is not None else f"{item.image_type} · {item.color or 'None'}",
    }


def unique_by_key(items: Iterable[ItemFacts]) -> list[ItemFacts]:
    """The first item of each image_key (a sitemap may list one image on several pages)."""
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.image_key and item.image_key not in seen:
            seen.add(item.image_key)
            unique.append(item)
    return unique


def review_query(advertiser: str, **params: list[str]) -> dict[str, Any]:
    """Query parameters of the sitemap review page (``views/review.py`` reads them)."""
    return {"advertiser": advertiser, **{k: v for k, v in params.items() if v}}


def latest_fixes(fixes: Iterable[FixFacts]) -> dict[tuple[str, str], FixFacts]:
    """The newest fix of each (image_key, field)."""
    latest: dict[tuple[str, str], FixFacts] = {}
    for fix in fixes:
        current = latest.get((fix.image_key, fix.field))
        if current is None or fix.id > current.id:
            latest[(fix.image_key, fix.field)] = fix
    return latest


__all__ = [
    "LEGACY_COLORS",
    "PHOTO_TYPES",
    "SEVERITY_ORDER",
    "HashIndex",
    "each_pair",
    "evidence_image",
    "latest_fixes",
    "near_pairs",
    "pct",
    "possessive",
    "review_query",
    "share_of",
    "unique_by_key",
    "valid_phash",
]
