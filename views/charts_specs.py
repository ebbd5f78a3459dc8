"""The Misclassification page's charts as pure functions: rows in, Altair charts and text out.

Nothing here touches the database or Streamlit, so the tests can build each chart from crafted
rows and check what it encodes (``chart.to_dict()``). The rows are :mod:`db.charts`' dataclasses;
``*_frame`` functions turn them into the small DataFrames the charts draw (already aggregated in
SQL: a few hundred rows at most).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from datetime import date

import altair as alt
import pandas as pd

from db.charts import (
    NO_VALUE,
    AdvertiserRate,
    ConfusionCell,
    FailureStats,
    FixedImage,
    PeriodRate,
    RatePoint,
    VersionStats,
)
from db.vocab import COLORS, IMAGE_TYPES, TYPE_COLORS
from views.common import plain

FIELD_LABELS = {"image_type": "Image Type", "color": "Color"}
FIELD_COLORS = {"Image Type": "#2f81f7", "Color": "#e16f24"}
PALETTE = {
    "Black": "#1f2328",
    "White": "#ffffff",
    "Silver": "#b8bcc2",
    "Gray": "#6e7781",
    "Red": "#d1242f",
    "Blue": "#0969da",
    "Green": "#1a7f37",
    "Brown": "#8b5a2b",
    "Beige": "#d8c8a8",
    "Gold": "#d4a72c",
    "Orange": "#fb8500",
    "Yellow": "#f5d90a",
    "Purple": "#8250df",
    NO_VALUE: "#eaeef2",
}
"""How each color value is drawn in the class-mix chart (a missing color is pale gray)."""
SOURCE_COLORS = {"Analyst": "#2f81f7", "Advertiser": "#e16f24"}
SVG_WIDTH = 720
"""Width of an exported chart that has none of its own (on the page they stretch)."""


def cell_selection(field: str) -> str:
    """The name of a confusion heatmap's click selection (the page reads it).

    One name per field: the two heatmaps exported side by side must not share a parameter.
    """
    return f"cell_{field}"


def field_label(field: str) -> str:
    """``image_type`` → ``Image Type``."""
    return FIELD_LABELS.get(field, field)


def values_of(field: str) -> list[str]:
    """Every value a field can have, in the app's order (a missing color last)."""
    return list(IMAGE_TYPES) if field == "image_type" else [*COLORS, NO_VALUE]


def per_1000(rate: float | None) -> str:
    """A rate as the page writes it: one decimal, or a dash when unknown."""
    return "—" if rate is None else f"{rate:,.1f}"


# --- 1. correction rate ------------------------------------------------------------------------


def rate_frame(points: Sequence[RatePoint]) -> pd.DataFrame:
    """One row per bucket and field: bucket, field (label), fixes, classified, rate."""
    frame = pd.DataFrame(
        [dataclasses.asdict(p) for p in points],
        columns=["bucket", "field", "fixes", "classified", "rate"],
    )
    frame["bucket"] = pd.to_datetime(frame["bucket"])
    frame["field"] = frame["field"].map(field_label)
    return frame


def correction_rate_chart(frame: pd.DataFrame, granularity: str = "week") -> alt.LayerChart:
    """Fixes per 1,000 classified images per day or week, a line per field."""
    period = "week starting" if granularity == "week" else "day"
    base = alt.Chart(frame).encode(
        x=alt.X("bucket:T", title=f"{period} (UTC)", axis=alt.Axis(format="%b %d")),
        y=alt.Y("rate:Q", title="fixes per 1,000 classified images"),
        color=alt.Color(
            "field:N",
            title="Field",
            scale=alt.Scale(domain=list(FIELD_COLORS), range=list(FIELD_COLORS.values())),
        ),
        tooltip=[
            alt.Tooltip("bucket:T", title=period, format="%Y-%m-%d"),
            alt.Tooltip("field:N", title="field"),
            alt.Tooltip("rate:Q", title="per 1,000", format=",.1f"),
            alt.Tooltip("fixes:Q", format=","),
            alt.Tooltip("classified:Q", title="classified images", format=","),
        ],
    )
    return alt.layer(base.mark_line(), base.mark_point(filled=True, size=40)).properties(height=260)


def headline(rate: PeriodRate) -> tuple[str, str, str | None, bool]:
    """A field's ``st.metric``: its rate, and the change against the previous period.

    Returns:
        ``(label, value, delta, moved)``; ``moved`` is False when the change rounds to zero (no
        arrow then), and ``delta`` None when either period classified nothing.
    """
    label = f"{field_label(rate.field)} fixes per 1,000 images"
    change = rate.change
    if change is None:
        return label, per_1000(rate.rate), None, False
    if round(change, 1) == 0:
        return label, per_1000(rate.rate), "no change vs previous period", False
    return label, per_1000(rate.rate), f"{change:+,.1f} vs previous period", True


def rate_reading(frame: pd.DataFrame, granularity: str) -> str:
    """One line: what chart 1 shows, with the latest bucket's rates."""
    unit = "week" if granularity == "week" else "day"
    known = frame.dropna(subset=["rate"])
    if known.empty:
        return (
            f"Fixes per 1,000 classified images per {unit}: nothing was classified in this period."
        )
    latest = known["bucket"].max()
    parts = [
        f"{row.field} {row.rate:,.1f}" for row in known[known["bucket"] == latest].itertuples()
    ]
    return (
        f"Fixes per 1,000 classified images per {unit} (lower is better); "
        f"{unit} of {latest:%b %d}: {', '.join(parts)}."
    )


# --- 2. confusion ------------------------------------------------------------------------------


def confusion_frame(cells: Sequence[ConfusionCell]) -> pd.DataFrame:
    """One row per cell: field, ml_value, fixed_value, images, row_images, share."""
    return pd.DataFrame(
        [dataclasses.asdict(c) for c in cells],
        columns=["field", "ml_value", "fixed_value", "images", "row_images", "share"],
    )


def confusion_chart(frame: pd.DataFrame, field: str) -> alt.LayerChart:
    """Heatmap ML value (rows) → fixed value (columns): row shares as color, counts as text.

    Clicking a cell selects it (selection :func:`cell_selection` on ``ml_value`` and
    ``fixed_value``), which the page turns into the table of the images behind it.
    """
    order = values_of(field)
    present = set(frame["ml_value"]) | set(frame["fixed_value"])
    # Only the values that occur, in the app's order: 14 colors would mostly be empty rows.
    domain = [v for v in order if v in present] + sorted(present - set(order))
    selection = alt.selection_point(
        name=cell_selection(field),
        fields=["ml_value", "fixed_value"],
        on="click",
        clear="dblclick",
    )
    base = alt.Chart(frame).encode(
        # Every label: a hidden "Stock" column would leave a cell without a name.
        x=alt.X(
            "fixed_value:N",
            title="fixed to",
            sort=domain,
            axis=alt.Axis(labelAngle=-45, labelOverlap=False),
        ),
        y=alt.Y("ml_value:N", title="ML said", sort=domain),
    )
    cells = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.Color(
            "share:Q",
            title="share of row",
            scale=alt.Scale(scheme="blues", domain=[0, 1]),
            legend=alt.Legend(format=".0%"),
        ),
        opacity=alt.condition(selection, alt.value(1.0), alt.value(0.35)),
        tooltip=[
            alt.Tooltip("ml_value:N", title="ML said"),
            alt.Tooltip("fixed_value:N", title="fixed to"),
            alt.Tooltip("images:Q", format=","),
            alt.Tooltip("share:Q", title="share of the row", format=".1%"),
            alt.Tooltip("row_images:Q", title="images in the row", format=","),
        ],
    )
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("images:Q", format=","),
        color=alt.condition(alt.datum.share > 0.5, alt.value("white"), alt.value("#1f2328")),
    )
    size = 42 if field == "image_type" else 30
    return (
        alt.layer(cells.add_params(selection), text)
        .properties(width=alt.Step(size), height=alt.Step(size))
        .properties(title=f"{field_label(field)}: ML value → fixed value")
    )


def confusion_reading(frame: pd.DataFrame, field: str) -> str:
    """One line (Markdown, for ``st.caption``): the most common correction of a field."""
    off = frame[frame["ml_value"] != frame["fixed_value"]]
    if off.empty:
        return f"{field_label(field)}: no image was fixed to another value in this period."
    top = off.sort_values(["images", "share"], ascending=False).iloc[0]
    total = int(frame["images"].sum())
    # Values may come from advertisers' feeds and fixes: shown literally.
    ml_value, fixed_value = plain(top.ml_value), plain(top.fixed_value)
    return (
        f"{field_label(field)}: {total:,} images fixed; most often the ML said "
        f"{ml_value} and people set {fixed_value} ({int(top.images):,} images, "
        f"{top.share:.0%} of the fixed {ml_value} images). Rows add up to 100%."
    )


# --- 3. by advertiser --------------------------------------------------------------------------


def advertiser_frame(rows: Sequence[AdvertiserRate]) -> pd.DataFrame:
    """One row per advertiser: rates, change and the ``moved_most`` highlight, by rate."""
    frame = pd.DataFrame(
        [{**dataclasses.asdict(r), "fixes": r.fixes} for r in rows],
        columns=[
            "advertiser_id",
            "advertiser",
            "classified",
            "analyst_fixes",
            "advertiser_fixes",
            "fixes",
            "rate",
            "analyst_rate",
            "advertiser_rate",
            "previous_classified",
            "previous_fixes",
            "previous_rate",
            "change",
            "moved_most",
        ],
    )
    frame["change_label"] = [
        "" if pd.isna(change) else f"{'▲' if change > 0 else '▼'} {change:+,.1f}"
        for change in frame["change"]
    ]
    return frame


def advertiser_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Fix rate per advertiser, stacked by who fixed, with the change since the previous period.

    The :data:`db.charts.MOVERS` advertisers whose rate moved most have their change in bold red
    (up) or green (down); the others' change is gray.
    """
    order = list(frame["advertiser"])
    stacked = frame.melt(
        id_vars=["advertiser", "rate", "fixes", "classified"],
        value_vars=["analyst_rate", "advertiser_rate"],
        var_name="source",
        value_name="source_rate",
    )
    stacked["source"] = stacked["source"].map(
        {"analyst_rate": "Analyst", "advertiser_rate": "Advertiser"}
    )
    y = alt.Y("advertiser:N", title=None, sort=order)
    bars = (
        alt.Chart(stacked)
        .mark_bar()
        .encode(
            y=y,
            x=alt.X("source_rate:Q", title="fixes per 1,000 classified images", stack="zero"),
            color=alt.Color(
                "source:N",
                title="Fixed by",
                scale=alt.Scale(domain=list(SOURCE_COLORS), range=list(SOURCE_COLORS.values())),
            ),
            tooltip=[
                alt.Tooltip("advertiser:N"),
                alt.Tooltip("source:N", title="fixed by"),
                alt.Tooltip("source_rate:Q", title="per 1,000", format=",.1f"),
                alt.Tooltip("rate:Q", title="total per 1,000", format=",.1f"),
                alt.Tooltip("fixes:Q", format=","),
                alt.Tooltip("classified:Q", title="classified images", format=","),
            ],
        )
    )
    tooltip = [
        alt.Tooltip("advertiser:N"),
        alt.Tooltip("previous_rate:Q", title="previous period per 1,000", format=",.1f"),
        alt.Tooltip("change:Q", title="change", format="+,.1f"),
        alt.Tooltip("moved_most:N", title="moved most"),
    ]
    labels = alt.Chart(frame).encode(
        y=y, x=alt.X("rate:Q"), text=alt.Text("change_label:N"), tooltip=tooltip
    )
    others = labels.transform_filter(~alt.datum.moved_most).mark_text(
        align="left", dx=6, fontSize=11, color="#8b949e"
    )
    # The movers' change in bold: red when their rate rose, green when it fell.
    movers = (
        labels.transform_filter(alt.datum.moved_most)
        .mark_text(align="left", dx=6, fontSize=12, fontWeight="bold")
        .encode(
            color=alt.condition(alt.datum.change > 0, alt.value("#d1242f"), alt.value("#1a7f37"))
        )
    )
    return alt.layer(bars, others, movers).properties(height=alt.Step(22))


def advertiser_reading(frame: pd.DataFrame) -> str:
    """One line (Markdown, for ``st.caption``; names shown literally): the highest rate and the
    advertisers that moved most."""
    known = frame.dropna(subset=["rate"])
    if known.empty:
        return "No advertiser had classified images in this period."
    top = known.iloc[0]
    movers = frame[frame["moved_most"]].sort_values("change", key=abs, ascending=False)
    moved = ", ".join(f"{plain(m.advertiser)} {m.change:+,.1f}" for m in movers.itertuples())
    text = f"Highest fix rate: {plain(top.advertiser)}, {top.rate:,.1f} per 1,000 images"
    text += f"; moved most since the previous period: {moved}." if moved else "."
    return text + " Bars are stacked by who fixed."


# --- 4. model versions -------------------------------------------------------------------------


def version_rate_frame(stats: VersionStats) -> pd.DataFrame:
    """One row per model version: first and last seen, classified, fixes, rate."""
    return pd.DataFrame(
        [dataclasses.asdict(r) for r in stats.rates],
        columns=["model", "version", "first_seen", "last_seen", "classified", "fixes", "rate"],
    )


def version_mix_frame(stats: VersionStats) -> pd.DataFrame:
    """One row per model version and value: items and their share of the version."""
    return pd.DataFrame(
        [dataclasses.asdict(m) for m in stats.mix],
        columns=["model", "version", "value", "items", "share"],
    )


def version_rate_chart(frame: pd.DataFrame, model: str) -> alt.Chart:
    """Fix rate per model version, versions in the order they were first used."""
    return (
        alt.Chart(frame)
        .mark_bar(color=FIELD_COLORS[field_label(model)])
        .encode(
            x=alt.X(
                "version:N",
                title=f"{field_label(model)} model version",
                sort=None,
                axis=alt.Axis(labelAngle=0, labelLimit=160),
            ),
            y=alt.Y("rate:Q", title="fixes per 1,000 images it classified"),
            tooltip=[
                alt.Tooltip("version:N"),
                alt.Tooltip("first_seen:T", title="first used", format="%Y-%m-%d"),
                alt.Tooltip("last_seen:T", title="last used", format="%Y-%m-%d"),
                alt.Tooltip("rate:Q", title="per 1,000", format=",.1f"),
                alt.Tooltip("fixes:Q", format=","),
                alt.Tooltip("classified:Q", title="classified images", format=","),
            ],
        )
    )


def version_mix_chart(frame: pd.DataFrame, model: str) -> alt.Chart:
    """The class mix of each model version: its values' shares, stacked to 100%."""
    domain = [v for v in values_of(model) if v in set(frame["value"])]
    palette = TYPE_COLORS if model == "image_type" else PALETTE
    return (
        alt.Chart(frame)
        .mark_bar(stroke="#d0d7de", strokeWidth=0.5)
        .encode(
            x=alt.X(
                "version:N",
                title=f"{field_label(model)} model version",
                sort=None,
                axis=alt.Axis(labelAngle=0, labelLimit=160),
            ),
            y=alt.Y(
                "share:Q",
                title="share of its classified images",
                stack="normalize",
                axis=alt.Axis(format="%"),
            ),
            color=alt.Color(
                "value:N",
                title=field_label(model),
                sort=domain,
                scale=alt.Scale(domain=domain, range=[palette.get(v, "#999999") for v in domain]),
                legend=alt.Legend(columns=2),
            ),
            order=alt.Order("items:Q", sort="descending"),
            tooltip=[
                alt.Tooltip("version:N"),
                alt.Tooltip("value:N", title=field_label(model)),
                alt.Tooltip("items:Q", format=","),
                alt.Tooltip("share:Q", format=".1%"),
            ],
        )
    )


def version_chart(rates: pd.DataFrame, mix: pd.DataFrame, model: str) -> alt.HConcatChart:
    """Fix rate and class mix side by side, titled: the exported chart.

    The page draws the two halves in columns, without titles or heights: Streamlit fits a
    stretched chart's axes and title into its height, which squeezes the plot.
    """
    return alt.hconcat(
        version_rate_chart(rates, model).properties(width=260, height=220, title="Fix rate"),
        version_mix_chart(mix, model).properties(width=380, height=220, title="Class mix"),
    ).properties(title=f"{field_label(model)} model versions")


def version_reading(frame: pd.DataFrame, model: str) -> str:
    """One line: each version's rate, oldest first, so that a promotion's effect reads at once."""
    if frame.empty:
        return f"No image was classified by a {field_label(model)} model in this period."
    parts = []
    for row in frame.itertuples():
        since = f" from {row.first_seen:%b %d}" if pd.notna(row.first_seen) else ""
        parts.append(f"{row.version}{since}: {per_1000(row.rate)}")
    return (
        f"{field_label(model)} fixes per 1,000 images each model version classified — "
        + "; ".join(parts)
        + "."
    )


# --- 5. ML failures ----------------------------------------------------------------------------


def failure_frames(stats: FailureStats) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(daily, scrapes)``: the daily share, and the scrapes that had ML failures."""
    daily = pd.DataFrame(
        [dataclasses.asdict(d) for d in stats.daily],
        columns=["day", "scrapes", "items", "ml_failures", "share"],
    )
    daily["day"] = pd.to_datetime(daily["day"])
    scrapes = pd.DataFrame(
        [dataclasses.asdict(s) for s in stats.scrapes],
        columns=["scrape_id", "advertiser", "started_at", "items", "ml_failures", "share"],
    )
    return daily, scrapes


def failures_chart(daily: pd.DataFrame, scrapes: pd.DataFrame) -> alt.LayerChart:
    """Share of items with an ML failure: a line per day, a point per scrape that had some."""
    line = (
        alt.Chart(daily)
        .mark_line(color="#8b949e", point=alt.OverlayMarkDef(color="#8b949e", size=20))
        .encode(
            x=alt.X("day:T", title="scrape started (UTC)", axis=alt.Axis(format="%b %d")),
            y=alt.Y("share:Q", title="items with an ML failure", axis=alt.Axis(format="%")),
            tooltip=[
                alt.Tooltip("day:T", format="%Y-%m-%d"),
                alt.Tooltip("share:Q", title="share of the day's items", format=".2%"),
                alt.Tooltip("ml_failures:Q", title="ML failures", format=","),
                alt.Tooltip("items:Q", format=","),
                alt.Tooltip("scrapes:Q", format=","),
            ],
        )
    )
    points = (
        alt.Chart(scrapes)
        .mark_circle(color="#d1242f", opacity=0.7)
        .encode(
            x=alt.X("started_at:T"),
            y=alt.Y("share:Q"),
            # No legend: the tooltip tells the count, and a size legend outgrows the chart.
            size=alt.Size("ml_failures:Q", scale=alt.Scale(range=[20, 300]), legend=None),
            tooltip=[
                alt.Tooltip("scrape_id:Q", title="scrape"),
                alt.Tooltip("advertiser:N"),
                alt.Tooltip("started_at:T", title="started", format="%Y-%m-%d %H:%M"),
                alt.Tooltip("share:Q", format=".1%"),
                alt.Tooltip("ml_failures:Q", title="ML failures", format=","),
                alt.Tooltip("items:Q", format=","),
            ],
        )
    )
    return alt.layer(line, points).properties(height=240)


def failures_reading(daily: pd.DataFrame, scrapes: pd.DataFrame) -> str:
    """One line: the period's overall share and the worst scrape."""
    items = int(daily["items"].sum()) if not daily.empty else 0
    if not items:
        return "No scrape started in this period."
    failures = int(daily["ml_failures"].sum())
    text = (
        f"{failures / items:.2%} of the items scraped in this period got no answer from the "
        f"ML server ({failures:,} of {items:,})"
    )
    if scrapes.empty:
        return text + "; no scrape had an ML failure."
    worst = scrapes.sort_values(["share", "ml_failures"], ascending=False).iloc[0]
    return (
        text + f"; {len(scrapes):,} scrapes had some (red), the worst #{worst.scrape_id} of "
        f"{plain(worst.advertiser)} on {worst.started_at:%b %d} with {worst.share:.0%}."
    )


# --- 6. most fixed images ----------------------------------------------------------------------


def fixed_frame(rows: Sequence[FixedImage]) -> pd.DataFrame:
    """One row per image, most fixed first, with a short label for the chart."""
    frame = pd.DataFrame(
        [dataclasses.asdict(r) for r in rows],
        columns=[f.name for f in dataclasses.fields(FixedImage)],
    )
    # Ranked, so that two images with the same file name and advertiser stay two bars.
    frame["label"] = [
        f"{rank}. {(advertiser or '?')[:24]} · {_file_name(url)}"
        for rank, (advertiser, url) in enumerate(
            zip(frame["advertiser"], frame["image_url"], strict=True), start=1
        )
    ]
    frame["other_fixes"] = frame["fixes"] - frame["reversals"]
    return frame


def most_fixed_chart(frame: pd.DataFrame, top: int = 20) -> alt.Chart:
    """The ``top`` most fixed images: their fixes, the back-and-forth ones in red."""
    head = frame.head(top)
    long = head.assign(back_and_forth=head["reversals"]).melt(
        id_vars=["label", "image_key", "image_url", "fixes", "reversals"],
        value_vars=["back_and_forth", "other_fixes"],
        var_name="kind",
        value_name="count",
    )
    long["kind"] = long["kind"].map(
        {"back_and_forth": "back and forth", "other_fixes": "other fixes"}
    )
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            y=alt.Y("label:N", title=None, sort=list(head["label"]), axis=alt.Axis(labelLimit=320)),
            x=alt.X("count:Q", title="fixes in the period", stack="zero"),
            color=alt.Color(
                "kind:N",
                title=None,
                scale=alt.Scale(
                    domain=["back and forth", "other fixes"], range=["#d1242f", "#8b949e"]
                ),
            ),
            tooltip=[
                alt.Tooltip("label:N", title="image"),
                alt.Tooltip("image_url:N", title="URL"),
                alt.Tooltip("fixes:Q"),
                alt.Tooltip("reversals:Q", title="back and forth"),
            ],
        )
        .properties(height=alt.Step(20))
    )


def fixed_reading(frame: pd.DataFrame) -> str:
    """One line: how often the most fixed image was fixed, and how many went back and forth."""
    if frame.empty:
        return "No image was fixed in this period."
    top = frame.iloc[0]
    flipping = int((frame["reversals"] > 0).sum())
    return (
        f"The most fixed image was fixed {int(top.fixes)} times ({int(top.reversals)} back and "
        f"forth); {flipping} of these {len(frame)} images went back to a value they had before."
    )


# --- export ------------------------------------------------------------------------------------


def chart_svg(chart: alt.TopLevelMixin) -> str:
    """The chart as a standalone SVG (rendered by vl-convert, no browser involved)."""
    if isinstance(chart, alt.Chart | alt.LayerChart) and _has_no_width(chart):
        chart = chart.properties(width=SVG_WIDTH)
    buffer = io.StringIO()
    chart.save(buffer, format="svg")
    return buffer.getvalue()


def _file_name(url: str) -> str:
    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or url
    return name if len(name) <= 28 else "…" + name[-27:]


def _has_no_width(chart: alt.TopLevelMixin) -> bool:
    width = chart.to_dict().get("width")
    return width is None


def file_stem(name: str, date_from: date, date_to: date) -> str:
    """``misclassification-<name>-<from>-<to>``: download names that say what they hold."""
    return f"misclassification-{name}-{date_from:%Y%m%d}-{date_to:%Y%m%d}"
