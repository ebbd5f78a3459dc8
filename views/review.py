"""Sitemap review: every image of a scrape with its ML Image Type and Color, and manual fixes.

The tiles are one component (:mod:`views.review_grid`): picks, the selection, the keyboard and the
large view stay in the browser, and "Update" sends every change at once; its callback records them
in one transaction before the next run (:func:`on_grid_update`). Each change carries the value the
tile showed, so a fix made meanwhile by someone else is reported as a race, not silently reverted.
The pickers, filters and paging above the grid are the page's state (:mod:`views.page_state`),
mirrored in the URL.
"""

from __future__ import annotations

import time
from html.parser import HTMLParser

import altair as alt
import pandas as pd
import streamlit as st

from db.accounts import Actor, Permission
from db.fixes import FixChange, FixOutcome
from db.models import ItemStatus
from db.review import (
    BY_CONFIDENCE,
    BY_POSITION,
    FIXED,
    NO_COLOR,
    PENDING_SYNC,
    SORTS,
    STATUS_FILTERS,
    ReviewFilter,
)
from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER
from tagging.errors import PermissionDenied, TaggingError
from tagging.fixes import SavedFixes, save_fixes, undo_fixes
from tagging.jobs.tasks import enqueue_scrape
from views.common import (
    clear_query_cache,
    current_actor,
    findings_refresher,
    ml_client,
    plain,
    require_page,
    session_factory,
    settings,
    shown_errors,
)
from views.loaders import (
    latest_finished_id,
    load_advertisers,
    load_counts,
    load_fix_targets,
    load_fixable_count,
    load_histories,
    load_matching_ids,
    load_review_page,
    load_running,
    load_scrapes,
    load_thumbnail_keys,
    load_thumbnails,
    missing_thumbnail,
)
from views.page_state import Field, PageState
from views.review_grid import changes_of, review_grid, tile_data, trigger
from views.weird_banner import findings_banner

PAGE_SIZES = (24, 48, 96)
STATUS_LABELS = {
    ItemStatus.OK: "OK",
    ItemStatus.ML_FAILURE: "ML failure",
    ItemStatus.ERROR: "Image error",
    FIXED: "Fixed",
    PENDING_SYNC: "Pending sync",
}
SORT_LABELS = {BY_POSITION: "Sitemap order", BY_CONFIDENCE: "ML confidence, lowest first"}
ERROR_ICON = ":material/error:"
FLASH = "flash"  # Session-state key of the messages shown after the next rerun.
TOAST = "review-toast"  # The toast (text, icon) shown after the next rerun: the fix's outcome.
GRID_ACK = "review-grid-ack"  # The last grid action's outcome, sent back to the grid.
LAST_UPDATE = "review-last-update"  # The fix ids of this session's last Update, for "Undo".
OPEN_AT = "review-open-at"  # The large view opens on the first or last tile of the new page.
BULK = "bulk"  # The bulk fix being previewed: see preview_bulk().
BULK_THUMBNAILS = 24  # The preview shows the thumbnails of up to this many images it changes.
QUEUED = "review-queued"  # {advertiser id: (newest finished scrape id, time.time())} of the
# scrapes this session queued that have not started yet: their Relaunch button stays disabled.
QUEUE_TIMEOUT_SECONDS = 300.0  # A queued scrape not started after this long no longer blocks.
# What the page shows (pickers, filters, paging), in the widgets' keys and the URL; see
# views/page_state.py. The scrape is in the URL only when it is not the advertiser's newest.
STATE = PageState(
    "review",
    [
        Field("advertiser", None),
        Field("scrape", None, parse=int),
        Field("type", (), many=True),
        Field("color", (), many=True),
        Field("status", (), many=True),
        Field("q", ""),
        Field("sort", BY_POSITION),
        Field("per", PAGE_SIZES[0], parse=int),
        Field("page", 1, parse=int),
    ],
)
NEWEST = "review-newest"  # The newest scrape when the page last ran: its pick follows a new one.


def first_page() -> None:
    """A new advertiser, scrape, filter or page size shows its first page."""
    STATE.set("page", 1)


# --- actions ------------------------------------------------------------------------------------


def after_fixes(saved: SavedFixes) -> None:
    """After the grid's fixes were recorded: fresh queries now, fresh findings soon (in the
    background, off the analyst's wait)."""
    clear_query_cache()
    if saved.fix_ids:
        findings_refresher().request(saved.outcome.advertiser_ids if saved.outcome else ())


def save(actor: Actor, changes: list[FixChange]) -> FixOutcome:
    """Record the changes in one transaction, push them, and leave the messages and a toast for
    the next run; the findings are refreshed in the background."""
    saved = save_fixes(session_factory(), ml_client(), actor, changes, refresh=False)
    after_fixes(saved)
    outcome = saved.outcome or FixOutcome()
    st.session_state[FLASH] = describe(outcome, saved.push_error)
    st.session_state[TOAST] = toast_of(outcome, saved.push_error)
    return outcome


def toast_of(outcome: FixOutcome, push_error: str | None) -> tuple[str, str]:
    """The outcome in a few words (the messages above the grid say more): text and icon."""
    saved = len(outcome.fix_ids)
    parts = []
    if saved and push_error is None:
        parts.append(f"{saved} fix(es) saved")
    elif saved:
        parts.append(f"{saved} fix(es) saved, pending sync")
    if outcome.races:
        parts.append(f"{len(outcome.races)} race(s) with another fix: see the messages")
    if outcome.unchanged:
        parts.append(f"{outcome.unchanged} already had that value")
    if not parts:
        return "Nothing to update: no dropdown was changed.", ":material/info:"
    if outcome.races or push_error is not None:
        return " · ".join(parts), ":material/warning:"
    return " · ".join(parts), ":material/check_circle:"


def queued_here(advertiser_id: int) -> tuple[int | None, float] | None:
    """The scrape of this advertiser this session queued and that has not started yet, if any:
    (the newest finished scrape when it was queued, when). Forgotten after the timeout."""
    queued: dict[int, tuple[int | None, float]] = st.session_state.get(QUEUED, {})
    mark = queued.get(advertiser_id)
    if mark is not None and time.time() - mark[1] > QUEUE_TIMEOUT_SECONDS:
        forget_queued(advertiser_id)
        return None
    return mark


def forget_queued(advertiser_id: int) -> None:
    st.session_state.get(QUEUED, {}).pop(advertiser_id, None)


class _TextOnly(HTMLParser):
    """The text of an HTML fragment: tags dropped, entities decoded, scripts and styles left out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self.hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self.hidden:
            self.hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def strip_tags(text: str) -> str:
    """An advertiser's title as text: ``<b>Sale</b>`` reads "Sale". The result is still
    advertiser text: show it with ``st.text`` (or :func:`plain`), never as Markdown or HTML.
    A ``<`` that starts no tag (``a < b``, ``<$20k>``) is kept."""
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return " ".join("".join(parser.parts).split())


def describe(outcome: FixOutcome, push_error: str | None) -> list[tuple[str, str]]:
    messages: list[tuple[str, str]] = []
    saved = len(outcome.fix_ids)
    if saved and push_error is None:
        messages.append(("success", f"{saved} fix(es) saved and sent to the ML server."))
    elif saved:
        messages.append(
            (
                "warning",
                f"{saved} fix(es) saved, pending sync: the ML server could not be reached "
                f"({plain(push_error)}). They are retried until it acknowledges them.",
            )
        )
    if outcome.unchanged:
        messages.append(("info", f"{outcome.unchanged} change(s) already had that value."))
    for race in outcome.races:
        when = f" at {race.overwritten_at:%H:%M:%S}" if race.overwritten_at else ""
        # The values may be an advertiser's (feed colors, their fixes): shown literally.
        messages.append(
            (
                "warning",
                f"Item {race.item_id}: {plain(race.overwritten_by)} had changed {race.field} from "
                f"{plain(race.seen_value)} to {plain(race.overwritten_value)}{when} while you "
                "were looking. "
                "Both fixes are in the history; yours, the later one, is the value now.",
            )
        )
    return messages or [("info", "Nothing to update: no dropdown was changed.")]


# --- the page -----------------------------------------------------------------------------------

actor = require_page(Permission.READ)
can_fix = actor.can(Permission.FIX)

st.title("Sitemap review")

with st.container():  # (always drawn: messages or none, the widgets below keep their places)
    for kind, text in st.session_state.pop(FLASH, []):
        getattr(st, kind)(text)
if TOAST in st.session_state:
    toast_text, toast_icon = st.session_state.pop(TOAST)
    # The time makes each toast new: Streamlit shows no second toast of the same text while
    # the first is on screen (two Updates with the same outcome within seconds).
    st.toast(f"{toast_text} · {time.strftime('%H:%M:%S')}", icon=toast_icon, duration="long")

advertisers = load_advertisers()
if not advertisers:
    st.info("No advertisers yet.")
    st.stop()

STATE.enter()
names = [a.name for a in advertisers]
STATE.keep_within("advertiser", names, fallback=names[0])
top = st.columns([3, 3, 2])
advertiser_name = top[0].selectbox(
    "Advertiser", names, key=STATE.key("advertiser"), on_change=first_page
)
advertiser_id, _, color_from_feed, _ = next(a for a in advertisers if a.name == advertiser_name)

scrapes = [s for s in load_scrapes(advertiser_id) if s["finished"]]
running = load_running(advertiser_id)

# This session's queued scrape: forgotten once it runs (the running scrape says the rest) or a
# newer scrape finished (it ran between two looks); until then Relaunch stays disabled.
waiting = queued_here(advertiser_id)
if waiting is not None and (running is not None or latest_finished_id(advertiser_id) != waiting[0]):
    forget_queued(advertiser_id)
    waiting = None
with top[2]:
    st.write("")
    relaunch = actor.can(Permission.RELAUNCH) and st.button(
        "Relaunch scrape",
        icon=":material/refresh:",
        disabled=running is not None or waiting is not None,
        help="Scrape the sitemap again in the background; only new, changed or failed "
        "images are classified. Disabled while a scrape of this advertiser is queued or running.",
    )
if relaunch:  # (a click on a button drawn disabled is ignored: a second click queues nothing)
    with shown_errors():
        enqueue_scrape(settings(), actor, advertiser_name)
        queued = st.session_state.setdefault(QUEUED, {})
        queued[advertiser_id] = (latest_finished_id(advertiser_id), time.time())
        st.rerun()


@st.fragment(run_every=1.0)
def scrape_progress(advertiser_id: int) -> None:
    """Polls the running scrape; leave the page and come back, it is read from the database."""
    current = load_running(advertiser_id)
    waiting = queued_here(advertiser_id)
    if current is None:
        if waiting is not None and latest_finished_id(advertiser_id) == waiting[0]:
            st.info("Scrape queued: waiting for the worker…", icon=":material/schedule:")
            return
        # It finished (or was never ours to wait for, or waited too long): redraw the page.
        forget_queued(advertiser_id)
        clear_query_cache()
        st.rerun()
    total = current["total"] or 0
    done = current["done"] or 0
    text = (
        f"Scrape #{current['id']} running: {done:,} of {total:,} images"
        if total
        else f"Scrape #{current['id']}: reading the sitemap…"
    )
    st.progress(min(done / total, 1.0) if total else 0.0, text=text)


if running is not None or waiting is not None:
    scrape_progress(advertiser_id)

if not scrapes:
    st.info(f"{plain(advertiser_name)} has not been scraped yet.")
    STATE.save(omit={"scrape"})
    st.stop()

scrape_ids = [s["id"] for s in scrapes]
# Another advertiser's scrape, or none: the newest. The newest when the page last ran: the new one.
if STATE.value("scrape") == st.session_state.get(NEWEST):
    STATE.set("scrape", scrape_ids[0])
STATE.keep_within("scrape", scrape_ids, fallback=scrape_ids[0])
st.session_state[NEWEST] = scrape_ids[0]
scrape_id = top[1].selectbox(
    "Scrape",
    scrape_ids,
    key=STATE.key("scrape"),
    on_change=first_page,
    format_func=lambda i: next(
        f"#{s['id']} · {s['started_at']:%Y-%m-%d %H:%M} · {s['items']:,} images · {s['status']}"
        for s in scrapes
        if s["id"] == i
    ),
)
scrape = next(s for s in scrapes if s["id"] == scrape_id)
counts = load_counts(scrape_id)

# Counts by type and status, then colors as a chart.
metrics = st.columns(7)
metrics[0].metric("Images", f"{counts.total:,}")
for column, image_type in zip(metrics[1:4], IMAGE_TYPES, strict=True):
    column.metric(image_type, f"{counts.by_type.get(image_type, 0):,}")
metrics[4].metric("ML failures", f"{counts.by_status.get(ItemStatus.ML_FAILURE, 0):,}")
metrics[5].metric("Image errors", f"{counts.by_status.get(ItemStatus.ERROR, 0):,}")
metrics[6].metric(
    "Fixed",
    f"{counts.by_status.get(FIXED, 0):,}",
    help=f"{counts.by_status.get(PENDING_SYNC, 0):,} pending sync",
)

ml_failures = counts.by_status.get(ItemStatus.ML_FAILURE, 0)
if ml_failures:
    st.warning(
        f"{ml_failures:,} images got no answer from the ML server and show the defaults "
        "(Placeholder, no color). Relaunch the scrape; if it fails again, tell the dev team.",
        icon=":material/warning:",
    )
findings_banner(scrape_id)
if scrape["error"]:
    with st.expander("Problems found while reading the sitemap"):
        st.text(scrape["error"])

# Drawn only when asked: a chart, even in a closed expander, makes the browser load the charting
# library (775 KB) on the page's first render.
if st.toggle("Colors in this scrape", key="review-colors"):
    color_counts = pd.DataFrame(
        [{"color": k, "images": v} for k, v in counts.by_color.items()]
    ).sort_values("images", ascending=False)
    st.altair_chart(
        alt.Chart(color_counts)
        .mark_bar()
        .encode(
            x=alt.X("color:N", sort="-y", title=None),
            y=alt.Y("images:Q"),
            tooltip=["color", "images"],
        )
        .properties(height=180),
        width="stretch",
    )

# Filters (mirrored in the URL so that a view can be shared or linked from elsewhere).
filters = st.columns([2, 2, 2, 3])
color_options = [*COLORS, NO_COLOR]
STATE.keep_within("type", IMAGE_TYPES)
STATE.keep_within("color", color_options)
STATE.keep_within("status", STATUS_FILTERS)
type_filter = filters[0].multiselect(
    "Image Type", IMAGE_TYPES, key=STATE.key("type"), on_change=first_page
)
color_filter = filters[1].multiselect(
    "Color", color_options, key=STATE.key("color"), on_change=first_page
)
status_filter = filters[2].multiselect(
    "Status",
    STATUS_FILTERS,
    key=STATE.key("status"),
    on_change=first_page,
    format_func=lambda s: STATUS_LABELS[s],
)
text_filter = filters[3].text_input(
    "Search URLs and titles", key=STATE.key("q"), on_change=first_page
)
paging = st.columns([2, 1, 1, 4])
STATE.keep_within("sort", SORTS, fallback=BY_POSITION)
sort_order = paging[0].selectbox(
    "Order",
    SORTS,
    key=STATE.key("sort"),
    on_change=first_page,
    format_func=lambda s: SORT_LABELS[s],
    help="Lowest ML confidence first: where the model's mistakes are found fastest.",
)
review_filter = ReviewFilter(
    image_types=tuple(type_filter),
    colors=tuple(color_filter),
    statuses=tuple(status_filter),
    text=text_filter,
    sort=sort_order,
)

STATE.keep_within("per", PAGE_SIZES, fallback=PAGE_SIZES[0])
page_size = paging[1].selectbox("Per page", PAGE_SIZES, key=STATE.key("per"), on_change=first_page)
_, matching = load_review_page(scrape_id, review_filter, 0, 1)
pages = max(1, -(-matching // page_size))
if not isinstance(STATE.value("page"), int) or not 1 <= STATE.value("page") <= pages:
    first_page()
page_number = paging[2].number_input(
    "Page", min_value=1, max_value=pages, step=1, key=STATE.key("page")
)
# The view is known: remember it and show it in the URL (a view can be shared or linked).
STATE.save(omit={"scrape"} if scrape_id == scrape_ids[0] else ())
paging[3].caption(f"{matching:,} of {counts.total:,} images match · page {page_number} of {pages}")

items, _ = load_review_page(scrape_id, review_filter, (page_number - 1) * page_size, page_size)


def active_filters() -> list[str]:
    """The filters in force, in words (the search text is the analyst's, shown literally)."""
    shown = []
    if type_filter:
        shown.append(f"Image Type: {', '.join(type_filter)}")
    if color_filter:
        shown.append(f"Color: {', '.join(color_filter)}")
    if status_filter:
        shown.append(f"Status: {', '.join(STATUS_LABELS[s] for s in status_filter)}")
    if text_filter.strip():
        shown.append(f"search “{text_filter.strip()}”")
    return shown


if not items:
    if active_filters():
        # The search text is the analyst's own, but escaped all the same (it is shown as typed).
        st.info(
            plain(f"No image matches these filters ({'; '.join(active_filters())})."),
            icon=":material/search_off:",
        )
    else:
        st.info("This scrape has no images.", icon=":material/image_not_supported:")


def fixes_of(payload: object) -> list[FixChange]:
    """The grid's ``update`` as fixes, checked against the items it names."""
    raw = payload.get("changes") if isinstance(payload, dict) else None
    ids = {c.get("id") for c in raw or [] if isinstance(c, dict)}
    shown = {row["id"]: row for row in load_fix_targets(sorted(i for i in ids if type(i) is int))}
    return changes_of(payload, shown)


def on_grid_update() -> None:
    """The grid's Update: every unsaved change in one transaction, before the next run."""
    payload = trigger("update")
    nonce = payload.get("nonce") if isinstance(payload, dict) else None
    ok = False
    sent: list[str] = []
    try:
        actor = current_actor()
        if actor is None:
            raise PermissionDenied("sign in again to save fixes")
        changes = fixes_of(payload)
        sent = [f"{c.item_id}:{c.field}" for c in changes]
        outcome = save(actor, changes)
        st.session_state[LAST_UPDATE] = list(outcome.fix_ids)
        ok = True
    except TaggingError as error:
        st.session_state[FLASH] = [("error", plain(error))]
        st.session_state[TOAST] = ("Nothing was saved: see the message above.", ERROR_ICON)
    st.session_state[GRID_ACK] = {"nonce": nonce, "ok": ok, "sent": sent}


def on_grid_undo() -> None:
    """Undo the last Update: the reverting fixes are recorded, the history keeps both."""
    payload = trigger("undo")
    nonce = payload.get("nonce") if isinstance(payload, dict) else None
    fix_ids = st.session_state.get(LAST_UPDATE, [])
    ok = False
    try:
        actor = current_actor()
        saved = undo_fixes(session_factory(), ml_client(), actor, fix_ids, refresh=False)
        st.session_state.pop(LAST_UPDATE, None)
        after_fixes(saved)
        outcome = saved.outcome or FixOutcome()
        st.session_state[FLASH] = [
            (kind, f"Undo: {text}") for kind, text in describe(outcome, saved.push_error)
        ]
        text, icon = toast_of(outcome, saved.push_error)
        if outcome.fix_ids:
            st.session_state[TOAST] = (f"Undone: {text}", icon)
        else:
            st.session_state[TOAST] = ("Nothing to undo: the images have those values.", icon)
        ok = True
    except TaggingError as error:  # (it will not work better a second time: no Undo button)
        st.session_state.pop(LAST_UPDATE, None)
        st.session_state[FLASH] = [("error", plain(error))]
        st.session_state[TOAST] = ("Nothing was undone: see the message above.", ERROR_ICON)
    st.session_state[GRID_ACK] = {"nonce": nonce, "ok": ok, "sent": []}


def on_grid_page() -> None:
    """The large view went past the page's first or last image: the page before or after."""
    payload = trigger("page")
    if not isinstance(payload, dict) or not isinstance(payload.get("to"), int):
        return
    STATE.set("page", payload["to"])
    st.session_state[OPEN_AT] = {"where": payload.get("open"), "nonce": str(payload.get("nonce"))}


histories = load_histories(tuple(sorted({i.image_key for i in items if i.image_key and i.fixes})))
with_thumbnail = load_thumbnail_keys(tuple(sorted({i.image_key for i in items if i.image_key})))
review_grid(
    scrape_id=scrape_id,
    tiles=[
        tile_data(
            item,
            title=strip_tags(item.title or ""),
            fixable=can_fix,
            history=histories.get(item.image_key or "", ()),
            has_thumbnail=item.image_key in with_thumbnail,
        )
        for item in items
    ],
    can_fix=can_fix,
    color_locked=color_from_feed,
    page=page_number,
    pages=pages,
    empty="",
    ack=st.session_state.get(GRID_ACK),
    undo_count=len(st.session_state.get(LAST_UPDATE, [])),
    open_at=st.session_state.pop(OPEN_AT, None),
    on_update=on_grid_update,
    on_undo=on_grid_undo,
    on_page=on_grid_page,
)

if can_fix:
    with st.form("bulk-form", border=False):
        st.markdown("**Bulk fix of every image matching the filters**")
        st.caption(
            "To change some tiles, select them (space, shift-click, a) and pick a value or press "
            "a key: every selected tile changes, and Update saves them."
        )
        bulk = st.columns([2, 2, 3])
        # One list per field: a type's list offers only types, a color's only colors.
        bulk_type = bulk[0].selectbox(
            "Set Image Type", IMAGE_TYPES, index=None, placeholder="Keep each image's type"
        )
        bulk_color = bulk[1].selectbox(
            "Set Color",
            COLORS,
            index=None,
            placeholder="Keep each image's color",
            disabled=color_from_feed,
            help="Comes from the advertiser's feed" if color_from_feed else None,
        )
        with bulk[2]:
            st.write("")
            fixable_matching = load_fixable_count(scrape_id, review_filter)
            bulk_all = st.form_submit_button(f"Preview on all {fixable_matching:,} matching")
else:
    bulk_all = False
    bulk_type = bulk_color = None
    st.caption("Your role can read this sitemap but not change it.")

FIELD_NAMES = {"image_type": "Image Type", "color": "Color"}


def plan_bulk(target: list[int], values: dict[str, str]) -> dict:
    """What a bulk fix of these items will change, read now and kept until Apply or Cancel: the
    preview shows it and Apply records exactly it (with the values seen now, so that a fix made
    meanwhile by someone else is reported as a race, not silently counted)."""
    rows = load_fix_targets(target)
    fixable = [r for r in rows if r["image_key"]]
    changing = [r for r in fixable if any(r[f] != v for f, v in values.items())]
    changes: list[tuple[int, str, str, str | None]] = []
    planned: set[tuple[str, str]] = set()
    for row in changing:
        for field, value in values.items():
            # One fix per image: it changes every tile showing that image.
            if row[field] != value and (row["image_key"], field) not in planned:
                planned.add((row["image_key"], field))
                changes.append((row["id"], field, value, row[field]))
    return {
        "scrape": scrape_id,
        "values": values,
        "targets": len(rows),
        "unfixable": len(rows) - len(fixable),
        "changing": [r["id"] for r in changing],
        "shown": [(r["image_key"], r["position"]) for r in changing[:BULK_THUMBNAILS]],
        "changes": changes,
    }


def what_is_set(values: dict[str, str]) -> str:
    return " and ".join(f"{FIELD_NAMES[f]} to **{v}**" for f, v in values.items())


if bulk_all:
    chosen = {f: v for f, v in (("image_type", bulk_type), ("color", bulk_color)) if v}
    target = load_matching_ids(scrape_id, review_filter)
    if not chosen:
        st.warning("Choose the Image Type or the Color to set first.", icon=":material/info:")
    elif not target:
        st.warning("No image matches these filters.", icon=":material/info:")
    else:
        st.session_state[BULK] = plan_bulk(target, chosen)

pending_bulk = st.session_state.get(BULK)
if pending_bulk and (not can_fix or pending_bulk["scrape"] != scrape_id):
    st.session_state.pop(BULK)  # another scrape is shown now (or the role changed)
elif pending_bulk:
    values = pending_bulk["values"]
    changing = pending_bulk["changing"]
    targets = pending_bulk["targets"]
    with st.container(border=True, key="bulk-preview"):
        st.markdown(f"**Bulk fix preview:** set {what_is_set(values)}")
        st.write(
            f"{len(changing):,} of {targets:,} images change "
            f"({targets - pending_bulk['unfixable'] - len(changing):,} already have it, "
            f"{pending_bulk['unfixable']:,} have no image to fix)."
        )
        if values.get("image_type") == PLACEHOLDER and "color" not in values:
            st.caption("A placeholder has no color: the color of each one that changes is cleared.")
        shown = pending_bulk["shown"]
        if shown:
            preview_thumbs = load_thumbnails(tuple(sorted({key for key, _ in shown})))
            st.image(
                [preview_thumbs.get(key, missing_thumbnail()) for key, _ in shown],
                caption=[f"#{position}" for _, position in shown],
                width=96,
                output_format="JPEG",
            )
            if len(changing) > len(shown):
                st.caption(f"… and {len(changing) - len(shown):,} more.")
        confirm = st.columns([1, 1, 4])
        if confirm[0].button("Apply", type="primary", disabled=not changing):
            st.session_state.pop(BULK)
            with shown_errors():
                save(
                    actor,
                    [
                        FixChange(item_id, field, value, seen_value=seen)
                        for item_id, field, value, seen in pending_bulk["changes"]
                    ],
                )
                # What Apply changed, counted the way the preview counted it.
                now = load_fix_targets(changing)
                done = sum(all(r[f] == v for f, v in values.items()) for r in now)
                st.session_state[FLASH].insert(
                    0,
                    (
                        "success" if done == len(changing) else "warning",
                        f"Bulk fix: {done:,} of the {len(changing):,} images previewed now have "
                        f"{what_is_set(values)}.",
                    ),
                )
                st.rerun()
        if confirm[1].button("Cancel"):
            st.session_state.pop(BULK)
            st.rerun()
