"""Misclassification: how often, where and how people correct the ML system. Read-only.

For managers, developers and admins (``db.charts.can_view_charts``). Six charts over one period,
advertiser and field filter, each with a one-line reading and downloads of its data (CSV) and of
the chart itself (SVG). Every figure is aggregated in SQL (``db.charts``); charts are built by
``views.charts_specs``.
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlencode

import altair as alt
import pandas as pd
import streamlit as st

from db.charts import (
    CHART_FIELDS,
    ChartFilter,
    ChartOptions,
    can_view_charts,
    rows_csv,
)
from db.models import utcnow
from views import charts_specs as specs
from views.common import current_actor, shown_errors
from views.loaders import (
    load_advertiser_rates,
    load_cell_images,
    load_chart_options,
    load_confusion,
    load_correction_rate,
    load_failures,
    load_model_versions,
    load_most_fixed,
    load_period_rates,
    load_thumbnail_urls,
)

# (Comments, not docstrings: Streamlit's magic would write a bare string onto the page.)
DEFAULT_DAYS = 28  # The default period: the last 4 weeks, today included, against the 4 before.
CELL_IMAGES = 60
FIXED_IMAGES = 50
REVIEW_PAGE = "review"  # The sitemap review page's URL path (views/review.py).

DEFINITIONS = """
* **Period**: the dates picked, UTC days, both included. The **previous period** is the same
  number of days right before it; the figures at the top and chart 3 compare the two.
* **Classified images**: items with status *ok* (the ML system answered) of the scrapes
  *started* in the period. A sitemap scraped every day counts its images every day.
* **Fixes**: manual fixes *made* in the period by analysts and by advertisers. Carry-over fixes
  are not counted (they re-apply an earlier correction to a new version of an image). A fix
  reverted later is still a fix, and the revert is another one.
* **Fix rate**: fixes per 1,000 classified images of the same period.
* **ML value → fixed value**: per image and field fixed in the period, the value the ML system
  gave against the value of the image's latest fix in the period. A fix put back to the ML value
  lands on the diagonal.
* **Back and forth**: a fix that sets back the value an image had before an earlier fix of the
  same field in the period.
"""


# --- pieces ------------------------------------------------------------------------------------


def filters(options: ChartOptions) -> ChartFilter:
    """The filter widgets, in one row; returns what they select."""
    today = utcnow().date()
    names = dict(options.advertisers)
    columns = st.columns([3, 4, 2])
    picked = columns[0].date_input(
        "Period (UTC)",
        value=(today - timedelta(days=DEFAULT_DAYS - 1), today),
        max_value=today,
        format="YYYY-MM-DD",
    )
    advertiser_ids = columns[1].multiselect(
        "Advertisers", list(names), format_func=names.__getitem__, placeholder="All"
    )
    fields = columns[2].multiselect(
        "Fields", list(CHART_FIELDS), default=list(CHART_FIELDS), format_func=specs.field_label
    )
    # A range being picked has only its first day yet: show that day alone meanwhile.
    days = [d for d in (picked if isinstance(picked, tuple) else (picked,)) if isinstance(d, date)]
    date_from = days[0] if days else today - timedelta(days=DEFAULT_DAYS - 1)
    date_to = days[1] if len(days) > 1 else date_from if days else today
    return ChartFilter(
        date_from=date_from,
        date_to=date_to,
        advertiser_ids=tuple(advertiser_ids),
        fields=tuple(fields) or CHART_FIELDS,
    )


def downloads(name: str, rows: list[Any], chart: alt.TopLevelMixin | None, f: ChartFilter) -> None:
    """The CSV of ``rows`` and the SVG of ``chart``, side by side."""
    stem = specs.file_stem(name, f.date_from, f.date_to)
    left, right, _ = st.columns([1, 1, 6])
    left.download_button(
        "Data (CSV)",
        data=rows_csv(rows),
        file_name=f"{stem}.csv",
        mime="text/csv",
        icon=":material/download:",
        on_click="ignore",
        key=f"csv-{name}",
        disabled=not rows,
    )
    right.download_button(
        "Chart (SVG)",
        # Rendered on click only: vl-convert takes a moment, and most visits download nothing.
        data=partial(specs.chart_svg, chart) if chart is not None else "",
        file_name=f"{stem}.svg",
        mime="image/svg+xml",
        icon=":material/image:",
        on_click="ignore",
        key=f"svg-{name}",
        disabled=chart is None or not rows,
    )


def review_link(advertiser: str | None, scrape_id: int | None, image_url: str) -> str | None:
    """A link to the sitemap review page showing this image in that scrape."""
    if advertiser is None or scrape_id is None:
        return None
    query = urlencode({"advertiser": advertiser, "scrape": scrape_id, "q": image_url})
    return f"{REVIEW_PAGE}?{query}"


def image_table(frame: pd.DataFrame, columns: dict[str, Any], order: list[str]) -> None:
    """A table of images with their thumbnails and a link to the review page."""
    keys = tuple(sorted(set(frame["image_key"])))
    thumbs = load_thumbnail_urls(keys)
    frame = frame.assign(
        thumbnail=[thumbs.get(key) for key in frame["image_key"]],
        review=[
            review_link(a, s, u)
            for a, s, u in zip(
                frame["advertiser"], frame["scrape_id"], frame["image_url"], strict=True
            )
        ],
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        row_height=64,
        height=min(8, len(frame) + 1) * 64 + 3,
        column_order=["thumbnail", *order, "review"],
        column_config={
            "thumbnail": st.column_config.ImageColumn("image", width="small"),
            # Plain text, not a link: the URL is advertiser-supplied.
            "image_url": st.column_config.TextColumn("image URL"),
            "review": st.column_config.LinkColumn("review", display_text="open in review"),
            **columns,
        },
    )


# --- the page ----------------------------------------------------------------------------------

actor = current_actor()
if not can_view_charts(actor):
    st.error("The Misclassification page is for managers, developers and admins.", icon="🔒")
    st.stop()

st.title("Misclassification")
st.caption(
    "How often, where and how people correct the ML system's Image Type and Color. "
    "Read-only; dates are UTC."
)
with st.expander("Definitions", icon=":material/info:"):
    st.markdown(DEFINITIONS)

with shown_errors():
    options = load_chart_options()
    if not options.advertisers:
        st.info("No advertisers yet: nothing has been classified.")
        st.stop()
    chart_filter = filters(options)
    previous = chart_filter.previous()
    st.caption(
        f"Period {chart_filter.date_from:%Y-%m-%d} to {chart_filter.date_to:%Y-%m-%d} "
        f"({chart_filter.days} days); previous period {previous.date_from:%Y-%m-%d} to "
        f"{previous.date_to:%Y-%m-%d}."
    )

    # --- headline: the health figure -----------------------------------------------------------
    rates = load_period_rates(chart_filter)
    columns = st.columns(len(rates) + 2)
    for column, rate in zip(columns, rates, strict=False):
        label, value, delta, moved = specs.headline(rate)
        # Fewer fixes per image is better: a rise shows red.
        column.metric(
            label,
            value,
            delta,
            delta_color="inverse" if moved else "off",
            delta_arrow="auto" if moved else "off",
            border=True,
        )
    classified = rates[0].classified if rates else 0
    previous_classified = rates[0].previous_classified if rates else 0
    columns[-2].metric(
        "Classified images",
        f"{classified:,}",
        f"{classified - previous_classified:+,} vs previous period",
        delta_color="off",
        border=True,
    )
    fixes = sum(r.fixes for r in rates)
    columns[-1].metric(
        "Fixes",
        f"{fixes:,}",
        f"{fixes - sum(r.previous_fixes for r in rates):+,} vs previous period",
        delta_color="inverse",
        border=True,
    )

    # --- 1. correction rate over time ----------------------------------------------------------
    st.subheader("1. Correction rate over time")
    granularity = st.radio(
        "Per", ["week", "day"], horizontal=True, format_func=str.capitalize, key="granularity"
    )
    points = load_correction_rate(chart_filter, granularity)
    frame = specs.rate_frame(points)
    st.caption(specs.rate_reading(frame, granularity))
    chart = specs.correction_rate_chart(frame, granularity)
    st.altair_chart(chart, width="stretch")
    downloads("correction-rate", points, chart, chart_filter)

    # --- 2. confusion --------------------------------------------------------------------------
    st.subheader("2. What the ML said, and what people fixed it to")
    cells_by_field = {field: load_confusion(chart_filter, field) for field in chart_filter.fields}
    all_cells = [cell for cells in cells_by_field.values() for cell in cells]
    clicked: tuple[str, str, str] | None = None
    heatmaps: list[alt.TopLevelMixin] = []
    widths = [1 if field == "image_type" else 2 for field in chart_filter.fields]
    for column, (field, cells) in zip(st.columns(widths), cells_by_field.items(), strict=True):
        with column:
            cell_frame = specs.confusion_frame(cells)
            st.caption(specs.confusion_reading(cell_frame, field))
            if cell_frame.empty:
                st.info(f"No {specs.field_label(field)} fix in this period.")
                continue
            heatmap = specs.confusion_chart(cell_frame, field)
            heatmaps.append(heatmap)
            event = st.altair_chart(heatmap, on_select="rerun", key=f"heatmap-{field}")
            picked = (event.selection.get(specs.cell_selection(field)) or [None])[0]
            if picked:
                clicked = (field, picked["ml_value"], picked["fixed_value"])
    combined = alt.hconcat(*heatmaps) if len(heatmaps) > 1 else (heatmaps or [None])[0]
    downloads("confusion", all_cells, combined, chart_filter)

    if all_cells:
        # The cell list, largest corrections first; a click on a heatmap cell selects it here.
        ranked = sorted(all_cells, key=lambda c: (c.ml_value == c.fixed_value, -c.images))
        keys = [f"{c.field}|{c.ml_value}|{c.fixed_value}" for c in ranked]
        described = {
            f"{c.field}|{c.ml_value}|{c.fixed_value}": (
                f"{specs.field_label(c.field)}: {c.ml_value} → {c.fixed_value} "
                f"({c.images:,} images)"
            )
            for c in ranked
        }
        if clicked is not None and st.session_state.get("last-click") != clicked:
            st.session_state["last-click"] = clicked
            st.session_state["cell"] = "|".join(clicked)
        if st.session_state.get("cell") not in keys:
            st.session_state["cell"] = keys[0]
        chosen = st.selectbox(
            "Images behind a cell (or click a cell above)",
            keys,
            format_func=described.__getitem__,
            key="cell",
        )
        field, ml_value, fixed_value = chosen.split("|", 2)
        images = load_cell_images(chart_filter, field, ml_value, fixed_value, CELL_IMAGES)
        if not images:
            # Both loads are cached apart: for a moment they may disagree about a new fix.
            st.info("No image behind this cell any more.")
        else:
            image_table(
                pd.DataFrame([dataclasses.asdict(i) for i in images]),
                {
                    "advertiser": st.column_config.TextColumn("advertiser"),
                    "fixes": st.column_config.NumberColumn("fixes in period"),
                    "last_fixed_at": st.column_config.DatetimeColumn(
                        "last fixed", format="YYYY-MM-DD HH:mm"
                    ),
                },
                ["advertiser", "fixes", "last_fixed_at", "image_url"],
            )
        if len(images) == CELL_IMAGES:
            st.caption(f"The {CELL_IMAGES} most recently fixed images of this cell.")

    # --- 3. by advertiser ----------------------------------------------------------------------
    st.subheader("3. By advertiser")
    advertisers = load_advertiser_rates(chart_filter)
    frame = specs.advertiser_frame(advertisers)
    st.caption(specs.advertiser_reading(frame))
    chart = specs.advertiser_chart(frame) if advertisers else None
    if chart is not None:
        st.altair_chart(chart, width="stretch")
    else:
        st.info("No advertiser had classified images or fixes in this period.")
    downloads("advertisers", advertisers, chart, chart_filter)

    # --- 4. by model version -------------------------------------------------------------------
    st.subheader("4. By model version")
    for model in chart_filter.fields:
        stats = load_model_versions(chart_filter, model)
        rate_rows = specs.version_rate_frame(stats)
        mix_rows = specs.version_mix_frame(stats)
        st.caption(specs.version_reading(rate_rows, model))
        if rate_rows.empty:
            continue
        left, right = st.columns([2, 3])
        left.altair_chart(specs.version_rate_chart(rate_rows, model), width="stretch")
        right.altair_chart(specs.version_mix_chart(mix_rows, model), width="stretch")
        downloads(
            f"{model.replace('_', '-')}-model-versions",
            [*stats.rates, *stats.mix],
            specs.version_chart(rate_rows, mix_rows, model),
            chart_filter,
        )

    # --- 5. ML failures ------------------------------------------------------------------------
    st.subheader("5. ML failures")
    failures = load_failures(chart_filter)
    daily, failed_scrapes = specs.failure_frames(failures)
    st.caption(specs.failures_reading(daily, failed_scrapes))
    chart = specs.failures_chart(daily, failed_scrapes) if failures.daily else None
    if chart is not None:
        st.altair_chart(chart, width="stretch")
    else:
        st.info("No scrape started in this period.")
    downloads("ml-failures", [*failures.daily, *failures.scrapes], chart, chart_filter)

    # --- 6. most fixed images ------------------------------------------------------------------
    st.subheader("6. Most fixed images")
    fixed = load_most_fixed(chart_filter, FIXED_IMAGES)
    frame = specs.fixed_frame(fixed)
    st.caption(specs.fixed_reading(frame))
    chart = specs.most_fixed_chart(frame) if fixed else None
    if chart is not None:
        st.altair_chart(chart, width="stretch")
        image_table(
            frame,
            {
                "advertiser": st.column_config.TextColumn("advertiser"),
                "fixes": st.column_config.NumberColumn("fixes"),
                "reversals": st.column_config.NumberColumn("back and forth"),
                "type_fixes": st.column_config.NumberColumn("Image Type fixes"),
                "color_fixes": st.column_config.NumberColumn("Color fixes"),
                "ml_image_type": st.column_config.TextColumn("ML type"),
                "image_type": st.column_config.TextColumn("type now"),
                "ml_color": st.column_config.TextColumn("ML color"),
                "color": st.column_config.TextColumn("color now"),
                "last_fixed_at": st.column_config.DatetimeColumn(
                    "last fixed", format="YYYY-MM-DD HH:mm"
                ),
            },
            [
                "advertiser",
                "fixes",
                "reversals",
                "type_fixes",
                "color_fixes",
                "ml_image_type",
                "image_type",
                "ml_color",
                "color",
                "last_fixed_at",
                "image_url",
            ],
        )
    else:
        st.info("No image was fixed in this period.")
    downloads("most-fixed-images", fixed, chart, chart_filter)
