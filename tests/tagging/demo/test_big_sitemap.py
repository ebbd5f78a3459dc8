"""The demo CDN's synthetic big sitemap (``/sitemaps/big-<N>.xml``): more items than the demo has
images, every URL distinct, every one served with a demo image's bytes and headers."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests
from lxml import etree

from tagging.demo.cdn import BIG_SITEMAP_MAX, NS_IMAGE, NS_SITEMAP, DemoCdnServer
from tagging.demo.generate import DemoInventory
from tagging.ingest.images import image_key
from tagging.ingest.sitemap import parse_sitemap_bytes

NS = {"sm": NS_SITEMAP, "image": NS_IMAGE}


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def _locs(session: requests.Session, url: str) -> list[str]:
    r = session.get(url)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/xml"
    assert r.headers["Cache-Control"] == "no-cache" and r.headers["ETag"]
    return [
        str(loc) for loc in etree.fromstring(r.content).xpath("//image:loc/text()", namespaces=NS)
    ]


def test_lists_n_distinct_urls_of_decodable_demo_images_round_and_round(
    cdn: DemoCdnServer, demo_dir: object, session: requests.Session
) -> None:
    inventory = DemoInventory.load(demo_dir)  # type: ignore[arg-type]
    usable = sorted(p for p, img in inventory.images.items() if img.kind == "ok")
    count = len(usable) + 7  # past the end of the demo: the first images come again
    locs = _locs(session, f"{cdn.url}/sitemaps/big-{count}.xml")
    assert len(locs) == len(set(locs)) == count
    assert locs[0] == f"{cdn.url}{usable[0]}?copy=0"
    assert locs[len(usable)] == f"{cdn.url}{usable[0]}?copy={len(usable)}"
    assert all(urlsplit(u).path == usable[n % len(usable)] for n, u in enumerate(locs))
    root = etree.fromstring(session.get(f"{cdn.url}/sitemaps/big-{count}.xml").content)
    assert len(root.findall("sm:url", NS)) == -(-count // 5)


def test_each_copy_is_the_demo_image_under_its_own_image_key(
    cdn: DemoCdnServer, session: requests.Session
) -> None:
    locs = _locs(session, f"{cdn.url}/sitemaps/big-400.xml")
    path = urlsplit(locs[0]).path
    copies = [u for u in locs if urlsplit(u).path == path]
    assert len(copies) >= 2
    original = session.get(cdn.url + path)
    answers = [session.get(u) for u in copies]
    assert all(a.status_code == 200 and a.content == original.content for a in answers)
    assert {a.headers["ETag"] for a in answers} == {original.headers["ETag"]}
    # The ML server's cache key hashes the URL: each copy is classified as an image of its own.
    keys = {image_key(u, a.headers) for u, a in zip(copies, answers, strict=True)}
    assert len(keys) == len(copies)


def test_the_scrape_parser_reads_every_item(cdn: DemoCdnServer, session: requests.Session) -> None:
    url = f"{cdn.url}/sitemaps/big-12.xml"
    parsed = parse_sitemap_bytes(session.get(url).content, url)
    items = parsed.items
    assert not parsed.problems and [i.position for i in items] == list(range(12))
    assert [i.image_url for i in items] == _locs(session, url)
    assert len({i.page_url for i in items}) == 3


def test_a_republication_moves_its_urls_too(cdn: DemoCdnServer, session: requests.Session) -> None:
    before = _locs(session, f"{cdn.url}/sitemaps/big-20.xml")
    cdn.state.republish(1.0, seed=1)
    after = _locs(session, f"{cdn.url}/sitemaps/big-20.xml")
    assert all("/v2/" in u for u in after) and not any("/v2/" in u for u in before)
    assert all(session.get(u).status_code == 200 for u in after[:3])


def test_out_of_range_sizes_are_404(cdn: DemoCdnServer, session: requests.Session) -> None:
    for name in ("big-0", f"big-{BIG_SITEMAP_MAX + 1}", "big-", "big-x", "big-07"):
        assert session.get(f"{cdn.url}/sitemaps/{name}.xml").status_code == 404, name
