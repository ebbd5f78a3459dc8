"""The error tree: one root, unique codes, and the HTTP statuses the docstrings promise."""

from __future__ import annotations

import re

import pytest

import db.errors
import tagging.errors
from tagging.errors import TaggingError

ERRORS = [getattr(tagging.errors, name) for name in tagging.errors.__all__]


def test_every_exported_error_is_a_tagging_error() -> None:
    assert TaggingError in ERRORS
    for error in ERRORS:
        assert isinstance(error, type) and issubclass(error, TaggingError), error


def test_every_tagging_error_is_exported() -> None:
    """No error class of either module is left out of ``__all__``."""
    defined = {
        value
        for module in (db.errors, tagging.errors)
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, TaggingError)
    }
    assert defined == set(ERRORS)


def _subclasses(error: type) -> set[type]:
    direct: set[type] = set(error.__subclasses__())
    return direct.union(*(_subclasses(sub) for sub in direct))


def test_errors_defined_elsewhere_are_drawn_in_the_tree() -> None:
    import tagging.ingest.fetch
    import tagging.ml.color

    doc = tagging.errors.__doc__ or ""
    # A private subclass (``_NotFound`` in the ML client) is caught inside its module.
    ours = {
        e
        for e in _subclasses(TaggingError)
        if e.__module__.split(".")[0] in ("db", "tagging") and not e.__name__.startswith("_")
    }
    assert {tagging.ingest.fetch.HTTPStatusError, tagging.ml.color.ColorVendorError} <= ours
    for error in ours - set(ERRORS):
        assert f"── {error.__name__}*" in doc, error
        assert f"{error.__module__}.{error.__name__}" in doc, error


def test_codes_are_unique() -> None:
    codes = [error.code for error in ERRORS]
    assert len(codes) == len(set(codes)), sorted(codes)
    for error in ERRORS:
        assert re.fullmatch(r"[a-z_]+", error.code), error


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("TaggingError", 400),
        ("InvalidInput", 422),
        ("SitemapError", 422),
        ("ImageDecodeError", 422),
        ("NotFoundError", 404),
        ("Conflict", 409),
        ("PermissionDenied", 403),
        ("AuthenticationError", 401),
        ("ConfigError", 400),
        ("ModelError", 400),
        ("FetchError", 502),
        ("BlockedURLError", 502),
        ("MLServerError", 502),
        ("MLServerUnavailable", 503),
    ],
)
def test_http_status(name: str, status: int) -> None:
    assert getattr(tagging.errors, name).http_status == status


def test_the_docstring_draws_every_error_under_its_parent() -> None:
    """Each line of the tree names an error, indented one level below its direct parent."""
    doc = tagging.errors.__doc__ or ""
    drawn: dict[str, int] = {}
    parents: list[str] = []
    for line in doc.splitlines():
        match = re.match(r"^    ((?:[│ ]   )*)(?:[├└]── )?([A-Z][A-Za-z]+)(?:\s|$)", line)
        if match is None or match.group(2) not in tagging.errors.__all__:
            continue
        name = match.group(2)
        depth = len(match.group(1)) // 4 + (1 if "── " in line else 0)
        del parents[depth:]
        error = getattr(tagging.errors, name)
        if parents:
            assert error.__bases__ == (getattr(tagging.errors, parents[-1]),), name
        drawn[name] = depth
        parents.append(name)
    assert set(drawn) == set(tagging.errors.__all__)
