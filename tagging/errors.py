"""The errors Tagdesk raises on purpose.

Every one derives from :class:`TaggingError`, so a page or the CLI catches the base class and shows
its message. ``code`` is a short, stable identifier stored as a per-item status detail.
"""

from __future__ import annotations


class TaggingError(Exception):
    """Base class of every error Tagdesk raises on purpose."""

    code = "error"


class ConfigError(TaggingError):
    """The environment or a command line names something unusable."""

    code = "config"


class NotFoundError(TaggingError):
    """A named record (advertiser, scrape, image, model) does not exist."""

    code = "not_found"


class FetchError(TaggingError):
    """An outbound HTTP request failed: connection, status, or response shape."""

    code = "fetch_failed"


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


class SitemapError(TaggingError):
    """A sitemap is malformed, hostile, or over a size cap."""

    code = "bad_sitemap"


class ImageDecodeError(TaggingError):
    """Bytes that should be an image cannot be decoded safely."""

    code = "bad_image"


class ModelError(TaggingError):
    """A model artifact is missing, corrupt, or does not match its metadata."""

    code = "model"


class MLServerError(TaggingError):
    """The ML server failed to give a usable answer."""

    code = "ml_failure"


class MLServerUnavailable(MLServerError):
    """The ML server cannot be reached or timed out."""

    code = "ml_unavailable"


class MLServerAuthError(MLServerError):
    """The ML server refused our bearer token."""

    code = "ml_auth"


class MLServerBadResponse(MLServerError):
    """The ML server answered something that is not a valid response."""

    code = "ml_bad_response"


class PermissionDenied(TaggingError):
    """The signed-in user's role may not do this."""

    code = "permission_denied"


class AuthenticationError(TaggingError):
    """Sign-in failed: unknown user, wrong password, or throttled."""

    code = "authentication"
