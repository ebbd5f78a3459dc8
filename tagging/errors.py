"""Every error Tagdesk raises on purpose, in one tree callers can act on.

::

    TaggingError                      the root: a page shows st.error, the CLI one line + exit 1
    ├── InvalidInput                  a caller's value is unusable (API: 422)
    │   ├── SitemapError              a sitemap is malformed, hostile or over a cap
    │   └── ImageDecodeError          bytes that should be an image cannot be decoded safely
    ├── NotFoundError                 no such advertiser, scrape, image, finding, model (404)
    ├── Conflict                      clashes with the current state: a name taken, a scrape
    │                                 already running, the last enabled admin (409)
    ├── PermissionDenied              the role may not do this (403)
    ├── AuthenticationError           sign-in or token refused (401)
    ├── ConfigError                   the environment or a command line names something unusable
    ├── ModelError                    a model artifact is missing, corrupt or inconsistent
    ├── FetchError                    an outbound request failed (API: 502)
    │   ├── BlockedURLError           the guarded client refused the URL
    │   ├── FetchTimeoutError         the remote server did not answer in time
    │   ├── ResponseTooLargeError     the body is over the caller's byte cap
    │   ├── UnexpectedContentTypeError
    │   └── HTTPStatusError*          a non-2xx answer, with ``.status`` (code as FetchError's)
    ├── MLServerError                 the ML server gave no usable answer (API: 502)
    │   ├── MLServerUnavailable       unreachable or timed out (503)
    │   ├── MLServerAuthError         our token was refused
    │   └── MLServerBadResponse       an answer that is not a valid response
    ├── ColorVendorError*             the third-party color model gave no usable answer
    ├── ArchiveUnavailable*           the training-image archive's bucket cannot be used (503)
    └── TrackingUnavailable*          MLflow's tracking store or server cannot be used (503)

The root and the generic errors are defined in :mod:`db.errors` (``db`` raises them and sits
below this package) and re-exported here, so that callers import every error from this module.
The four marked ``*`` belong to their module's interface and live there:
:class:`tagging.ingest.fetch.HTTPStatusError`, :class:`tagging.ml.color.ColorVendorError`,
:class:`tagging.datasets.archive.ArchiveUnavailable` and
:class:`tagging.ml.tracking.TrackingUnavailable`.
``code`` is a short, stable identifier stored as a per-item status detail; ``http_status`` is what
an API answers (400 where the tree names none).
"""

from __future__ import annotations

from db.errors import (
    AuthenticationError,
    Conflict,
    InvalidInput,
    NotFoundError,
    PermissionDenied,
    TaggingError,
)

__all__ = [
    "AuthenticationError",
    "BlockedURLError",
    "ConfigError",
    "Conflict",
    "FetchError",
    "FetchTimeoutError",
    "ImageDecodeError",
    "InvalidInput",
    "MLServerAuthError",
    "MLServerBadResponse",
    "MLServerError",
    "MLServerUnavailable",
    "ModelError",
    "NotFoundError",
    "PermissionDenied",
    "ResponseTooLargeError",
    "SitemapError",
    "TaggingError",
    "UnexpectedContentTypeError",
]


class ConfigError(TaggingError):
    """The environment or a command line names something unusable."""

    code = "config"


class FetchError(TaggingError):
    """An outbound HTTP request failed: connection, status, or response shape."""

    code = "fetch_failed"
    http_status = 502


class BlockedURLError(FetchError):
    """The guarded client refused a URL: bad scheme or a private address not allow-listed."""

    code = "blocked_url"


class FetchTimeoutError(FetchError):
    """The remote server did not answer in time."""

    code = "timeout"


class ResponseTooLargeError(FetchError):
    """The response body is larger than the caller's byte cap."""

    code = "too_large"


class UnexpectedContentTypeError(FetchError):
    """The response's Content-Type is not one the caller accepts."""

    code = "bad_content_type"


class SitemapError(InvalidInput):
    """A sitemap is malformed, hostile, or over a size cap."""

    code = "bad_sitemap"


class ImageDecodeError(InvalidInput):
    """Bytes that should be an image cannot be decoded safely."""

    code = "bad_image"


class ModelError(TaggingError):
    """A model artifact is missing, corrupt, or does not match its metadata."""

    code = "model"


class MLServerError(TaggingError):
    """The ML server failed to give a usable answer."""

    code = "ml_failure"
    http_status = 502


class MLServerUnavailable(MLServerError):
    """The ML server cannot be reached or timed out."""

    code = "ml_unavailable"
    http_status = 503


class MLServerAuthError(MLServerError):
    """The ML server refused our bearer token."""

    code = "ml_auth"


class MLServerBadResponse(MLServerError):
    """The ML server answered something that is not a valid response."""

    code = "ml_bad_response"
