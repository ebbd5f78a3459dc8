"""Classification of a batch of image URLs: fetch, recognise, decode, classify, cache.

This is the ML server's work, kept free of HTTP-framework code so that the dataset and model pages
(and the benchmarks) can run it in-process.

An image already seen costs one HEAD request: its URL's last image_key is known, and if the HEAD
headers give the same key the cached result is returned without downloading or decoding anything.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from db.vocab import DEFAULT_IMAGE_TYPE, PLACEHOLDER
from tagging.errors import FetchError, ImageDecodeError, TaggingError
from tagging.ingest.fetch import FetchResult, GuardedClient
from tagging.ingest.images import (
    DecodedImage,
    content_sha256,
    decode_image,
    image_key,
    make_thumbnail,
    perceptual_hash,
)
from tagging.ml.color import ColorModel
from tagging.ml.inference import TypeClassifier
from tagging.server.cache import CacheEntry, MLCache
from tagging.server.schemas import ImageResult

log = logging.getLogger(__name__)

IMAGE_CONTENT_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


@dataclass(frozen=True)
class PipelineConfig:
    """How the pipeline spends its resources."""

    fetch_workers: int = 8
    """Threads fetching and decoding; both release the GIL while they wait or decode."""
    draft_size: tuple[int, int] = (160, 120)
    max_image_bytes: int = 15 * 1024 * 1024


@dataclass
class _Work:
    """One URL's progress through the pipeline."""

    url: str
    key: str | None = None
    headers: dict[str, str] | None = None
    body: bytes | None = None
    decoded: DecodedImage | None = None
    sha256: str | None = None
    phash: str | None = None
    thumbnail: bytes | None = None
    cached: CacheEntry | None = None
    error: TaggingError | None = None


class ClassificationPipeline:
    """Classifies batches of URLs with the Image Type model and the color adapter, cache first."""

    def __init__(
        self,
        client: GuardedClient,
        classifier: TypeClassifier,
        color_model: ColorModel,
        cache: MLCache,
        config: PipelineConfig | None = None,
    ) -> None:
        self.client = client
        self.classifier = classifier
        self.color_model = color_model
        self.cache = cache
        self.config = config or PipelineConfig()
        self._pool = ThreadPoolExecutor(
            max_workers=self.config.fetch_workers, thread_name_prefix="classify"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def classify(
        self, urls: Sequence[str], *, color: bool = True, thumbnails: bool = True
    ) -> list[ImageResult]:
        """Classify ``urls``; one result per URL, in order, errors included."""
        unique = list(dict.fromkeys(urls))
        known_keys = self.cache.keys_for_urls(unique)
        known = self.cache.get_many(known_keys.values())
        works = [_Work(url) for url in unique]

        # 1. Recognise: HEAD for URLs seen before; GET the rest (and the changed ones).
        list(self._pool.map(lambda w: self._fetch(w, known_keys.get(w.url), known), works))

        # 2. A GET may still land on a cached key (the URL moved back, or the URL table was lost).
        fetched = [w for w in works if w.error is None and w.cached is None]
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
                if work.body is None:
                    self._get(work)
                if work.error is None:
                    work.cached = None

        # 3. Decode what is new, in parallel.
        misses = [w for w in works if w.error is None and w.cached is None]
        list(self._pool.map(self._decode, misses))
        decoded = [w for w in misses if w.decoded is not None]

        # 4. Classify in one batch per model.
        entries = self._classify(decoded, color=color)
        if entries:
            entries = self.cache.store(entries, {w.url: w.key for w in decoded if w.key})
        hit_urls = {w.url: w.key for w in works if w.cached is not None and w.key}
        self.cache.touch_urls(hit_urls)

        fresh = {entry.image_key: entry for entry in entries}
        by_url = {w.url: self._result(w, fresh, thumbnails) for w in works}
        return [by_url[url] for url in urls]

    def _fetch(self, work: _Work, known_key: str | None, known: dict[str, CacheEntry]) -> None:
        if known_key is not None and known_key in known:
            try:
                head = self.client.head(work.url)
                key = image_key(work.url, head.headers)
                if key == known_key:
                    work.key, work.cached = key, known[key]
                    return
            except FetchError:
                pass  # Some CDNs refuse HEAD: a GET settles it.
        self._get(work)

    def _get(self, work: _Work) -> None:
        try:
            response: FetchResult = self.client.get(
                work.url, accept=IMAGE_CONTENT_TYPES, max_bytes=self.config.max_image_bytes
            )
        except TaggingError as exc:
            work.error = exc
            return
        work.headers = dict(response.headers)
        work.body = response.body
        work.key = image_key(work.url, response.headers)

    def _decode(self, work: _Work) -> None:
        assert work.body is not None
        try:
            work.decoded = decode_image(work.body, draft_size=self.config.draft_size)
        except ImageDecodeError as exc:
            work.error = exc
            return
        work.sha256 = content_sha256(work.body)
        work.phash = perceptual_hash(work.decoded.image)
        work.thumbnail = make_thumbnail(work.decoded.image)
        work.body = None  # The bytes are not needed any more; keep the batch's memory small.

    def _classify(self, works: list[_Work], *, color: bool) -> list[CacheEntry]:
        if not works:
            return []
        images = [w.decoded.image for w in works if w.decoded is not None]
        types = self.classifier.predict(images)
        needs_color = [i for i, t in enumerate(types) if color and t.label != PLACEHOLDER]
        colors: dict[int, str | None] = {}
        if needs_color:
            try:
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
                    confidence=round(float(prediction.confidence), 4),
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

    def _result(self, work: _Work, fresh: dict[str, CacheEntry], thumbnails: bool) -> ImageResult:
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
                if thumbnails and entry.thumbnail
                else None
            ),
        )


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
