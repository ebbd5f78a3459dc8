"""The root of every error Tagdesk raises on purpose, and the generic errors callers act on.

They live here, at the bottom layer, because ``db`` raises them and may not import ``tagging``;
:mod:`tagging.errors` re-exports them beside the library's own, and draws the whole tree. Import
errors from :mod:`tagging.errors` above this layer.
"""

from __future__ import annotations


class TaggingError(Exception):
    """Base class of every error Tagdesk raises on purpose.

    ``code`` is a short, stable identifier: stored as a per-item status detail, printed by the
    CLI's ``--json`` and returned by the APIs. ``http_status`` is what an API answers for it.
    """

    code = "error"
    http_status = 400


class InvalidInput(TaggingError):
    """A value given by a caller is unusable: unknown field or label, bad name, weak password."""

    code = "invalid_input"
    http_status = 422


class NotFoundError(TaggingError):
    """A named record (advertiser, scrape, image, finding, model) does not exist."""

    code = "not_found"
    http_status = 404


class Conflict(TaggingError):
    """The request clashes with the current state: a name taken, a finding already handled."""

    code = "conflict"
    http_status = 409


class PermissionDenied(TaggingError):
    """The signed-in user's role may not do this."""

    code = "permission_denied"
    http_status = 403


class AuthenticationError(TaggingError):
    """Sign-in failed: unknown user, wrong password, bad token, or throttled."""

    code = "authentication"
    http_status = 401
