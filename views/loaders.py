"""Every reader the pages use: one session, one library query, plain data back.

The query readers are cached with ``st.cache_data(ttl=...)`` and cleared after every write by
:func:`views.common.clear_query_cache`; thumbnails and originals, which never change for a key,
are cached longer. A few readers are not cached on purpose (their docstrings say why). A Session
never leaves this module, and is never cached.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

from db.accounts import Actor, list_advertiser_tokens, list_users
from db.advertisers import advertiser_overview, list_advertisers
from db.charts import (
    AdvertiserRate,
    CellImage,
    ChartFilter,
    ChartOptions,
    ConfusionCell,
    FailureStats,
    FixedImage,
    PeriodRate,
    RatePoint,
    VersionStats,
    advertiser_rates,
    chart_options,
    confusion,
    confusion_images,
    correction_rate,
    ml_failures,
    model_versions,
    most_fixed_images,
    period_rates,
)
from db.datasets import VersionSummary
from db.findings import FindingView, list_findings
from db.history import (
    HISTORY_COLUMNS,
    HistoryFilter,
    HistoryFilterOptions,
    HistoryTotals,
    history_csv,
    history_filter_options,
    history_rows,
    history_totals,
)
from db.review import (
    HistoryEntry,
    ReviewCounts,
    ReviewFilter,
    ReviewItem,
    count_fixable,
    image_history,
    items_by_id,
    matching_item_ids,
    review_counts,
    review_page,
    thumbnail_keys,
    thumbnails,
)
from db.scrapes import latest_scrape, recent_scrapes, running_scrape, scrapes_of
from tagging.curation.manifest import Box
from tagging.datasets.archive import ArchiveStore, archive_from_settings
from tagging.datasets.drafts import (
    DraftView,
    StepParams,
    StepPreview,
    current_draft,
    preview_pull,
    preview_step,
    thumbnail,
)
from tagging.datasets.service import list_versions
from tagging.errors import TaggingError
from views.common import QUERY_TTL_SECONDS, session_factory, settings

# --- accounts (not cached: an admin must see every change at once) ----------------------------


@dataclass(frozen=True)
class UserRow:
    username: str
    email: str | None
    role: str
    disabled: bool
    sso_only: bool
    """No password: the account signs in with SSO only."""
    last_login_at: datetime | None
    failed_attempts: int
    locked_until: datetime | None


@dataclass(frozen=True)
class TokenRow:
    id: int
    advertiser: str
    label: str | None
    created_by: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def load_users(actor: Actor) -> list[UserRow]:
    """Every account, by username.

    Raises:
        PermissionDenied: ``actor`` may not manage users.
    """
    with session_factory()() as session:
        return [
            UserRow(
                username=u.username,
                email=u.email,
                role=u.role,
                disabled=u.disabled,
                sso_only=u.password_hash is None,
                last_login_at=u.last_login_at,
                failed_attempts=u.failed_attempts,
                locked_until=u.locked_until,
            )
            for u in list_users(session, actor)
        ]


def load_advertiser_tokens() -> list[TokenRow]:
    """Every advertiser token's metadata (never its secret), newest first."""
    with session_factory()() as session:
        return [
            TokenRow(
                id=t.id,
                advertiser=t.advertiser.name,
                label=t.label,
                created_by=t.created_by,
                created_at=t.created_at,
                last_used_at=t.last_used_at,
                revoked_at=t.revoked_at,
            )
            for t in list_advertiser_tokens(session)
        ]


# --- advertisers and scrapes (home, review, weird results) ------------------------------------


class AdvertiserChoice(NamedTuple):
    id: int
    name: str
    color_from_feed: bool
    auto_carry_fixes: bool


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_advertisers() -> list[AdvertiserChoice]:
    """Every advertiser, by name, with the settings the pages show."""
    with session_factory()() as session:
        return [
            AdvertiserChoice(a.id, a.name, a.color_from_feed, a.auto_carry_fixes)
            for a in list_advertisers(session)
        ]


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_overview() -> pd.DataFrame:
    with session_factory()() as session:
        rows = advertiser_overview(session)
    return pd.DataFrame([row.__dict__ for row in rows])


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_recent_scrapes() -> pd.DataFrame:
    with session_factory()() as session:
        rows = recent_scrapes(session, limit=20)
    return pd.DataFrame(
        [
            {
                "advertiser": name,
                "scrape": scrape.id,
                "status": scrape.status,
                "started": scrape.started_at,
                "items": scrape.item_count,
                "cached": scrape.cached_count,
                "classified": scrape.classified_count,
                "failed": scrape.failed_count,
                "ML failures": scrape.ml_failure_count,
                "seconds": scrape.seconds,
            }
            for scrape, name in rows
        ]
    )


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_scrapes(advertiser_id: int) -> list[dict]:
    with session_factory()() as session:
        return [
            {
                "id": s.id,
                "started_at": s.started_at,
                "status": s.status,
                "items": s.item_count,
                "finished": s.finished_at is not None,
                "error": s.error,
            }
            for s in scrapes_of(session, advertiser_id)
        ]


def latest_finished_id(advertiser_id: int) -> int | None:
    """Not cached: the progress poll needs to see a scrape finish."""
    with session_factory()() as session:
        scrape = latest_scrape(session, advertiser_id)
        return scrape.id if scrape else None


def load_running(advertiser_id: int) -> dict | None:
    """The advertiser's running scrape and its progress. Not cached: it is polled every second."""
    with session_factory()() as session:
        scrape = running_scrape(session, advertiser_id)
        if scrape is None:
            return None
        return {
            "id": scrape.id,
            "done": scrape.item_count,
            "total": scrape.expected_items,
            "requested_by": scrape.requested_by,
        }


# --- sitemap review ----------------------------------------------------------------------------


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_counts(scrape_id: int) -> ReviewCounts:
    with session_factory()() as session:
        return review_counts(session, scrape_id)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_review_page(
    scrape_id: int, review_filter: ReviewFilter, offset: int, limit: int
) -> tuple[list[ReviewItem], int]:
    with session_factory()() as session:
        return review_page(session, scrape_id, review_filter, offset=offset, limit=limit)


def load_matching_ids(scrape_id: int, review_filter: ReviewFilter) -> list[int]:
    """Every fixable item matching the filter. Not cached: read once, for a bulk fix."""
    with session_factory()() as session:
        return matching_item_ids(session, scrape_id, review_filter)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_fixable_count(scrape_id: int, review_filter: ReviewFilter) -> int:
    """How many items :func:`load_matching_ids` would return (those with an image to fix)."""
    with session_factory()() as session:
        return count_fixable(session, scrape_id, review_filter)


def load_fix_targets(item_ids: list[int]) -> list[dict]:
    """``id``, ``position``, ``image_key``, ``image_type`` and ``color`` of these items, in
    sitemap order, for a bulk fix preview.

    Not cached: the preview must show the values the fix will be checked against.
    """
    with session_factory()() as session:
        items = sorted(items_by_id(session, item_ids), key=lambda i: (i.position, i.id))
        return [
            {
                "id": i.id,
                "position": i.position,
                "image_key": i.image_key,
                "image_type": i.image_type,
                "color": i.color,
            }
            for i in items
        ]


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_histories(image_keys: tuple[str, ...]) -> dict[str, list[HistoryEntry]]:
    """Every manual fix of these images (a page's fixed ones), for the grid's large view."""
    with session_factory()() as session:
        return {key: image_history(session, key) for key in image_keys}


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_thumbnail_keys(image_keys: tuple[str, ...]) -> set[str]:
    """Which of a page's keys have a thumbnail: a tile without one shows "no image" at once
    instead of asking for a picture that is not there."""
    with session_factory()() as session:
        return thumbnail_keys(session, list(image_keys))


@st.cache_data(ttl=3600, max_entries=64)
def load_thumbnails(keys: tuple[str, ...]) -> dict[str, bytes]:
    # Thumbnails never change for a key: cache them long, and hand Streamlit the JPEG bytes
    # as they are (no decode, no re-encode on a rerun).
    with session_factory()() as session:
        return thumbnails(session, list(keys))


@st.cache_data
def missing_thumbnail() -> bytes:
    """A grey "no image" JPEG in the thumbnails' size."""
    image = Image.new("RGB", (240, 180), (238, 240, 243))
    draw = ImageDraw.Draw(image)
    draw.rectangle((90, 60, 150, 110), outline=(150, 155, 163), width=3)
    draw.line((90, 110, 150, 60), fill=(150, 155, 163), width=3)
    draw.text((78, 130), "no image", fill=(120, 125, 133))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


# --- weird results -----------------------------------------------------------------------------


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_findings(states: tuple[str, ...], advertiser_id: int | None) -> list[FindingView]:
    with session_factory()() as session:
        return list_findings(session, states=states, advertiser_id=advertiser_id)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_open_counts() -> dict[str, int]:
    with session_factory()() as session:
        counts: dict[str, int] = {}
        for finding in list_findings(session):
            counts[finding.severity] = counts.get(finding.severity, 0) + 1
        return counts


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_scrape_findings(scrape_id: int) -> list[FindingView]:
    with session_factory()() as session:
        return list_findings(session, scrape_id=scrape_id)


# --- fix history -------------------------------------------------------------------------------


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_history_options() -> HistoryFilterOptions:
    with session_factory()() as session:
        return history_filter_options(session)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_totals(history_filter: HistoryFilter) -> HistoryTotals:
    with session_factory()() as session:
        return history_totals(session, history_filter)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_history_page(history_filter: HistoryFilter, page: int, page_size: int) -> pd.DataFrame:
    """Page ``page`` (from 1) of the fixes matching the filter, ``page_size`` fixes a page."""
    with session_factory()() as session:
        rows = history_rows(session, history_filter, limit=page_size, offset=(page - 1) * page_size)
    return pd.DataFrame([dataclasses.asdict(row) for row in rows], columns=list(HISTORY_COLUMNS))


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_csv(history_filter: HistoryFilter) -> str:
    with session_factory()() as session:
        return history_csv(session, history_filter)


# --- misclassification charts ------------------------------------------------------------------


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_chart_options() -> ChartOptions:
    with session_factory()() as session:
        return chart_options(session)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_period_rates(chart_filter: ChartFilter) -> list[PeriodRate]:
    with session_factory()() as session:
        return period_rates(session, chart_filter)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_correction_rate(chart_filter: ChartFilter, granularity: str) -> list[RatePoint]:
    with session_factory()() as session:
        return correction_rate(session, chart_filter, granularity)  # type: ignore[arg-type]


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_confusion(chart_filter: ChartFilter, field: str) -> list[ConfusionCell]:
    with session_factory()() as session:
        return confusion(session, chart_filter, field)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_cell_images(
    chart_filter: ChartFilter, field: str, ml_value: str, fixed_value: str, limit: int
) -> list[CellImage]:
    with session_factory()() as session:
        return confusion_images(session, chart_filter, field, ml_value, fixed_value, limit=limit)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_advertiser_rates(chart_filter: ChartFilter) -> list[AdvertiserRate]:
    with session_factory()() as session:
        return advertiser_rates(session, chart_filter)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_model_versions(chart_filter: ChartFilter, model: str) -> VersionStats:
    with session_factory()() as session:
        return model_versions(session, chart_filter, model)  # type: ignore[arg-type]


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_failures(chart_filter: ChartFilter) -> FailureStats:
    with session_factory()() as session:
        return ml_failures(session, chart_filter)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_most_fixed(chart_filter: ChartFilter, limit: int) -> list[FixedImage]:
    with session_factory()() as session:
        return most_fixed_images(session, chart_filter, limit=limit)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_thumbnail_urls(image_keys: tuple[str, ...]) -> dict[str, str]:
    """Thumbnails as data URLs, for the tables' image columns."""
    with session_factory()() as session:
        found = thumbnails(session, list(image_keys))
    return {
        key: "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        for key, jpeg in found.items()
    }


# --- dataset curation --------------------------------------------------------------------------


def curation_archive() -> ArchiveStore:
    """The archive of training images the settings name (a folder, or the cached bucket: cheap
    to call)."""
    return archive_from_settings(settings())


def load_current_draft(actor: Actor) -> DraftView | None:
    # Not cached: the draft changes with every click of any developer, and a stale one would
    # offer a step that is not the next any more (the use cases would refuse it).
    return current_draft(session_factory(), actor)


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_dataset_versions() -> list[VersionSummary]:
    return list_versions(session_factory())


@st.cache_data(ttl=QUERY_TTL_SECONDS)
def load_pull_preview(
    actor: Actor, parent: int | str | None, since: datetime | None
) -> StepPreview:
    return preview_pull(session_factory(), actor, curation_archive(), parent=parent, since=since)


@st.cache_data(ttl=600, max_entries=16)
def load_step_preview(
    actor: Actor, number: int, state: str, params: StepParams, rank: bool
) -> StepPreview:
    """A step's preview, cached per draft state (``state``: its recipe and pending decisions, so
    any change computes it again) and parameters; ``rank`` asks for cleanlab's ranking."""
    return preview_step(
        session_factory(),
        actor,
        curation_archive(),
        number,
        params,
        models_dir=settings().models_dir if rank else None,
    )


@st.cache_data(ttl=3600, max_entries=256)
def load_curation_thumbnail(sha256: str, image_key: str | None, crop: Box | None) -> bytes:
    """An example's picture: from the archived bytes (cut to ``crop``), else the app's thumbnail
    by image_key, else "no image". Content-addressed: it never changes, so cache it long."""
    archive = curation_archive()
    if archive.has(sha256):
        try:
            return thumbnail(archive, sha256, crop)
        except TaggingError:
            pass  # a corrupt archive entry: the app's thumbnail, if any
    if image_key is not None:
        with session_factory()() as session:
            found = thumbnails(session, [image_key]).get(image_key)
        if found is not None:
            return found
    return missing_thumbnail()
