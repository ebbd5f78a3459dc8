"""The demo CDN: serves a generated demo directory over HTTP/1.1, like an advertiser's image host.

Routes (``GET`` and ``HEAD``):

* ``/cdn/<folder>/<file>``: image bytes from memory, with the Content-Type the manifest says the
  file is served as (a broken HTML page may be labelled ``image/jpeg``: the "lying CDN"), a quoted
  ``ETag`` (content digest + publication version), ``Last-Modified``, ``Content-Length`` and
  ``Cache-Control``. ``If-None-Match`` / ``If-Modified-Since`` answer ``304``.
* ``/sitemaps/<slug>.xml`` and ``/sitemaps/<slug>.xml.gz``: the advertiser's sitemap with the
  Google image extension; feed colors as ``<tagdesk:color>`` when the advertiser has
  ``color_from_feed``.
* ``/sitemaps/big-<N>.xml`` (``N`` from 1 to :data:`BIG_SITEMAP_MAX`): a synthetic sitemap of ``N``
  image items, 5 per vehicle page, for scrapes larger than the demo (benchmarks, queue tests). The
  demo's decodable images (kind ``ok``) are listed again and again, each time under another query
  string: ``/cdn/sunrise/1-1.jpg?copy=1707``. The CDN ignores the query string (the bytes and
  headers are the demo image's), but every URL is distinct, so every item is its own image_key
  (the key hashes the URL) that an ML server fetches, decodes and classifies. Not in the index.
* ``/sitemap_index.xml`` (all sitemaps) and ``/robots.txt``.

Images are sent with ``Cache-Control: public, max-age=3600`` (``image_max_age``), as image CDNs
do; sitemaps with ``Cache-Control: no-cache`` (they change whenever the inventory does), an
``ETag`` (a digest of the document) and a ``Last-Modified`` (the newest image publication in it).
Both answer ``If-None-Match`` / ``If-Modified-Since`` with ``304 Not Modified``.

``latency_ms`` delays every response, like a CDN far away (for benchmarks); ``requests`` counts
what was asked and answered, per (method, kind of path, status), for tests.

``POST /_admin/republish?share=0.1&seed=1`` (loopback clients with the admin token as
``Authorization: Bearer …``; 401 without it) moves a share of the images to new URLs with new
ETag and Last-Modified: the CDN "changed the URL and headers". Old URLs then answer 404 and the
sitemaps list the new ones; :meth:`CdnState.ground_truth_for_url` still knows
every URL ever published.

The admin token: ``python -m tagging cdn`` reads ``<data dir>/cdn_admin_token`` (made once,
private, by :func:`admin_token`), where :mod:`tagging.demo.stage` reads it too; a server embedded
without one (tests) gets a random token of its own, as ``server.admin_token``.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import os
import posixpath
import random
import re
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from lxml import etree
from PIL import Image

from tagging.demo.generate import DemoAdvertiser, DemoInventory
from tagging.errors import NotFoundError

log = logging.getLogger(__name__)

NS_SITEMAP = "http://www.sitemaps.org/schemas/sitemap/0.9"
NS_IMAGE = "http://www.google.com/schemas/sitemap-image/1.1"
NS_TAGDESK = "urn:tagdesk:vehicle:1"

DEFAULT_PORT = 8765
ADMIN_TOKEN_FILE = "cdn_admin_token"  # noqa: S105 - a file name, not a secret
"""The admin token's file in the data dir."""
IMAGE_MAX_AGE = 3600
"""Seconds an image response may be reused without asking again (``Cache-Control: max-age``)."""
REPUBLISH_STEP = timedelta(days=45)
"""How much later each republication's Last-Modified is than the previous publication's."""
BIG_SITEMAP_MAX = 1_000_000
"""The most items ``/sitemaps/big-<N>.xml`` lists (its document is kept in memory, ~150 bytes an
item, until the next republication)."""
BIG_IMAGES_PER_PAGE = 5
"""Images per vehicle page of the big sitemap (as many as a demo vehicle has, at most)."""
_BIG_SITEMAP = re.compile(r"/sitemaps/big-([1-9][0-9]{0,6})\.xml")


@dataclass(frozen=True)
class _Entry:
    """One published image: its current URL path and the exact response it gets."""

    path: str
    original: str  # the manifest path, the key of the ground truth
    body: bytes
    content_type: str
    etag: str
    modified: datetime
    version: int

    @property
    def last_modified(self) -> str:
        return format_datetime(self.modified, usegmt=True)


def _etag(sha256: str, version: int) -> str:
    return f'"{sha256[:24]}-v{version}"'


def _recompressed(body: bytes) -> bytes:
    """``body`` encoded again: other bytes (another sha256), the same picture to a perceptual
    hash. A format it cannot re-encode (or a broken file) is kept as it is."""
    try:
        with Image.open(io.BytesIO(body)) as image:
            out = io.BytesIO()
            if image.format == "JPEG":
                image.save(out, "JPEG", quality=90)
            elif image.format == "PNG":
                image.save(out, "PNG", compress_level=1)
            else:
                return body
            return out.getvalue()
    except (OSError, ValueError):
        return body


def _moved_path(original: str, version: int) -> str:
    """``/cdn/sunrise/1-1.jpg`` published at version 3 lives at ``/cdn/sunrise/v3/1-1.jpg``."""
    folder, name = posixpath.split(original)
    return f"{folder}/v{version}/{name}"


class CdnState:
    """What the demo CDN publishes: every image in memory, the URL map, and the sitemaps.

    Thread-safe: requests read an immutable snapshot; :meth:`republish` swaps in a new one.
    """

    def __init__(self, inventory: DemoInventory, public_url: str) -> None:
        """Load every image of ``inventory`` into memory.

        Args:
            inventory: The generated demo.
            public_url: The base URL that sitemaps put in front of paths.
        """
        self.inventory = inventory
        self._public_url = public_url.rstrip("/")
        self._lock = threading.Lock()
        self._generation = 1
        entries: dict[str, _Entry] = {}
        for path, img in inventory.images.items():
            entries[path] = _Entry(
                path=path,
                original=path,
                body=inventory.file_path(path).read_bytes(),
                content_type=img.content_type,
                etag=_etag(img.sha256, 1),
                modified=datetime.fromisoformat(img.published_at).astimezone(UTC),
                version=1,
            )
        self._by_path = entries  # current URL path -> entry
        self._current = {e.original: e.path for e in entries.values()}  # original -> current path
        self._aliases = {p: p for p in entries}  # every path ever published -> original
        self._documents: dict[str, bytes] = {}
        self._newest: tuple[dict[str, _Entry], datetime] | None = None

    # -- URLs ---------------------------------------------------------------------------------

    @property
    def public_url(self) -> str:
        """The base URL in sitemaps, without a trailing slash."""
        return self._public_url

    @public_url.setter
    def public_url(self, value: str) -> None:
        with self._lock:
            self._public_url = value.rstrip("/")
            self._documents = {}

    @property
    def generation(self) -> int:
        """The publication version: 1, plus one per :meth:`republish`."""
        return self._generation

    def lookup(self, path: str) -> _Entry | None:
        """The image currently published at URL path ``path``, if any."""
        return self._by_path.get(path)

    def current_path(self, original: str) -> str:
        """Where the image first published at ``original`` lives now.

        Raises:
            NotFoundError: ``original`` is not a demo image path.
        """
        try:
            return self._current[original]
        except KeyError:
            raise NotFoundError(f"{original!r} is not a demo image") from None

    def current_url(self, original: str) -> str:
        """The absolute URL of :meth:`current_path`."""
        return self._public_url + self.current_path(original)

    def original_path(self, url: str) -> str:
        """The manifest path of any URL (or path) this CDN has ever published.

        Raises:
            NotFoundError: The CDN never published that URL.
        """
        path = urlsplit(url).path or url
        try:
            return self._aliases[path]
        except KeyError:
            raise NotFoundError(f"{url!r} was never published by the demo CDN") from None

    def ground_truth_for_url(self, url: str) -> tuple[str | None, str | None]:
        """``(image_type, color)`` of the image at ``url``, current or from before a republish.

        Raises:
            NotFoundError: The CDN never published that URL.
        """
        return self.inventory.ground_truth(self.original_path(url))

    # -- republishing -------------------------------------------------------------------------

    def republish(self, share: float, seed: int, *, recompress: bool = False) -> dict[str, str]:
        """Move ``share`` of the images to new URLs with new ETag and Last-Modified.

        The bytes stay the same, unless ``recompress``: then each moved image is encoded again
        (other bytes, the same picture to the eye), as a CDN that optimises images does. The old
        URL answers 404 from now on and the sitemaps list the new URL.

        Args:
            share: Fraction of all images to move, 0 to 1.
            seed: Chooses which images move (same seed and state, same choice).
            recompress: Encode the moved images again.

        Returns:
            ``{old path: new path}`` of the images that moved.

        Raises:
            ValueError: ``share`` is outside 0..1.
        """
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be between 0 and 1, got {share}")
        with self._lock:
            current = sorted(self._by_path)
            count = round(share * len(current))
            chosen = random.Random(seed).sample(current, count)
            self._generation += 1
            version = self._generation
            by_path = dict(self._by_path)
            moved: dict[str, str] = {}
            for old in chosen:
                entry = by_path.pop(old)
                new = _moved_path(entry.original, version)
                digest = self.inventory.images[entry.original].sha256
                body = _recompressed(entry.body) if recompress else entry.body
                if body != entry.body:
                    digest = hashlib.sha256(body).hexdigest()
                by_path[new] = _Entry(
                    path=new,
                    original=entry.original,
                    body=body,
                    content_type=entry.content_type,
                    etag=_etag(digest, version),
                    modified=entry.modified + REPUBLISH_STEP,
                    version=version,
                )
                self._current[entry.original] = new
                self._aliases[new] = entry.original
                moved[old] = new
            # One assignment, so a concurrent request sees either the old or the new world.
            self._by_path = by_path
            self._documents = {}
        log.info("republished %d of %d images at version %d", count, len(current), version)
        return moved

    # -- documents ----------------------------------------------------------------------------

    def sitemap(self, slug: str) -> bytes:
        """The XML sitemap of advertiser ``slug`` with current image URLs.

        Raises:
            NotFoundError: No such advertiser.
        """
        return self._document(f"sitemap:{slug}", lambda: self._render_sitemap(slug))

    def sitemap_gz(self, slug: str) -> bytes:
        """:meth:`sitemap`, gzip-compressed (deterministically: no timestamp in the header)."""
        return self._document(
            f"sitemap.gz:{slug}", lambda: gzip.compress(self.sitemap(slug), 6, mtime=0)
        )

    def big_sitemap(self, count: int) -> bytes:
        """A synthetic sitemap of ``count`` distinct image URLs (``/sitemaps/big-<N>.xml``).

        Item ``n`` is the ``n % k``-th of the ``k`` decodable demo images (kind ``ok``, sorted by
        path) at its current URL plus ``?copy=n``: the same bytes as the demo image, another URL,
        hence another image_key.

        Raises:
            NotFoundError: ``count`` is not between 1 and :data:`BIG_SITEMAP_MAX`.
        """
        if not 1 <= count <= BIG_SITEMAP_MAX:
            raise NotFoundError(f"a big sitemap lists 1 to {BIG_SITEMAP_MAX} items, not {count}")
        return self._document(f"big:{count}", lambda: self._render_big_sitemap(count))

    def sitemap_index(self) -> bytes:
        """A ``<sitemapindex>`` that lists every advertiser's sitemap."""
        return self._document("index", self._render_index)

    def _document(self, key: str, build: Callable[[], bytes]) -> bytes:
        docs = self._documents
        body = docs.get(key)
        if body is None:
            body = build()
            docs[key] = body  # a racing request may build it twice; both copies are equal
        return body

    def document_validators(self, body: bytes) -> tuple[str, datetime]:
        """``(ETag, Last-Modified)`` of a sitemap document: a digest of its bytes, and the newest
        publication of any image (a republication makes every document newer)."""
        return f'"{hashlib.sha256(body).hexdigest()[:24]}"', self.last_published()

    def last_published(self) -> datetime:
        """When the newest image currently published was published."""
        by_path = self._by_path
        cached = self._newest
        if cached is None or cached[0] is not by_path:
            cached = (by_path, max(e.modified for e in by_path.values()))
            self._newest = cached
        return cached[1]

    def _render_sitemap(self, slug: str) -> bytes:
        adv = self.inventory.advertiser(slug)
        nsmap: dict[str | None, str] = {None: NS_SITEMAP, "image": NS_IMAGE}
        if adv.color_from_feed:
            nsmap["tagdesk"] = NS_TAGDESK
        urlset = etree.Element(f"{{{NS_SITEMAP}}}urlset", nsmap=nsmap)
        for veh in adv.vehicles:
            url = etree.SubElement(urlset, f"{{{NS_SITEMAP}}}url")
            etree.SubElement(url, f"{{{NS_SITEMAP}}}loc").text = self._public_url + veh.page_path
            modified = max(self._by_path[self._current[p]].modified for p in veh.images)
            etree.SubElement(url, f"{{{NS_SITEMAP}}}lastmod").text = modified.date().isoformat()
            if adv.color_from_feed and veh.feed_color is not None:
                etree.SubElement(url, f"{{{NS_TAGDESK}}}color").text = veh.feed_color
            for p in veh.images:
                image = etree.SubElement(url, f"{{{NS_IMAGE}}}image")
                etree.SubElement(image, f"{{{NS_IMAGE}}}loc").text = self.current_url(p)
                # lxml escapes the text, so a title with markup stays text.
                etree.SubElement(image, f"{{{NS_IMAGE}}}title").text = veh.title
        return etree.tostring(urlset, xml_declaration=True, encoding="UTF-8", pretty_print=True)

    def _render_big_sitemap(self, count: int) -> bytes:
        # Only files that decode into pictures of a normal size, so that a scrape of it stores
        # every item without an image error (a broken or tiny demo file would fail N / k times).
        originals = sorted(p for p, img in self.inventory.images.items() if img.kind == "ok")
        urls = [self.current_url(p) for p in originals]
        urlset = etree.Element(
            f"{{{NS_SITEMAP}}}urlset", nsmap={None: NS_SITEMAP, "image": NS_IMAGE}
        )
        for first in range(0, count, BIG_IMAGES_PER_PAGE):
            page = first // BIG_IMAGES_PER_PAGE
            url = etree.SubElement(urlset, f"{{{NS_SITEMAP}}}url")
            loc = f"{self._public_url}/vehicles/big-{page}"
            etree.SubElement(url, f"{{{NS_SITEMAP}}}loc").text = loc
            for n in range(first, min(first + BIG_IMAGES_PER_PAGE, count)):
                image = etree.SubElement(url, f"{{{NS_IMAGE}}}image")
                etree.SubElement(
                    image, f"{{{NS_IMAGE}}}loc"
                ).text = f"{urls[n % len(urls)]}?copy={n}"
                etree.SubElement(image, f"{{{NS_IMAGE}}}title").text = f"Big sitemap vehicle {page}"
        return etree.tostring(urlset, xml_declaration=True, encoding="UTF-8", pretty_print=True)

    def _render_index(self) -> bytes:
        index = etree.Element(f"{{{NS_SITEMAP}}}sitemapindex", nsmap={None: NS_SITEMAP})
        for adv in self.inventory.advertisers:
            entry = etree.SubElement(index, f"{{{NS_SITEMAP}}}sitemap")
            etree.SubElement(entry, f"{{{NS_SITEMAP}}}loc").text = self.sitemap_url(adv)
        return etree.tostring(index, xml_declaration=True, encoding="UTF-8", pretty_print=True)

    def sitemap_url(self, advertiser: DemoAdvertiser | str) -> str:
        """The absolute URL of an advertiser's sitemap (given the advertiser or its slug)."""
        adv = self.inventory.advertiser(advertiser) if isinstance(advertiser, str) else advertiser
        return self._public_url + adv.sitemap_path


# --------------------------------------------------------------------------------------------------
# HTTP


def _etag_matches(header: str, etag: str) -> bool:
    """Weak comparison, as RFC 9110 asks for If-None-Match."""
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def _not_modified_since(header: str, modified: datetime) -> bool:
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return modified.replace(microsecond=0) <= since


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "TagdeskDemoCDN/1.0"

    def version_string(self) -> str:
        return self.server_version

    # Buffer each response and send it in one flush, and do not wait for delayed ACKs: small
    # keep-alive responses otherwise stall ~40 ms on Nagle's algorithm.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    timeout = 30  # drop idle keep-alive connections
    server: DemoCdnServer

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- verbs --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._delay()
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._delay()
        self._serve(head=True)

    def do_POST(self) -> None:
        self._delay()
        self._drain_body()
        parts = urlsplit(self.path)
        if parts.path != "/_admin/republish":
            self._send_text(HTTPStatus.NOT_FOUND, "not found\n")
            return
        if not self._from_loopback():
            self._send_text(HTTPStatus.FORBIDDEN, "admin endpoints answer loopback clients only\n")
            return
        if not self._has_admin_token():
            self.send_response(HTTPStatus.UNAUTHORIZED)
            self.send_header("WWW-Authenticate", 'Bearer realm="demo-cdn-admin"')
            body = b"the admin endpoints need the CDN's admin token as a bearer token\n"
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        query = parse_qs(parts.query)
        try:
            share = float(query.get("share", ["0.1"])[0])
            seed = int(query.get("seed", ["1"])[0])
            recompress = query.get("recompress", ["0"])[0] in ("1", "true")
            moved = self.server.state.republish(share, seed, recompress=recompress)
        except ValueError as exc:
            self._send_text(HTTPStatus.BAD_REQUEST, f"{exc}\n")
            return
        body = json.dumps(
            {"moved": len(moved), "generation": self.server.state.generation, "paths": moved}
        ).encode()
        self._send(HTTPStatus.OK, body, "application/json", head=False)

    # -- routing ------------------------------------------------------------------------------

    def _serve(self, head: bool) -> None:
        path = urlsplit(self.path).path
        state = self.server.state
        if path.startswith("/cdn/"):
            entry = state.lookup(path)
            if entry is None:
                self._send_text(HTTPStatus.NOT_FOUND, "not found\n", head)
            else:
                self._send_image(entry, head)
            return
        try:
            if path == "/sitemap_index.xml":
                self._send_document(state.sitemap_index(), "application/xml", head)
            elif big := _BIG_SITEMAP.fullmatch(path):
                # Before the advertisers' route: no demo slug starts with "big-".
                self._send_document(state.big_sitemap(int(big[1])), "application/xml", head)
            elif path.startswith("/sitemaps/") and path.endswith(".xml"):
                slug = path.removeprefix("/sitemaps/").removesuffix(".xml")
                self._send_document(state.sitemap(slug), "application/xml", head)
            elif path.startswith("/sitemaps/") and path.endswith(".xml.gz"):
                slug = path.removeprefix("/sitemaps/").removesuffix(".xml.gz")
                self._send_document(state.sitemap_gz(slug), "application/gzip", head)
            elif path == "/robots.txt":
                text = f"User-agent: *\nAllow: /\nSitemap: {state.public_url}/sitemap_index.xml\n"
                self._send_text(HTTPStatus.OK, text, head)
            else:
                self._send_text(HTTPStatus.NOT_FOUND, "not found\n", head)
        except NotFoundError:
            self._send_text(HTTPStatus.NOT_FOUND, "not found\n", head)

    def _send_image(self, entry: _Entry, head: bool) -> None:
        common = {
            "ETag": entry.etag,
            "Last-Modified": entry.last_modified,
            "Cache-Control": f"public, max-age={self.server.image_max_age}",
        }
        if self._not_modified(entry.etag, entry.modified):
            self._send_not_modified(common)
            return
        self._send(HTTPStatus.OK, entry.body, entry.content_type, head, common)

    def _send_document(self, body: bytes, content_type: str, head: bool) -> None:
        etag, modified = self.server.state.document_validators(body)
        common = {
            "ETag": etag,
            "Last-Modified": format_datetime(modified, usegmt=True),
            "Cache-Control": "no-cache",
        }
        if self._not_modified(etag, modified):
            self._send_not_modified(common)
            return
        self._send(HTTPStatus.OK, body, content_type, head, common)

    def _not_modified(self, etag: str, modified: datetime) -> bool:
        """Whether the request's conditions say the client's copy is current."""
        inm = self.headers.get("If-None-Match")
        ims = self.headers.get("If-Modified-Since")
        # If-None-Match wins over If-Modified-Since when both are sent (RFC 9110 13.2.2).
        if inm is not None:
            return _etag_matches(inm, etag)
        return ims is not None and _not_modified_since(ims, modified)

    def _send_not_modified(self, headers: dict[str, str]) -> None:
        self.send_response(HTTPStatus.NOT_MODIFIED)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    # -- plumbing -----------------------------------------------------------------------------

    def send_response(self, code: int, message: str | None = None) -> None:
        self.server.count(self.command, self.path, int(code))
        super().send_response(code, message)

    def _delay(self) -> None:
        if self.server.latency_ms > 0:
            time.sleep(self.server.latency_ms / 1000)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        head: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_text(self, status: HTTPStatus, text: str, head: bool = False) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8", head)

    def _drain_body(self) -> None:
        # Unread request bytes would be parsed as the next request on this keep-alive connection.
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(min(length, 1 << 20))

    def _has_admin_token(self) -> bool:
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        expected = self.server.admin_token
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), expected.encode()
        )

    def _from_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.client_address[0]).is_loopback
        except ValueError:
            return False


class DemoCdnServer(ThreadingHTTPServer):
    """The demo CDN's HTTP server; ``state`` holds what it publishes."""

    daemon_threads = True
    block_on_close = False  # keep-alive clients must not hold up shutdown
    request_queue_size = 256  # load tests open many connections at once

    def __init__(
        self,
        state: CdnState,
        host: str,
        port: int,
        admin_token: str | None = None,
        *,
        latency_ms: float = 0.0,
        image_max_age: int = IMAGE_MAX_AGE,
    ) -> None:
        """Bind to ``host:port`` (port 0 picks a free one); call :meth:`serve_in_thread` next.

        Args:
            admin_token: what the admin endpoints require as a bearer token; default a random
                one (read it from ``.admin_token``).
            latency_ms: added before every response (a CDN far away, for benchmarks).
            image_max_age: the images' ``Cache-Control: max-age``, in seconds.
        """
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.state = state
        self.admin_token = admin_token or secrets.token_urlsafe(32)
        self.latency_ms = latency_ms
        self.image_max_age = image_max_age
        self.requests: Counter[tuple[str, str, int]] = Counter()
        """Responses sent, per (method, ``image`` / ``sitemap`` / ``other``, status)."""
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    def count(self, method: str, path: str, status: int) -> None:
        """Count one response (see :attr:`requests`)."""
        route = urlsplit(path).path
        kind = (
            "image"
            if route.startswith("/cdn/")
            else "sitemap"
            if route.startswith("/sitemap")
            else "other"
        )
        with self._count_lock:
            self.requests[(method, kind, status)] += 1

    def requests_for(self, kind: str) -> int:
        """How many requests for ``kind`` (``image``, ``sitemap``) were answered so far."""
        with self._count_lock:
            return sum(n for (_, k, _), n in self.requests.items() if k == kind)

    @property
    def url(self) -> str:
        """The base URL clients reach the bound socket at (wildcard hosts become loopback)."""
        host, port = self.server_address[0], self.server_address[1]
        host = str(host)
        if host in ("0.0.0.0", ""):  # noqa: S104 - naming the wildcard, not binding to it
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def serve_in_thread(self) -> threading.Thread:
        """Serve from a daemon thread and return it (for tests and embedding)."""
        self._thread = threading.Thread(target=self.serve_forever, name="demo-cdn", daemon=True)
        self._thread.start()
        return self._thread

    def shutdown(self) -> None:
        """Stop serving (if serving from :meth:`serve_in_thread`) and close the socket."""
        if self._thread is not None:
            super().shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server_close()

    def __exit__(self, *args: object) -> None:
        self.shutdown()


def make_server(
    demo_dir: Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    public_url: str | None = None,
    admin_token: str | None = None,
    *,
    latency_ms: float = 0.0,
) -> DemoCdnServer:
    """Load the demo in ``demo_dir`` and bind a CDN server to it (not serving yet).

    Args:
        demo_dir: A directory written by :func:`tagging.demo.generate_demo`.
        host: The address to bind.
        port: The port to bind; 0 picks a free one.
        public_url: The base URL sitemaps use; default: the bound ``http://host:port``.
        admin_token: The admin endpoints' bearer token; default: a random one.
        latency_ms: Milliseconds added before every response.

    Returns:
        The bound server; ``.url`` is its base URL, ``.state`` its :class:`CdnState`.

    Raises:
        NotFoundError: ``demo_dir`` has no manifest.
        OSError: The address cannot be bound.
    """
    inventory = DemoInventory.load(Path(demo_dir))
    state = CdnState(inventory, public_url or "http://placeholder.invalid")
    server = DemoCdnServer(state, host, port, admin_token, latency_ms=latency_ms)
    if public_url is None:
        state.public_url = server.url
    return server


def run(
    demo_dir: Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    public_url: str | None = None,
    admin_token: str | None = None,
    *,
    latency_ms: float = 0.0,
) -> None:
    """Serve the demo CDN until interrupted (``python -m tagging cdn``).

    ``latency_ms`` adds that many milliseconds before every response (a CDN far away).
    """
    server = make_server(demo_dir, host, port, public_url, admin_token, latency_ms=latency_ms)
    state = server.state
    delay = f", {latency_ms:g} ms added to every response" if latency_ms else ""
    print(
        f"Demo CDN: {len(state.inventory.images)} images of "
        f"{len(state.inventory.advertisers)} advertisers at {server.url} "
        f"(sitemap index {state.public_url}/sitemap_index.xml){delay}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def admin_token(data_dir: Path) -> str:
    """The demo CDN's admin token, from ``<data_dir>/cdn_admin_token``; made (0600) if missing.

    The CDN process (``python -m tagging cdn``) and :mod:`tagging.demo.stage` both call this, so
    they agree without the token ever being on a command line.
    """
    path = Path(data_dir) / ADMIN_TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        time.sleep(0.1)
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(descriptor, "w") as file:
        file.write(token + "\n")
    return token
