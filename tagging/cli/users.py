"""``python -m tagging users ...``: accounts, managed by the machine's operator.

Whoever can run commands on this machine can read the database anyway, so these commands skip the
role check (``system=True``). That is how the first admin is made::

    python -m tagging users add alice --role admin            # prints a generated password once
    printf '%s\\n' "$PASSWORD" | python -m tagging users add bob --role analyst --password-stdin
    python -m tagging users list [--json]
    python -m tagging users set-role bob manager
    python -m tagging users disable bob
    python -m tagging users enable bob
    python -m tagging users passwd bob [--password-stdin]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tagging.config import Settings
from tagging.errors import InvalidInput

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

DESCRIPTION = """\
Accounts, managed by the machine's operator. Whoever can run commands here can read the database
anyway, so these commands need no signed-in admin: this is how the first admin is made.

  python -m tagging users add alice --role admin     # prints a generated password once
  printf '%s\\n' "$PASSWORD" | python -m tagging users add bob --role analyst --password-stdin
  python -m tagging users set-role bob manager
"""

ROLE_NAMES = ("analyst", "developer", "manager", "admin")
"""The values of ``db.models.Role``, spelled out so that ``--help`` needs no database import."""


def add_users_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``users`` command and its actions to ``subparsers`` (from ``add_subparsers``)."""
    users = subparsers.add_parser(
        "users",
        help="manage accounts (as the machine's operator)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="create an account")
    add.add_argument("name", help="the username (letters, digits and . _ @ + -)")
    add.add_argument("--role", required=True, choices=ROLE_NAMES)
    add.add_argument("--email", help="the address to sign in with through SSO (OpenID Connect)")
    password = add.add_mutually_exclusive_group()
    password.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    password.add_argument(
        "--no-password", action="store_true", help="an SSO-only account (needs --email)"
    )

    listing = actions.add_parser("list", help="list accounts")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")

    set_role = actions.add_parser("set-role", help="change an account's role")
    set_role.add_argument("name")
    set_role.add_argument("role", choices=ROLE_NAMES)

    disable = actions.add_parser("disable", help="stop an account from signing in")
    disable.add_argument("name")
    enable = actions.add_parser("enable", help="let a disabled account sign in again")
    enable.add_argument("name")

    passwd = actions.add_parser("passwd", help="set a new password (also lifts a sign-in lock)")
    passwd.add_argument("name")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )


@contextmanager
def _sessions() -> Iterator[sessionmaker[Session]]:
    """The app database's session factory, migrated first; the engine is closed afterwards."""
    from db.engine import make_engine, make_session_factory, migrate

    settings = Settings.from_env()
    migrate(settings.database_url, create=settings.creates_database)
    engine = make_engine(settings.database_url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """The password to set and whether it was generated (and so must be printed)."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise InvalidInput("--password-stdin: standard input gave no password")
        return password, False
    # 24 URL-safe characters: 144 random bits.
    return secrets.token_urlsafe(18), True


def _when(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands timestamps back without their zone)."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _list(sessions: sessionmaker[Session], as_json: bool) -> int:
    from db.accounts import list_users

    with sessions() as session:
        rows = [
            {
                "username": user.username,
                "email": user.email,
                "role": user.role,
                "disabled": user.disabled,
                "sso_only": user.password_hash is None,
                "failed_attempts": user.failed_attempts,
                "locked_until": _when(user.locked_until),
                "last_login_at": _when(user.last_login_at),
                "created_at": _when(user.created_at),
            }
            for user in list_users(session, None, system=True)
        ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no accounts yet: python -m tagging users add NAME --role admin")
    for row in rows:
        flags = "".join(
            [
                " · disabled" if row["disabled"] else "",
                " · SSO only" if row["sso_only"] else "",
                f" · locked until {row['locked_until']}" if row["locked_until"] else "",
            ]
        )
        last = row["last_login_at"] or "never"
        print(
            f"{row['username']:<24} {row['role']:<10} {row['email'] or '-':<32} "
            f"last sign-in {last}{flags}"
        )
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    """Run ``users ACTION``; returns the exit code.

    Raises:
        InvalidInput: a bad argument or field (name, role, email, password).
        Conflict: the username or email is taken, or the change would leave no enabled admin.
        NotFoundError: no such account.
    """
    from db.accounts import create_user, set_role
    from tagging.accounts import change_disabled, reset_password

    with _sessions() as sessions:
        if args.action == "list":
            return _list(sessions, args.json)

        password: str | None = None
        generated = False
        if args.action == "passwd" or (args.action == "add" and not args.no_password):
            password, generated = _password(args)
        elif args.action == "add" and not args.email:
            raise InvalidInput("--no-password needs --email: SSO matches accounts by email")

        with sessions.begin() as session:
            if args.action == "add":
                user = create_user(
                    session, None, args.name, args.role, password, args.email, system=True
                )
                message = f"added {user.username} ({user.role})"
            elif args.action == "set-role":
                user = set_role(session, None, args.name, args.role, system=True)
                message = f"{user.username} is now {user.role}"
            elif args.action in ("disable", "enable"):
                disable = args.action == "disable"
                user, _ = change_disabled(session, None, args.name, disable, system=True)
                message = f"{args.action}d {user.username}"
            elif args.action == "passwd":
                assert password is not None
                user, _ = reset_password(session, None, args.name, password, system=True)
                message = f"new password set for {user.username}"
            else:  # pragma: no cover - argparse allows only the actions above
                raise InvalidInput(f"unknown users action {args.action!r}")

    print(message)
    if generated:
        # Printed once, after the write succeeded; the database keeps only an argon2id hash.
        print(f"password (shown once, copy it now): {password}")
    return 0
