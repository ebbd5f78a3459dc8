"""Fix history: every manual fix, filtered, totalled and exported. Read-only for every role."""

from __future__ import annotations

import math
from datetime import date
from functools import partial

import streamlit as st

from db.accounts import Permission
from db.fixes import FIELDS
from db.history import HistoryFilter, HistoryFilterOptions, HistoryTotals
from db.models import FixSource, SyncStatus, utcnow
from views.common import require_page, shown_errors
from views.loaders import load_csv, load_history_options, load_history_page, load_totals

PAGE_SIZE = 500
FIELD_LABELS = {"image_type": "Image Type", "color": "Color"}
ANY = "Any"


def filters(options: HistoryFilterOptions) -> HistoryFilter:
    """The filter widgets, in one row; returns what they select."""
    names = dict(options.advertisers)
    columns = st.columns([3, 3, 2, 2, 4, 2, 2])
    advertiser_ids = columns[0].multiselect(
        "Advertisers", list(names), format_func=names.__getitem__, placeholder="All"
    )
    users = columns[1].multiselect("Users", options.users, placeholder="All")
    field = columns[2].selectbox(
        "Field", [ANY, *FIELDS], format_func=lambda f: FIELD_LABELS.get(f, f)
    )
    value = columns[3].text_input("Value (old or new)", placeholder="e.g. Stock")
    days = columns[4].date_input(
        "Dates (UTC)", value=(), max_value=utcnow().date(), format="YYYY-MM-DD"
    )
    sync_status = columns[5].selectbox("Sync", [ANY, *(s.value for s in SyncStatus)])
    source = columns[6].selectbox("Source", [ANY, *(s.value for s in FixSource)])
    # A range being picked has only its first day yet: filter from that day on meanwhile.
    picked = [d for d in (days if isinstance(days, tuple) else (days,)) if isinstance(d, date)]
    return HistoryFilter(
        advertiser_ids=tuple(advertiser_ids),
        users=tuple(users),
        field=None if field == ANY else field,
        value=value.strip() or None,
        date_from=picked[0] if picked else None,
        date_to=picked[1] if len(picked) > 1 else None,
        sync_status=None if sync_status == ANY else sync_status,
        source=None if source == ANY else source,
    )


def metrics(totals: HistoryTotals) -> None:
    columns = st.columns(7)
    columns[0].metric("Fixes", f"{totals.total:,}")
    columns[1].metric("Image Type fixes", f"{totals.by_field.get('image_type', 0):,}")
    columns[2].metric("Color fixes", f"{totals.by_field.get('color', 0):,}")
    columns[3].metric("By advertisers", f"{totals.by_source.get(FixSource.ADVERTISER, 0):,}")
    columns[4].metric("Pending sync", f"{totals.pending:,}")
    columns[5].metric("Images", f"{totals.distinct_images:,}")
    columns[6].metric("Users", f"{totals.distinct_users:,}")


require_page(Permission.READ)

st.title("Fix history")
st.caption(
    "Every manual fix, newest first: who changed what, from where, and whether the ML "
    "server's cache has it. Dates are UTC."
)

with shown_errors():
    history_filter = filters(load_history_options())
    totals = load_totals(history_filter)
    metrics(totals)

    count = totals.total
    pages = max(1, math.ceil(count / PAGE_SIZE))
    page = 1
    if pages > 1:
        page = int(
            st.number_input(f"Page (of {pages}, {PAGE_SIZE} fixes each)", 1, pages, 1, step=1)
        )
    frame = load_history_page(history_filter, page, PAGE_SIZE)
    if frame.empty:
        st.info("No fix matches these filters.")
    else:
        frame["field"] = frame["field"].map(lambda f: FIELD_LABELS.get(f, f))
        st.dataframe(
            frame,
            hide_index=True,
            width="stretch",
            # Fit short results; scroll past 15 rows (35 px per row and header, 3 px of border).
            height=min(16, len(frame) + 1) * 35 + 3,
            placeholder="—",
            column_order=[
                "created_at",
                "advertiser",
                "user",
                "source",
                "field",
                "old_value",
                "new_value",
                "sync_status",
                "synced_at",
                "sync_attempts",
                "last_sync_error",
                "image_url",
                "image_key",
                "superseded_fix_id",
                "id",
            ],
            column_config={
                "created_at": st.column_config.DatetimeColumn("when", format="YYYY-MM-DD HH:mm:ss"),
                "old_value": st.column_config.TextColumn("old"),
                "new_value": st.column_config.TextColumn("new"),
                "sync_status": st.column_config.TextColumn("sync"),
                "synced_at": st.column_config.DatetimeColumn(
                    "synced", format="YYYY-MM-DD HH:mm:ss"
                ),
                "sync_attempts": st.column_config.NumberColumn("attempts"),
                "last_sync_error": st.column_config.TextColumn("last sync error"),
                # Plain text, not a link: the URL is advertiser-supplied.
                "image_url": st.column_config.TextColumn("image URL"),
                "superseded_fix_id": st.column_config.NumberColumn("overwrote fix"),
                "id": st.column_config.NumberColumn("fix"),
            },
        )
        if pages > 1:
            first = (page - 1) * PAGE_SIZE + 1
            st.caption(f"Fixes {first:,}–{first + len(frame) - 1:,} of {count:,}.")

    st.download_button(
        "Download CSV",
        # Built on click only: an export of the whole history is not made on every rerun.
        data=partial(load_csv, history_filter),
        file_name=f"fix-history-{utcnow():%Y%m%d-%H%M}.csv",
        mime="text/csv",
        icon=":material/download:",
        on_click="ignore",
        disabled=count == 0,
    )
