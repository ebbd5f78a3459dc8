"""The demo inventory generator and the demo CDN, over real HTTP on a loopback port."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import numpy as np
import pytest
import requests
from lxml import etree
from PIL import Image

from db.vocab import COLORS, IMAGE_TYPES
from tagging.demo import HTML_TITLE, DemoInventory, generate_demo
from tagging.demo.cdn import NS_IMAGE, NS_SITEMAP, NS_TAGDESK, DemoCdnServer, make_server
from tagging.demo.generate import _plan
from tagging.errors import ConfigError, NotFoundError

NS = {"sm": NS_SITEMAP, "image": NS_IMAGE, "tagdesk": NS_TAGDESK}
SCALE = 0.1


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, seed=7, scale=SCALE, workers=1)
    return out


@pytest.fixture(scope="module")
def inventory(demo_dir: Path) -> DemoInventory:
    return DemoInventory.load(demo_dir)


@pytest.fixture(scope="module")
def cdn(demo_dir: Path) -> Iterator[DemoCdnServer]:
    server = make_server(demo_dir, port=0)
    server.serve_in_thread()
    yield server
    server.shutdown()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- generation -----------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_demo(demo_dir: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    # A worker pool finishes in any order; the files must not care.
    generate_demo(
        tmp_path, seed=7, scale=SCALE, workers=2, progress=lambda d, t: calls.append((d, t))
    )
    assert _files(tmp_path) == _files(demo_dir)
    total = calls[-1][1]
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_other_seed_gives_other_demo(demo_dir: Path, tmp_path: Path) -> None:
    generate_demo(tmp_path, seed=8, scale=SCALE)
    assert json.loads((tmp_path / "manifest.json").read_text()) != json.loads(
        (demo_dir / "manifest.json").read_text()
    )


def test_regenerating_replaces_the_previous_demo(tmp_path: Path) -> None:
    generate_demo(tmp_path, seed=1, scale=SCALE)
    stale = tmp_path / "cdn" / "sunrise" / "stale.jpg"
    stale.write_bytes(b"old")
    inv = generate_demo(tmp_path, seed=2, scale=SCALE)
    assert not stale.exists()
    assert all(inv.file_path(p).exists() for p in inv.images)


def test_refuses_to_wipe_a_cdn_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "cdn").mkdir()
    (tmp_path / "cdn" / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError):
        generate_demo(tmp_path, scale=SCALE)
    assert (tmp_path / "cdn" / "precious.txt").exists()


def test_load_without_manifest_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        DemoInventory.load(tmp_path)


def test_full_plan_has_enough_images_and_the_type_mix() -> None:
    plan = _plan(7, 1.0)
    assert len(plan.jobs) >= 1500
    kinds = Counter(job.image_type for job in plan.jobs.values() if job.kind != "broken")
    n = sum(kinds.values())
    assert 0.48 <= kinds["Dealer"] / n <= 0.65
    assert 0.22 <= kinds["Stock"] / n <= 0.38
    assert 0.10 <= kinds["Placeholder"] / n <= 0.20
    colors = Counter(job.color for job in plan.jobs.values() if job.color)
    assert set(colors) == set(COLORS)
    assert min(colors.values()) >= 30


@pytest.mark.slow
def test_full_demo_is_generated_in_time(tmp_path: Path) -> None:
    start = time.perf_counter()
    inv = generate_demo(tmp_path, seed=7)
    assert time.perf_counter() - start < 60
    assert len(inv.images) >= 1500
    assert len(list((tmp_path / "cdn").rglob("*.*"))) == len(inv.images)


# --- the manifest covers every case -------------------------------------------------------------


def test_advertisers_vehicles_and_files(inventory: DemoInventory) -> None:
    assert len(inventory.advertisers) >= 6
    assert len({a.slug for a in inventory.advertisers}) == len(inventory.advertisers)
    listed: set[str] = set()
    for adv in inventory.advertisers:
        assert adv.sitemap_path == f"/sitemaps/{adv.slug}.xml"
        assert adv.vehicles
        for veh in adv.vehicles:
            assert 1 <= len(veh.images) <= 6
            assert veh.page_path.startswith(f"/{adv.slug}/vehicles/")
            for p in veh.images:
                assert p.startswith(f"/cdn/{adv.host_folder}/")
                assert adv.slug in inventory.images[p].advertisers
            listed.update(veh.images)
    assert listed == set(inventory.images)
    for path, img in inventory.images.items():
        data = inventory.file_path(path).read_bytes()
        assert len(data) == img.size_bytes
        assert hashlib.sha256(data).hexdigest() == img.sha256


def test_ground_truth_is_consistent(inventory: DemoInventory) -> None:
    for path, img in inventory.images.items():
        assert inventory.ground_truth(path) == (img.image_type, img.color)
        if img.kind == "broken":
            assert (img.image_type, img.color) == (None, None)
            continue
        assert img.image_type in IMAGE_TYPES
        if img.image_type == "Placeholder":
            assert img.color is None
        else:
            assert img.color in COLORS
    some = next(iter(inventory.images))
    assert inventory.ground_truth(
        "http://cdn.example.test" + some + "?v=1"
    ) == inventory.ground_truth(some)
    with pytest.raises(NotFoundError):
        inventory.ground_truth("/cdn/nowhere/1.jpg")


def test_decodable_files_match_their_recorded_size(inventory: DemoInventory) -> None:
    for path, img in inventory.images.items():
        if img.kind == "broken":
            continue
        with Image.open(inventory.file_path(path)) as pic:
            pic.load()
            assert pic.size == (img.width, img.height)


def test_shared_cdn_advertisers_share_image_urls(inventory: DemoInventory) -> None:
    lakeside = inventory.advertiser("lakeside-auto")
    metro = inventory.advertiser("metro-car-center")
    assert lakeside.host_folder == metro.host_folder == "shared-cdn"
    shared = set(lakeside.image_paths()) & set(metro.image_paths())
    assert shared
    for p in shared:
        assert set(inventory.images[p].advertisers) == {"lakeside-auto", "metro-car-center"}
    assert set(lakeside.image_paths()) != set(metro.image_paths())


def test_feed_colors(inventory: DemoInventory) -> None:
    valley = inventory.advertiser("valley-trucks")
    assert valley.color_from_feed
    for veh in valley.vehicles:
        assert veh.feed_color in COLORS
        for p in veh.images:
            truth = inventory.images[p].color
            assert truth in (veh.feed_color, None)
    others = [a for a in inventory.advertisers if a.slug != "valley-trucks"]
    assert all(not a.color_from_feed for a in others)
    assert all(v.feed_color is None for a in others for v in a.vehicles)


def test_harbor_has_tiny_broken_and_odd_files(inventory: DemoInventory) -> None:
    harbor = {p: inventory.images[p] for p in inventory.advertiser("harbor-autos").image_paths()}
    types = Counter(i.image_type for i in harbor.values() if i.kind != "broken")
    assert types["Stock"] > types["Dealer"], "Harbor is stock-photo heavy"
    tiny = [i for i in harbor.values() if i.kind == "too_small"]
    assert tiny and all(i.width is not None and i.width <= 100 for i in tiny)
    assert any((i.width, i.height) == (60, 45) for i in tiny)

    by_detail = {i.detail: i for i in harbor.values() if i.detail}
    assert {"truncated_jpeg", "empty", "html_page", "svg", "palette_png", "cmyk_jpeg"} <= set(
        by_detail
    )
    truncated = inventory.file_path(by_detail["truncated_jpeg"].path).read_bytes()
    assert truncated[:2] == b"\xff\xd8"
    with pytest.raises(OSError), Image.open(io.BytesIO(truncated)) as pic:
        pic.load()
    assert by_detail["empty"].size_bytes == 0
    html = [i for i in harbor.values() if i.detail == "html_page"]
    assert {i.content_type for i in html} >= {"image/jpeg"}, "the lying CDN labels HTML a JPEG"
    assert inventory.file_path(html[0].path).read_bytes().lstrip().startswith(b"<!DOCTYPE html>")
    assert by_detail["svg"].content_type == "image/svg+xml"
    with Image.open(inventory.file_path(by_detail["palette_png"].path)) as pic:
        assert pic.mode == "P"
    with Image.open(inventory.file_path(by_detail["cmyk_jpeg"].path)) as pic:
        assert pic.mode == "CMYK"
    for detail in ("palette_png", "cmyk_jpeg"):
        assert by_detail[detail].kind == "ok"
        assert by_detail[detail].image_type is not None


def test_summit_near_duplicates_of_another_dealer(inventory: DemoInventory) -> None:
    dups = [i for i in inventory.images.values() if i.kind == "near_duplicate"]
    assert dups
    for dup in dups:
        assert "summit-auto-group" in dup.advertisers
        assert dup.duplicate_of is not None
        orig = inventory.images[dup.duplicate_of]
        assert "summit-auto-group" not in orig.advertisers
        assert dup.path != orig.path and dup.sha256 != orig.sha256
        assert (dup.image_type, dup.color) == (orig.image_type, orig.color)
        with (
            Image.open(inventory.file_path(dup.path)) as a,
            Image.open(inventory.file_path(orig.path)) as b,
        ):
            small_a = np.asarray(a.convert("L").resize((32, 24)), dtype=float)
            small_b = np.asarray(b.convert("L").resize((32, 24)), dtype=float)
        # Same picture, slightly cropped and re-encoded: close, but not identical.
        assert np.abs(small_a - small_b).mean() < 25


def test_titles_include_one_with_markup(inventory: DemoInventory) -> None:
    titles = [v.title for a in inventory.advertisers for v in a.vehicles]
    assert titles.count(HTML_TITLE) == 1
    assert "<script>alert(1)</script>" in HTML_TITLE
    assert all(t.strip() and t[:4].isdigit() for t in titles if t != HTML_TITLE)


# --- the CDN over HTTP --------------------------------------------------------------------------


def _first(inventory: DemoInventory, **match: object) -> str:
    for path, img in sorted(inventory.images.items()):
        if all(getattr(img, k) == v for k, v in match.items()):
            return path
    raise AssertionError(f"no image with {match}")


def test_image_response_headers(
    cdn: DemoCdnServer, inventory: DemoInventory, session: requests.Session
) -> None:
    path = _first(inventory, kind="ok", content_type="image/jpeg", detail=None)
    img = inventory.images[path]
    r = session.get(cdn.url + path)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "image/jpeg"
    assert int(r.headers["Content-Length"]) == img.size_bytes == len(r.content)
    assert hashlib.sha256(r.content).hexdigest() == img.sha256
    etag = r.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10
    modified = parsedate_to_datetime(r.headers["Last-Modified"])
    assert modified == datetime.fromisoformat(img.published_at)


def test_conditional_requests(
    cdn: DemoCdnServer, inventory: DemoInventory, session: requests.Session
) -> None:
    path = _first(inventory, kind="ok", detail=None)
    first = session.get(cdn.url + path)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    for headers in ({"If-None-Match": etag}, {"If-None-Match": f'"nope", W/{etag}'}):
        r = session.get(cdn.url + path, headers=headers)
        assert r.status_code == 304
        assert r.content == b""
        assert r.headers["ETag"] == etag
    assert session.get(cdn.url + path, headers={"If-None-Match": '"other"'}).status_code == 200
    assert session.get(cdn.url + path, headers={"If-Modified-Since": modified}).status_code == 304
    older = "Mon, 01 Jan 2024 00:00:00 GMT"
    assert session.get(cdn.url + path, headers={"If-Modified-Since": older}).status_code == 200


def test_images_say_how_long_they_stay_fresh(
    cdn: DemoCdnServer, inventory: DemoInventory, session: requests.Session
) -> None:
    path = _first(inventory, kind="ok", detail=None)
    assert session.get(cdn.url + path).headers["Cache-Control"] == "public, max-age=3600"
    etag = session.get(cdn.url + path).headers["ETag"]
    not_modified = session.get(cdn.url + path, headers={"If-None-Match": etag})
    assert not_modified.headers["Cache-Control"] == "public, max-age=3600"  # a 304 renews it


def test_sitemaps_have_validators_and_answer_conditional_requests(
    cdn: DemoCdnServer, session: requests.Session
) -> None:
    for path in (
        "/sitemaps/harbor-autos.xml",
        "/sitemaps/harbor-autos.xml.gz",
        "/sitemap_index.xml",
    ):
        first = session.get(cdn.url + path)
        etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
        assert first.headers["Cache-Control"] == "no-cache"  # ask every time: lists change
        assert etag == f'"{hashlib.sha256(first.content).hexdigest()[:24]}"'
        again = session.get(cdn.url + path, headers={"If-None-Match": etag})
        assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag)
        since = session.get(cdn.url + path, headers={"If-Modified-Since": modified})
        assert since.status_code == 304
        other = session.get(cdn.url + path, headers={"If-None-Match": '"old"'})
        assert other.status_code == 200 and other.content == first.content


def test_a_republication_changes_the_sitemaps_validators(demo_dir: Path) -> None:
    with make_server(demo_dir, port=0) as server, requests.Session() as session:
        server.serve_in_thread()
        url = server.url + "/sitemaps/sunrise-motors.xml"
        before = session.get(url).headers
        server.state.republish(0.5, seed=3)
        after = session.get(url, headers={"If-None-Match": before["ETag"]})
        assert after.status_code == 200
        assert after.headers["ETag"] != before["ETag"]
        assert parsedate_to_datetime(after.headers["Last-Modified"]) > parsedate_to_datetime(
            before["Last-Modified"]
        )


def test_latency_and_the_request_counts(demo_dir: Path, inventory: DemoInventory) -> None:
    path = _first(inventory, kind="ok", detail=None)
    with make_server(demo_dir, port=0, latency_ms=120) as server, requests.Session() as session:
        server.serve_in_thread()
        server.image_max_age = 60
        started = time.perf_counter()
        first = session.get(server.url + path)
        assert time.perf_counter() - started >= 0.12
        assert first.headers["Cache-Control"] == "public, max-age=60"
        session.get(server.url + path, headers={"If-None-Match": first.headers["ETag"]})
        session.head(server.url + path)
        session.get(server.url + "/sitemaps/harbor-autos.xml")
        session.get(server.url + "/nothing")
        assert server.requests == Counter(
            {
                ("GET", "image", 200): 1,
                ("GET", "image", 304): 1,
                ("HEAD", "image", 200): 1,
                ("GET", "sitemap", 200): 1,
                ("GET", "other", 404): 1,
            }
        )
        assert server.requests_for("image") == 3


def test_head_gives_headers_without_body(cdn: DemoCdnServer, inventory: DemoInventory) -> None:
    path = _first(inventory, kind="ok", detail=None)
    host, port = cdn.server_address[0], cdn.server_address[1]
    conn = http.client.HTTPConnection(str(host), port, timeout=5)
    conn.request("HEAD", path)
    head = conn.getresponse()
    assert head.read() == b""
    assert head.status == 200
    sock = conn.sock
    # The same keep-alive connection answers the next request.
    conn.request("GET", path)
    get = conn.getresponse()
    body = get.read()
    assert conn.sock is sock
    assert head.getheader("Content-Length") == get.getheader("Content-Length") == str(len(body))
    assert head.getheader("ETag") == get.getheader("ETag")
    conn.close()


def test_served_content_types_follow_the_manifest(
    cdn: DemoCdnServer, inventory: DemoInventory, session: requests.Session
) -> None:
    for path, img in inventory.images.items():
        if img.detail in ("html_page", "svg", "empty", "webp", "palette_png"):
            r = session.get(cdn.url + path)
            assert r.status_code == 200
            assert r.headers["Content-Type"] == img.content_type
            assert len(r.content) == img.size_bytes


def test_unknown_paths_are_404(cdn: DemoCdnServer, session: requests.Session) -> None:
    for path in ("/cdn/sunrise/nope.jpg", "/sitemaps/nobody.xml", "/etc/passwd", "/"):
        assert session.get(cdn.url + path).status_code == 404


def _sitemap(session: requests.Session, url: str) -> etree._Element:
    r = session.get(url)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/xml"
    return etree.fromstring(r.content)


def test_sitemaps_list_the_images_under_the_cdn_url(
    cdn: DemoCdnServer, inventory: DemoInventory, session: requests.Session
) -> None:
    for adv in inventory.advertisers:
        root = _sitemap(session, cdn.url + adv.sitemap_path)
        assert root.tag == f"{{{NS_SITEMAP}}}urlset"
        urls = root.findall("sm:url", NS)
        assert len(urls) == len(adv.vehicles)
        for node, veh in zip(urls, adv.vehicles, strict=True):
            assert node.findtext("sm:loc", namespaces=NS) == cdn.url + veh.page_path
            locs = node.findall("image:image/image:loc", NS)
            assert [e.text for e in locs] == [cdn.url + p for p in veh.images]
            titles = {e.text for e in node.findall("image:image/image:title", NS)}
            assert titles == {veh.title}


def test_sitemap_escapes_the_markup_title(cdn: DemoCdnServer, session: requests.Session) -> None:
    raw = session.get(cdn.url + "/sitemaps/sunrise-motors.xml").content
    assert b"<script>" not in raw
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    titles = etree.fromstring(raw).xpath("//image:title/text()", namespaces=NS)
    assert HTML_TITLE in titles


def test_shared_cdn_sitemaps_share_urls(cdn: DemoCdnServer, session: requests.Session) -> None:
    def locs(slug: str) -> set[str]:
        root = _sitemap(session, f"{cdn.url}/sitemaps/{slug}.xml")
        return set(root.xpath("//image:loc/text()", namespaces=NS))

    lakeside, metro = locs("lakeside-auto"), locs("metro-car-center")
    assert lakeside & metro
    assert all(u.startswith(cdn.url + "/cdn/shared-cdn/") for u in lakeside | metro)


def test_feed_colors_in_sitemap(
    cdn: DemoCdnServer, inventory: DemoInventory, session: requests.Session
) -> None:
    valley = inventory.advertiser("valley-trucks")
    root = _sitemap(session, cdn.url + valley.sitemap_path)
    assert root.nsmap.get("tagdesk") == NS_TAGDESK
    colors = [u.findtext("tagdesk:color", namespaces=NS) for u in root.findall("sm:url", NS)]
    assert colors == [v.feed_color for v in valley.vehicles]
    other = _sitemap(session, cdn.url + "/sitemaps/sunrise-motors.xml")
    assert "tagdesk" not in other.nsmap
    assert not other.findall(".//tagdesk:color", NS)


def test_gzip_sitemap_and_index(
    cdn: DemoCdnServer, inventory: DemoInventory, session: requests.Session
) -> None:
    plain = session.get(cdn.url + "/sitemaps/harbor-autos.xml").content
    r = session.get(cdn.url + "/sitemaps/harbor-autos.xml.gz")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/gzip"
    # requests must not have decoded it: the body is the gzip file itself.
    assert r.content[:2] == b"\x1f\x8b"
    assert gzip.decompress(r.content) == plain
    index = _sitemap(session, cdn.url + "/sitemap_index.xml")
    assert index.tag == f"{{{NS_SITEMAP}}}sitemapindex"
    locs = index.xpath("//sm:sitemap/sm:loc/text()", namespaces=NS)
    assert locs == [cdn.url + a.sitemap_path for a in inventory.advertisers]


def test_public_url_is_used_in_sitemaps(demo_dir: Path, session: requests.Session) -> None:
    server = make_server(demo_dir, port=0, public_url="https://cdn.example.test/")
    server.serve_in_thread()
    try:
        root = _sitemap(session, server.url + "/sitemaps/summit-auto-group.xml")
        locs = root.xpath("//image:loc/text()", namespaces=NS)
        assert locs and all(u.startswith("https://cdn.example.test/cdn/summit/") for u in locs)
    finally:
        server.shutdown()


# --- republishing -----------------------------------------------------------------------------


def test_republish_moves_urls_and_changes_headers(
    demo_dir: Path, inventory: DemoInventory, session: requests.Session
) -> None:
    server = make_server(demo_dir, port=0)
    server.serve_in_thread()
    try:
        before = {
            p: session.get(server.url + p).headers
            for p in sorted(inventory.images)
            if inventory.images[p].kind == "ok"
        }
        r = session.post(
            server.url + "/_admin/republish?share=0.25&seed=3",
            headers={"Authorization": f"Bearer {server.admin_token}"},
        )
        assert r.status_code == 200
        result = r.json()
        assert result["moved"] == round(0.25 * len(inventory.images)) == len(result["paths"])
        moved = {o: n for o, n in result["paths"].items() if o in before}
        assert moved
        listed = set()
        for adv in inventory.advertisers:
            root = _sitemap(session, server.url + adv.sitemap_path)
            listed |= set(root.xpath("//image:loc/text()", namespaces=NS))
        for old, new in moved.items():
            assert old != new
            assert session.get(server.url + old).status_code == 404
            got = session.get(server.url + new)
            assert got.status_code == 200
            assert got.content == inventory.file_path(old).read_bytes()
            assert got.headers["ETag"] != before[old]["ETag"]
            new_time = parsedate_to_datetime(got.headers["Last-Modified"])
            assert new_time > parsedate_to_datetime(before[old]["Last-Modified"])
            # An ETag from the old URL does not validate the new one.
            stale = session.get(server.url + new, headers={"If-None-Match": before[old]["ETag"]})
            assert stale.status_code == 200
            assert server.url + new in listed and server.url + old not in listed
            assert server.state.ground_truth_for_url(server.url + new) == inventory.ground_truth(
                old
            )
            assert server.state.ground_truth_for_url(old) == inventory.ground_truth(old)
        unmoved = next(p for p in before if p not in result["paths"])
        assert session.get(server.url + unmoved).headers["ETag"] == before[unmoved]["ETag"]
        admin = {"Authorization": f"Bearer {server.admin_token}"}
        assert (
            session.post(server.url + "/_admin/republish?share=2", headers=admin).status_code == 400
        )
        with pytest.raises(NotFoundError):
            server.state.ground_truth_for_url("/cdn/sunrise/never.jpg")
    finally:
        server.shutdown()


def test_republish_is_reproducible(demo_dir: Path) -> None:
    a = make_server(demo_dir, port=0)
    b = make_server(demo_dir, port=0)
    try:
        assert a.state.republish(0.1, seed=5) == b.state.republish(0.1, seed=5)
        assert a.state.republish(0.1, seed=6) != b.state.republish(0.1, seed=7)
    finally:
        a.shutdown()
        b.shutdown()


# --- the admin endpoint's token -------------------------------------------------------------------


def _republish(url: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(f"{url}/_admin/republish?share=0.1&seed=3", headers=headers, timeout=10)


def test_republishing_needs_the_admin_token(demo_dir: Path) -> None:
    with make_server(demo_dir, port=0, admin_token="the-admin-token") as server:
        server.serve_in_thread()
        for token in (None, "", "wrong", "the-admin-token-but-longer"):
            refused = _republish(server.url, token)
            assert refused.status_code == 401, token
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert server.state.generation == 1  # nothing moved
        plain = requests.post(
            f"{server.url}/_admin/republish", headers={"Authorization": "the-admin-token"}
        )
        assert plain.status_code == 401  # the scheme is required
        accepted = _republish(server.url, "the-admin-token")
        assert accepted.status_code == 200 and accepted.json()["moved"] > 0
        assert server.state.generation == 2


def test_an_embedded_cdn_gets_a_random_admin_token(demo_dir: Path) -> None:
    with make_server(demo_dir, port=0) as first, make_server(demo_dir, port=0) as second:
        assert len(first.admin_token) >= 32 and first.admin_token != second.admin_token


def test_the_cdn_command_takes_its_admin_token_from_the_data_dir(
    demo_dir: Path, tmp_path: Path
) -> None:
    """``python -m tagging cdn`` (a real process) and ``admin_token`` agree through the file."""
    import os
    import socket
    import stat
    import subprocess
    import sys

    from tagging.demo.cdn import ADMIN_TOKEN_FILE, admin_token

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "demo").symlink_to(demo_dir, target_is_directory=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "TAGGING_DATA_DIR": str(data_dir)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tagging", "cdn", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
            try:
                requests.get(f"{url}/robots.txt", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the CDN did not start"
                time.sleep(0.2)
        token_file = data_dir / ADMIN_TOKEN_FILE
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert _republish(url, None).status_code == 401
        token = admin_token(data_dir)
        assert token == token_file.read_text().strip()
        assert _republish(url, token).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
