"""Account changes as user actions: a new password or a disabled account also ends the user's
open sessions, in every browser, in the same transaction (the app's session cookie survives
reloads, so an old session must not outlive a reset).

Storage is :mod:`db.accounts` (accounts, roles, the permission checks) and
:mod:`db.user_sessions` (the sessions behind the cookie).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.accounts import Actor, set_disabled, set_password
from db.models import User
from db.user_sessions import revoke_user_sessions


def reset_password(
    session: Session,
    actor: Actor | None,
    username: str,
    password: str,
    *,
    system: bool = False,
) -> tuple[User, int]:
    """Set a new password and sign every browser of that user out; ``(user, sessions ended)``.

    Raises:
        PermissionDenied: ``actor`` may not manage users.
        NotFoundError: no such account.
        InvalidInput: the password is too short or too long.
    """
    user = set_password(session, actor, username, password, system=system)
    return user, revoke_user_sessions(session, user.username)


def change_disabled(
    session: Session,
    actor: Actor | None,
    username: str,
    disabled: bool,
    *,
    system: bool = False,
) -> tuple[User, int]:
    """Disable (or enable) an account; disabling signs every browser of it out.

    Raises:
        PermissionDenied: ``actor`` may not manage users.
        NotFoundError: no such account.
        Conflict: it is the last enabled admin.
    """
    user = set_disabled(session, actor, username, disabled, system=system)
    ended = revoke_user_sessions(session, user.username) if disabled else 0
    return user, ended
