"""Home: every advertiser with the counts of its latest scrape, and the latest scrapes."""

from __future__ import annotations

import altair as alt
import streamlit as st

from db.accounts import Permission
from db.vocab import TYPE_COLORS
from views.common import require_page
from views.loaders import load_overview, load_recent_scrapes

require_page(Permission.READ)
st.title("Tagdesk")
st.caption(
    "Image Type and Color of every advertiser's vehicle images, as the latest scrape saw them."
)

overview = load_overview()
if overview.empty:
    st.info(
        "No advertisers yet. Add one with `python -m tagging advertisers add NAME --sitemap URL`."
    )
    st.stop()

totals = overview[["items", "dealer", "stock", "placeholder", "failed"]].sum()
columns = st.columns(5)
columns[0].metric("Advertisers", len(overview))
columns[1].metric("Images", f"{int(totals['items']):,}")
columns[2].metric("Dealer photos", f"{int(totals['dealer']):,}")
columns[3].metric("Stock photos", f"{int(totals['stock']):,}")
columns[4].metric("Placeholders", f"{int(totals['placeholder']):,}")

st.subheader("Image Types per advertiser")
long = overview.melt(
    id_vars=["name"],
    value_vars=["dealer", "stock", "placeholder"],
    var_name="Image Type",
    value_name="images",
)
long["Image Type"] = long["Image Type"].str.capitalize()
chart = (
    alt.Chart(long)
    .mark_bar()
    .encode(
        y=alt.Y("name:N", title=None, sort="-x"),
        x=alt.X("images:Q", title="images in the latest scrape", stack="zero"),
        color=alt.Color(
            "Image Type:N",
            scale=alt.Scale(domain=list(TYPE_COLORS), range=list(TYPE_COLORS.values())),
        ),
        tooltip=["name:N", "Image Type:N", "images:Q"],
    )
    .properties(height=alt.Step(28))
)
st.altair_chart(chart, width="stretch")

st.dataframe(
    overview[
        ["name", "items", "dealer", "stock", "placeholder", "failed", "scrape_status", "scraped_at"]
    ].rename(
        columns={
            "name": "advertiser",
            "scrape_status": "latest scrape",
            "scraped_at": "finished",
        }
    ),
    hide_index=True,
    width="stretch",
    column_config={"finished": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")},
)

st.subheader("Latest scrapes")
st.dataframe(
    load_recent_scrapes(),
    hide_index=True,
    width="stretch",
    column_config={
        "started": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
        "seconds": st.column_config.NumberColumn(format="%.1f s"),
    },
)
