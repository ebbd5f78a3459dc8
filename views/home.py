"""Home: every advertiser with the counts of its latest scrape, and the latest scrapes."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from db.accounts import Permission
from db.advertisers import advertiser_overview
from db.scrapes import recent_scrapes
from views.common import QUERY_TTL_SECONDS, require_page, session_factory


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
            scale=alt.Scale(
                domain=["Dealer", "Stock", "Placeholder"], range=["#2f81f7", "#a371f7", "#8b949e"]
            ),
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
