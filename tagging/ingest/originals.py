"""An advertiser's original image, fetched on demand for a closer look (the review page's details).

The image is fetched by the server through the guarded client (:mod:`.fetch`: allow-list, size and
time limits), decoded safely (:mod:`.images`) and re-encoded as a JPEG that fits a screen, so that
the browser never loads an advertiser-supplied URL or file as it is.
"""

from __future__ import annotations

from tagging.config import Settings
from tagging.ingest.fetch import client_from_settings
from tagging.ingest.images import decode_image, make_thumbnail

ORIGINAL_SIZE = (800, 600)
"""The box the returned JPEG fits in."""

MAX_ORIGINAL_BYTES = 15 * 1024 * 1024
"""A larger original is refused (``ResponseTooLargeError``)."""


def fetch_original(settings: Settings, url: str) -> bytes:
    """The image at ``url`` as a JPEG that fits in :data:`ORIGINAL_SIZE`.

    Raises:
        FetchError: the URL is blocked, unreachable, too slow, too large or not an image.
        ImageDecodeError: the body is not an image that can be decoded safely.
    """
    with client_from_settings(settings) as client:
        body = client.get(url, accept=("image/",), max_bytes=MAX_ORIGINAL_BYTES).body
    return make_thumbnail(decode_image(body, draft_size=ORIGINAL_SIZE).image, size=ORIGINAL_SIZE)
