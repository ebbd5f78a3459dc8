"""One clear line for any error a command ends with (the traceback only with ``--debug``).

``python -m tagging`` prints ``error: <line>`` on stderr and exits 1 for every failure: Tagdesk's
own errors, a database that is corrupt, missing or unreachable, a full disk, a failed migration,
and anything unexpected.
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from tagging.errors import TaggingError


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def describe(exc: BaseException) -> tuple[str, str]:
    """``(message, code)`` for ``exc``: the message is one line, the code a stable identifier."""
    if isinstance(exc, TaggingError):
        return _first_line(str(exc)) or type(exc).__name__, exc.code
    if isinstance(exc, DBAPIError):
        detail = _first_line(str(exc.orig)) or type(exc.orig).__name__
        return f"the database failed: {detail}", "database"
    if isinstance(exc, SQLAlchemyError):
        detail = _first_line(str(exc).split("(Background on this error")[0])
        return f"the database failed: {detail or type(exc).__name__}", "database"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"no space left on the disk{where}", "disk_full"
        reason = exc.strerror or _first_line(str(exc)) or type(exc).__name__
        return f"{reason}{where}", "os_error"
    if type(exc).__module__.startswith("alembic"):
        return f"the migration failed: {_first_line(str(exc))}", "migration"
    detail = _first_line(str(exc))
    return f"unexpected {type(exc).__name__}" + (f": {detail}" if detail else ""), "internal"
