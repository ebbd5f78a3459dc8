"""Stage every weird-result case on the demo, so that each detector has a finding to show.

Run once, after the first scrape of every demo advertiser (``make run`` does it on a fresh
database). Everything goes through the real paths: fixes through
:func:`tagging.fixes.save_fixes` and the push to the ML server, scrapes through
:func:`tagging.ingest.scrape.run_scrape`, the CDN re-publish through its admin endpoint. Only
the legacy "N/A" color is written by hand: today's ML server cannot produce it, it is a value
cached by the old system.

| case | staged on | how |
| --- | --- | --- |
| different criteria | Harbor Autos | relabels half its Stock photos as Dealer; rescrape |
| shared CDN | Lakeside Auto, Metro Car Center | fix one shared image against each other |
| near-duplicates | Summit Auto Group, Sunrise Motors | Summit relabels its copy of a photo |
| advertiser placeholder | Summit Auto Group | retags a colored photo as Placeholder |
| fix not sticking | Sunrise Motors | fixes, then the CDN re-publishes them; rescrape |
| ML outage | Valley Trucks | a scrape while the ML server is unreachable |
| legacy placeholder | Metro Car Center | two placeholders get Color "N/A" |

Deterministic: the same demo seed and model pick the same images.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypedDict, Unpack
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor
from db.advertisers import get_advertiser
from db.findings import list_findings
from db.fixes import FixChange
from db.models import FixSource, ItemStatus, ManualFix, Role, SitemapItem
from db.scrapes import latest_scrape, scrape_items
from tagging.config import Settings
from tagging.demo.cdn import admin_token
from tagging.detectors.base import DEFAULT_THRESHOLDS, ItemFilter
from tagging.detectors.common import near_pairs
from tagging.detectors.facts import SqlItemSource, load_facts
from tagging.detectors.refresh import refresh_findings
from tagging.errors import MLServerError, NotFoundError
from tagging.fixes import save_fixes
from tagging.ingest.fetch import GuardedClient, client_from_settings
from tagging.ingest.scrape import ScrapeConfig, ScrapeSummary, run_scrape
from tagging.server.client import MLClient

SUNRISE = "Sunrise Motors"
LAKESIDE = "Lakeside Auto"
METRO = "Metro Car Center"
VALLEY = "Valley Trucks"
HARBOR = "Harbor Autos"
SUMMIT = "Summit Auto Group"

ANALYST = Actor(username="analyst", role=Role.ANALYST)
"""The demo analyst account (``db.accounts.ensure_demo_accounts``)."""

REPUBLISH = "/_admin/republish?share=0.1&seed=1&recompress=1"
"""The CDN moves a tenth of the images and encodes them again: a perceptual match, not an exact
one, so the fixes are raised as findings for a person instead of being carried over."""
FIXES_THAT_DO_NOT_STICK = 4
PHOTOS = ("Dealer", "Stock")


def advertiser_actor(name: str) -> Actor:
    """The actor of an advertiser's own front end, named as the fix API names it."""
    return Actor(username=f"advertiser:{name}"[:200], role=Role.ANALYST)


@dataclass
class WeirdDemoReport:
    """What :func:`stage_weird_cases` did."""

    staged: dict[str, str] = field(default_factory=dict)
    """Case → what was staged."""
    skipped: str | None = None
    """Why nothing was staged, if nothing was."""
    findings: dict[str, int] = field(default_factory=dict)
    """Open findings by detector afterwards."""
    dataset: dict[str, str] = field(default_factory=dict)
    """What was staged for dataset curation (:func:`_dataset_fixes`): not a detector's case."""


@dataclass
class _Stage:
    settings: Settings
    sessions: sessionmaker[Session]
    cdn_url: str
    cdn_token: str
    ml: MLClient
    client: GuardedClient
    say: Callable[[str], None]
    report: WeirdDemoReport


def stage_weird_cases(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    cdn_url: str,
    cdn_token: str | None = None,
    say: Callable[[str], None] | None = None,
) -> WeirdDemoReport:
    """Produce every weird-result case on the demo, then refresh the findings.

    Needs the demo CDN at ``cdn_url`` (allow-listed in ``settings.allowed_hosts``) and the ML
    server of ``settings`` running, and every demo advertiser scraped once. Does nothing on a
    database that already has manual fixes: the demo is staged once, on a fresh database.

    Args:
        settings: the launcher's settings (database, ML server, token, allowed hosts).
        sessions: the app database's session factory.
        cdn_url: the demo CDN's base URL, e.g. ``http://127.0.0.1:8765``.
        cdn_token: the CDN's admin token (its re-publish endpoint needs it); default the one in
            the data dir (:func:`tagging.demo.cdn.admin_token`), which ``python -m tagging cdn``
            uses.
        say: progress messages (e.g. ``print``).

    Raises:
        FetchError: the CDN failed in a way the staging cannot go around.
        MLServerError: the ML server failed, or did not take the demo's fixes.
        NotFoundError: the database does not hold the demo (a demo advertiser or shared image
            is missing).
    """
    report = WeirdDemoReport()
    with sessions() as session:
        if session.scalar(select(func.count()).select_from(ManualFix)):
            report.skipped = "the database has manual fixes already: the demo is staged once"
            return report
        for name in (SUNRISE, LAKESIDE, METRO, VALLEY, HARBOR, SUMMIT):
            advertiser = get_advertiser(session, name)
            if latest_scrape(session, advertiser.id) is None:
                report.skipped = f"{name} has not been scraped yet: scrape every advertiser first"
                return report
    client = client_from_settings(settings)
    ml = MLClient.from_settings(settings)
    stage = _Stage(
        settings,
        sessions,
        cdn_url.rstrip("/"),
        cdn_token or admin_token(settings.data_dir),
        ml,
        client,
        say or (lambda _: None),
        report,
    )
    try:
        _criteria_shift(stage)
        _shared_cdn(stage)
        _near_duplicates_and_placeholder(stage)
        _fixes_that_do_not_stick(stage)
        _ml_outage(stage)
        _legacy_placeholders(stage)
        _dataset_fixes(stage)
    finally:
        client.close()
        ml.client.close()
    with sessions.begin() as session:
        refresh_findings(session)
    with sessions() as session:
        for finding in list_findings(session):
            report.findings[finding.detector] = report.findings.get(finding.detector, 0) + 1
    return report


# --- helpers -------------------------------------------------------------------------------------


def _latest(stage: _Stage, name: str) -> list[SitemapItem]:
    with stage.sessions() as session:
        scrape = latest_scrape(session, get_advertiser(session, name).id)
        return scrape_items(session, scrape.id) if scrape else []


def _photos(items: Sequence[SitemapItem]) -> list[SitemapItem]:
    """Dealer and Stock photos the ML server answered for, one item per image_key."""
    seen: set[str] = set()
    found = []
    for item in items:
        if (
            item.status == ItemStatus.OK
            and item.image_key
            and item.image_type in PHOTOS
            and item.image_key not in seen
        ):
            seen.add(item.image_key)
            found.append(item)
    return found


def _other(image_type: str) -> str:
    return "Stock" if image_type == "Dealer" else "Dealer"


def _fix(
    stage: _Stage,
    actor: Actor,
    changes: list[FixChange],
    source: FixSource = FixSource.ANALYST,
) -> list[int]:
    """Record the fixes and push them to the ML cache at once, as the review page does."""
    saved = save_fixes(stage.sessions, stage.ml, actor, changes, source=source)
    if saved.push_error:
        raise MLServerError(f"the ML server did not take the demo's fixes: {saved.push_error}")
    return saved.fix_ids


class _ScrapeOptions(TypedDict, total=False):
    """The :class:`ScrapeConfig` fields a demo scrape may override."""

    batch_size: int
    in_flight: int
    max_consecutive_ml_failures: int


def _scrape(
    stage: _Stage, name: str, ml: MLClient | None = None, **config: Unpack[_ScrapeOptions]
) -> ScrapeSummary:
    summary = run_scrape(
        stage.sessions,
        name,
        ml=ml or stage.ml,
        client=stage.client,
        config=ScrapeConfig(trigger="demo", **config),
    )
    stage.say(f"  rescraped {name}: {summary.status}, {summary.items} images")
    return summary


# --- the cases -----------------------------------------------------------------------------------


def _criteria_shift(stage: _Stage) -> None:
    """Harbor counts enhanced stock photos as dealer photos: it relabels half of them."""
    stock = [i for i in _photos(_latest(stage, HARBOR)) if i.image_type == "Stock"]
    chosen = stock[::2]
    changes = [FixChange(i.id, "image_type", "Dealer", seen_value="Stock") for i in chosen]
    _fix(stage, advertiser_actor(HARBOR), changes, FixSource.ADVERTISER)
    _scrape(stage, HARBOR)
    stage.report.staged["criteria_shift"] = (
        f"{HARBOR} relabelled {len(chosen)} Stock photos as Dealer, then was scraped again"
    )


def _shared_cdn(stage: _Stage) -> None:
    """Lakeside and Metro list the same image and override it with different values."""
    metro_keys = {i.image_key for i in _latest(stage, METRO)}
    shared = [i for i in _photos(_latest(stage, LAKESIDE)) if i.image_key in metro_keys]
    if not shared:
        raise NotFoundError(f"{LAKESIDE} and {METRO} share no image: is this the demo?")
    key, original = shared[0].image_key, shared[0].image_type
    theirs = _other(original)

    def fix(name: str, value: str) -> None:
        item = next(i for i in _latest(stage, name) if i.image_key == key)
        change = FixChange(item.id, "image_type", value, seen_value=item.image_type)
        _fix(stage, advertiser_actor(name), [change], FixSource.ADVERTISER)

    third = next(t for t in ("Dealer", "Stock", "Placeholder") if t not in (original, theirs))
    fix(LAKESIDE, theirs)
    _scrape(stage, METRO)  # Metro's scrape keeps its own value: overrides are per advertiser,
    fix(METRO, third)  # and Metro overrides it otherwise.
    _scrape(stage, LAKESIDE)
    stage.report.staged["shared_cdn_conflict"] = (
        f"{LAKESIDE} and {METRO} overrode image {key}: {theirs} / {third} (ML: {original})"
    )


def _near_duplicates_and_placeholder(stage: _Stage) -> None:
    """Summit relabels its copy of a Sunrise photo, and retags a colored photo as Placeholder."""
    summit = _photos(_latest(stage, SUMMIT))
    sunrise = _photos(_latest(stage, SUNRISE))
    copy = _near_copy(stage, summit, sunrise)
    if copy is not None:
        item, original = copy
        change = FixChange(
            item.id, "image_type", _other(item.image_type), seen_value=item.image_type
        )
        _fix(stage, advertiser_actor(SUMMIT), [change], FixSource.ADVERTISER)
        stage.report.staged["near_duplicates"] = (
            f"{SUMMIT} relabelled its copy of a {SUNRISE} photo ({original.image_key}) as "
            f"{_other(item.image_type)}"
        )
    colored = next(
        i
        for i in summit
        if i.color is not None and (copy is None or i.image_key != copy[0].image_key)
    )
    changes = [
        FixChange(colored.id, "image_type", "Placeholder", seen_value=colored.image_type),
        # The advertiser keeps the color beside it: its own word, which the app flags.
        FixChange(colored.id, "color", colored.color, seen_value=colored.color),
    ]
    _fix(stage, advertiser_actor(SUMMIT), changes, FixSource.ADVERTISER)
    stage.report.staged["advertiser_placeholder"] = (
        f"{SUMMIT} retagged a {colored.color} {colored.image_type} photo as Placeholder"
    )


def _near_copy(
    stage: _Stage, summit: list[SitemapItem], sunrise: list[SitemapItem]
) -> tuple[SitemapItem, SitemapItem] | None:
    """A Summit photo whose only closest look-alike elsewhere is a Sunrise photo of its type."""
    with stage.sessions() as session:
        facts = load_facts(session)
        # Who lists each image the ML server answered for, over every advertiser's latest scrape,
        # read page by page through the detectors' bounded source: only the owner is kept (the
        # last advertiser in the detectors' order, when several list it).
        owner: dict[str, int] = {}
        answered = ItemFilter(statuses=(ItemStatus.OK,), with_key=True)
        for _, scrape in facts.listed():
            for listed in facts.source.items(scrape.id, answered):
                if listed.image_key:
                    owner[listed.image_key] = listed.advertiser_id
        images = facts.source.images(owner)
        hashes = {k: images[k].phash if k in images else None for k in owner}
        near: dict[str, list[tuple[int, str]]] = {}
        summit_keys = {i.image_key for i in summit}
        for a, b, distance in near_pairs(hashes, DEFAULT_THRESHOLDS.max_phash_distance):
            for mine, theirs in ((a, b), (b, a)):
                if (
                    mine in summit_keys
                    and owner[theirs] != owner[mine]
                    and facts.look_alike(mine, theirs, DEFAULT_THRESHOLDS)
                ):
                    near.setdefault(mine, []).append((distance, theirs))
    sunrise_by_key = {i.image_key: i for i in sunrise}
    best: tuple[int, int, SitemapItem, SitemapItem] | None = None
    for item in summit:
        links = sorted(near.get(item.image_key or "", []))
        closest = [k for d, k in links if d == links[0][0]] if links else []
        if len(closest) != 1 or closest[0] not in sunrise_by_key:
            continue
        original = sunrise_by_key[closest[0]]
        if original.image_type != item.image_type:
            continue
        rank = (links[0][0], item.position)
        if best is None or rank < best[:2]:
            best = (*rank, item, original)
    return (best[2], best[3]) if best else None


def _fixes_that_do_not_stick(stage: _Stage) -> None:
    """Sunrise fixes images; the CDN then re-publishes them under new URLs and headers."""
    result = stage.client.request_json(
        "POST", stage.cdn_url + REPUBLISH, headers={"Authorization": f"Bearer {stage.cdn_token}"}
    )
    moved = json.loads(result.body)["paths"]
    with stage.sessions() as session:
        fixed_before = set(session.scalars(select(ManualFix.image_key)))
    chosen = [
        i
        for i in _photos(_latest(stage, SUNRISE))
        if urlsplit(i.image_url).path in moved and i.image_key not in fixed_before
    ][:FIXES_THAT_DO_NOT_STICK]
    changes = [
        FixChange(i.id, "image_type", _other(i.image_type), seen_value=i.image_type) for i in chosen
    ]
    _fix(stage, ANALYST, changes)
    _scrape(stage, SUNRISE)
    stage.report.staged["fix_not_sticking"] = (
        f"{len(chosen)} fixed {SUNRISE} images came back under new URLs after the CDN moved "
        f"{len(moved)} images"
    )


def _ml_outage(stage: _Stage) -> None:
    """Valley is scraped while the ML server cannot be reached (a closed port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Closed as soon as it is known: nothing listens there while the scrape runs.
    down_client = client_from_settings(stage.settings, extra_allowed=[f"127.0.0.1:{port}"])
    down = MLClient(f"http://127.0.0.1:{port}", stage.settings.ml_token, down_client, timeout=5.0)
    try:
        summary = _scrape(stage, VALLEY, ml=down, max_consecutive_ml_failures=1)
    finally:
        down_client.close()
    stage.report.staged["ml_outage"] = (
        f"{VALLEY} was scraped while the ML server was down: {summary.ml_failures} ML failures"
    )


def _legacy_placeholders(stage: _Stage) -> None:
    """Two of Metro's placeholders carry the old system's cached Color "N/A"."""
    seen: set[str] = set()
    chosen = []
    for item in _latest(stage, METRO):
        if (
            item.status == ItemStatus.OK
            and item.image_type == "Placeholder"
            and item.image_key
            and item.image_key not in seen
        ):
            seen.add(item.image_key)
            chosen.append(item)
    chosen = chosen[:2]
    with stage.sessions.begin() as session:
        for item in chosen:
            session.execute(
                update(SitemapItem)
                .where(
                    SitemapItem.scrape_id == item.scrape_id, SitemapItem.image_key == item.image_key
                )
                .values(ml_color="N/A", color="N/A")
            )
    stage.report.staged["legacy_placeholder"] = (
        f"{len(chosen)} {METRO} placeholders carry the legacy Color 'N/A'"
    )


DATASET_PER_CLASS = 6
"""Images per Image Type the analyst fixes for the demo's dataset version (on several pages, so
that the grouped split can put every class on both sides)."""


def _dataset_fixes(stage: _Stage) -> None:
    """Team fixes for a meaningful dataset version (``python -m tagging dataset build``).

    A fix that sets the label an item has already is no fix (nothing is recorded), and the demo's
    model is right about these images; so the analyst's corrections here are a mistaken fix and
    its correction, the latest being the image's true type, as in a real review session. On top:

    - **a conflicting near-duplicate cluster**: a Sunrise photo and Summit's re-encoded copy of
      it, fixed to two different types (the copy wrongly);
    - **a flipped label**: a Dealer photo the analyst labels Placeholder on purpose, which
      cleanlab's ranking must put near the top.

    Staged last, on Sunrise images no other case uses, so every detector's case stays as it was.
    """
    with stage.sessions() as session:
        fixed_before = set(session.scalars(select(ManualFix.image_key)))
    used: set[str] = set(fixed_before)
    pool: list[SitemapItem] = []
    # One advertiser only: the criteria-shift case compares Harbor's fix rate with the median
    # advertiser's, which fixes spread over three advertisers would raise to Harbor's.
    for name in (SUNRISE,):
        for item in _latest(stage, name):
            if (
                item.status == ItemStatus.OK
                and item.image_key
                and item.image_type in ("Dealer", "Stock", "Placeholder")
                and item.color != "N/A"
                and item.image_key not in used
            ):
                used.add(item.image_key)
                pool.append(item)
    pair = _dataset_near_pair(stage, fixed_before)
    if pair is not None:
        pool = [i for i in pool if i.image_key not in {pair[0].image_key, pair[1].image_key}]
    chosen: list[SitemapItem] = []
    for image_type in ("Dealer", "Stock", "Placeholder"):
        of_type = [i for i in pool if i.image_type == image_type]
        chosen += of_type[:DATASET_PER_CLASS]
    flipped = next(
        (i for i in pool if i.image_type == "Dealer" and i not in chosen and i.color), None
    )
    wrong = [
        FixChange(i.id, "image_type", _other(i.image_type) if i.color else "Dealer") for i in chosen
    ]
    right = [FixChange(i.id, "image_type", i.image_type) for i in chosen]
    if pair is not None:
        original, copy = pair
        wrong.append(FixChange(original.id, "image_type", _other(original.image_type)))
        right.append(FixChange(original.id, "image_type", original.image_type))
        right.append(FixChange(copy.id, "image_type", _other(copy.image_type)))
    _fix(stage, ANALYST, wrong)
    _fix(stage, ANALYST, right)
    if flipped is not None:
        _fix(stage, ANALYST, [FixChange(flipped.id, "image_type", "Placeholder")])
    stage.report.dataset["classes"] = f"{len(chosen)} images fixed to their true type"
    if pair is not None:
        stage.report.dataset["conflict"] = (
            f"{pair[0].image_key} ({pair[0].image_type}) and its copy {pair[1].image_key} "
            f"fixed as {_other(pair[1].image_type)}"
        )
    if flipped is not None:
        stage.report.dataset["flipped"] = f"Dealer {flipped.image_key} fixed as Placeholder"


def _dataset_near_pair(
    stage: _Stage, fixed_before: set[str]
) -> tuple[SitemapItem, SitemapItem] | None:
    """A Sunrise photo and Summit's near-identical copy (pHash ≤ 6), neither fixed yet."""
    summit = [i for i in _photos(_latest(stage, SUMMIT)) if i.image_key not in fixed_before]
    sunrise = [i for i in _photos(_latest(stage, SUNRISE)) if i.image_key not in fixed_before]
    keys = [i.image_key for i in (*summit, *sunrise) if i.image_key]
    with stage.sessions() as session:
        images = SqlItemSource(session).images(keys)
    hashes = {k: images[k].phash if k in images else None for k in keys}
    by_key = {i.image_key: i for i in (*summit, *sunrise)}
    summit_keys = {i.image_key for i in summit}
    best: tuple[int, str, str] | None = None
    for a, b, distance in near_pairs(hashes, 6):
        if (a in summit_keys) == (b in summit_keys):
            continue
        copy, original = (a, b) if a in summit_keys else (b, a)
        if by_key[copy].image_type != by_key[original].image_type:
            continue
        if best is None or (distance, copy, original) < best:
            best = (distance, copy, original)
    return (by_key[best[2]], by_key[best[1]]) if best else None


__all__ = ["WeirdDemoReport", "advertiser_actor", "stage_weird_cases"]
