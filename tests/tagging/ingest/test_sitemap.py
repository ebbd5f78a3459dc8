"""Sitemap parsing against hostile documents, and reading through real loopback HTTP."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import sys
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tagging.errors import BlockedURLError, ResponseTooLargeError, SitemapError
from tagging.ingest import sitemap as sitemap_module
from tagging.ingest.fetch import FetchPolicy, GuardedClient, HTTPStatusError
from tagging.ingest.sitemap import (
    SitemapDocument,
    SitemapItem,
    SitemapLimits,
    parse_sitemap_bytes,
    read_sitemap,
    unchanged_documents,
)

SM = "http://www.sitemaps.org/schemas/sitemap/0.9"
IMG = "http://www.google.com/schemas/sitemap-image/1.1"
HEAD = (
    f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset xmlns="{SM}" xmlns:image="{IMG}" '
    'xmlns:tagdesk="urn:tagdesk:vehicle:1">\n'
)


def image(loc: str, title: str | None = None) -> str:
    titled = f"<image:title>{title}</image:title>" if title is not None else ""
    return f"<image:image><image:loc>{loc}</image:loc>{titled}</image:image>"


def url(loc: str, *images: str, color: str | None = None) -> str:
    colored = f"<tagdesk:color>{color}</tagdesk:color>" if color is not None else ""
    return f"<url><loc>{loc}</loc>{colored}{''.join(images)}</url>\n"


def urlset(*urls: str) -> bytes:
    return (HEAD + "".join(urls) + "</urlset>\n").encode()


def index(*locs: str) -> bytes:
    entries = "".join(f"<sitemap><loc>{loc}</loc></sitemap>" for loc in locs)
    return f'<?xml version="1.0"?><sitemapindex xmlns="{SM}">{entries}</sitemapindex>'.encode()


def cars(first: int, count: int, host: str = "https://cdn.example") -> bytes:
    return urlset(
        *(
            url(f"https://dealer.example/v/{i}", image(f"{host}/{i}.jpg"))
            for i in range(first, first + count)
        )
    )


# --- parsing one document ------------------------------------------------------------------------


def test_images_titles_colors_and_order() -> None:
    data = urlset(
        url(
            "  https://dealer.example/v/1 \n",
            image(" https://cdn.example/1a.jpg ", " Front view "),
            image("https://cdn.example/1b.jpg"),
            color=" Red ",
        ),
        url("https://dealer.example/v/2"),  # No image: skipped.
        url("https://dealer.example/v/3", image("https://cdn.example/1a.jpg", "")),
    )
    parsed = parse_sitemap_bytes(data, "https://dealer.example/sitemap.xml")
    assert parsed.kind == "urlset"
    assert parsed.problems == []
    assert parsed.items == [
        SitemapItem(
            "https://dealer.example/v/1", "https://cdn.example/1a.jpg", 0, "Front view", "Red"
        ),
        SitemapItem("https://dealer.example/v/1", "https://cdn.example/1b.jpg", 1, None, "Red"),
        # The same image again is kept: nothing is de-duplicated.
        SitemapItem("https://dealer.example/v/3", "https://cdn.example/1a.jpg", 2, None, None),
    ]


def test_unicode_titles_and_urls_survive() -> None:
    data = urlset(
        url(
            "https://dealer.example/véhicule/1",
            image("https://cdn.example/voitures/citroën-ë.jpg", "Citroën ë-C4 — 🚗 &amp; 東京"),
            color="Gris Платина",
        )
    )
    (item,) = parse_sitemap_bytes(data, "u").items
    assert item.page_url == "https://dealer.example/véhicule/1"
    assert item.image_url == "https://cdn.example/voitures/citroën-ë.jpg"
    assert item.title == "Citroën ë-C4 — 🚗 & 東京"
    assert item.feed_color == "Gris Платина"


def test_color_only_from_the_tagdesk_namespace_and_sitemaps_without_namespace() -> None:
    data = (
        b'<urlset xmlns:other="urn:other" xmlns:i="' + IMG.encode() + b'">'
        b"<url><loc>https://d.example/1</loc><other:color>Blue</other:color>"
        b"<i:image><i:loc>https://cdn.example/1.jpg</i:loc></i:image></url></urlset>"
    )
    (item,) = parse_sitemap_bytes(data, "u").items
    assert item.feed_color is None
    assert item.image_url == "https://cdn.example/1.jpg"


def test_bad_image_urls_are_skipped_and_reported_once() -> None:
    data = urlset(
        url(
            "https://d.example/1",
            image("/relative/1.jpg"),
            image("javascript:alert(1)"),
            image("ftp://cdn.example/2.jpg"),
            image("https://cdn.example/ok.jpg"),
            image("https://cdn.example/has space.jpg"),
            image("http://"),
            image(""),
        )
    )
    parsed = parse_sitemap_bytes(data, "https://d.example/sitemap.xml")
    assert [i.image_url for i in parsed.items] == ["https://cdn.example/ok.jpg"]
    assert parsed.items[0].position == 0
    (problem,) = parsed.problems
    assert problem.code == "bad_image_urls"
    assert problem.url == "https://d.example/sitemap.xml"
    assert "skipped 6 image URLs" in problem.message
    assert "'/relative/1.jpg'" in problem.message


def test_billion_laughs_is_refused_without_expansion() -> None:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    ]
    lol = "".join(entities)
    data = f'<?xml version="1.0"?><!DOCTYPE urlset [{lol}]><urlset xmlns="{SM}">&lol9;</urlset>'
    start = time.monotonic()
    with pytest.raises(SitemapError, match="DTDs and entities are not allowed"):
        parse_sitemap_bytes(data.encode(), "u")
    assert time.monotonic() - start < 1


def test_external_entity_is_refused_and_never_read() -> None:
    data = (
        b'<?xml version="1.0"?><!DOCTYPE urlset [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<urlset xmlns="' + SM.encode() + b'"><url><loc>&xxe;</loc>'
        b'<image:image xmlns:image="' + IMG.encode() + b'"><image:loc>https://c.example/&xxe;.jpg'
        b"</image:loc></image:image></url></urlset>"
    )
    with pytest.raises(SitemapError) as info:
        parse_sitemap_bytes(data, "u")
    assert "DTDs and entities are not allowed" in str(info.value)
    assert "root:" not in str(info.value)


def test_undeclared_entity_reference_is_malformed_not_expanded() -> None:
    data = urlset(url("https://d.example/&xxe;", image("https://cdn.example/1.jpg")))
    with pytest.raises(SitemapError, match="not well-formed XML at line 3"):
        parse_sitemap_bytes(data, "u")


def test_doctype_split_across_parse_slices_is_still_refused() -> None:
    # Put "<!DOC" at the very end of the first slice and "TYPE" at the start of the next.
    padding = b"<!--" + b"x" * (sitemap_module._SLICE - 4 - 3 - 5) + b"-->"
    data = padding + b'<!DOCTYPE urlset SYSTEM "http://127.0.0.1:9/evil.dtd"><urlset/>'
    assert data[sitemap_module._SLICE - 5 : sitemap_module._SLICE] == b"<!DOC"
    with pytest.raises(SitemapError, match="DTDs and entities are not allowed"):
        parse_sitemap_bytes(data, "u")


@pytest.mark.parametrize(
    "data",
    [
        HEAD.replace("UTF-8", "UTF-16").encode("utf-16") + b"</urlset>",
        '<?xml version="1.0" encoding="UTF-16"?><urlset/>'.encode("utf-16-le"),
        b'<?xml version="1.0" encoding="UTF-7"?><urlset/>',
        b'<?xml version="1.0" encoding="EBCDIC-US"?><urlset/>',
    ],
)
def test_encodings_that_could_hide_a_doctype_are_refused(data: bytes) -> None:
    with pytest.raises(SitemapError, match="must be UTF-8"):
        parse_sitemap_bytes(data, "u")


def test_latin1_sitemap_is_accepted() -> None:
    data = (
        b'<?xml version="1.0" encoding="ISO-8859-1"?><urlset xmlns:i="' + IMG.encode() + b'">'
        b"<url><loc>https://d.example/1</loc><i:image><i:loc>https://c.example/1.jpg</i:loc>"
        b"<i:title>Citro\xebn</i:title></i:image></url></urlset>"
    )
    assert parse_sitemap_bytes(data, "u").items[0].title == "Citroën"


def _zeros_like_member(uncompressed: int) -> bytes:
    """One gzip member of ``uncompressed`` bytes of XML-ish filler, built in 64 KiB chunks."""
    unit = b"<a/>" + b" " * (65536 - 4)  # Elements break the text so only the size cap trips.
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    block = unit * 16
    out = [compressor.compress(block) for _ in range(uncompressed // len(block))]
    out.append(compressor.flush())
    return b"".join(out)


def test_gzip_bomb_is_refused_at_the_uncompressed_limit() -> None:
    # 1 GiB of filler: 16 gzip members of 64 MiB (multi-member gzip is valid and common).
    member = _zeros_like_member(64 * 1024 * 1024)
    head = gzip.compress(HEAD.encode())
    bomb = head + member * 16
    assert len(bomb) < 2 * 1024 * 1024
    start = time.monotonic()
    with pytest.raises(SitemapError) as info:
        parse_sitemap_bytes(bomb, "https://d.example/sitemap.xml.gz")
    elapsed = time.monotonic() - start
    assert "inflates to more than 52,428,800 bytes" in str(info.value)
    assert "gzip bomb" in str(info.value)
    assert elapsed < 10, f"stopping at 50 MiB took {elapsed:.1f}s"


def test_single_member_gzip_bomb_and_truncated_gzip() -> None:
    bomb = gzip.compress(HEAD.encode()) + _zeros_like_member(16 * 1024 * 1024)
    with pytest.raises(SitemapError, match="inflates to more than"):
        parse_sitemap_bytes(bomb, "u", SitemapLimits(max_uncompressed_bytes=4 * 1024 * 1024))
    good = gzip.compress(cars(0, 100))
    assert len(parse_sitemap_bytes(good, "u").items) == 100
    with pytest.raises(SitemapError, match="truncated gzip"):
        parse_sitemap_bytes(good[: len(good) // 2], "u")
    with pytest.raises(SitemapError, match="not valid gzip"):
        parse_sitemap_bytes(b"\x1f\x8b" + b"garbage" * 10, "u")


def test_plain_document_over_the_limit_is_refused() -> None:
    with pytest.raises(SitemapError, match="over the sitemap protocol's"):
        parse_sitemap_bytes(cars(0, 100), "u", SitemapLimits(max_uncompressed_bytes=1000))


def test_truncated_xml_names_the_line() -> None:
    data = cars(0, 10)
    cut = data[: data.index(b"<url><loc>https://dealer.example/v/5") + 20]
    with pytest.raises(SitemapError) as info:
        parse_sitemap_bytes(cut, "https://d.example/sitemap.xml")
    message = str(info.value)
    assert message.startswith("https://d.example/sitemap.xml is not well-formed XML at line 8")
    assert "truncated" in message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"  \n ", "is empty"),
        (b"hello, world", "is not XML"),
        (b"<html><body><url>x</url></body></html>", "its root element is <html>"),
        (b'<rss version="2.0"><channel/></rss>', "its root element is <rss>"),
        (b"<!-- " + b"x" * (2 * 1024 * 1024) + b" -->", "no <urlset> or <sitemapindex> root"),
    ],
)
def test_not_a_sitemap(data: bytes, message: str) -> None:
    with pytest.raises(SitemapError, match=message):
        parse_sitemap_bytes(data, "u")


def test_more_than_50000_urls_keeps_the_first_50000_fast(
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = cars(0, 60_000)
    start = time.perf_counter()
    parsed = parse_sitemap_bytes(data, "https://d.example/big.xml")
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[sitemap] 60,000-URL sitemap ({len(data) / 1e6:.1f} MB) parsed in {elapsed:.2f}s")
    assert len(parsed.items) == 50_000
    assert parsed.items[-1].image_url == "https://cdn.example/49999.jpg"
    assert parsed.items[-1].position == 49_999
    (problem,) = parsed.problems
    assert problem.code == "too_many_urls"
    assert "only the first 50,000 were read" in problem.message
    assert elapsed < 15  # Loose: measured ~0.5 s; a regression to per-element Python is ~10x.


def test_hostile_entry_with_too_many_children_is_refused() -> None:
    monster = "<url><loc>https://d.example/1</loc>" + "<junk/>" * 30_000 + "</url>"
    with pytest.raises(SitemapError, match="more than 20,000 elements"):
        parse_sitemap_bytes((HEAD + monster * 40 + "</urlset>").encode(), "u")


def test_top_level_junk_is_dropped_as_it_streams() -> None:
    junk = "<junk>filler</junk>" * 200_000
    data = (
        HEAD + junk + url("https://d.example/1", image("https://c.example/1.jpg")) + "</urlset>"
    ).encode()
    parsed = parse_sitemap_bytes(data, "u")
    assert [i.image_url for i in parsed.items] == ["https://c.example/1.jpg"]


def test_item_budget_stops_the_parse() -> None:
    parsed = parse_sitemap_bytes(cars(0, 10), "u", first_position=100, max_items=3)
    assert [i.position for i in parsed.items] == [100, 101, 102]
    assert parsed.items_capped
    assert parsed.problems[0].code == "too_many_items"


def test_index_lists_child_sitemaps() -> None:
    parsed = parse_sitemap_bytes(
        index(" https://d.example/a.xml ", "/relative.xml", "https://d.example/b.xml.gz"), "u"
    )
    assert parsed.kind == "sitemapindex"
    assert parsed.sitemaps == ["https://d.example/a.xml", "https://d.example/b.xml.gz"]
    assert [p.code for p in parsed.problems] == ["bad_sitemap"]


# --- reading over HTTP ---------------------------------------------------------------------------

Page = tuple[int, str, bytes]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The client hanging up mid-exchange (caps, timeouts, pooled sockets) is expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.pages: dict[str, Page] = {}
        self.hits: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        status, content_type, body = self.server.pages.get(self.path, (404, "text/plain", b"nope"))
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def site() -> Iterator[_Server]:
    server = _Server()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(site: _Server) -> Iterator[GuardedClient]:
    with GuardedClient(FetchPolicy(allowed_hosts=(f"127.0.0.1:{site.server_address[1]}",))) as c:
        yield c


XML = "application/xml; charset=utf-8"


def test_read_a_plain_and_a_gzipped_sitemap(site: _Server, client: GuardedClient) -> None:
    site.pages["/sitemap.xml"] = (200, XML, cars(0, 3))
    site.pages["/sitemap.xml.gz"] = (200, "application/x-gzip", gzip.compress(cars(0, 3)))
    site.pages["/no-type.xml"] = (200, "", cars(0, 3))
    for path in ("/sitemap.xml", "/sitemap.xml.gz", "/no-type.xml"):
        result = read_sitemap(f"{site.base}{path}", client)
        assert [i.image_url for i in list(result.items)] == [
            f"https://cdn.example/{i}.jpg" for i in range(3)
        ]
        assert result.problems == []
        assert result.sitemaps_read == 1


def test_index_with_a_broken_sub_sitemap_keeps_the_others(
    site: _Server, client: GuardedClient
) -> None:
    site.pages["/index.xml"] = (
        200,
        XML,
        index(
            f"{site.base}/a.xml",
            f"{site.base}/missing.xml",
            f"{site.base}/broken.xml",
            f"{site.base}/page.html",
            f"{site.base}/b.xml.gz",
        ),
    )
    site.pages["/a.xml"] = (200, XML, cars(0, 2))
    site.pages["/broken.xml"] = (200, XML, cars(10, 5)[:-40])
    site.pages["/page.html"] = (200, "text/html; charset=utf-8", b"<html>Not found</html>")
    site.pages["/b.xml.gz"] = (200, "application/gzip", gzip.compress(cars(2, 2)))
    result = read_sitemap(f"{site.base}/index.xml", client)
    items = list(result.items)
    assert [i.image_url for i in items] == [f"https://cdn.example/{i}.jpg" for i in range(4)]
    assert [i.position for i in items] == [0, 1, 2, 3]  # Continuous across sub-sitemaps.
    assert result.sitemaps_read == 3  # The index, a.xml and b.xml.gz.
    problems = {p.url.rsplit("/", 1)[1]: p for p in result.problems}
    assert problems["missing.xml"].code == "fetch_failed"
    assert "404" in problems["missing.xml"].message
    assert problems["broken.xml"].code == "bad_sitemap"
    assert "not well-formed XML at line" in problems["broken.xml"].message
    assert problems["page.html"].code == "bad_sitemap"
    assert "text/html (a web page, not a sitemap)" in problems["page.html"].message
    assert len(result.problems) == 3


def test_index_pointing_at_blocked_addresses_records_problems(
    site: _Server, client: GuardedClient
) -> None:
    other = _Server()  # A loopback port that is not allow-listed.
    try:
        site.pages["/index.xml"] = (
            200,
            XML,
            index(
                "http://169.254.169.254/latest/meta-data/",
                f"{other.base}/sitemap.xml",
                "http://localhost/sitemap.xml",
                f"{site.base}/a.xml",
            ),
        )
        site.pages["/a.xml"] = (200, XML, cars(0, 1))
        result = read_sitemap(f"{site.base}/index.xml", client)
        items = list(result.items)
    finally:
        other.server_close()
    assert len(items) == 1
    assert [p.code for p in result.problems] == ["blocked_url"] * 3
    assert "169.254.169.254 is a link-local address" in result.problems[0].message
    assert "TAGGING_ALLOWED_HOSTS" in result.problems[1].message


def test_nested_indexes_stop_at_max_depth(site: _Server, client: GuardedClient) -> None:
    site.pages["/root.xml"] = (200, XML, index(f"{site.base}/level1.xml"))
    site.pages["/level1.xml"] = (200, XML, index(f"{site.base}/level2.xml", f"{site.base}/a.xml"))
    site.pages["/level2.xml"] = (200, XML, index(f"{site.base}/b.xml"))
    site.pages["/a.xml"] = (200, XML, cars(0, 1))
    site.pages["/b.xml"] = (200, XML, cars(1, 1))
    result = read_sitemap(f"{site.base}/root.xml", client)
    assert [i.image_url for i in list(result.items)] == ["https://cdn.example/0.jpg"]
    (problem,) = result.problems
    assert problem.code == "too_deep"
    assert problem.url == f"{site.base}/level2.xml"
    assert "/b.xml" not in site.hits
    deeper = read_sitemap(f"{site.base}/root.xml", client, SitemapLimits(max_depth=3))
    assert len(list(deeper.items)) == 2 and deeper.problems == []


def test_index_loops_are_read_once(site: _Server, client: GuardedClient) -> None:
    site.pages["/index.xml"] = (
        200,
        XML,
        index(f"{site.base}/index.xml", f"{site.base}/a.xml", f"{site.base}/a.xml"),
    )
    site.pages["/a.xml"] = (200, XML, cars(0, 1))
    result = read_sitemap(f"{site.base}/index.xml", client)
    assert len(list(result.items)) == 1
    (problem,) = result.problems
    assert problem.code == "duplicate_sitemap"
    assert "lists 2 sitemaps that were already read" in problem.message
    assert site.hits.count("/a.xml") == 1


def test_item_and_sitemap_limits_across_sub_sitemaps(site: _Server, client: GuardedClient) -> None:
    site.pages["/index.xml"] = (200, XML, index(*(f"{site.base}/{n}.xml" for n in range(5))))
    for n in range(5):
        site.pages[f"/{n}.xml"] = (200, XML, cars(n * 10, 10))
    capped = read_sitemap(f"{site.base}/index.xml", client, SitemapLimits(max_items=25))
    assert [i.position for i in list(capped.items)] == list(range(25))
    assert [p.code for p in capped.problems] == ["too_many_items"]
    assert "/3.xml" not in site.hits and "/4.xml" not in site.hits
    few = read_sitemap(f"{site.base}/index.xml", client, SitemapLimits(max_sitemaps=3))
    assert len(list(few.items)) == 20  # The root counts as one of the three.
    assert [p.code for p in few.problems] == ["too_many_sitemaps"]
    assert "3 more listed" in few.problems[0].message


def test_root_failures_raise(site: _Server, client: GuardedClient) -> None:
    site.pages["/page"] = (200, "text/html", b"<html><body>Welcome</body></html>")
    site.pages["/empty.xml"] = (200, XML, b"")
    site.pages["/rss.xml"] = (200, "application/rss+xml", b"<rss/>")
    with pytest.raises(SitemapError, match="text/html"):
        read_sitemap(f"{site.base}/page", client)
    with pytest.raises(SitemapError, match="is empty"):
        read_sitemap(f"{site.base}/empty.xml", client)
    with pytest.raises(SitemapError, match="application/rss"):
        read_sitemap(f"{site.base}/rss.xml", client)
    with pytest.raises(HTTPStatusError) as info:
        read_sitemap(f"{site.base}/nothing.xml", client)
    assert info.value.status == 404
    with GuardedClient() as strict, pytest.raises(BlockedURLError):
        read_sitemap(f"{site.base}/sitemap.xml", strict)
    assert "/sitemap.xml" not in site.hits


def test_external_dtd_is_never_fetched(site: _Server, client: GuardedClient) -> None:
    site.pages["/evil.dtd"] = (200, "application/xml-dtd", b'<!ENTITY x "boom">')
    site.pages["/sitemap.xml"] = (
        200,
        XML,
        (
            f'<?xml version="1.0"?><!DOCTYPE urlset SYSTEM "{site.base}/evil.dtd">'
            "<urlset>&x;</urlset>"
        ).encode(),
    )
    with pytest.raises(SitemapError, match="DTDs and entities are not allowed"):
        read_sitemap(f"{site.base}/sitemap.xml", client)
    assert site.hits == ["/sitemap.xml"]


def test_compressed_size_cap_is_passed_to_the_client(site: _Server, client: GuardedClient) -> None:
    site.pages["/big.xml"] = (200, XML, cars(0, 100))
    with pytest.raises(ResponseTooLargeError):
        read_sitemap(f"{site.base}/big.xml", client, SitemapLimits(max_compressed_bytes=1000))


# --- streaming, and telling an unchanged sitemap -------------------------------------------------


def test_read_sitemap_streams_its_items_from_a_generator(
    site: _Server, client: GuardedClient
) -> None:
    site.pages["/index.xml"] = (200, XML, index(f"{site.base}/a.xml", f"{site.base}/b.xml"))
    site.pages["/a.xml"] = (200, XML, cars(0, 3))
    site.pages["/b.xml"] = (200, XML, cars(3, 2))
    result = read_sitemap(f"{site.base}/index.xml", client)
    assert inspect.isgenerator(result.items)
    assert site.hits == ["/index.xml"]  # the sub-sitemaps are fetched as their items are taken
    first = next(result.items)
    assert first.position == 0 and site.hits == ["/index.xml", "/a.xml"]
    assert result.expected == 3  # a.xml counted; b.xml not reached yet
    rest = list(result.items)
    assert [i.position for i in rest] == [1, 2, 3, 4] and result.expected == 5
    assert [d.url.rsplit("/", 1)[1] for d in result.documents] == ["index.xml", "a.xml", "b.xml"]
    digest = hashlib.sha256(cars(0, 3)).hexdigest()
    assert result.documents[1] == SitemapDocument(f"{site.base}/a.xml", None, None, digest)


def test_a_huge_sitemap_never_holds_its_items_in_a_list(
    site: _Server, client: GuardedClient
) -> None:
    count = 50_000
    site.pages["/big.xml"] = (200, XML, cars(0, count))
    result = read_sitemap(f"{site.base}/big.xml", client)  # the document's bytes are held
    tracemalloc.start()
    try:
        taken = 0
        for item in result.items:
            taken += 1
            assert item.position == taken - 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert taken == count
    # A list of the 50,000 items takes ~16 MB; the stream holds one 1 MiB slice and its items.
    assert peak < 6 * 1024 * 1024, f"{peak / 1e6:.1f} MB traced while streaming"


def test_a_sub_sitemap_broken_at_its_end_or_a_bomb_is_dropped_whole(
    site: _Server, client: GuardedClient
) -> None:
    bomb = gzip.compress(cars(0, 1)[:-12] + b"<!-- " + b"x" * 3_000_000 + b" -->" + b"</urlset>")
    site.pages["/index.xml"] = (
        200,
        XML,
        index(f"{site.base}/cut.xml", f"{site.base}/bomb.xml.gz", f"{site.base}/ok.xml"),
    )
    site.pages["/cut.xml"] = (200, XML, cars(10, 5_000)[:-30])  # every <url> but the last end
    site.pages["/bomb.xml.gz"] = (200, "application/gzip", bomb)
    site.pages["/ok.xml"] = (200, XML, cars(0, 2))
    limits = SitemapLimits(max_uncompressed_bytes=2_000_000)
    result = read_sitemap(f"{site.base}/index.xml", client, limits)
    assert [i.image_url for i in result.items] == [f"https://cdn.example/{i}.jpg" for i in (0, 1)]
    assert [p.code for p in result.problems] == ["bad_sitemap", "bad_sitemap"]
    assert "not well-formed XML" in result.problems[0].message
    assert "gzip bomb" in result.problems[1].message
    assert [d.sha256 is None for d in result.documents] == [False, True, True, False]


def test_unchanged_documents_asks_with_validators_and_compares_digests(
    site: _Server, client: GuardedClient
) -> None:
    class Conditional(_Handler):
        def do_GET(self) -> None:
            if self.path == "/tagged.xml" and self.headers.get("If-None-Match") == '"t1"':
                self.server.hits.append("304 " + self.path)
                self.send_response(304)
                self.send_header("ETag", '"t1"')
                self.end_headers()
                return
            super().do_GET()

    site.RequestHandlerClass = Conditional
    site.pages["/tagged.xml"] = (200, XML, cars(0, 2))
    site.pages["/plain.xml"] = (200, XML, cars(2, 2))
    documents = [
        SitemapDocument(f"{site.base}/tagged.xml", '"t1"', None, "digest not needed"),
        SitemapDocument(
            f"{site.base}/plain.xml", None, None, hashlib.sha256(cars(2, 2)).hexdigest()
        ),
    ]
    assert unchanged_documents(documents, client) == documents
    assert site.hits == ["304 /tagged.xml", "/plain.xml"]
    site.pages["/plain.xml"] = (200, XML, cars(2, 3))  # one more item: another digest
    assert unchanged_documents(documents, client) is None
    assert unchanged_documents([replace(documents[0], sha256=None)], client) is None  # unread
    assert unchanged_documents([], client) is None
    missing = [SitemapDocument(f"{site.base}/gone.xml", None, None, "x")]
    assert unchanged_documents(missing, client) is None
