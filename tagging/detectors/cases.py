"""Weird-result detectors: the known cases where a sitemap's classification went wrong.

Each detector is a pure function over :class:`Facts` (what the database knows: the latest scrape
of each advertiser, a few scrapes of history, images' content hashes, the manual-fix history) and
returns :class:`Candidate` findings. ``db.findings`` loads the facts, stores the candidates as
findings and keeps their state; nothing here touches a database or Streamlit.

The cases (see the "Understanding weird results" page of the original service):

1. ``ml_outage``: the ML system failed to respond, so many images got the defaults
   (Placeholder, no color) although they are not obvious placeholders.
2. ``advertiser_placeholder``: a Placeholder with a color, the trace of an advertiser's fix.
3. ``legacy_placeholder``: Color "N/A", how the old system cached placeholders.
4. ``shared_cdn_conflict``: advertisers sharing a CDN fix the same image differently.
5. ``fix_not_sticking``: a fixed image came back under a new image_key (the CDN changed its URL
   or headers) with the ML label the fix had corrected.
6. ``near_duplicates``: near-identical images of different dealers carry different labels.
7. ``criteria_shift``: an advertiser's labels shift (class share or fix rate) against its own
   history or against all advertisers: a sign of different criteria.

False alarms cost as much as misses: each detector needs several images, a baseline or a manual
fix before it says anything, and skips what it cannot judge (no history, no perceptual hash).
"""

from __future__ import annotations

import hashlib
import io
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from db.findings import Candidate
from db.models import ItemStatus, Severity
from db.vocab import (
    ADVERTISER_PLACEHOLDER,
    CASES,
    CRITERIA_SHIFT,
    DEFAULT_IMAGE_TYPE,
    FIX_NOT_STICKING,
    LEGACY_PLACEHOLDER,
    ML_OUTAGE,
    NEAR_DUPLICATES,
    SHARED_CDN_CONFLICT,
)
from tagging.ingest.images import hash_distance

LEGACY_COLORS = frozenset({"n/a"})
"""Colors the old system stored for placeholders (compared lower-cased)."""

SEVERITY_ORDER: dict[str, int] = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}

_PHASH = re.compile(r"[0-9a-f]{16}")


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


# --- facts ---------------------------------------------------------------------------------------


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


@dataclass
class Facts:
    """What the detectors know. ``scrapes[a][0]`` is advertiser ``a``'s latest scrape."""

    advertisers: dict[int, AdvertiserFacts]
    scrapes: dict[int, list[ScrapeFacts]]
    items: dict[int, list[ItemFacts]]
    """The items of each advertiser's latest scrape, in sitemap order."""
    images: dict[str, ImageFacts] = field(default_factory=dict)
    fixes: list[FixFacts] = field(default_factory=list)
    """The manual-fix history, oldest first."""
    seen_before: dict[int, dict[str, str]] = field(default_factory=dict)
    """Per advertiser: image URL → a Dealer/Stock type the ML server gave it in a previous scrape
    (only for URLs that came back as Placeholder with no color in the latest scrape)."""
    previous_keys: dict[int, set[str]] = field(default_factory=dict)
    """Per advertiser: the image_keys of its previous scrape."""
    settled: dict[str, int] = field(default_factory=dict)
    """Shared-CDN subjects → the last fix id a "choose one value" settled."""
    scope: frozenset[int] | None = None
    """Advertisers whose own findings are recomputed (None: all); global detectors see all."""
    thumbnails: Callable[[Sequence[str]], Mapping[str, bytes]] | None = None
    """Loads thumbnail JPEGs by image_key, only for the few pairs a hash says look alike."""
    _signatures: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False)

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


# --- helpers -------------------------------------------------------------------------------------


def valid_phash(value: str | None) -> bool:
    """Whether ``value`` is a 64-bit perceptual hash as :func:`tagging.ingest.images.perceptual_hash`."""
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
            by_hash[value].append(key)  # type: ignore[index]
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
        for a, b in _pairs(sorted(keys)):
            yield a, b, 0
    seen: set[tuple[str, str]] = set()
    for members in buckets.values():
        for x, y in _pairs(sorted(members)):
            if (x, y) in seen:
                continue
            seen.add((x, y))
            distance = hash_distance(x, y)
            if distance <= max_distance:
                for a in by_hash[x]:
                    for b in by_hash[y]:
                        yield (a, b, distance) if a < b else (b, a, distance)


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


def _pairs(values: list[str]) -> Iterator[tuple[str, str]]:
    for i, a in enumerate(values):
        for b in values[i + 1 :]:
            yield a, b


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _possessive(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _image(item: ItemFacts, facts: Facts, label: str | None = None) -> dict[str, Any]:
    """One image of a finding's evidence, as the page and the CLI show it."""
    return {
        "image_key": item.image_key,
        "image_url": item.image_url,
        "item_id": item.id,
        "advertiser": facts.name(item.advertiser_id),
        "label": label if label is not None else f"{item.image_type} · {item.color or 'None'}",
    }


def _unique_by_key(items: Iterable[ItemFacts]) -> list[ItemFacts]:
    """The first item of each image_key (a sitemap may list one image on several pages)."""
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.image_key and item.image_key not in seen:
            seen.add(item.image_key)
            unique.append(item)
    return unique


def _review(advertiser: str, **params: list[str]) -> dict[str, Any]:
    """Query parameters of the sitemap review page (``views/review.py`` reads them)."""
    return {"advertiser": advertiser, **{k: v for k, v in params.items() if v}}


def _latest_fixes(fixes: Iterable[FixFacts]) -> dict[tuple[str, str], FixFacts]:
    """The newest fix of each (image_key, field)."""
    latest: dict[tuple[str, str], FixFacts] = {}
    for fix in fixes:
        current = latest.get((fix.image_key, fix.field))
        if current is None or fix.id > current.id:
            latest[(fix.image_key, fix.field)] = fix
    return latest


# --- 1. ML system failed to respond --------------------------------------------------------------


def detect_ml_outage(facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Candidate]:
    """Scrapes where many images got the defaults although they are not obvious placeholders.

    Suspects are the items the ML server did not answer (``ml_failure``) and the ones it answered
    with a Placeholder without color whose URL was a Dealer or Stock photo in a previous scrape.
    Image errors (404, corrupt files) are not the ML system's fault and are left out.
    """
    found = []
    for advertiser_id, items in facts.items.items():
        if not facts.in_scope(advertiser_id):
            continue
        scrapes = facts.scrapes.get(advertiser_id) or []
        counted = [i for i in items if i.status != ItemStatus.ERROR]
        n = len(counted)
        if not n or not scrapes:
            continue
        seen = facts.seen_before.get(advertiser_id, {})
        failed = [i for i in counted if i.status == ItemStatus.ML_FAILURE]
        lost = [
            i
            for i in counted
            if i.status == ItemStatus.OK
            and i.ml_image_type == DEFAULT_IMAGE_TYPE
            and i.ml_color is None
            and i.image_url in seen
        ]
        history = [s for s in scrapes[1 : 1 + t.history] if s.ok]
        baseline = (
            statistics.fmean(_share(s.ok_types.get(DEFAULT_IMAGE_TYPE, 0), s.ok) for s in history)
            if history
            else None
        )
        # ML failures count as placeholders: that is the default they were given.
        placeholders = sum(1 for i in counted if i.ml_image_type == DEFAULT_IMAGE_TYPE)
        share = _share(placeholders, n)
        enough = min(t.outage_min_items, n)
        by_failure = len(failed) >= enough and _share(len(failed), n) >= t.outage_min_share
        by_baseline = (
            baseline is not None
            and len(lost) >= enough
            and share - baseline >= t.outage_excess_share
        )
        if not (by_failure or by_baseline):
            continue
        previous = scrapes[1] if len(scrapes) > 1 else None
        again = (
            previous is not None
            and previous.items > 0
            and previous.ml_failures >= min(t.outage_min_items, previous.items)
            and _share(previous.ml_failures, previous.items) >= t.outage_min_share
        )
        suspects = failed + lost
        name = facts.name(advertiser_id)
        parts = [f"{len(failed):,} got no answer from the ML server"] if failed else []
        if lost:
            parts.append(f"{len(lost):,} were Dealer or Stock photos in earlier scrapes")
        explanation = (
            f"{CASES[ML_OUTAGE]}: {len(suspects):,} of the {n:,} images of "
            f"{_possessive(name)} scrape #{scrapes[0].id} came back as Placeholder with no "
            f"color ({'; '.join(parts)}). "
        )
        if baseline is not None:
            explanation += (
                f"Its earlier scrapes had {_pct(baseline)} placeholders; this one has "
                f"{_pct(share)}. "
            )
        if again:
            severity = Severity.CRITICAL
            explanation += (
                f"It failed again after the previous scrape #{previous.id} had the same problem: "
                "tell the dev team (the ML server is down or answers nothing)."
            )
        else:
            severity = Severity.WARNING
            explanation += (
                "Relaunch the scrape: only these images are classified again (the ML server "
                "caches what it classified). If it fails again, tell the dev team."
            )
        found.append(
            Candidate(
                detector=ML_OUTAGE,
                subject=f"scrape:{scrapes[0].id}",
                advertiser_id=advertiser_id,
                scrape_id=scrapes[0].id,
                severity=severity,
                explanation=explanation,
                evidence={
                    "scrape_id": scrapes[0].id,
                    "items": n,
                    "count": len(suspects),
                    "ml_failures": len(failed),
                    "lost": len(lost),
                    "placeholder_share": round(share, 3),
                    "baseline_share": round(baseline, 3) if baseline is not None else None,
                    "failed_again_after": previous.id if again and previous else None,
                    "remedy": "relaunch",
                    "images": [_image(i, facts) for i in suspects[: t.evidence_limit]],
                    "review": _review(name, status=[ItemStatus.ML_FAILURE.value] if failed else []),
                },
                identity={
                    "scrape": scrapes[0].id,
                    "items": sorted(i.id for i in suspects),
                    "again": again,
                },
            )
        )
    return found


# --- 2. Placeholder fixed by the advertiser ------------------------------------------------------


def detect_advertiser_placeholders(
    facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS
) -> list[Candidate]:
    """Images whose Image Type is Placeholder but whose Color is not None.

    The ML system never colors a placeholder, so the color is the trace of a fix that retagged a
    vehicle photo as Placeholder. Advertisers whose feed gives the color are skipped when the
    color is the feed's: there every placeholder carries its vehicle's color.
    """
    latest_type_fix = {
        key: fix for (key, name), fix in _latest_fixes(facts.fixes).items() if name == "image_type"
    }
    found = []
    for advertiser_id, items in facts.items.items():
        if not facts.in_scope(advertiser_id):
            continue
        advertiser = facts.advertisers.get(advertiser_id)
        for item in _unique_by_key(items):
            if item.image_type != DEFAULT_IMAGE_TYPE or item.color is None:
                continue
            if item.color.strip().lower() in LEGACY_COLORS:
                continue  # the legacy placeholder case
            if (
                advertiser is not None
                and advertiser.color_from_feed
                and (item.feed_color or "").strip().lower() == item.color.strip().lower()
            ):
                continue
            fix = latest_type_fix.get(item.image_key or "")
            suggested = None
            if fix is not None and fix.old_value and fix.old_value != DEFAULT_IMAGE_TYPE:
                suggested = fix.old_value
            elif item.ml_image_type != DEFAULT_IMAGE_TYPE:
                suggested = item.ml_image_type
            if fix is not None and fix.new_value == DEFAULT_IMAGE_TYPE:
                who = f"{fix.user} ({fix.source})"
                if fix.created_at is not None:
                    who += f" on {fix.created_at:%Y-%m-%d %H:%M}"
                how = f"it was retagged as Placeholder by {who}"
            else:
                how = "someone retagged it as Placeholder and kept the color"
            name = facts.name(advertiser_id)
            explanation = (
                f"{CASES[ADVERTISER_PLACEHOLDER]}: this image of {name} is a Placeholder with "
                f"Color {item.color}. The ML system never gives a placeholder a color: {how}. "
                + (f"Re-tag it as {suggested}, " if suggested else "Re-tag it, ")
                + "or accept it: the last word on the classification is the advertiser's."
            )
            found.append(
                Candidate(
                    detector=ADVERTISER_PLACEHOLDER,
                    subject=f"{advertiser_id}:{item.image_key}",
                    advertiser_id=advertiser_id,
                    scrape_id=item.scrape_id,
                    severity=Severity.INFO,
                    explanation=explanation,
                    evidence={
                        "image_key": item.image_key,
                        "image_url": item.image_url,
                        "item_id": item.id,
                        "color": item.color,
                        "ml_image_type": item.ml_image_type,
                        "suggested_type": suggested,
                        "fix_id": fix.id if fix else None,
                        "fixed_by": fix.user if fix else None,
                        "fix_source": fix.source if fix else None,
                        "remedy": "retag_or_accept",
                        "images": [_image(item, facts)],
                    },
                    identity={
                        "key": item.image_key,
                        "type": item.image_type,
                        "color": item.color,
                        "fix": fix.id if fix else None,
                    },
                )
            )
    return found


# --- 3. Legacy cached placeholder ----------------------------------------------------------------


def detect_legacy_placeholders(facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Candidate]:
    """Images with Color "N/A": placeholders as the old system cached them."""
    found = []
    for advertiser_id, items in facts.items.items():
        if not facts.in_scope(advertiser_id):
            continue
        legacy = [
            i
            for i in _unique_by_key(items)
            if i.color is not None and i.color.strip().lower() in LEGACY_COLORS
        ]
        if not legacy:
            continue
        name = facts.name(advertiser_id)
        explanation = (
            f"{CASES[LEGACY_PLACEHOLDER]}: {len(legacy):,} image(s) of {name} have Color "
            f"'{legacy[0].color}', how the old system stored placeholders "
            "({Placeholder, 'N/A'}): these are cached values from before, not today's answer. "
            "Re-classify them: relaunch the scrape (the ML server classifies again what it holds "
            "without a content hash). If 'N/A' comes back, the cache holds it: fix the color "
            "by hand."
        )
        scrape_id = facts.latest_scrape_id(advertiser_id)
        found.append(
            Candidate(
                detector=LEGACY_PLACEHOLDER,
                subject=f"advertiser:{advertiser_id}",
                advertiser_id=advertiser_id,
                scrape_id=scrape_id,
                severity=Severity.WARNING,
                explanation=explanation,
                evidence={
                    "count": len(legacy),
                    "remedy": "reclassify",
                    "images": [_image(i, facts) for i in legacy[: t.evidence_limit]],
                },
                identity=sorted(f"{i.image_key}|{i.image_type}|{i.color}" for i in legacy),
            )
        )
    return found


# --- 4. Advertisers sharing a CDN disagree -------------------------------------------------------


def detect_shared_cdn_conflicts(
    facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS
) -> list[Candidate]:
    """The same image_key (or URL) fixed differently by two or more advertisers, or back and forth.

    The ML cache stores one value per image_key whatever the advertiser, so advertisers sharing a
    CDN overwrite each other. Flagged when the advertisers' latest values differ, or when the value
    went A → B → A between different people; after a "choose one value" only later fixes count.
    """
    groups: dict[tuple[str, str, str], list[FixFacts]] = defaultdict(list)
    for fix in facts.fixes:
        groups[(fix.field, "key", fix.image_key)].append(fix)
    by_url: dict[tuple[str, str], list[FixFacts]] = defaultdict(list)
    for fix in facts.fixes:
        by_url[(fix.field, fix.image_url)].append(fix)
    for (field_name, url), fixes in by_url.items():
        # A URL republished under new keys: its fixes are spread over several key groups.
        if len({f.image_key for f in fixes}) > 1:
            groups[(field_name, "url", url)] = fixes

    item_by_key: dict[tuple[int, str], ItemFacts] = {}
    item_by_url: dict[tuple[int, str], ItemFacts] = {}
    for advertiser_id, items in facts.items.items():
        for item in items:
            if item.image_key:
                item_by_key.setdefault((advertiser_id, item.image_key), item)
                item_by_url.setdefault((advertiser_id, item.image_url), item)

    found = []
    for (field_name, kind, value), fixes in groups.items():
        fixes = sorted(fixes, key=lambda f: f.id)
        advertisers = sorted({f.advertiser_id for f in fixes if f.advertiser_id is not None})
        if kind == "key":
            subject = f"{field_name}:key:{value}"
        else:
            subject = f"{field_name}:url:{hashlib.sha256(value.encode()).hexdigest()[:32]}"
        settled = facts.settled.get(subject, 0)
        recent = [f for f in fixes if f.id > settled]
        if not recent:
            continue
        latest: dict[int, str | None] = {}
        for fix in fixes:
            if fix.advertiser_id is not None:
                latest[fix.advertiser_id] = fix.new_value
        disagree = len(latest) >= 2 and len(set(latest.values())) >= 2
        back_and_forth = _back_and_forth(recent if settled else fixes)
        if not (disagree or back_and_forth):
            continue
        current = {}
        images = []
        for advertiser_id in advertisers:
            lookup = item_by_key if kind == "key" else item_by_url
            item = lookup.get((advertiser_id, value))
            if item is None and kind == "key":
                item = item_by_url.get((advertiser_id, fixes[-1].image_url))
            if item is not None:
                current[facts.name(advertiser_id)] = getattr(item, field_name)
                images.append(_image(item, facts))
        timeline = [
            {
                "fix_id": f.id,
                "at": f"{f.created_at:%Y-%m-%d %H:%M:%S}" if f.created_at else None,
                "advertiser": facts.name(f.advertiser_id),
                "user": f.user,
                "source": f.source,
                "old_value": f.old_value,
                "new_value": f.new_value,
            }
            for f in fixes
        ]
        values = sorted({str(f.new_value) for f in fixes})
        label = "Image Type" if field_name == "image_type" else "Color"
        same = "image_key" if kind == "key" else "URL"
        if disagree:
            who = (
                " and ".join(facts.name(a) for a in advertisers)
                + f" list the same image (same {same}) and fixed it differently: "
                + ", ".join(f"{facts.name(a)} says {v}" for a, v in sorted(latest.items()))
            )
        else:
            users = sorted({f.user for f in fixes})
            who = (
                f"the same image (same {same}) was fixed back and forth by "
                + ", ".join(users)
                + " ("
                + " → ".join(str(f.new_value) for f in fixes)
                + ")"
            )
        explanation = (
            f"{CASES[SHARED_CDN_CONFLICT]}: {who}. The ML cache keeps one {label} per image, "
            "whoever lists it, so each fix overwrites the other's at the next scrape. Choose one "
            "value for everyone."
        )
        primary = fixes[-1].advertiser_id
        found.append(
            Candidate(
                detector=SHARED_CDN_CONFLICT,
                subject=subject,
                advertiser_id=primary,
                scrape_id=facts.latest_scrape_id(primary) if primary is not None else None,
                severity=Severity.WARNING,
                explanation=explanation,
                evidence={
                    "field": field_name,
                    "image_key": fixes[-1].image_key,
                    "image_url": fixes[-1].image_url,
                    "advertiser_ids": advertisers,
                    "values": values,
                    "current": current,
                    "timeline": timeline,
                    "settled_fix_id": settled or None,
                    "remedy": "choose_value",
                    "images": images[: t.evidence_limit],
                },
                identity={"fixes": [f.id for f in fixes], "settled": settled},
            )
        )
    return found


def _back_and_forth(fixes: list[FixFacts]) -> bool:
    """A value set, changed, then set again (A → B → A), by at least two different people."""
    values: list[str | None] = []
    for fix in fixes:
        if not values or values[-1] != fix.new_value:
            values.append(fix.new_value)
    reverted = any(values[i] == values[i - 2] for i in range(2, len(values)))
    return reverted and len({f.user for f in fixes}) >= 2


# --- 5. Fix that did not stick -------------------------------------------------------------------


def detect_unstuck_fixes(facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Candidate]:
    """Images that are a fixed image's content under a new image_key, with the corrected ML label.

    "The same content": identical bytes (sha256), or, when the fixed image left the sitemap in the
    latest scrape as the new one arrived, a perceptual hash at most ``max_phash_distance`` bits
    away at the same pixel size, confirmed by the thumbnails, and the only such match on both
    sides. Only an advertiser's own fixes are carried to its own images: another dealer's similar
    photo is case 6, not this one.
    """
    latest = _latest_fixes(facts.fixes)
    fixed_fields: dict[str, set[str]] = defaultdict(set)
    for key, field_name in latest:
        fixed_fields[key].add(field_name)
    found = []
    for advertiser_id, items in facts.items.items():
        if not facts.in_scope(advertiser_id):
            continue
        current_keys = {i.image_key for i in items if i.image_key}
        own = {
            (key, field_name): fix
            for (key, field_name), fix in latest.items()
            if fix.advertiser_id == advertiser_id
            and key not in current_keys
            and fix.new_value is not None
        }
        if not own:
            continue
        old_keys = sorted({key for key, _ in own})
        new_items = [i for i in _unique_by_key(items) if i.status == ItemStatus.OK and i.image_key]
        matches = _content_matches(facts, old_keys, new_items, advertiser_id, t)
        advertiser = facts.advertisers.get(advertiser_id)
        for item in new_items:
            match = matches.get(item.image_key or "")
            if match is None:
                continue
            old_keys_matched, how, distance = match
            changes = []
            for field_name in ("image_type", "color"):
                # Several old keys may hold the same bytes (re-published twice): the newest fix.
                candidates = [
                    own[k, field_name] for k in old_keys_matched if (k, field_name) in own
                ]
                fix = max(candidates, key=lambda f: f.id) if candidates else None
                if fix is None or field_name in fixed_fields.get(item.image_key or "", set()):
                    continue
                if field_name == "color" and advertiser is not None and advertiser.color_from_feed:
                    continue
                ml_value = item.ml_image_type if field_name == "image_type" else item.ml_color
                value = getattr(item, field_name)
                if value == ml_value == fix.old_value and value != fix.new_value:
                    changes.append((field_name, ml_value, fix))
            if not changes:
                continue
            old_key, old_url = changes[0][2].image_key, changes[0][2].image_url
            name = facts.name(advertiser_id)
            said = "; ".join(
                f"{'Image Type' if f == 'image_type' else 'Color'} {ml} instead of {fix.new_value}"
                for f, ml, fix in changes
            )
            same = (
                "has the same bytes"
                if how == "sha256"
                else f"looks the same (perceptual hashes {distance} bits apart)"
            )
            explanation = (
                f"{CASES[FIX_NOT_STICKING]}: this image of {name} {same} as one fixed before, "
                "but the CDN published it under a new URL or new headers, so it came back under a "
                f"new image_key with the ML label the fix had corrected ({said}). Carry the fix "
                "over to the new image_key (the advertiser can also have it done on every scrape)."
            )
            found.append(
                Candidate(
                    detector=FIX_NOT_STICKING,
                    subject=f"{advertiser_id}:{item.image_key}",
                    advertiser_id=advertiser_id,
                    scrape_id=item.scrape_id,
                    severity=Severity.WARNING,
                    explanation=explanation,
                    evidence={
                        "image_key": item.image_key,
                        "image_url": item.image_url,
                        "item_id": item.id,
                        "matched_key": old_key,
                        "matched_url": old_url,
                        "match": how,
                        "distance": distance,
                        "changes": [
                            {
                                "field": f,
                                "ml_value": ml,
                                "fixed_value": fix.new_value,
                                "fix_id": fix.id,
                                "fixed_by": fix.user,
                            }
                            for f, ml, fix in changes
                        ],
                        "remedy": "carry_over",
                        "images": [
                            _image(
                                item, facts, f"new · {item.image_type} · {item.color or 'None'}"
                            ),
                            {
                                "image_key": old_key,
                                "image_url": old_url,
                                "item_id": None,
                                "advertiser": name,
                                "label": "fixed before · "
                                + " · ".join(str(fix.new_value) for _, _, fix in changes),
                            },
                        ],
                    },
                    identity={
                        "key": item.image_key,
                        "from": old_key,
                        "changes": [[f, ml, fix.new_value, fix.id] for f, ml, fix in changes],
                    },
                )
            )
    return found


def _content_matches(
    facts: Facts,
    old_keys: list[str],
    new_items: list[ItemFacts],
    advertiser_id: int,
    t: Thresholds,
) -> dict[str, tuple[list[str], str, int]]:
    """New key → (the old keys with its content, "sha256" or "phash", distance)."""
    by_sha: dict[str, list[str]] = defaultdict(list)
    for key in old_keys:
        image = facts.images.get(key)
        if image is not None and image.sha256:
            by_sha[image.sha256].append(key)
    matches: dict[str, tuple[list[str], str, int]] = {}
    for item in new_items:
        image = facts.images.get(item.image_key or "")
        if image is not None and image.sha256 and image.sha256 in by_sha:
            matches[item.image_key or ""] = (sorted(by_sha[image.sha256]), "sha256", 0)

    # Perceptual matches only for a swap seen between two consecutive scrapes: the fixed image
    # left the sitemap as the new one arrived, both have the same size, and nothing else matches.
    previous = facts.previous_keys.get(advertiser_id, set())
    gone = [k for k in old_keys if k in previous]
    arrived = [
        i.image_key
        for i in new_items
        if i.image_key and i.image_key not in previous and i.image_key not in matches
    ]
    if not gone or not arrived:
        return matches
    hashes = {k: (facts.images[k].phash if k in facts.images else None) for k in gone + arrived}
    gone_set = set(gone)
    links: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for a, b, distance in near_pairs(hashes, t.max_phash_distance):
        if (a in gone_set) == (b in gone_set):
            continue
        old, new = (a, b) if a in gone_set else (b, a)
        old_image, new_image = facts.images[old], facts.images[new]
        if (old_image.width, old_image.height) != (new_image.width, new_image.height):
            continue
        if not facts.look_alike(old, new, t):
            continue
        links[old].append((new, distance))
        links[new].append((old, distance))
    for new in arrived:
        candidates = links.get(new, [])
        if len(candidates) != 1:
            continue
        old, distance = candidates[0]
        if len(links.get(old, [])) == 1:
            matches[new] = ([old], "phash", distance)
    return matches


# --- 6. Near-duplicates labelled differently -----------------------------------------------------


def detect_near_duplicates(facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Candidate]:
    """Near-identical images of different dealers whose final Image Types differ.

    At least one of the two must carry a manual Image Type fix: the case is that clients differ
    on which type an image is, not that the model wavers. "Near-identical" is the same bytes, or
    perceptual hashes at most ``max_phash_distance`` bits apart confirmed by the thumbnails; each
    fixed image is paired with its closest such look-alikes only.
    """
    fixed_keys = {f.image_key for f in facts.fixes if f.field == "image_type"}
    if not fixed_keys:
        return []
    # One entry per (advertiser, image_key) of the latest scrapes.
    entries: dict[str, ItemFacts] = {}
    for advertiser_id, items in facts.items.items():
        for item in _unique_by_key(items):
            if item.status == ItemStatus.OK and item.image_key in facts.images:
                entries[f"{advertiser_id}|{item.image_key}"] = item
    by_sha: dict[str, list[str]] = defaultdict(list)
    for entry, item in entries.items():
        sha = facts.images[item.image_key or ""].sha256
        if sha:
            by_sha[sha].append(entry)
    hashes = {entry: facts.images[item.image_key or ""].phash for entry, item in entries.items()}
    pairs = [(a, b, 0) for same in by_sha.values() for a, b in _pairs(sorted(same))]
    pairs += list(near_pairs(hashes, t.max_phash_distance))

    neighbours: dict[str, dict[str, int]] = defaultdict(dict)
    for a, b, distance in pairs:
        item_a, item_b = entries[a], entries[b]
        if item_a.advertiser_id == item_b.advertiser_id or item_a.image_key == item_b.image_key:
            continue  # the same dealer, or the shared-CDN case (one image_key)
        if item_a.image_key not in fixed_keys and item_b.image_key not in fixed_keys:
            continue
        if b in neighbours[a]:
            continue
        same_bytes = facts.images[item_a.image_key or ""].sha256 is not None and (
            facts.images[item_a.image_key or ""].sha256
            == facts.images[item_b.image_key or ""].sha256
        )
        if not same_bytes and not facts.look_alike(
            item_a.image_key or "", item_b.image_key or "", t
        ):
            continue
        distance = 0 if same_bytes else distance
        neighbours[a][b] = neighbours[b][a] = distance

    found: dict[str, Candidate] = {}
    for entry, near in sorted(neighbours.items()):
        item = entries[entry]
        if item.image_key not in fixed_keys or not near:
            continue
        closest = min(near.values())
        for other, distance in sorted(near.items()):
            other_item = entries[other]
            if distance != closest or other_item.image_type == item.image_type:
                continue
            a, b = sorted([item, other_item], key=lambda i: i.image_key or "")
            subject = f"{a.image_key}|{b.image_key}"
            if subject in found:
                continue
            how = "identical files" if distance == 0 else f"perceptual hashes {distance} bits apart"
            explanation = (
                f"{CASES[NEAR_DUPLICATES]}: these images of {facts.name(a.advertiser_id)} and "
                f"{facts.name(b.advertiser_id)} are nearly the same picture ({how}) but one is "
                f"labelled {a.image_type} and the other {b.image_type}: clients differ on which "
                "type it is. Mark them as conflicting examples, to keep them out of the training "
                "sets, or re-tag the obvious misclassification."
            )
            found[subject] = Candidate(
                detector=NEAR_DUPLICATES,
                subject=subject,
                advertiser_id=item.advertiser_id,
                scrape_id=item.scrape_id,
                severity=Severity.INFO,
                explanation=explanation,
                evidence={
                    "distance": distance,
                    "advertiser_ids": sorted({a.advertiser_id, b.advertiser_id}),
                    "remedy": "mark_conflicting",
                    "images": [_image(i, facts) for i in (a, b)],
                },
                identity=[[i.image_key, i.image_type] for i in (a, b)],
            )
    return list(found.values())


# --- 7. Different criteria -----------------------------------------------------------------------

PHOTO_TYPES = ("Dealer", "Stock")
"""The classes whose balance tells criteria apart (a Placeholder surge is an outage, case 1)."""


def detect_criteria_shifts(facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Candidate]:
    """Advertisers whose class share jumps against their own history, or whose fix rate is far
    above every other advertiser's.

    Class shares are over the Dealer and Stock photos the ML server answered for, so outages and
    placeholders do not move them; a jump must exceed the median jump of the other advertisers
    (a new model moves everyone). The fix rate is the share of an advertiser's current images
    with a fix made for it, compared with the median advertiser's.
    """
    found = []
    shares: dict[int, tuple[dict[str, float], dict[str, float], int]] = {}
    for advertiser_id, scrapes in facts.scrapes.items():
        if len(scrapes) < 2:
            continue
        now = _photo_shares(scrapes[0])
        history = [s for s in scrapes[1 : 1 + t.history] if _photo_count(s)]
        if now is None or not history:
            continue
        before = {
            c: statistics.fmean(_photo_shares(s)[c] for s in history)  # type: ignore[index]
            for c in PHOTO_TYPES
        }
        shares[advertiser_id] = (now, before, _photo_count(scrapes[0]))
    # Every advertiser, whatever the scope: one advertiser's change moves the others' baseline.
    for advertiser_id, (now, before, photos) in shares.items():
        others = [
            {c: o_now[c] - o_before[c] for c in PHOTO_TYPES}
            for other, (o_now, o_before, _) in shares.items()
            if other != advertiser_id
        ]
        fleet = {c: statistics.median(o[c] for o in others) if others else 0.0 for c in PHOTO_TYPES}
        jumps = {c: now[c] - before[c] for c in PHOTO_TYPES}
        # The class that grew beyond the fleet: the labels to look at.
        grown = max(PHOTO_TYPES, key=lambda c: jumps[c] - fleet[c])
        excess = jumps[grown] - fleet[grown]
        if (
            excess < t.shift_min_share
            or jumps[grown] < t.shift_min_share
            or jumps[grown] * photos < t.shift_min_items
        ):
            continue
        name = facts.name(advertiser_id)
        items = [
            i for i in facts.items.get(advertiser_id, []) if i.image_type == grown and i.image_key
        ]
        explanation = (
            f"{CASES[CRITERIA_SHIFT]}: {_possessive(name)} share of {grown} photos (of its "
            f"Dealer and Stock photos) went from {_pct(before[grown])} in its earlier scrapes to "
            f"{_pct(now[grown])} in scrape #{facts.latest_scrape_id(advertiser_id)}, while "
            f"the median other advertiser moved {fleet[grown] * 100:+.0f} points. Its labels "
            "(or the fixes it makes) may follow other criteria than ours (e.g. digitally "
            "enhanced photos: Stock for us, Dealer for them). Open the sitemap filtered to "
            f"{grown} and retag only obvious misclassifications."
        )
        found.append(
            Candidate(
                detector=CRITERIA_SHIFT,
                subject=f"share:{advertiser_id}:{grown}",
                advertiser_id=advertiser_id,
                scrape_id=facts.latest_scrape_id(advertiser_id),
                severity=Severity.WARNING,
                explanation=explanation,
                evidence={
                    "kind": "class_share",
                    "class": grown,
                    "share": round(now[grown], 3),
                    "baseline_share": round(before[grown], 3),
                    "fleet_change": round(fleet[grown], 3),
                    "remedy": "open_sitemap",
                    "review": _review(name, type=[grown]),
                    "images": [_image(i, facts) for i in _unique_by_key(items)[:12]],
                },
                identity={"class": grown, "band": round(excess * 10)},
            )
        )
    found.extend(_fix_rate_shifts(facts, t))
    return found


def _photo_count(scrape: ScrapeFacts) -> int:
    return sum(scrape.ok_types.get(c, 0) for c in PHOTO_TYPES)


def _photo_shares(scrape: ScrapeFacts) -> dict[str, float] | None:
    total = _photo_count(scrape)
    if not total:
        return None
    return {c: scrape.ok_types.get(c, 0) / total for c in PHOTO_TYPES}


def _fix_rate_shifts(facts: Facts, t: Thresholds) -> list[Candidate]:
    fixed_for: dict[int, set[str]] = defaultdict(set)
    fixed_to: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for fix in facts.fixes:
        if fix.advertiser_id is not None:
            fixed_for[fix.advertiser_id].add(fix.image_key)
            if fix.field == "image_type" and fix.new_value:
                fixed_to[fix.advertiser_id][fix.new_value] += 1
    rates: dict[int, tuple[float, list[ItemFacts]]] = {}
    for advertiser_id, items in facts.items.items():
        unique = _unique_by_key(items)
        if unique:
            fixed = [i for i in unique if i.image_key in fixed_for.get(advertiser_id, set())]
            rates[advertiser_id] = (len(fixed) / len(unique), fixed)
    found = []
    for advertiser_id, (rate, fixed) in rates.items():
        peers = [r for other, (r, _) in rates.items() if other != advertiser_id]
        if len(peers) < t.fix_rate_min_peers:
            continue
        median = statistics.median(peers)
        if (
            rate < t.fix_rate_min
            or len(fixed) < t.fix_rate_min_items
            or rate < max(t.fix_rate_factor * median, median + 0.10)
        ):
            continue
        name = facts.name(advertiser_id)
        targets = fixed_to.get(advertiser_id, {})
        to_class = max(sorted(targets), key=lambda c: targets[c]) if targets else None
        explanation = (
            f"{CASES[CRITERIA_SHIFT]}: {_pct(rate)} of {_possessive(name)} current images have "
            f"been fixed ({len(fixed):,} images), against {_pct(median)} for the median "
            "advertiser. Fixing this much usually means the advertiser and we label by "
            "different criteria"
            + (f" (most fixes set {to_class})" if to_class else "")
            + ". Open the fixed images of its sitemap and agree on the criteria; retag only "
            "obvious misclassifications, and keep conflicting images out of the training sets."
        )
        found.append(
            Candidate(
                detector=CRITERIA_SHIFT,
                subject=f"fix_rate:{advertiser_id}",
                advertiser_id=advertiser_id,
                scrape_id=facts.latest_scrape_id(advertiser_id),
                severity=Severity.WARNING,
                explanation=explanation,
                evidence={
                    "kind": "fix_rate",
                    "rate": round(rate, 3),
                    "fixed": len(fixed),
                    "median_rate": round(median, 3),
                    "class": to_class,
                    "remedy": "open_sitemap",
                    "review": _review(name, type=[to_class] if to_class else [], status=["fixed"]),
                    "images": [_image(i, facts) for i in fixed[:12]],
                },
                identity={"band": round(rate * 10), "class": to_class},
            )
        )
    return found


# --- all of them ---------------------------------------------------------------------------------

DETECTORS = {
    ML_OUTAGE: detect_ml_outage,
    ADVERTISER_PLACEHOLDER: detect_advertiser_placeholders,
    LEGACY_PLACEHOLDER: detect_legacy_placeholders,
    SHARED_CDN_CONFLICT: detect_shared_cdn_conflicts,
    FIX_NOT_STICKING: detect_unstuck_fixes,
    NEAR_DUPLICATES: detect_near_duplicates,
    CRITERIA_SHIFT: detect_criteria_shifts,
}


def detect_all(facts: Facts, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Candidate]:
    """Every detector's candidates (at most one per (detector, subject))."""
    found: dict[tuple[str, str], Candidate] = {}
    for detect in DETECTORS.values():
        for candidate in detect(facts, thresholds):
            found.setdefault((candidate.detector, candidate.subject), candidate)
    return list(found.values())


__all__ = [
    "DEFAULT_THRESHOLDS",
    "DETECTORS",
    "AdvertiserFacts",
    "Facts",
    "FixFacts",
    "ImageFacts",
    "ItemFacts",
    "ScrapeFacts",
    "Thresholds",
    "detect_all",
    "near_pairs",
]
