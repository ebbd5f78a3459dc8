"""Classification of a batch of image URLs: fetch, recognise, decode, classify, cache.

This is the ML server's work, kept free of HTTP-framework code so that the dataset and model pages
(and the benchmarks) can run it in-process.

An image already seen costs at most one request without a body, and often none: its URL's last
image_key is known, with what the CDN's caching headers said about it (:class:`UrlState`).

* While the answer is fresh (``Cache-Control: max-age``, ``Expires``) no request is made at all.
* Once stale, a conditional GET (``If-None-Match`` / ``If-Modified-Since``) asks the CDN: a 304
  keeps the key (the same ETag, Last-Modified and Content-Length, no body), a 200 brings the new
  version, decoded at once.
* A CDN that gives no validators gets a HEAD, whose headers give the key, as before.

``image_key`` keeps its meaning throughout: the URL plus the ETag, Last-Modified and
Content-Length headers (:func:`tagging.ingest.images.image_key`).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from PIL import Image

from db.models import as_utc, utcnow
from db.vocab import DEFAULT_IMAGE_TYPE, PLACEHOLDER
from tagging.errors import FetchError, ImageDecodeError, TaggingError
from tagging.ingest.fetch import FetchResult, Freshness, GuardedClient, response_freshness
from tagging.ingest.images import (
    DecodedImage,
    content_sha256,
    decode_image,
    image_key,
    make_thumbnail,
    perceptual_hash,
)
from tagging.ml.color import ColorModel
from tagging.ml.inference import PROBABILITY_PLACES, TypeClassifier
from tagging.server.cache import CacheEntry, MLCache, UrlState
from tagging.server.schemas import ImageResult
from tagging.server.stages import StageClock

log = logging.getLogger(__name__)

IMAGE_CONTENT_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


@dataclass(frozen=True)
class PipelineConfig:
    """How the pipeline spends its resources."""

    fetch_workers: int = 8
    """Threads fetching and decoding; both release the GIL while they wait or decode."""
    draft_size: tuple[int, int] = (160, 120)
    max_image_bytes: int = 15 * 1024 * 1024
    max_bytes_in_flight: int = 64 * 1024 * 1024
    """Downloaded image bytes held at once by the whole process, every request together: a GET
    waits for room before reading its body, and gives it back once the image is decoded."""
    model_image_size: tuple[int, int] = (320, 240)
    """The largest image kept for the models once hashed and thumbnailed (larger ones are
    reduced), so that a batch holds small images, not every decoded original, until inference."""


class ByteBudget:
    """A byte count that threads take from and give back: a semaphore measured in bytes.

    Takers are served in order of arrival. A request for more than the whole budget is cut to the
    whole budget, so it waits until nothing else is held instead of forever.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.held = 0
        self.peak = 0
        """The most bytes ever held at once."""
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()

    def acquire(self, size: int) -> int:
        """Wait until ``size`` bytes are free and take them; returns what to :meth:`release`."""
        size = max(0, min(size, self.capacity))
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            try:
                self._changed.wait_for(
                    lambda: self._queue[0] is ticket and self.held + size <= self.capacity
                )
                self.held += size
                self.peak = max(self.peak, self.held)
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()
        return size

    def release(self, size: int) -> None:
        """Give back ``size`` bytes taken by :meth:`acquire`."""
        if size <= 0:
            return
        with self._changed:
            self.held -= size
            self._changed.notify_all()


@dataclass
class _Work:
    """One URL's progress through the pipeline."""

    url: str
    key: str | None = None
    headers: dict[str, str] | None = None
    decoded: DecodedImage | None = None
    sha256: str | None = None
    phash: str | None = None
    thumbnail: bytes | None = None
    cached: CacheEntry | None = None
    error: TaggingError | None = None
    seen: UrlState | None = None
    """What the CDN's answer for this URL said (key, validators, freshness): the store records
    it. None when no request was made (the answer was fresh) or none succeeded."""
    fresh_until: datetime | None = None


class ClassificationPipeline:
    """Classifies batches of URLs with the Image Type model and the color adapter, cache first."""

    def __init__(
        self,
        client: GuardedClient,
        classifier: TypeClassifier,
        color_model: ColorModel,
        cache: MLCache,
        config: PipelineConfig | None = None,
        clock: StageClock | None = None,
    ) -> None:
        self.client = client
        self.clock = clock or StageClock()
        """CPU per stage, for the benchmarks (off unless given one that is on)."""
        self.classifier = classifier
        self.color_model = color_model
        self.cache = cache
        self.config = config or PipelineConfig()
        self._pool = ThreadPoolExecutor(
            max_workers=self.config.fetch_workers, thread_name_prefix="classify"
        )
        self.budget = ByteBudget(self.config.max_bytes_in_flight)
        """Downloaded bytes not yet decoded, shared by every request of this process."""

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def classify(
        self,
        urls: Sequence[str],
        *,
        color: bool = True,
        thumbnails: bool = True,
        known_keys: Collection[str] = (),
    ) -> list[ImageResult]:
        """Classify ``urls``; one result per URL, in order, errors included.

        Args:
            known_keys: image_keys the caller has a thumbnail for already: none is sent for them.
        """
        clock = self.clock
        unique = list(dict.fromkeys(urls))
        with clock.stage("cache reads"):
            states = self.cache.url_states(unique)
            known = self.cache.get_many(state.image_key for state in states.values())
        works = [_Work(url) for url in unique]

        # 1. Recognise. A fresh answer needs no request; a stale one a conditional GET (or a HEAD
        # without validators); an unknown URL a GET.
        now = utcnow()
        asking = [w for w in works if not self._fresh(w, states.get(w.url), known, now)]
        list(self._pool.map(lambda w: self._fetch(w, states.get(w.url), known), asking))

        # 2. A GET may still land on a cached key (the URL moved back, or the URL table was lost).
        fetched = [w for w in works if w.error is None and w.cached is None]
        with clock.stage("cache reads"):
            hits = self.cache.get_many(w.key for w in fetched if w.key)
        for work in fetched:
            work.cached = hits.get(work.key) if work.key else None

        # Decode again a cached entry that lacks what this request needs: a row made by a manual
        # fix before the image was ever seen, or one whose color was never asked for.
        for work in works:
            if work.cached is not None and (
                work.cached.sha256 is None
                or (
                    color
                    and work.cached.color_source == "none"
                    and work.cached.image_type != PLACEHOLDER
                )
            ):
                work.cached = None  # step 3 fetches and decodes it, unless its GET did already

        # 3. Decode what is new. Each GET decoded its image as soon as the bytes arrived (see
        # _get); what is left (the entries above, and GETs that dropped their bytes as cache hits
        # that are no longer hits) is fetched and decoded now, in parallel.
        misses = [w for w in works if w.error is None and w.cached is None]
        list(self._pool.map(self._get, [w for w in misses if w.decoded is None]))
        decoded = [w for w in misses if w.decoded is not None]

        # 4. Classify in one batch per model.
        entries = self._classify(decoded, color=color)
        clock.classified(len(entries))
        with clock.stage("cache writes"):
            if entries:
                entries = self.cache.store(
                    entries, {w.url: w.seen or w.key for w in decoded if w.key}
                )
            # Answers of the CDN about images already cached (HEAD, 304, a GET landing on a
            # known key): their key and freshness. A fresh answer made no request, nothing new.
            self.cache.touch_urls({w.url: w.seen for w in works if w.cached and w.seen})

        with clock.stage("results (thumbnails in base64)"):
            fresh = {entry.image_key: entry for entry in entries}
            skip = set(known_keys)
            by_url = {w.url: self._result(w, fresh, thumbnails, skip) for w in works}
            return [by_url[url] for url in urls]

    @staticmethod
    def _fresh(
        work: _Work, state: UrlState | None, known: dict[str, CacheEntry], now: datetime
    ) -> bool:
        """Take the cached answer without a request if HTTP caching says it is still fresh."""
        if state is None or state.image_key not in known or not state.is_fresh(now):
            return False
        work.key, work.cached = state.image_key, known[state.image_key]
        work.fresh_until = as_utc(state.fresh_until)
        return True

    def _fetch(self, work: _Work, state: UrlState | None, known: dict[str, CacheEntry]) -> None:
        if state is None or state.image_key not in known:
            self._get(work, known)
        elif state.etag or state.last_modified:
            self._get(work, known, stored=state)
        else:
            try:
                with self.clock.stage("fetch (HTTP client)"):
                    head = self.client.head(work.url)
                key = image_key(work.url, head.headers)
                if key == state.image_key:
                    work.key, work.cached = key, known[key]
                    self._saw(work, key, response_freshness(head.headers))
                    return
            except FetchError:
                pass  # Some CDNs refuse HEAD: a GET settles it.
            self._get(work, known)

    @staticmethod
    def _saw(work: _Work, key: str, freshness: Freshness, stored: UrlState | None = None) -> None:
        """Record what the CDN just answered for ``work``'s URL: its key, validators, freshness.

        Args:
            stored: the answer a 304 revalidated: its validators stay (they made the key), and so
                does its lifetime when the 304 states none (RFC 9111 4.3.4).
        """
        received = utcnow()
        max_age, etag, last_modified = freshness.max_age, freshness.etag, freshness.last_modified
        if stored is not None:
            if not freshness.stated:
                max_age = stored.max_age
            etag, last_modified = stored.etag, stored.last_modified
        until = received + timedelta(seconds=max_age) if max_age and max_age > 0 else None
        work.fresh_until = until
        work.seen = UrlState(
            image_key=key,
            fetched_at=received,
            max_age=max_age,
            fresh_until=until,
            etag=etag,
            last_modified=last_modified,
        )

    def _get(
        self,
        work: _Work,
        cached: Mapping[str, CacheEntry] | None = None,
        stored: UrlState | None = None,
    ) -> None:
        """GET the image and decode it at once; its bytes count against the budget meanwhile.

        An image whose key is in ``cached`` is not decoded (its bytes are dropped): it is a
        cache hit, unless the cache lost it, in which case step 3 fetches it again.

        Args:
            stored: the URL's stored answer, whose validators make this a conditional GET: a 304
                keeps its key and costs no body.
        """
        cap = self.config.max_image_bytes
        reserved = 0

        def reserve(headers: Mapping[str, str]) -> None:
            nonlocal reserved
            reserved = self.budget.acquire(_expected_size(headers, cap))

        conditions: dict[str, str] = {}
        if stored is not None and stored.etag:
            conditions["If-None-Match"] = stored.etag
        if stored is not None and stored.last_modified:
            conditions["If-Modified-Since"] = stored.last_modified
        try:
            try:
                with self.clock.stage("fetch (HTTP client)"):
                    response: FetchResult = self.client.get(
                        work.url,
                        accept=IMAGE_CONTENT_TYPES,
                        max_bytes=cap,
                        before_body=reserve,
                        headers=conditions,
                        not_modified=bool(conditions),
                    )
            except TaggingError as exc:
                work.error = exc
                return
            if response.status == 304 and stored is not None:
                work.key = stored.image_key
                work.cached = (cached or {}).get(work.key)
                self._saw(work, stored.image_key, response_freshness(response.headers), stored)
                return
            body = response.body
            work.headers = dict(response.headers)
            work.key = image_key(work.url, response.headers)
            self._saw(work, work.key, response_freshness(response.headers))
            del response
            if len(body) < reserved:
                # A body without Content-Length had the whole cap set aside: give back the rest.
                self.budget.release(reserved - len(body))
                reserved = len(body)
            if work.key not in (cached or {}):
                self._decode(work, body)
        finally:
            self.budget.release(reserved)

    def _decode(self, work: _Work, body: bytes) -> None:
        clock = self.clock
        try:
            with clock.stage("decode"):
                decoded = decode_image(body, draft_size=self.config.draft_size)
        except ImageDecodeError as exc:
            work.error = exc
            return
        with clock.stage("sha256"):
            work.sha256 = content_sha256(body)
        with clock.stage("perceptual hash"):
            work.phash = perceptual_hash(decoded.image)
        # Until inference the batch keeps a small image, not the decoded original; the thumbnail
        # (smaller still) is made from it too, which saves a copy of the original.
        with clock.stage("thumbnail (and reduction for the models)"):
            work.decoded = replace(
                decoded, image=model_image(decoded.image, self.config.model_image_size)
            )
            work.thumbnail = make_thumbnail(work.decoded.image)

    def _classify(self, works: list[_Work], *, color: bool) -> list[CacheEntry]:
        if not works:
            return []
        images = [w.decoded.image for w in works if w.decoded is not None]
        with self.clock.stage("Image Type model (resize + forward)", len(images)):
            types = self.classifier.predict(images)
        needs_color = [i for i, t in enumerate(types) if color and t.label != PLACEHOLDER]
        colors: dict[int, str | None] = {}
        if needs_color:
            try:
                with self.clock.stage("color model", len(needs_color)):
                    predicted = self.color_model.predict([images[i] for i in needs_color])
                colors = dict(zip(needs_color, predicted, strict=True))
            except TaggingError as exc:
                # The vendor failed: keep the Image Types, leave Color None (the seed's default)
                # and uncached as "none", so that the next request asks the vendor again.
                log.warning("color model failed for %d images: %s", len(needs_color), exc)
        entries = []
        for index, (work, prediction) in enumerate(zip(works, types, strict=True)):
            assert work.decoded is not None and work.key is not None and work.headers is not None
            headers = {k.lower(): v for k, v in work.headers.items()}
            entries.append(
                CacheEntry(
                    image_key=work.key,
                    url=work.url,
                    image_type=prediction.label,
                    color=colors.get(index),
                    confidence=round(float(prediction.confidence), PROBABILITY_PLACES),
                    probabilities=prediction.probabilities,
                    type_source="model",
                    color_source="model" if index in colors else "none",
                    model_version=self.classifier.version,
                    color_model_version=self.color_model.version if index in colors else None,
                    etag=headers.get("etag"),
                    last_modified=headers.get("last-modified"),
                    content_length=_int_or_none(headers.get("content-length")),
                    sha256=work.sha256,
                    phash=work.phash,
                    width=work.decoded.width,
                    height=work.decoded.height,
                    thumbnail=work.thumbnail,
                )
            )
        return entries

    def _result(
        self,
        work: _Work,
        fresh: dict[str, CacheEntry],
        thumbnails: bool,
        known_keys: Collection[str] = (),
    ) -> ImageResult:
        if work.error is not None:
            return ImageResult(
                url=work.url,
                image_key=work.key,
                error=str(work.error),
                error_code=work.error.code,
            )
        entry = work.cached or fresh[work.key or ""]
        return ImageResult(
            url=work.url,
            image_key=entry.image_key,
            image_type=entry.image_type or DEFAULT_IMAGE_TYPE,
            color=entry.color,
            confidence=entry.confidence,
            probabilities=entry.probabilities,
            cached=work.cached is not None,
            model_version=entry.model_version,
            color_model_version=entry.color_model_version,
            type_source=entry.type_source,
            color_source=entry.color_source,
            etag=entry.etag,
            last_modified=entry.last_modified,
            content_length=entry.content_length,
            sha256=entry.sha256,
            phash=entry.phash,
            width=entry.width,
            height=entry.height,
            thumbnail_b64=(
                base64.b64encode(entry.thumbnail).decode()
                if thumbnails and entry.thumbnail and entry.image_key not in known_keys
                else None
            ),
            fresh_until=work.fresh_until,
        )


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def model_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` if it fits in ``size``, else reduced (averaging whole blocks of pixels) to fit.

    Both models resize to far smaller inputs with a box filter themselves, so this changes little
    of what they see; JPEGs, which are drafted while decoding, rarely need it.
    """
    factor = max(-(-image.width // size[0]), -(-image.height // size[1]))
    return image if factor <= 1 else image.reduce(factor)


def _expected_size(headers: Mapping[str, str], cap: int) -> int:
    """The bytes a body will take: its Content-Length, or ``cap`` when that is unknown."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    declared = headers.get("content-length", "").strip()
    if encoding == "identity" and declared.isdigit():
        return min(int(declared), cap)
    return cap  # chunked, or compressed: up to the cap once decoded
