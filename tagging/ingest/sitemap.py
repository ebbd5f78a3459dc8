"""Hardened sitemap parsing: an advertiser's sitemap (or sitemap index) becomes image items.

Sitemaps come from advertisers, so every document is treated as hostile:

* any ``<!DOCTYPE`` or ``<!ENTITY`` is refused before the parser sees it (billion laughs, external
  entities, external DTDs), and the lxml parser itself resolves no entity and loads no DTD or
  network resource anyway;
* only ASCII-compatible encodings are accepted, so that refusal cannot be dodged by UTF-16;
* gzip is inflated in bounded steps and refused past ``max_uncompressed_bytes`` (gzip bombs);
* the XML is fed to a pull parser in slices and each ``<url>`` is discarded once read, so a
  50,000-URL sitemap parses in well under a second with little memory;
* the items stream: :func:`read_sitemap` hands them out as a generator, a document at a time and
  a slice of it at a time, so a 500,000-image scrape never holds them all. Each document is
  checked whole first (a parse that keeps nothing), so a document broken at its end is still
  refused whole, before any of its items is handed out;
* counts are capped per document (``<url>``/``<sitemap>`` entries), per scrape (items, sitemaps)
  and in depth (an index of indexes of ...).

Only the image URLs must be absolute http(s) URLs: others are skipped and reported once.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Literal, TypeGuard

from lxml import etree

from tagging.errors import FetchError, SitemapError
from tagging.ingest.fetch import FetchResult, GuardedClient

__all__ = [
    "ParsedSitemap",
    "SitemapDocument",
    "SitemapItem",
    "SitemapLimits",
    "SitemapProblem",
    "SitemapResult",
    "parse_sitemap_bytes",
    "read_sitemap",
    "unchanged_documents",
]

TAGDESK_NS = "urn:tagdesk:vehicle:1"
"""Namespace of Tagdesk's own ``<tagdesk:color>`` feed extension."""

SITEMAP_CONTENT_TYPES: tuple[str, ...] = (
    "application/xml",
    "text/xml",
    "application/gzip",
    "application/x-gzip",
    "application/octet-stream",
    "binary/octet-stream",
    "text/plain",
)
"""Content-Type prefixes a sitemap may be served with (a missing Content-Type is accepted too)."""

_GZIP_MAGIC = b"\x1f\x8b"
_SLICE = 1024 * 1024
_MAX_PROLOG = 2 * _SLICE
_MAX_ENTRY_NODES = 20_000
"""Elements one <url> may hold (Google allows 1,000 images per page, 4 elements each)."""
# A regex, not urlsplit: it runs once per image and dominates a big sitemap's parse time.
_HTTP_URL = re.compile(
    r"(?i)https?://"
    r"(?:[^\x00-\x20\x7f/?#@]*@)?"  # userinfo
    r"(?:\[[0-9a-f:.]+\]|[^\x00-\x20\x7f/?#@:\[\]\\]+)"  # host
    r"(?::\d{1,5})?"
    r"(?:[/?#][^\x00-\x20\x7f]*)?\Z"
)
_DTD = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_DECLARED_ENCODING = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
# Encodings in which "<!DOCTYPE" is the same bytes as in ASCII, so the byte scan above is sound.
_ASCII_COMPATIBLE = re.compile(
    r"^(utf-?8|us-ascii|ascii|iso-8859-\d+|iso8859-\d+|latin-?1|windows-125\d|cp125\d)$"
)


@dataclass(frozen=True)
class SitemapItem:
    """One image of one page, in sitemap order."""

    page_url: str
    """``<url><loc>``, stripped (``""`` when the entry has none)."""
    image_url: str
    """``<image:image><image:loc>``, stripped; always an absolute http(s) URL."""
    position: int
    """0-based order of this image in the whole sitemap, across sub-sitemaps."""
    title: str | None
    """``<image:title>``, stripped, or None."""
    feed_color: str | None
    """``<tagdesk:color>`` (namespace ``urn:tagdesk:vehicle:1``) of the ``<url>``, or None."""


@dataclass(frozen=True)
class SitemapProblem:
    """Something wrong with one (sub-)sitemap that did not stop the scrape."""

    url: str
    """The (sub-)sitemap URL concerned."""
    message: str
    code: str
    """``bad_sitemap``, ``too_many_urls``, ``too_many_items``, ``too_many_sitemaps``,
    ``too_deep``, ``bad_image_urls``, ``duplicate_sitemap``, or a fetch error's code
    (``fetch_failed``, ``blocked_url``, ``timeout``, ``too_large``, ``bad_content_type``)."""


@dataclass(frozen=True)
class SitemapDocument:
    """One document a read fetched, and what tells whether it changed since: its validators
    (``ETag``, ``Last-Modified``) for a conditional GET, and the SHA-256 of its bytes."""

    url: str
    etag: str | None
    last_modified: str | None
    sha256: str | None
    """None when the document could not be fetched or parsed (it never counts as unchanged)."""

    def as_dict(self) -> dict[str, str | None]:
        return {
            "url": self.url,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, data: dict[str, str | None]) -> SitemapDocument:
        return cls(
            url=str(data["url"]),
            etag=data.get("etag"),
            last_modified=data.get("last_modified"),
            sha256=data.get("sha256"),
        )


class SitemapResult:
    """A sitemap and its sub-sitemaps, read as :attr:`items` is iterated.

    :attr:`problems`, :attr:`documents` and the counts grow while the items are taken: they are
    complete once :attr:`items` is exhausted.
    """

    def __init__(self, reader: _Reader, items: Iterator[SitemapItem]) -> None:
        self._reader = reader
        self.items = items
        """The image items in sitemap order: a generator, read once."""

    @property
    def problems(self) -> list[SitemapProblem]:
        """What did not stop the read, so far."""
        return self._reader.problems

    @property
    def documents(self) -> list[SitemapDocument]:
        """Every document fetched so far, in the order read (the root first)."""
        return self._reader.documents

    @property
    def sitemaps_read(self) -> int:
        """Documents fetched and parsed successfully so far, the root included."""
        return self._reader.read

    @property
    def expected(self) -> int:
        """Items of the documents read so far (each is counted before its items are handed
        out): the whole sitemap's count once the last sub-sitemap is reached."""
        return self._reader.counted


@dataclass(frozen=True)
class SitemapLimits:
    """Caps that keep one scrape's parsing bounded."""

    max_compressed_bytes: int = 50 * 1024 * 1024
    max_uncompressed_bytes: int = 50 * 1024 * 1024
    """The sitemap protocol's own limit, for plain and inflated documents alike."""
    max_urls_per_sitemap: int = 50_000
    """The protocol's limit; past it the first entries are kept and a problem recorded."""
    max_items: int = 500_000
    """Images per scrape, across sub-sitemaps."""
    max_sitemaps: int = 1_000
    """Documents fetched per scrape, the root included."""
    max_depth: int = 2
    """How deep sitemap indexes may nest: the root is depth 0, its children depth 1, ..."""


SitemapKind = Literal["urlset", "sitemapindex"]
SITEMAP_KINDS: tuple[SitemapKind, ...] = ("urlset", "sitemapindex")
"""The root elements of a sitemap document."""


def _is_sitemap_kind(name: str) -> TypeGuard[SitemapKind]:
    return name in SITEMAP_KINDS


@dataclass
class ParsedSitemap:
    """One parsed document: a ``urlset`` (items) or a ``sitemapindex`` (child sitemap URLs)."""

    kind: SitemapKind
    items: list[SitemapItem] = field(default_factory=list)
    """Images of a urlset, positions counted from the ``first_position`` argument."""
    sitemaps: list[str] = field(default_factory=list)
    """Child sitemap URLs of an index, stripped, in document order."""
    problems: list[SitemapProblem] = field(default_factory=list)
    """Non-fatal problems: truncation at a cap, skipped image or sitemap URLs."""
    items_capped: bool = False
    """True when the ``max_items`` budget stopped the parse."""


def parse_sitemap_bytes(
    data: bytes,
    source_url: str,
    limits: SitemapLimits = SitemapLimits(),
    *,
    first_position: int = 0,
    max_items: int | None = None,
) -> ParsedSitemap:
    """Parse one sitemap document, plain or gzipped, keeping its items in a list.

    (:func:`read_sitemap` streams them instead; this is for one document at a time.)

    Args:
        data: the document's bytes as served (gzip is recognised by its magic bytes).
        source_url: where it came from, for messages and problems.
        limits: the caps to apply.
        first_position: ``position`` of the first item (the images already read before it).
        max_items: how many more items the scrape may take; default ``limits.max_items``.

    Returns:
        The document's items or child sitemaps, and its non-fatal problems.

    Raises:
        SitemapError: empty, not XML, not a sitemap, a DTD or entity, a non-ASCII-compatible
            encoding, truncated or malformed (the message names the line), or over a size cap.
    """
    budget = limits.max_items if max_items is None else max_items
    parser = _Parser(source_url, limits, first_position, budget)
    items = list(parser.stream(_slices(data, source_url, limits)))
    assert parser.result is not None
    parser.result.items = items
    return parser.result


def read_sitemap(
    url: str,
    client: GuardedClient,
    limits: SitemapLimits = SitemapLimits(),
) -> SitemapResult:
    """Fetch and check the root sitemap; its items (and its sub-sitemaps') stream from there.

    A sitemap index is followed depth-first in document order, each sub-sitemap fetched when the
    items before it have been taken. Every document is checked whole before its first item is
    handed out, so a broken one is dropped whole.

    Args:
        url: the root sitemap (a urlset or a sitemap index).
        client: the guarded client; its allow-list decides which private hosts may be read.
        limits: the caps to apply.

    Returns:
        The stream: iterate ``items`` (a generator) once. A sub-sitemap that cannot be fetched or
        parsed becomes a problem and the others are still read.

    Raises:
        SitemapError: the root is not a sitemap (wrong content type, empty, malformed, hostile).
        FetchError: the root cannot be fetched (its subclass says why: blocked, timeout, ...).
    """
    reader = _Reader(client, limits)
    root = reader.fetch(url)
    return SitemapResult(reader, reader.walk(root, 0, seen={url}))


def unchanged_documents(
    documents: Sequence[SitemapDocument],
    client: GuardedClient,
    limits: SitemapLimits = SitemapLimits(),
) -> list[SitemapDocument] | None:
    """Whether the documents a previous read fetched are all still the same, asked cheaply.

    Each is fetched again with its validators (``If-None-Match`` / ``If-Modified-Since``): a
    ``304 Not Modified`` costs no body, and a full answer counts as unchanged when its bytes have
    the same SHA-256. Since the root and every sitemap index are among them, the same documents
    list the same sub-sitemaps, so the same items. Stops at the first change.

    Returns:
        The documents with their current validators when none changed; None when one did (or
        could not be fetched, or was not read last time).
    """
    if not documents:
        return None
    current = []
    for document in documents:
        if document.sha256 is None:
            return None
        conditions = {}
        if document.etag:
            conditions["If-None-Match"] = document.etag
        if document.last_modified:
            conditions["If-Modified-Since"] = document.last_modified
        try:
            result = client.get(
                document.url,
                max_bytes=limits.max_compressed_bytes,
                headers=conditions,
                not_modified=bool(conditions),
            )
        except FetchError:
            return None
        if result.status == 304:
            current.append(document)
            continue
        if hashlib.sha256(result.body).hexdigest() != document.sha256:
            return None
        current.append(_document(document.url, result))
    return current


def _document(url: str, result: FetchResult) -> SitemapDocument:
    return SitemapDocument(
        url=url,
        etag=(result.headers.get("ETag") or "").strip() or None,
        last_modified=(result.headers.get("Last-Modified") or "").strip() or None,
        sha256=hashlib.sha256(result.body).hexdigest(),
    )


@dataclass
class _Fetched:
    """One fetched document, checked whole, not yet streamed."""

    url: str
    body: bytes
    kind: SitemapKind
    items: int
    """How many items streaming it will hand out (the check counted them)."""
    sitemaps: list[str]
    """The child sitemaps of an index."""
    problems: list[SitemapProblem]
    capped: bool


class _Reader:
    """State of one :func:`read_sitemap` walk."""

    def __init__(self, client: GuardedClient, limits: SitemapLimits) -> None:
        self.client = client
        self.limits = limits
        self.problems: list[SitemapProblem] = []
        self.documents: list[SitemapDocument] = []
        self.read = 0
        self.fetched = 0
        self.counted = 0
        """Items of the documents checked so far: positions continue from here."""
        self.stopped = False

    def fetch(self, url: str) -> _Fetched:
        """Fetch one document and check it whole (a parse that keeps no item).

        Raises:
            SitemapError, FetchError: it cannot be used (recorded as a document without digest).
        """
        self.fetched += 1
        try:
            result = self.client.get(url, max_bytes=self.limits.max_compressed_bytes)
        except FetchError:
            self.documents.append(SitemapDocument(url, None, None, None))
            raise
        document = _document(url, result)
        try:
            # Content types are checked here rather than by the client, to accept a missing one
            # and to say "a web page, not a sitemap" in the words a user needs.
            content_type = (result.headers.get("Content-Type") or "").split(";")[0]
            content_type = content_type.strip().lower()
            if content_type and not content_type.startswith(SITEMAP_CONTENT_TYPES):
                page = " (a web page, not a sitemap)" if content_type == "text/html" else ""
                raise SitemapError(
                    f"{url} is not a sitemap: the server sent {content_type}{page}; "
                    "expected XML or gzip"
                )
            first = self.counted
            parser = _Parser(url, self.limits, first, self.limits.max_items - first)
            items = sum(1 for _ in parser.stream(_slices(result.body, url, self.limits)))
        except SitemapError:
            self.documents.append(replace(document, sha256=None))
            raise
        assert parser.result is not None
        self.documents.append(document)
        self.read += 1
        self.counted += items
        return _Fetched(
            url=url,
            body=result.body,
            kind=parser.result.kind,
            items=items,
            sitemaps=parser.result.sitemaps,
            problems=parser.result.problems,
            capped=parser.result.items_capped,
        )

    def walk(self, document: _Fetched, depth: int, seen: set[str]) -> Iterator[SitemapItem]:
        """Hand out ``document``'s items (parsed again, now keeping them), then its children's."""
        self.problems.extend(document.problems)
        url = document.url
        if document.items:
            first = self.counted - document.items
            parser = _Parser(url, self.limits, first, document.items)
            yield from parser.stream(_slices(document.body, url, self.limits))
        sitemaps, document.body = document.sitemaps, b""  # the bytes are not needed any more
        if document.capped:
            self.stopped = True
            return
        if document.kind == "urlset":
            return
        if depth >= self.limits.max_depth:
            self.problems.append(
                SitemapProblem(
                    url,
                    f"{url} is a sitemap index nested {depth} deep; indexes may nest at most "
                    f"{self.limits.max_depth} deep, so its {len(sitemaps):,} "
                    "sitemaps were not read",
                    "too_deep",
                )
            )
            return
        repeated: list[str] = []
        try:
            for index, child in enumerate(sitemaps):
                if self.stopped:
                    return
                if child in seen:
                    repeated.append(child)
                    continue
                if self.fetched >= self.limits.max_sitemaps:
                    left = len(sitemaps) - index
                    self.problems.append(
                        SitemapProblem(
                            url,
                            f"the scrape reached its limit of {self.limits.max_sitemaps:,} "
                            f"sitemaps; {left:,} more listed by {url} were not read",
                            "too_many_sitemaps",
                        )
                    )
                    self.stopped = True
                    return
                seen.add(child)
                try:
                    fetched = self.fetch(child)
                except (SitemapError, FetchError) as exc:
                    self.problems.append(SitemapProblem(child, str(exc), exc.code))
                    continue
                yield from self.walk(fetched, depth + 1, seen)
        finally:
            if repeated:
                # One problem per index, however many repeats: a hostile index can list 50,000.
                self.problems.append(
                    SitemapProblem(
                        url,
                        f"{url} lists {len(repeated):,} sitemaps that were already read (or "
                        f"itself), e.g. {repeated[0]}; each was read once",
                        "duplicate_sitemap",
                    )
                )


def _slices(data: bytes, source_url: str, limits: SitemapLimits) -> Iterator[bytes]:
    """The document's XML in slices of at most 1 MiB, inflated if gzipped, under the size caps.

    Raises:
        SitemapError: empty, or over a size cap (compressed, or once inflated).
    """
    if not data or data.isspace():  # isspace, not strip: no copy of a 50 MB document
        raise SitemapError(f"{source_url} is empty: expected a sitemap")
    if data.startswith(_GZIP_MAGIC):
        if len(data) > limits.max_compressed_bytes:
            raise SitemapError(
                f"{source_url} is {len(data):,} bytes compressed, over the "
                f"{limits.max_compressed_bytes:,}-byte limit"
            )
        return _gunzip(data, source_url, limits.max_uncompressed_bytes)
    if len(data) > limits.max_uncompressed_bytes:
        raise SitemapError(
            f"{source_url} is {len(data):,} bytes, over the sitemap protocol's "
            f"{limits.max_uncompressed_bytes:,}-byte limit"
        )
    view = memoryview(data)
    return (bytes(view[i : i + _SLICE]) for i in range(0, len(data), _SLICE))


def _gunzip(data: bytes, source_url: str, max_out: int) -> Iterator[bytes]:
    """Inflate (possibly multi-member) gzip ``data`` in bounded slices, refusing a bomb."""
    produced = 0
    pending = data
    while pending:
        inflater = zlib.decompressobj(wbits=31)
        chunk = pending
        while True:
            try:
                out = inflater.decompress(chunk, _SLICE)
            except zlib.error as exc:
                raise SitemapError(f"{source_url} is not valid gzip: {exc}") from exc
            produced += len(out)
            if produced > max_out:
                raise SitemapError(
                    f"{source_url} inflates to more than {max_out:,} bytes, over the sitemap "
                    "protocol's limit (a gzip bomb?)"
                )
            if out:
                yield out
            if inflater.eof:
                break
            chunk = inflater.unconsumed_tail
            if not chunk and not out:
                raise SitemapError(f"{source_url} is truncated gzip: the data ends early")
        pending = inflater.unused_data
        # Concatenated gzip members are valid; trailing zero padding (some servers) is not data.
        if not pending.startswith(_GZIP_MAGIC):
            break


_LOCAL_NAMES: dict[str, str] = {}


def _local(tag: object) -> str:
    """An element's local name, or "" for comments and processing instructions."""
    if not isinstance(tag, str):
        return ""
    name = _LOCAL_NAMES.get(tag)
    if name is None:
        name = tag.rpartition("}")[2]
        # Cached because it runs for every element; bounded because tag names are input.
        if len(_LOCAL_NAMES) < 1_000:
            _LOCAL_NAMES[tag] = name
    return name


def _text(element: etree._Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    return element.text.strip() or None


def _is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host and no whitespace or control characters."""
    return _HTTP_URL.match(url) is not None


class _Parser:
    """One document through lxml's pull parser, a slice at a time."""

    def __init__(self, source_url: str, limits: SitemapLimits, first: int, budget: int) -> None:
        self.source_url = source_url
        self.limits = limits
        self.position = first
        self.budget = budget
        self.result: ParsedSitemap | None = None
        self.entries = 0
        self.bad_images: list[str] = []
        self.bad_sitemaps: list[str] = []
        self.done = False
        self.root: etree._Element | None = None
        self.entry_tag = "url"
        self.closed_root = ""
        self.pending: list[SitemapItem] = []
        """Items read from the last slice, not handed out yet."""

    def stream(self, slices: Iterator[bytes]) -> Iterator[SitemapItem]:
        """The document's items as each slice is parsed; ``result`` holds the rest once done
        (child sitemaps, problems), and keeps no item."""
        parser = etree.XMLPullParser(
            events=("start", "end"),
            # Only these tags reach Python: per-element callbacks would dominate the run time.
            tag=["{*}urlset", "{*}sitemapindex", "{*}url", "{*}sitemap"],
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
        )
        tail = b""
        fed = 0
        for chunk in slices:
            if not fed:
                self._check_prolog(chunk)
            # Scan with the previous slice's end too, so a split "<!DOC" + "TYPE" is caught.
            if _DTD.search(tail + chunk):
                raise SitemapError(
                    f"{self.source_url} declares a DTD or entity; DTDs and entities are not "
                    "allowed in sitemaps (they enable entity-expansion and file-disclosure attacks)"
                )
            tail = chunk[-16:]
            fed += len(chunk)
            self._feed(parser, chunk)
            yield from self._take()
            if self.done:
                break
            if self.root is None and fed >= _MAX_PROLOG:
                # A sitemap's root comes first; reading megabytes of something else is waste.
                raise SitemapError(
                    f"{self.source_url} is not a sitemap: no <urlset> or <sitemapindex> root "
                    f"element in its first {_MAX_PROLOG // (1024 * 1024)} MiB"
                )
            self._prune()
        if not self.done:
            self._feed(parser, None)
            yield from self._take()
        if self.result is None:
            raise SitemapError(
                f"{self.source_url} is not a sitemap: its root element is <{self.closed_root}>, "
                "expected <urlset> or <sitemapindex>"
            )
        self._report_skipped()

    def _take(self) -> list[SitemapItem]:
        taken, self.pending = self.pending, []
        return taken

    def _prune(self) -> None:
        """Drop finished entries and refuse an entry too big to be real, so memory stays flat.

        Events only clear ``<url>``/``<sitemap>`` entries; anything else at the top level, or a
        monster entry with millions of children, would otherwise grow the tree with the input.
        """
        root = self.root
        if root is None or not len(root):
            return
        del root[:-1]  # Every finished child has had its event; the last may still be open.
        last = root[-1]
        if next(islice(last.iter(), _MAX_ENTRY_NODES, None), None) is not None:
            raise SitemapError(
                f"{self.source_url} has an entry <{_local(last.tag)}> with more than "
                f"{_MAX_ENTRY_NODES:,} elements; refusing it as hostile"
            )

    def _check_prolog(self, head: bytes) -> None:
        if head.startswith(b"\xef\xbb\xbf"):
            head = head[3:]
        # UTF-16/32 (BOM or NUL bytes) would hide "<!DOCTYPE" from the byte scan.
        if head[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in head[:64]:
            raise SitemapError(
                f"{self.source_url} is UTF-16 or UTF-32; sitemaps must be UTF-8 (the sitemap "
                "protocol requires it)"
            )
        stripped = head.lstrip()
        if not stripped.startswith(b"<"):
            raise SitemapError(f"{self.source_url} is not XML: expected a sitemap")
        declared = _DECLARED_ENCODING.match(stripped)
        if declared:
            name = declared.group(1).decode("ascii").lower()
            if not _ASCII_COMPATIBLE.match(name):
                raise SitemapError(
                    f"{self.source_url} declares the encoding {name!r}; sitemaps must be UTF-8 "
                    "(the sitemap protocol requires it)"
                )

    def _feed(self, parser: etree.XMLPullParser, chunk: bytes | None) -> None:
        try:
            if chunk is None:
                self.closed_root = _local(parser.close().tag)
            else:
                parser.feed(chunk)
            for event, element in parser.read_events():
                self._event(event, element)
                if self.done:
                    return
        except etree.ParseError as exc:
            line, what = exc.lineno, (exc.msg or str(exc)).strip()
            last = exc.error_log.last_error
            if not line and last is not None:
                # The feed parser can raise a bare "no element found" at close(); the real
                # error, with its line, is the latest one logged.
                line, what = last.line, last.message.strip()
            what = re.sub(r", line \d+, column \d+$", "", what)
            ended = "the document ends early (truncated?)" if "end of data" in what else what
            raise SitemapError(
                f"{self.source_url} is not well-formed XML at line {line}: {ended}"
            ) from exc

    def _event(self, event: str, element: etree._Element) -> None:
        if self.root is None:
            # The first event must be the root's start; otherwise the root is something else.
            top = element if element.getparent() is None else element.getroottree().getroot()
            name = _local(top.tag)
            if top is not element or not _is_sitemap_kind(name):
                raise SitemapError(
                    f"{self.source_url} is not a sitemap: its root element is <{name}>, "
                    "expected <urlset> or <sitemapindex>"
                )
            self.result = ParsedSitemap(kind=name)
            self.entry_tag = "url" if name == "urlset" else "sitemap"
            self.root = element
            return
        if event != "end" or element.getparent() is not self.root:
            return
        if _local(element.tag) == self.entry_tag:
            self.entries += 1
            if self.entries > self.limits.max_urls_per_sitemap:
                self._stop_at_entry_cap()
                return
            if self.entry_tag == "url":
                self._url(element)
            else:
                self._sitemap(element)
        element.clear()

    def _url(self, element: etree._Element) -> None:
        assert self.result is not None
        page_url = ""
        color: str | None = None
        images: list[tuple[str, str | None]] = []
        for child in element:
            name = _local(child.tag)
            if name == "loc":
                page_url = _text(child) or ""
            elif name == "image":
                loc: str | None = None
                title: str | None = None
                for part in child:
                    part_name = _local(part.tag)
                    if part_name == "loc":
                        loc = _text(part)
                    elif part_name == "title":
                        title = _text(part)
                images.append((loc or "", title))
            elif name == "color" and child.tag == f"{{{TAGDESK_NS}}}color":
                color = _text(child)
        for image_url, title in images:
            if not _is_http_url(image_url):
                self.bad_images.append(image_url)
                continue
            if self.budget <= 0:
                self.result.problems.append(
                    SitemapProblem(
                        self.source_url,
                        f"the scrape reached its limit of {self.limits.max_items:,} images; "
                        f"the rest of {self.source_url} and any later sitemap were not read",
                        "too_many_items",
                    )
                )
                self.result.items_capped = True
                self.done = True
                return
            self.pending.append(
                SitemapItem(
                    page_url=page_url,
                    image_url=image_url,
                    position=self.position,
                    title=title,
                    feed_color=color,
                )
            )
            self.position += 1
            self.budget -= 1

    def _sitemap(self, element: etree._Element) -> None:
        assert self.result is not None
        loc = next((_text(c) for c in element if _local(c.tag) == "loc"), None) or ""
        if _is_http_url(loc):
            self.result.sitemaps.append(loc)
        else:
            self.bad_sitemaps.append(loc)

    def _stop_at_entry_cap(self) -> None:
        assert self.result is not None
        cap = self.limits.max_urls_per_sitemap
        self.result.problems.append(
            SitemapProblem(
                self.source_url,
                f"{self.source_url} lists more than {cap:,} <{self.entry_tag}> entries, the "
                f"sitemap protocol's limit; only the first {cap:,} were read",
                "too_many_urls",
            )
        )
        self.done = True

    def _report_skipped(self) -> None:
        assert self.result is not None
        for bad, what, code in (
            (self.bad_images, "image URLs", "bad_image_urls"),
            (self.bad_sitemaps, "sitemap URLs", "bad_sitemap"),
        ):
            if not bad:
                continue
            examples = ", ".join(repr(b[:100]) for b in bad[:3])
            self.result.problems.append(
                SitemapProblem(
                    self.source_url,
                    f"{self.source_url}: skipped {len(bad):,} {what} that are not absolute http(s) "
                    f"URLs (e.g. {examples})",
                    code,
                )
            )
