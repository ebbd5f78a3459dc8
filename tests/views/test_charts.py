"""The Misclassification page in AppTest, and its charts' specs (views/charts_specs.py).

The page runs on its own here (``AppTest.from_file``), signed in through the session state as
app.py would: it checks the role itself, whatever the navigation shows.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest

from db.charts import (
    AdvertiserRate,
    ConfusionCell,
    DailyFailures,
    FailureStats,
    FixedImage,
    PeriodRate,
    RatePoint,
    ScrapeFailures,
    VersionClass,
    VersionRate,
    VersionStats,
)
from db.models import FixSource, Role, utcnow
from tests.utils.charts import add_fix, add_scrape
from tests.utils.factories import actor, make_advertiser
from tests.views.conftest import ensure_account
from views import charts_specs as specs

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "views" / "charts.py"
SECTIONS = [
    "1. Correction rate over time",
    "2. What the ML said, and what people fixed it to",
    "3. By advertiser",
    "4. By model version",
    "5. ML failures",
    "6. Most fixed images",
]


def ago(days: int, hour: int = 12) -> datetime:
    return datetime.combine(utcnow().date() - timedelta(days=days), time(hour), tzinfo=UTC)


@pytest.fixture
def seeded(app_db: sessionmaker[Session]) -> dict[str, int]:
    """Two advertisers over the last 6 weeks: the default period (4 weeks) and the one before."""
    with app_db.begin() as session:
        sunrise = make_advertiser(session, "Sunrise Motors")
        harbor = make_advertiser(session, "Harbor Autos")
        add_scrape(session, sunrise, ago(35), [("p0", "ok", "Dealer", "Red", "v1", "c1")] * 1)
        _, (s0, s1, s2, _) = add_scrape(
            session,
            sunrise,
            ago(10, 2),
            [
                ("s0", "ok", "Dealer", "Red", "v1", "c1"),
                ("s1", "ok", "Stock", "Blue", "v1", "c1"),
                ("s2", "ok", "Dealer", None, "v1", "c1"),
                ("s3", "ml_failure", "Placeholder", None, None, None),
            ],
        )
        _, (h0, h1) = add_scrape(
            session,
            harbor,
            ago(5, 2),
            [
                ("h0", "ok", "Dealer", "Black", "v2", "c2"),
                ("h1", "ok", "Stock", "White", "v2", "c2"),
            ],
        )
        add_fix(session, s0, "image_type", "Dealer", "Stock", ago(9))
        add_fix(session, s0, "image_type", "Stock", "Dealer", ago(8))
        add_fix(session, s1, "image_type", "Stock", "Dealer", ago(9))
        add_fix(session, s2, "color", None, "Gray", ago(9))
        add_fix(
            session,
            h0,
            "image_type",
            "Dealer",
            "Stock",
            ago(4),
            source=FixSource.ADVERTISER,
            user="advertiser:Harbor Autos",
        )
        add_fix(session, h1, "color", "White", "Silver", ago(4))
        return {"sunrise": sunrise.id, "harbor": harbor.id}


@pytest.fixture
def open_page(
    app_db: sessionmaker[Session], request: pytest.FixtureRequest
) -> Iterator[Callable[..., AppTest]]:
    def _open(role: Role = Role.MANAGER) -> AppTest:
        # AppTest leaves the script as __main__ (see tests/views/conftest.py).
        main = sys.modules["__main__"]
        request.addfinalizer(lambda: sys.modules.__setitem__("__main__", main))
        at = AppTest.from_file(str(PAGE), default_timeout=60)
        ensure_account(app_db, actor(role))
        at.session_state["actor"] = actor(role)
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        return at

    yield _open


def charts(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(element.proto.spec) for element in at.get("vega_lite_chart")]


def metric(at: AppTest, label: str) -> tuple[str, str]:
    found = next(m for m in at.metric if m.label == label)
    return found.value, found.delta


def widget(elements: Any, label: str) -> Any:
    return next(w for w in elements if w.label == label)


# --- the page ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.MANAGER, Role.DEVELOPER, Role.ADMIN])
def test_managers_developers_and_admins_see_the_six_charts(
    open_page: Callable[..., AppTest], seeded: dict[str, int], role: Role
) -> None:
    at = open_page(role)
    assert at.title[0].value == "Misclassification"
    assert [s.value for s in at.subheader] == SECTIONS
    # 1 rate + 2 heatmaps + 1 advertisers + 2 x 2 model versions + 1 failures + 1 most fixed.
    assert len(charts(at)) == 10
    labels = [b.label for b in at.get("download_button")]
    assert labels.count("Data (CSV)") == labels.count("Chart (SVG)") == 7
    assert len(at.dataframe) == 2  # the images behind a cell, the most fixed images
    # The headline: 4 Image Type and 2 Color fixes of 3 + 2 classified images, against the
    # previous period's 1 image and no fix.
    assert metric(at, "Image Type fixes per 1,000 images")[0] == "800.0"
    assert metric(at, "Color fixes per 1,000 images")[0] == "400.0"
    assert metric(at, "Classified images") == ("5", "+4 vs previous period")
    assert metric(at, "Fixes") == ("6", "+6 vs previous period")
    # Every chart has its reading.
    readings = " ".join(c.value for c in at.caption)
    # Two corrections of one image each: the one that is a whole row's share reads first.
    assert "most often the ML said Stock and people set Dealer" in readings
    assert "Highest fix rate: Sunrise Motors, 1,333.3 per 1,000 images" in readings
    assert "most fixed image was fixed 2 times (1 back and forth)" in readings


def test_an_analyst_is_refused(open_page: Callable[..., AppTest], seeded: dict[str, int]) -> None:
    at = open_page(Role.ANALYST)
    assert "for managers, developers and admins" in at.error[0].value
    assert not at.title and not charts(at) and not at.get("download_button")


def test_signed_out_is_refused(app_db: sessionmaker[Session]) -> None:
    at = AppTest.from_file(str(PAGE), default_timeout=60).run()
    assert at.error and not at.title


def test_without_advertisers_the_page_says_so(open_page: Callable[..., AppTest]) -> None:
    at = open_page()
    assert "No advertisers yet" in at.info[0].value
    assert not charts(at)


def test_the_filters_change_the_data(
    open_page: Callable[..., AppTest], seeded: dict[str, int]
) -> None:
    at = open_page()
    assert metric(at, "Classified images")[0] == "5"

    widget(at.multiselect, "Advertisers").select(seeded["harbor"]).run()
    assert metric(at, "Classified images")[0] == "2"
    assert metric(at, "Image Type fixes per 1,000 images")[0] == "500.0"
    advertisers = next(
        c for c in charts(at) if "stack" in json.dumps(c) and "source_rate" in json.dumps(c)
    )
    assert "Sunrise Motors" not in json.dumps(advertisers)

    widget(at.multiselect, "Fields").unselect("image_type").run()
    assert [m.label for m in at.metric][:1] == ["Color fixes per 1,000 images"]
    assert not any(m.label.startswith("Image Type") for m in at.metric)
    # One heatmap and one model (rate and mix) left: 1 + 1 + 1 + 2 + 1 + 1.
    assert len(charts(at)) == 7

    widget(at.date_input, "Period (UTC)").set_value((date(2020, 1, 6), date(2020, 1, 12))).run()
    assert metric(at, "Classified images")[0] == "0"
    assert any("nothing was classified" in c.value for c in at.caption)
    assert any("No image was fixed in this period." in i.value for i in at.info)


def test_per_day_draws_a_point_per_day(
    open_page: Callable[..., AppTest], seeded: dict[str, int]
) -> None:
    at = open_page()

    def rate_rows(at: AppTest) -> int:
        assert charts(at)[0]["layer"][0]["encoding"]["y"]["field"] == "rate"
        # Streamlit sends a chart's data apart from its spec, as Arrow.
        element = at.get("vega_lite_chart")[0].proto
        return sum(pa.ipc.open_stream(d.data.data).read_all().num_rows for d in element.datasets)

    weekly = rate_rows(at)
    widget(at.radio, "Per").set_value("day").run()
    assert rate_rows(at) == 2 * 28 > weekly


def test_choosing_a_cell_shows_its_images_with_a_review_link(
    open_page: Callable[..., AppTest], seeded: dict[str, int]
) -> None:
    at = open_page()
    choose = widget(at.selectbox, "Images behind a cell (or click a cell above)")
    # The largest correction first (not the diagonal).
    assert choose.value == "image_type|Dealer|Stock"
    images = at.dataframe[0].value
    assert list(images["image_key"]) == ["h0"]
    assert images["review"][0].startswith("review?advertiser=Harbor+Autos&scrape=")
    assert images["review"][0].endswith("&q=https%3A%2F%2Fcdn.example%2Fh0.jpg")
    assert images["thumbnail"][0] is None  # no thumbnail stored: an empty cell, not an error

    choose.set_value("color|None|Gray").run()
    assert list(at.dataframe[0].value["image_key"]) == ["s2"]


def test_the_page_only_reads(open_page: Callable[..., AppTest], seeded: dict[str, int]) -> None:
    at = open_page()
    # No button that writes: only downloads (which ignore reruns) and the filters.
    assert not at.button
    assert all(b.proto.ignore_rerun for b in at.get("download_button"))


def test_the_page_once_it_is_in_the_navigation(
    open_app: Callable[..., AppTest], seeded: dict[str, int]
) -> None:
    if "views/charts.py" not in (ROOT / "app.py").read_text():
        pytest.skip("views/charts.py is not in app.py's navigation yet")
    at = open_app(Role.MANAGER, "views/charts.py")
    assert not at.exception
    assert [s.value for s in at.subheader] == SECTIONS


# --- the specs ---------------------------------------------------------------------------------


def encodings(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The encodings of a spec's layers (or of the spec itself)."""
    layers = spec.get("layer") or [spec]
    return [layer.get("encoding", {}) for layer in layers]


def field_of(encoding: dict[str, Any], channel: str) -> str | None:
    value = encoding.get(channel, {})
    return value.get("field") if isinstance(value, dict) else None


def test_correction_rate_chart_encodes_bucket_rate_and_field() -> None:
    points = [
        RatePoint(date(2026, 3, 9), "image_type", 5, 4, 1250.0),
        RatePoint(date(2026, 3, 9), "color", 1, 4, 250.0),
        RatePoint(date(2026, 3, 16), "image_type", 0, 0, None),
    ]
    frame = specs.rate_frame(points)
    spec = specs.correction_rate_chart(frame, "week").to_dict()
    for encoding in encodings(spec):
        assert encoding["x"]["field"] == "bucket" and encoding["x"]["type"] == "temporal"
        assert encoding["y"]["field"] == "rate" and encoding["y"]["type"] == "quantitative"
        assert encoding["color"]["field"] == "field"
        assert encoding["color"]["scale"]["domain"] == ["Image Type", "Color"]
    assert list(frame["field"]) == ["Image Type", "Color", "Image Type"]
    assert specs.rate_reading(frame, "week") == (
        "Fixes per 1,000 classified images per week (lower is better); "
        "week of Mar 09: Image Type 1,250.0, Color 250.0."
    )


def test_headline_metric_of_a_rate() -> None:
    rate = PeriodRate("image_type", 6, 10, 600.0, 1, 4, 250.0)
    assert specs.headline(rate) == (
        "Image Type fixes per 1,000 images",
        "600.0",
        "+350.0 vs previous period",
        True,
    )
    same = PeriodRate("color", 1, 10, 100.0, 1, 10, 100.0)
    assert specs.headline(same)[2:] == ("no change vs previous period", False)
    unknown = PeriodRate("color", 0, 0, None, 0, 0, None)
    assert specs.headline(unknown)[1:] == ("—", None, False)


def test_confusion_chart_encodes_ml_value_fixed_value_share_and_count() -> None:
    cells = [
        ConfusionCell("image_type", "Dealer", "Stock", 3, 4, 0.75),
        ConfusionCell("image_type", "Dealer", "Dealer", 1, 4, 0.25),
        ConfusionCell("image_type", "Stock", "Dealer", 2, 2, 1.0),
    ]
    frame = specs.confusion_frame(cells)
    spec = specs.confusion_chart(frame, "image_type").to_dict()
    rect, text = encodings(spec)
    assert field_of(rect, "x") == "fixed_value" and field_of(rect, "y") == "ml_value"
    assert rect["x"]["sort"] == rect["y"]["sort"] == ["Dealer", "Stock"]  # values present only
    assert field_of(rect, "color") == "share" and rect["color"]["scale"]["domain"] == [0, 1]
    assert field_of(text, "text") == "images"
    # Altair lifts a layer's selection to the top, bound to the cells' view.
    (param,) = spec["params"]
    assert param["name"] == specs.cell_selection("image_type") == "cell_image_type"
    assert param["select"]["fields"] == ["ml_value", "fixed_value"]
    assert param["views"] == [spec["layer"][0]["name"]]
    assert specs.confusion_reading(frame, "image_type") == (
        "Image Type: 6 images fixed; most often the ML said Dealer and people set Stock "
        "(3 images, 75% of the fixed Dealer images). Rows add up to 100%."
    )


def test_advertiser_chart_stacks_sources_and_marks_the_movers() -> None:
    rows = [
        AdvertiserRate(1, "Sunrise", 8, 6, 1, 875.0, 750.0, 125.0, 4, 1, 250.0, 625.0, True),
        AdvertiserRate(2, "Harbor", 2, 1, 0, 500.0, 500.0, 0.0, 0, 0, None, None, False),
    ]
    frame = specs.advertiser_frame(rows)
    spec = specs.advertiser_chart(frame).to_dict()
    bars, others, movers = encodings(spec)
    assert field_of(bars, "x") == "source_rate" and bars["x"]["stack"] == "zero"
    assert field_of(bars, "y") == "advertiser" and bars["y"]["sort"] == ["Sunrise", "Harbor"]
    assert field_of(bars, "color") == "source"
    assert bars["color"]["scale"]["domain"] == ["Analyst", "Advertiser"]
    assert field_of(others, "text") == field_of(movers, "text") == "change_label"
    assert spec["layer"][2]["mark"]["fontWeight"] == "bold"
    assert "moved_most" in json.dumps(spec["layer"][2]["transform"])
    assert list(frame["change_label"]) == ["▲ +625.0", ""]
    assert specs.advertiser_reading(frame) == (
        "Highest fix rate: Sunrise, 875.0 per 1,000 images; moved most since the previous "
        "period: Sunrise +625.0. Bars are stacked by who fixed."
    )


def test_model_version_charts_encode_rate_and_class_mix() -> None:
    stats = VersionStats(
        "image_type",
        rates=[
            VersionRate("image_type", "v1", ago(20), ago(10), 4, 5, 1250.0),
            VersionRate("image_type", "v2", ago(9), ago(1), 6, 1, 1000 / 6),
        ],
        mix=[
            VersionClass("image_type", "v1", "Dealer", 3, 0.75),
            VersionClass("image_type", "v1", "Stock", 1, 0.25),
            VersionClass("image_type", "v2", "Placeholder", 6, 1.0),
        ],
    )
    rates, mix = specs.version_rate_frame(stats), specs.version_mix_frame(stats)
    (rate,) = encodings(specs.version_rate_chart(rates, "image_type").to_dict())
    assert field_of(rate, "x") == "version" and field_of(rate, "y") == "rate"
    (shares,) = encodings(specs.version_mix_chart(mix, "image_type").to_dict())
    assert field_of(shares, "x") == "version" and field_of(shares, "y") == "share"
    assert shares["y"]["stack"] == "normalize"
    assert field_of(shares, "color") == "value"
    assert shares["color"]["scale"]["domain"] == ["Dealer", "Stock", "Placeholder"]
    both = specs.version_chart(rates, mix, "image_type").to_dict()
    assert [c["title"] for c in both["hconcat"]] == ["Fix rate", "Class mix"]
    assert specs.version_reading(rates, "image_type").endswith(
        "v1 from " + f"{ago(20):%b %d}: 1,250.0; v2 from " + f"{ago(9):%b %d}: 166.7."
    )


def test_failures_chart_encodes_the_daily_share_and_the_failed_scrapes() -> None:
    stats = FailureStats(
        daily=[DailyFailures(date(2026, 3, 10), 2, 10, 5, 0.5)],
        scrapes=[ScrapeFailures(7, "Sunrise", ago(3), 5, 5, 1.0)],
    )
    daily, scrapes = specs.failure_frames(stats)
    line, points = encodings(specs.failures_chart(daily, scrapes).to_dict())
    assert field_of(line, "x") == "day" and field_of(line, "y") == "share"
    assert field_of(points, "x") == "started_at" and field_of(points, "y") == "share"
    assert field_of(points, "size") == "ml_failures"
    assert specs.failures_reading(daily, scrapes).startswith(
        "50.00% of the items scraped in this period got no answer from the ML server (5 of 10)"
    )


def test_most_fixed_chart_encodes_fixes_split_by_back_and_forth() -> None:
    images = [
        FixedImage(
            "k1",
            "https://cdn.example/a/photo-1.jpg?w=9",
            1,
            "Sunrise",
            3,
            4,
            3,
            1,
            2,
            ago(1),
            "Dealer",
            "Stock",
            "Red",
            "Blue",
        ),
        FixedImage(
            "k2",
            "https://cdn.example/b/photo-1.jpg",
            1,
            "Sunrise",
            3,
            1,
            1,
            0,
            0,
            ago(2),
            "Stock",
            "Dealer",
            None,
            None,
        ),
    ]
    frame = specs.fixed_frame(images)
    assert list(frame["label"]) == ["1. Sunrise · photo-1.jpg", "2. Sunrise · photo-1.jpg"]
    (bars,) = encodings(specs.most_fixed_chart(frame).to_dict())
    assert field_of(bars, "y") == "label" and field_of(bars, "x") == "count"
    assert bars["x"]["stack"] == "zero"
    assert field_of(bars, "color") == "kind"
    assert bars["color"]["scale"]["domain"] == ["back and forth", "other fixes"]
    assert specs.fixed_reading(frame) == (
        "The most fixed image was fixed 4 times (2 back and forth); 1 of these 2 images went "
        "back to a value they had before."
    )


def test_a_chart_exports_as_svg() -> None:
    frame = specs.rate_frame([RatePoint(date(2026, 3, 9), "color", 1, 4, 250.0)])
    svg = specs.chart_svg(specs.correction_rate_chart(frame))
    assert svg.lstrip().startswith("<svg") and "</svg>" in svg
    stats = VersionStats(
        "color",
        [VersionRate("color", "c1", None, None, 1, 0, 0.0)],
        [VersionClass("color", "c1", "None", 1, 1.0)],
    )
    concat = specs.version_chart(
        specs.version_rate_frame(stats), specs.version_mix_frame(stats), "color"
    )
    assert "Class mix" in specs.chart_svg(concat)


def test_empty_frames_read_plainly() -> None:
    assert "nothing was classified" in specs.rate_reading(specs.rate_frame([]), "day")
    assert specs.confusion_reading(specs.confusion_frame([]), "color") == (
        "Color: no image was fixed to another value in this period."
    )
    assert specs.advertiser_reading(specs.advertiser_frame([])) == (
        "No advertiser had classified images in this period."
    )
    empty = VersionStats("color")
    assert "No image was classified" in specs.version_reading(
        specs.version_rate_frame(empty), "color"
    )
    daily, scrapes = specs.failure_frames(FailureStats())
    assert specs.failures_reading(daily, scrapes) == "No scrape started in this period."
    assert specs.fixed_reading(specs.fixed_frame([])) == "No image was fixed in this period."
    assert isinstance(specs.fixed_frame([]), pd.DataFrame)
