"""Who may do what: roles, permissions, and the check every write makes.

Hidden pages are not authorization: each library function that writes calls :func:`require`
with the acting user, whatever the caller (page, CLI, HTTP endpoint).

Below those: argon2id passwords, sign-in with its throttle (:func:`authenticate`) or through
OpenID Connect (:func:`actor_for_email`), account management (admins, or the operator's CLI with
``system=True``), advertiser bearer tokens, and the demo accounts.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from db.errors import (
    AuthenticationError,
    Conflict,
    InvalidInput,
    NotFoundError,
    PermissionDenied,
)
from db.models import Advertiser, AdvertiserToken, Role, User, as_utc, utcnow


class Permission(enum.StrEnum):
    READ = "read"
    """See sitemaps, history and findings."""
    VIEW_CHARTS = "view_charts"
    """Open the Misclassification page (analysts work from the review page instead)."""
    FIX = "fix"
    """Record manual fixes (one by one or in bulk)."""
    RELAUNCH = "relaunch"
    """Start a scrape."""
    MODELS = "models"
    """Datasets, training, promotion (the dev team's pages)."""
    MANAGE_USERS = "manage_users"
    """Accounts and advertiser tokens."""


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ANALYST: frozenset({Permission.READ, Permission.FIX, Permission.RELAUNCH}),
    Role.DEVELOPER: frozenset(
        {
            Permission.READ,
            Permission.VIEW_CHARTS,
            Permission.FIX,
            Permission.RELAUNCH,
            Permission.MODELS,
        }
    ),
    Role.MANAGER: frozenset({Permission.READ, Permission.VIEW_CHARTS}),
    Role.ADMIN: frozenset(Permission),
}


@dataclass(frozen=True)
class Actor:
    """The authenticated user (or advertiser token) on whose behalf a write is made."""

    username: str
    role: Role

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS.get(Role(self.role), frozenset())


def require(actor: Actor | None, permission: Permission) -> Actor:
    """Return ``actor`` if it may ``permission``; raise :class:`PermissionDenied` otherwise."""
    if actor is None:
        raise PermissionDenied("sign in first")
    if not actor.can(permission):
        raise PermissionDenied(
            f"{actor.username} ({actor.role}) may not {permission.value.replace('_', ' ')}"
        )
    return actor


# --- passwords ---------------------------------------------------------------------------------

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
"""Argon2 costs time in proportion to the input: a cap keeps a huge "password" from being a DoS."""
MAX_USERNAME_LENGTH = 200
USERNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._@+-]*")
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MAX_EMAIL_LENGTH = 320

FAILURES_BEFORE_LOCK = 5
FIRST_LOCK = timedelta(seconds=30)
LONGEST_LOCK = timedelta(minutes=15)

WRONG_CREDENTIALS = "wrong username or password"
DISABLED = "this account is disabled"
SYSTEM_ACTOR = "system"
"""Who ``created_by`` names when the CLI (the machine's operator) acts with ``system=True``."""

# argon2id with the library's defaults (RFC 9106's low-memory profile). When those defaults change
# in a new argon2-cffi, authenticate() rehashes each password at its next successful sign-in.
_hasher = PasswordHasher()
_dummy_hash: str | None = None


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (salted; parameters included in the string)."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; a malformed hash matches nothing."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def password_needs_rehash(password_hash: str) -> bool:
    """Whether ``password_hash`` was made with other parameters than :func:`hash_password` uses."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def _waste_a_verification(password: str) -> None:
    """Spend the time of one real verification, so that unknown users answer as slowly."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password(secrets.token_urlsafe(16))
    verify_password(_dummy_hash, password)


def _validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"a password may have at most {MAX_PASSWORD_LENGTH} characters")
    return password


# --- signing in --------------------------------------------------------------------------------


def _lock_delay(failures: int) -> timedelta:
    """30 s at the 5th failure in a row, doubled at each further one, at most 15 min."""
    doublings = min(failures - FAILURES_BEFORE_LOCK, 10)
    return min(FIRST_LOCK * 2**doublings, LONGEST_LOCK)


def _locked_message(until: datetime, now: datetime) -> str:
    seconds = max(1, math.ceil((until - now).total_seconds()))
    return f"too many failed sign-ins: try again in {seconds} s"


def _normalize_username(username: str) -> str:
    return username.strip().lower()


CLIENT_MAX_FAILURES = 10
CLIENT_WINDOW = timedelta(minutes=15)
"""A client (an address, or a browser session) may fail this many sign-ins per window, whatever
the usernames tried; then it waits until its oldest failure in the window is that old."""
THROTTLE_MAX_ENTRIES = 10_000
"""Clients and unknown usernames remembered at most (oldest dropped first): memory stays bounded."""
UNKNOWN_USER_MEMORY = timedelta(days=1)
"""How long an unknown username's failures are remembered after its last one."""


def _client_message(until: datetime, now: datetime) -> str:
    seconds = max(1, math.ceil((until - now).total_seconds()))
    return f"too many failed sign-ins from here: try again in {seconds} s"


class SignInThrottle:
    """What :func:`authenticate` remembers in memory between attempts (thread-safe).

    * Failed sign-ins per client (the caller's key: an address, or a browser session), across
      every username: :data:`CLIENT_MAX_FAILURES` per :data:`CLIENT_WINDOW`.
    * Failed sign-ins of usernames that have no password account, locked exactly like real
      accounts (5 failures → 30 s, doubling), so that the lock message does not tell which
      usernames exist.

    One per process (the app keeps it in ``st.cache_resource``); several app processes each keep
    their own, which only makes the per-client limit that many times looser.
    """

    def __init__(
        self,
        max_failures: int = CLIENT_MAX_FAILURES,
        window: timedelta = CLIENT_WINDOW,
        max_entries: int = THROTTLE_MAX_ENTRIES,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._clients: dict[str, list[datetime]] = {}
        self._unknown: dict[str, tuple[int, datetime | None, datetime]] = {}

    def check_client(self, client: str, now: datetime) -> None:
        """Raise :class:`AuthenticationError` while ``client`` has used up its failures."""
        with self._lock:
            recent = self._recent(client, now)
            if len(recent) >= self.max_failures:
                until = recent[len(recent) - self.max_failures] + self.window
                raise AuthenticationError(_client_message(until, now))

    def client_failed(self, client: str, now: datetime) -> None:
        with self._lock:
            recent = self._recent(client, now)
            recent.append(now)
            self._clients.pop(client, None)
            self._clients[client] = recent  # most recent last: the oldest is dropped first
            _bound(self._clients, self.max_entries)

    def unknown_user_locked_until(self, username: str, now: datetime) -> datetime | None:
        """When the lock of this username (which has no password account) ends, if it is on."""
        with self._lock:
            entry = self._unknown.get(username)
            if entry is None or entry[1] is None or entry[1] <= now:
                return None
            return entry[1]

    def unknown_user_failed(self, username: str, now: datetime) -> datetime | None:
        """Count a failure of this username; return the lock it starts, as for real accounts."""
        with self._lock:
            failures, _, last = self._unknown.pop(username, (0, None, now))
            if now - last > UNKNOWN_USER_MEMORY:
                failures = 0
            failures += 1
            lock = now + _lock_delay(failures) if failures >= FAILURES_BEFORE_LOCK else None
            self._unknown[username] = (failures, lock, now)
            _bound(self._unknown, self.max_entries)
            return lock

    def _recent(self, client: str, now: datetime) -> list[datetime]:
        return [moment for moment in self._clients.get(client, ()) if now - moment < self.window]


def _bound(entries: dict[str, Any], size: int) -> None:
    """Drop the oldest entries of ``entries`` (insertion order) down to ``size``."""
    while len(entries) > size:
        del entries[next(iter(entries))]


def _normalize_email(email: str) -> str:
    return email.strip().lower()


def authenticate(
    session: Session,
    username: str,
    password: str,
    *,
    now: datetime | None = None,
    client: str | None = None,
    throttle: SignInThrottle | None = None,
) -> Actor:
    """The :class:`Actor` whose ``username`` and ``password`` these are.

    Unknown users, wrong passwords, locked and password-less (OpenID Connect only) accounts all
    fail in about the same time: each attempt runs one argon2 verification, against a dummy hash
    when there is no real one to check. Unknown users and wrong passwords get the same message.
    After 5 failures in a row the account is locked for 30 s, doubled at each further failure up
    to 15 min; a success resets the count.

    With a ``throttle`` (the app's, one per process), usernames without a password account are
    locked in the same way, so that the lock message does not tell which usernames exist; with a
    ``client`` too (the caller's address, or its browser session), that client may fail at most
    :data:`CLIENT_MAX_FAILURES` sign-ins per :data:`CLIENT_WINDOW`, whatever the usernames.

    The failure count is written to ``session`` before the error is raised, so catch
    :class:`AuthenticationError` *inside* the transaction, or the rollback forgets the failure and
    the throttle never engages::

        with sessions.begin() as session:
            try:
                actor = authenticate(session, username, password)
            except AuthenticationError as exc:
                error = exc

    Raises:
        AuthenticationError: wrong credentials, a locked account or client, or a disabled account.
    """
    now = as_utc(now) or utcnow()
    if throttle is not None and client is not None:
        # Before any lookup or hashing: a throttled client costs nothing and learns nothing.
        throttle.check_client(client, now)

    def fail(message: str) -> AuthenticationError:
        if throttle is not None and client is not None:
            throttle.client_failed(client, now)
        return AuthenticationError(message)

    name = _normalize_username(username)
    too_long = len(password) > MAX_PASSWORD_LENGTH
    # FOR UPDATE: concurrent attempts on one account count every failure (PostgreSQL; SQLite's
    # BEGIN IMMEDIATE serializes them anyway).
    user = session.scalar(select(User).where(User.username == name).with_for_update())
    if user is None or user.password_hash is None:
        _waste_a_verification(password[:MAX_PASSWORD_LENGTH])
        if throttle is None:
            raise fail(WRONG_CREDENTIALS)
        lock = throttle.unknown_user_locked_until(name, now)
        if lock is None:
            lock = throttle.unknown_user_failed(name, now)
        raise fail(WRONG_CREDENTIALS if lock is None else _locked_message(lock, now))

    locked_until = as_utc(user.locked_until)
    if locked_until is not None and locked_until > now:
        _waste_a_verification(password[:MAX_PASSWORD_LENGTH])
        raise fail(_locked_message(locked_until, now))

    if too_long:
        # No password is that long (see _validate_password), and hashing it would cost too much.
        _waste_a_verification(password[:MAX_PASSWORD_LENGTH])
    if too_long or not verify_password(user.password_hash, password):
        user.failed_attempts = (user.failed_attempts or 0) + 1
        new_lock: datetime | None = None
        if user.failed_attempts >= FAILURES_BEFORE_LOCK:
            new_lock = now + _lock_delay(user.failed_attempts)
            user.locked_until = new_lock
        session.flush()
        if new_lock is not None:
            raise fail(_locked_message(new_lock, now))
        raise fail(WRONG_CREDENTIALS)

    # Said only after the right password, so that nobody else learns the account exists.
    if user.disabled:
        raise AuthenticationError(DISABLED)

    user.failed_attempts = 0
    user.locked_until = None
    user.last_login_at = now
    if password_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    session.flush()
    return Actor(username=user.username, role=Role(user.role))


def account_actor(session: Session, username: str) -> Actor | None:
    """``username``'s :class:`Actor` as the database has it now; None when the account is gone or
    disabled. The app calls it on every run of a signed-in session, so that disabling or demoting
    a user takes effect at their next click (one indexed query)."""
    user = session.scalar(select(User).where(User.username == _normalize_username(username)))
    if user is None or user.disabled:
        return None
    return Actor(username=user.username, role=Role(user.role))


def actor_for_email(session: Session, email: str, *, now: datetime | None = None) -> Actor:
    """The :class:`Actor` of the account with ``email``, for a user signed in by OpenID Connect.

    Accounts are never made on the fly: an admin creates them with the person's email.

    Raises:
        AuthenticationError: no account has this email, or it is disabled.
    """
    normalized = _normalize_email(email or "")
    if not normalized:
        raise AuthenticationError("your SSO account has no email address; ask an admin")
    user = session.scalar(select(User).where(User.email == normalized))
    if user is None:
        raise AuthenticationError(f"no Tagdesk account for {normalized}; ask an admin")
    if user.disabled:
        raise AuthenticationError(DISABLED)
    user.last_login_at = as_utc(now) or utcnow()
    session.flush()
    return Actor(username=user.username, role=Role(user.role))


# --- managing accounts -------------------------------------------------------------------------


def _authorize(session: Session, actor: Actor | None, *, system: bool) -> str:
    """Check that ``actor`` may manage users; return the name to record as the author.

    The role in ``actor`` comes from the moment of sign-in, so it is checked again against the
    database: an admin who has since been disabled or demoted loses the right at once.
    """
    if system:
        return actor.username if actor is not None else SYSTEM_ACTOR
    require(actor, Permission.MANAGE_USERS)
    assert actor is not None  # require() raised otherwise
    user = session.scalar(select(User).where(User.username == actor.username))
    if (
        user is None
        or user.disabled
        or not Actor(user.username, Role(user.role)).can(Permission.MANAGE_USERS)
    ):
        raise PermissionDenied(f"{actor.username} may no longer manage users: sign in again")
    return actor.username


def _role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise InvalidInput(f"unknown role {role!r}: one of {choices}") from None


def get_user(session: Session, username: str) -> User:
    """The account called ``username``.

    Raises:
        NotFoundError: there is none.
    """
    user = session.scalar(select(User).where(User.username == _normalize_username(username)))
    if user is None:
        raise NotFoundError(f"no account named {username!r}")
    return user


def create_user(
    session: Session,
    actor: Actor | None,
    username: str,
    role: Role | str,
    password: str | None = None,
    email: str | None = None,
    *,
    system: bool = False,
) -> User:
    """Create an account. Without a password it can only sign in through OpenID Connect (email).

    ``username`` is stored in lower case: letters, digits and ``. _ @ + -``, at most 200.
    ``system=True`` skips the permission check: only for the CLI and the demo set-up.

    Raises:
        PermissionDenied: ``actor`` may not manage users.
        InvalidInput: an invalid field (username, role, email, password).
        Conflict: the username or the email is taken.
    """
    _authorize(session, actor, system=system)
    name = _normalize_username(username)
    if not name:
        raise InvalidInput("an account needs a username")
    if len(name) > MAX_USERNAME_LENGTH:
        raise InvalidInput(f"a username may have at most {MAX_USERNAME_LENGTH} characters")
    if not USERNAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"invalid username {username!r}: use letters, digits and . _ @ + - "
            "(starting with a letter or digit)"
        )
    checked_role = _role(role)
    address = _normalize_email(email) if email else None
    if address is not None and (
        len(address) > MAX_EMAIL_LENGTH or not EMAIL_PATTERN.fullmatch(address)
    ):
        raise InvalidInput(f"invalid email address {email!r}")
    if password is None and address is None:
        raise InvalidInput("an account needs a password, or an email to sign in with SSO")
    password_hash = hash_password(_validate_password(password)) if password is not None else None

    if session.scalar(select(User.id).where(User.username == name)) is not None:
        raise Conflict(f"the username {name!r} is taken")
    if address and session.scalar(select(User.id).where(User.email == address)) is not None:
        raise Conflict(f"another account has the email {address}")
    user = User(
        username=name,
        email=address,
        password_hash=password_hash,
        role=checked_role.value,
        disabled=False,
        failed_attempts=0,
    )
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError as exc:
        # Another transaction took the name or email between our check and our insert.
        raise Conflict(f"the username {name!r} or the email is taken") from exc
    return user


def _keep_an_admin(session: Session, user: User) -> None:
    """Refuse to let ``user`` stop being an enabled admin when no other enabled admin is left."""
    if user.role != Role.ADMIN or user.disabled:
        return
    # Lock every enabled admin row, in id order: two admins demoting each other at once must not
    # both see the other one still enabled (PostgreSQL re-checks the WHERE after the wait).
    admins = session.scalars(
        select(User.id)
        .where(User.role == Role.ADMIN.value, User.disabled.is_(False))
        .order_by(User.id)
        .with_for_update()
    ).all()
    if not [admin_id for admin_id in admins if admin_id != user.id]:
        raise Conflict(
            f"{user.username} is the last enabled admin: add or enable another admin first"
        )


def set_role(
    session: Session,
    actor: Actor | None,
    username: str,
    role: Role | str,
    *,
    system: bool = False,
) -> User:
    """Give ``username`` another role.

    Raises:
        PermissionDenied: ``actor`` may not manage users.
        NotFoundError: no such account.
        InvalidInput: an unknown role.
        Conflict: it would demote the last enabled admin.
    """
    _authorize(session, actor, system=system)
    new_role = _role(role)
    user = get_user(session, username)
    if user.role == new_role.value:
        return user
    if new_role != Role.ADMIN:
        _keep_an_admin(session, user)
    user.role = new_role.value
    session.flush()
    return user


def set_password(
    session: Session,
    actor: Actor | None,
    username: str,
    password: str,
    *,
    system: bool = False,
) -> User:
    """Set ``username``'s password (at least 10 characters); this also lifts a sign-in lock.

    Raises:
        PermissionDenied: ``actor`` may not manage users.
        NotFoundError: no such account.
        InvalidInput: the password is too short or too long.
    """
    _authorize(session, actor, system=system)
    user = get_user(session, username)
    user.password_hash = hash_password(_validate_password(password))
    user.failed_attempts = 0
    user.locked_until = None
    session.flush()
    return user


def set_disabled(
    session: Session,
    actor: Actor | None,
    username: str,
    disabled: bool,
    *,
    system: bool = False,
) -> User:
    """Disable (or enable again) ``username``; a disabled account cannot sign in.

    Enabling also lifts a sign-in lock.

    Raises:
        PermissionDenied: ``actor`` may not manage users.
        NotFoundError: no such account.
        Conflict: it would disable the last enabled admin.
    """
    _authorize(session, actor, system=system)
    user = get_user(session, username)
    if user.disabled == disabled:
        return user
    if disabled:
        _keep_an_admin(session, user)
    else:
        user.failed_attempts = 0
        user.locked_until = None
    user.disabled = disabled
    session.flush()
    return user


def list_users(session: Session, actor: Actor | None, *, system: bool = False) -> list[User]:
    """Every account, by username.

    Raises:
        PermissionDenied: ``actor`` may not manage users.
    """
    _authorize(session, actor, system=system)
    return list(session.scalars(select(User).order_by(User.username)))


# --- advertiser tokens -------------------------------------------------------------------------

MAX_TOKEN_LENGTH = 512
TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)
"""``last_used_at`` is written at most this often, not on every request."""


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_advertiser_token(
    session: Session,
    actor: Actor | None,
    advertiser_id: int,
    label: str | None = None,
    *,
    system: bool = False,
) -> str:
    """Make a bearer token for an advertiser's own front end and return it.

    The plain token is returned here only: the database keeps its SHA-256.

    Raises:
        PermissionDenied: ``actor`` may not manage users.
        NotFoundError: no such advertiser.
        InvalidInput: the label is too long.
    """
    author = _authorize(session, actor, system=system)
    advertiser = session.get(Advertiser, advertiser_id)
    if advertiser is None:
        raise NotFoundError(f"no advertiser with id {advertiser_id}")
    label = (label or "").strip() or None
    if label is not None and len(label) > 200:
        raise InvalidInput("a token label may have at most 200 characters")
    token = secrets.token_urlsafe(32)
    session.add(
        AdvertiserToken(
            advertiser_id=advertiser.id,
            token_sha256=_token_digest(token),
            label=label,
            created_by=author,
        )
    )
    session.flush()
    return token


def revoke_advertiser_token(
    session: Session,
    actor: Actor | None,
    token_id: int,
    *,
    system: bool = False,
    now: datetime | None = None,
) -> AdvertiserToken:
    """Revoke a token for good (revoking it again changes nothing).

    Raises:
        PermissionDenied: ``actor`` may not manage users.
        NotFoundError: no such token.
    """
    _authorize(session, actor, system=system)
    token = session.get(AdvertiserToken, token_id)
    if token is None:
        raise NotFoundError(f"no advertiser token with id {token_id}")
    if token.revoked_at is None:
        token.revoked_at = as_utc(now) or utcnow()
        session.flush()
    return token


def list_advertiser_tokens(
    session: Session, advertiser_id: int | None = None
) -> list[AdvertiserToken]:
    """Tokens (their metadata: the secrets are not stored), newest first, advertisers loaded."""
    query = select(AdvertiserToken).options(selectinload(AdvertiserToken.advertiser))
    if advertiser_id is not None:
        query = query.where(AdvertiserToken.advertiser_id == advertiser_id)
    return list(
        session.scalars(
            query.order_by(AdvertiserToken.created_at.desc(), AdvertiserToken.id.desc())
        )
    )


def advertiser_for_token(
    session: Session, token: str, *, now: datetime | None = None
) -> Advertiser:
    """The advertiser that ``token`` speaks for; notes when the token was last used.

    The lookup is by the token's SHA-256, so no comparison of secrets can leak timing.

    Raises:
        AuthenticationError: the token is unknown or revoked.
    """
    token = (token or "").strip()
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise AuthenticationError("unknown advertiser token")
    row = session.scalar(
        select(AdvertiserToken)
        .options(selectinload(AdvertiserToken.advertiser))
        .where(AdvertiserToken.token_sha256 == _token_digest(token))
    )
    if row is None:
        raise AuthenticationError("unknown advertiser token")
    if row.revoked_at is not None:
        raise AuthenticationError("this advertiser token was revoked")
    now = as_utc(now) or utcnow()
    last_used = as_utc(row.last_used_at)
    if last_used is None or now - last_used >= TOKEN_TOUCH_INTERVAL:
        row.last_used_at = now
        session.flush()
    return row.advertiser


# --- demo --------------------------------------------------------------------------------------

DEMO_ROLES = (Role.ANALYST, Role.DEVELOPER, Role.MANAGER, Role.ADMIN)


def demo_password(role: Role) -> str:
    """The demo account's password: public, for the local demo only, never for real data."""
    return f"{role.value}-demo-pass"


def ensure_demo_accounts(session: Session) -> list[tuple[str, str, str]]:
    """Create the demo accounts ``analyst``, ``developer``, ``manager`` and ``admin`` if missing.

    DEMO ONLY: their passwords are ``<role>-demo-pass``, written here in the open.

    Returns:
        ``(username, role, password)`` of each demo account whose password is still the demo
        one (an account whose password was changed is left out), for ``make run`` to print.
    """
    accounts: list[tuple[str, str, str]] = []
    for role in DEMO_ROLES:
        password = demo_password(role)
        user = session.scalar(select(User).where(User.username == role.value))
        if user is None:
            user = create_user(session, None, role.value, role, password, system=True)
        elif user.password_hash is None or not verify_password(user.password_hash, password):
            continue
        accounts.append((user.username, user.role, password))
    session.flush()
    return accounts
