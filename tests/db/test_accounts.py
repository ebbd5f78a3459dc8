"""Accounts: passwords, sign-in and its throttle, account management, advertiser tokens.

Every test that touches the database runs on SQLite and on PostgreSQL (the ``sessions`` fixture).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import db.accounts as accounts_module
from db.accounts import (
    MAX_PASSWORD_LENGTH,
    WRONG_CREDENTIALS,
    Actor,
    Permission,
    SignInThrottle,
    account_actor,
    actor_for_email,
    advertiser_for_token,
    authenticate,
    create_advertiser_token,
    create_user,
    ensure_demo_accounts,
    hash_password,
    list_advertiser_tokens,
    list_users,
    password_needs_rehash,
    require,
    revoke_advertiser_token,
    set_disabled,
    set_password,
    set_role,
    verify_password,
)
from db.models import AdvertiserToken, Role, User
from tagging.errors import (
    AuthenticationError,
    Conflict,
    InvalidInput,
    NotFoundError,
    PermissionDenied,
)
from tests.utils.factories import make_advertiser

PASSWORD = "correct horse battery"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ADMIN = Actor("root", Role.ADMIN)


@pytest.fixture
def accounts(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """``sessions`` with an admin ``root`` and an analyst ``alice`` (password ``PASSWORD``)."""
    with sessions.begin() as session:
        create_user(session, None, "root", Role.ADMIN, PASSWORD, system=True)
        create_user(
            session, None, "alice", Role.ANALYST, PASSWORD, "Alice@Example.com", system=True
        )
    return sessions


def sign_in(
    sessions: sessionmaker[Session], username: str, password: str, now: datetime = T0
) -> Actor | AuthenticationError:
    """One sign-in attempt, caught inside the transaction as the pages do (so failures count)."""
    with sessions.begin() as session:
        try:
            return authenticate(session, username, password, now=now)
        except AuthenticationError as exc:
            return exc


def user(sessions: sessionmaker[Session], username: str) -> User:
    with sessions() as session:
        found = session.scalar(select(User).where(User.username == username))
        assert found is not None
        return found


def utc(moment: datetime | None) -> datetime | None:
    """SQLite gives timestamps back without a zone; they are UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


# --- permissions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "allowed"),
    [(Role.ANALYST, False), (Role.DEVELOPER, True), (Role.MANAGER, True), (Role.ADMIN, True)],
)
def test_managers_developers_and_admins_view_the_charts(role: Role, allowed: bool) -> None:
    assert Actor("someone", role).can(Permission.VIEW_CHARTS) is allowed
    if allowed:
        assert require(Actor("someone", role), Permission.VIEW_CHARTS).role == role
    else:
        with pytest.raises(PermissionDenied, match="may not view charts"):
            require(Actor("someone", role), Permission.VIEW_CHARTS)


# --- passwords ---------------------------------------------------------------------------------


def test_hashes_are_salted_argon2id_and_verify() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first.startswith("$argon2id$")
    assert first != second
    assert verify_password(first, PASSWORD)
    assert not verify_password(first, PASSWORD + "!")
    assert not verify_password("not a hash", PASSWORD)
    assert not password_needs_rehash(first)
    assert password_needs_rehash("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo")


def test_an_old_hash_is_replaced_at_the_next_sign_in(accounts: sessionmaker[Session]) -> None:
    from argon2 import PasswordHasher

    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    with accounts.begin() as session:
        session.scalar(select(User).where(User.username == "alice")).password_hash = weak
    assert isinstance(sign_in(accounts, "alice", PASSWORD), Actor)
    stored = user(accounts, "alice").password_hash
    assert stored != weak
    assert not password_needs_rehash(stored)
    assert verify_password(stored, PASSWORD)


# --- signing in --------------------------------------------------------------------------------


def test_right_password_signs_in_and_notes_the_time(accounts: sessionmaker[Session]) -> None:
    actor = sign_in(accounts, " Alice ", PASSWORD)
    assert actor == Actor("alice", Role.ANALYST)
    assert utc(user(accounts, "alice").last_login_at) == T0


def test_wrong_password_and_unknown_user_say_the_same(accounts: sessionmaker[Session]) -> None:
    wrong = sign_in(accounts, "alice", "not the password")
    unknown = sign_in(accounts, "nobody", PASSWORD)
    assert isinstance(wrong, AuthenticationError)
    assert isinstance(unknown, AuthenticationError)
    assert str(wrong) == str(unknown) == "wrong username or password"
    assert user(accounts, "alice").failed_attempts == 1


def test_a_password_less_account_cannot_sign_in_by_password(
    accounts: sessionmaker[Session],
) -> None:
    with accounts.begin() as session:
        create_user(session, ADMIN, "sso-only", Role.MANAGER, email="sso@example.com")
    for attempt in ("", PASSWORD):
        result = sign_in(accounts, "sso-only", attempt)
        assert isinstance(result, AuthenticationError)
        assert str(result) == "wrong username or password"


@pytest.mark.slow
def test_five_failures_lock_then_the_lock_doubles_up_to_fifteen_minutes(
    accounts: sessionmaker[Session],
) -> None:
    for _ in range(4):
        assert str(sign_in(accounts, "alice", "wrong password")) == "wrong username or password"
    fifth = sign_in(accounts, "alice", "wrong password")
    assert str(fifth) == "too many failed sign-ins: try again in 30 s"
    assert utc(user(accounts, "alice").locked_until) == T0 + timedelta(seconds=30)

    # Locked: even the right password is refused, and the refusal does not count.
    locked = sign_in(accounts, "alice", PASSWORD, T0 + timedelta(seconds=20))
    assert str(locked) == "too many failed sign-ins: try again in 10 s"
    assert user(accounts, "alice").failed_attempts == 5

    # Each further failure after the lock ends doubles it, up to 15 minutes.
    now = T0
    for expected in (60, 120, 240, 480, 900, 900):
        now += timedelta(hours=1)
        result = sign_in(accounts, "alice", "wrong password", now)
        assert str(result) == f"too many failed sign-ins: try again in {expected} s"


@pytest.mark.slow
def test_the_lock_ends_and_a_success_resets_the_count(accounts: sessionmaker[Session]) -> None:
    for _ in range(5):
        sign_in(accounts, "alice", "wrong password")
    later = T0 + timedelta(seconds=31)
    assert sign_in(accounts, "alice", PASSWORD, later) == Actor("alice", Role.ANALYST)
    alice = user(accounts, "alice")
    assert (alice.failed_attempts, alice.locked_until) == (0, None)
    assert utc(alice.last_login_at) == later
    # A fresh count: four more failures do not lock.
    for _ in range(4):
        assert str(sign_in(accounts, "alice", "wrong", later)) == "wrong username or password"


def test_a_disabled_account_cannot_sign_in(accounts: sessionmaker[Session]) -> None:
    with accounts.begin() as session:
        set_disabled(session, ADMIN, "alice", True)
    assert str(sign_in(accounts, "alice", PASSWORD)) == "this account is disabled"
    # The wrong password on a disabled account tells nothing more than on any account.
    assert str(sign_in(accounts, "alice", "wrong password")) == "wrong username or password"
    with accounts.begin() as session:
        set_disabled(session, ADMIN, "alice", False)
    assert sign_in(accounts, "alice", PASSWORD) == Actor("alice", Role.ANALYST)


class CountingHasher(PasswordHasher):
    """The library's hasher, counting the verifications."""

    def __init__(self) -> None:
        super().__init__()
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications += 1
        return super().verify(hash, password)


def test_every_failure_runs_one_verification_and_unknown_users_read_as_wrong_passwords(
    accounts: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    with accounts.begin() as session:
        create_user(session, ADMIN, "sso-only", Role.MANAGER, email="sso@example.com")
        create_user(session, ADMIN, "locked", Role.ANALYST, PASSWORD)
        session.scalar(select(User).where(User.username == "locked")).locked_until = T0 + timedelta(
            minutes=1
        )
    hasher = CountingHasher()
    monkeypatch.setattr(accounts_module, "_hasher", hasher)
    answers = {}
    for username, password in [
        ("nobody", PASSWORD),  # unknown: verified against the dummy hash
        ("alice", "not the password"),
        ("sso-only", PASSWORD),  # no password hash: the dummy again
        ("locked", PASSWORD),  # locked: the dummy, so that it takes as long
        ("alice", "x" * (MAX_PASSWORD_LENGTH + 1)),  # too long: its first 1024 characters
    ]:
        before = hasher.verifications
        result = sign_in(accounts, username, password)
        assert isinstance(result, AuthenticationError)
        assert hasher.verifications == before + 1, username
        answers[username] = str(result)
    assert answers["nobody"] == answers["alice"] == answers["sso-only"] == WRONG_CREDENTIALS
    assert answers["locked"] == "too many failed sign-ins: try again in 60 s"
    assert user(accounts, "alice").failed_attempts == 2  # the too long one counts too


def test_a_client_may_fail_so_many_sign_ins_whatever_the_usernames(
    accounts: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    throttle = SignInThrottle(max_failures=3, window=timedelta(minutes=10))

    def attempt(username: str, password: str, client: str, now: datetime = T0) -> object:
        with accounts.begin() as session:
            try:
                return authenticate(
                    session, username, password, now=now, client=client, throttle=throttle
                )
            except AuthenticationError as exc:
                return str(exc)

    for username in ("nobody", "alice", "root"):
        assert attempt(username, "wrong password", "ip:203.0.113.7") == WRONG_CREDENTIALS
    hasher = CountingHasher()
    monkeypatch.setattr(accounts_module, "_hasher", hasher)
    later = T0 + timedelta(minutes=4)
    assert attempt("alice", PASSWORD, "ip:203.0.113.7", later) == (
        "too many failed sign-ins from here: try again in 360 s"
    )
    # Refused before any lookup or hashing, and not counted against the account.
    assert hasher.verifications == 0
    assert user(accounts, "alice").failed_attempts == 1
    # Another client is not concerned; a success does not count.
    assert attempt("alice", PASSWORD, "ip:198.51.100.9", later) == Actor("alice", Role.ANALYST)
    # The window slides: ten minutes after the first failures, the client may try again.
    assert attempt("alice", PASSWORD, "ip:203.0.113.7", T0 + timedelta(minutes=10)) == Actor(
        "alice", Role.ANALYST
    )


def test_with_the_throttle_an_unknown_username_locks_like_a_real_account(
    accounts: sessionmaker[Session],
) -> None:
    throttle = SignInThrottle()

    def attempt(username: str, password: str, now: datetime) -> str:
        with accounts.begin() as session:
            try:
                authenticate(session, username, password, now=now, throttle=throttle)
            except AuthenticationError as exc:
                return str(exc)
        return "signed in"

    answers: dict[str, list[str]] = {"alice": [], "ghost": []}
    for username, seen in answers.items():
        seen.extend(attempt(username, "wrong password", T0) for _ in range(5))
        seen.append(attempt(username, "wrong password", T0 + timedelta(seconds=20)))
        seen.append(attempt(username, "wrong password", T0 + timedelta(hours=1)))
    assert (
        answers["alice"]
        == answers["ghost"]
        == [
            *[WRONG_CREDENTIALS] * 4,
            "too many failed sign-ins: try again in 30 s",
            "too many failed sign-ins: try again in 10 s",
            "too many failed sign-ins: try again in 60 s",
        ]
    )


def test_the_throttle_keeps_a_bounded_memory_and_counts_under_threads() -> None:
    throttle = SignInThrottle(max_failures=1, max_entries=2)
    for client in ("a", "b", "c"):
        throttle.client_failed(client, T0)
    throttle.check_client("a", T0)  # forgotten: the oldest went first
    with pytest.raises(AuthenticationError):
        throttle.check_client("c", T0)

    busy = SignInThrottle(max_failures=401)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: busy.client_failed("x", T0), range(400)))
    busy.check_client("x", T0)
    busy.client_failed("x", T0)
    with pytest.raises(AuthenticationError, match="from here"):
        busy.check_client("x", T0)


def test_account_actor_reads_the_account_as_it_is_now(accounts: sessionmaker[Session]) -> None:
    with accounts() as session:
        assert account_actor(session, "Alice") == Actor("alice", Role.ANALYST)
        assert account_actor(session, "nobody") is None
    with accounts.begin() as session:
        set_role(session, ADMIN, "alice", Role.MANAGER)
    with accounts() as session:
        assert account_actor(session, "alice") == Actor("alice", Role.MANAGER)
    with accounts.begin() as session:
        set_disabled(session, ADMIN, "alice", True)
    with accounts() as session:
        assert account_actor(session, "alice") is None


@pytest.mark.slow
def test_a_password_reset_lifts_the_lock(accounts: sessionmaker[Session]) -> None:
    for _ in range(5):
        sign_in(accounts, "alice", "wrong password")
    with accounts.begin() as session:
        set_password(session, ADMIN, "alice", "a brand new password")
    assert sign_in(accounts, "alice", "a brand new password") == Actor("alice", Role.ANALYST)
    assert isinstance(sign_in(accounts, "alice", PASSWORD), AuthenticationError)


def test_sso_maps_an_email_to_its_account(accounts: sessionmaker[Session]) -> None:
    with accounts.begin() as session:
        assert actor_for_email(session, " alice@EXAMPLE.com", now=T0) == Actor(
            "alice", Role.ANALYST
        )
    assert utc(user(accounts, "alice").last_login_at) == T0
    with accounts.begin() as session:
        with pytest.raises(AuthenticationError, match=r"no Tagdesk account for bob@example\.com"):
            actor_for_email(session, "bob@example.com")
        set_disabled(session, ADMIN, "alice", True)
        with pytest.raises(AuthenticationError, match="disabled"):
            actor_for_email(session, "alice@example.com")


# --- managing accounts -------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.ANALYST, Role.DEVELOPER, Role.MANAGER])
def test_only_admins_manage_accounts(accounts: sessionmaker[Session], role: Role) -> None:
    other = Actor("alice", role)
    with accounts.begin() as session:
        with pytest.raises(PermissionDenied):
            create_user(session, other, "mallory", Role.ADMIN, PASSWORD)
        with pytest.raises(PermissionDenied):
            set_role(session, other, "alice", Role.ADMIN)
        with pytest.raises(PermissionDenied):
            set_password(session, other, "root", PASSWORD + "!")
        with pytest.raises(PermissionDenied):
            set_disabled(session, other, "root", True)
        with pytest.raises(PermissionDenied):
            list_users(session, other)
        with pytest.raises(PermissionDenied):
            create_user(session, None, "mallory", Role.ADMIN, PASSWORD)
    with accounts() as session:
        assert session.scalar(select(User).where(User.username == "mallory")) is None


def test_an_admin_who_lost_the_role_loses_the_right_at_once(
    accounts: sessionmaker[Session],
) -> None:
    with accounts.begin() as session:
        create_user(session, ADMIN, "second", Role.ADMIN, PASSWORD)
        set_role(session, ADMIN, "second", Role.ANALYST)
    # The session still says "admin" (from the sign-in), the database no longer does.
    with accounts.begin() as session, pytest.raises(PermissionDenied, match="sign in again"):
        list_users(session, Actor("second", Role.ADMIN))


def test_create_user_validates_and_refuses_duplicates(accounts: sessionmaker[Session]) -> None:
    cases = [
        ("", Role.ANALYST, PASSWORD, None, "needs a username", InvalidInput),
        ("a" * 201, Role.ANALYST, PASSWORD, None, "at most 200", InvalidInput),
        ("bad name", Role.ANALYST, PASSWORD, None, "invalid username", InvalidInput),
        ("-dash", Role.ANALYST, PASSWORD, None, "invalid username", InvalidInput),
        ("bob", "wizard", PASSWORD, None, "unknown role 'wizard'", InvalidInput),
        ("bob", Role.ANALYST, "short", None, "at least 10 characters", InvalidInput),
        ("bob", Role.ANALYST, None, None, "needs a password, or an email", InvalidInput),
        ("bob", Role.ANALYST, PASSWORD, "not-an-email", "invalid email", InvalidInput),
        ("ALICE", Role.ANALYST, PASSWORD, None, "the username 'alice' is taken", Conflict),
        (
            "bob",
            Role.ANALYST,
            PASSWORD,
            "alice@example.com",
            "has the email alice@example.com",
            Conflict,
        ),
    ]
    for username, role, password, email, message, error in cases:
        with accounts.begin() as session, pytest.raises(error, match=message):
            create_user(session, ADMIN, username, role, password, email)
    with accounts.begin() as session:
        bob = create_user(session, ADMIN, "Bob.Smith", "developer", PASSWORD, "Bob@Example.com")
        assert (bob.username, bob.role, bob.email) == ("bob.smith", "developer", "bob@example.com")
    with accounts() as session:
        names = [u.username for u in list_users(session, ADMIN)]
    assert names == ["alice", "bob.smith", "root"]


def test_set_role_and_unknown_accounts(accounts: sessionmaker[Session]) -> None:
    with accounts.begin() as session:
        assert set_role(session, ADMIN, "alice", "manager").role == "manager"
        with pytest.raises(InvalidInput, match="unknown role"):
            set_role(session, ADMIN, "alice", "boss")
        with pytest.raises(NotFoundError):
            set_role(session, ADMIN, "nobody", Role.ANALYST)
        with pytest.raises(NotFoundError):
            set_disabled(session, ADMIN, "nobody", True)
    assert sign_in(accounts, "alice", PASSWORD) == Actor("alice", Role.MANAGER)


def test_the_last_enabled_admin_can_be_neither_disabled_nor_demoted(
    accounts: sessionmaker[Session],
) -> None:
    with accounts.begin() as session:
        with pytest.raises(Conflict, match="last enabled admin"):
            set_disabled(session, ADMIN, "root", True)
        with pytest.raises(Conflict, match="last enabled admin"):
            set_role(session, ADMIN, "root", Role.ANALYST)
        # Not even by the operator's CLI: someone must always be able to manage accounts.
        with pytest.raises(Conflict, match="last enabled admin"):
            set_disabled(session, None, "root", True, system=True)

    with accounts.begin() as session:
        create_user(session, ADMIN, "second", Role.ADMIN, PASSWORD)
        set_disabled(session, ADMIN, "second", True)
    # A disabled admin does not count.
    with accounts.begin() as session, pytest.raises(Conflict, match="last enabled admin"):
        set_role(session, ADMIN, "root", Role.MANAGER)

    with accounts.begin() as session:
        set_disabled(session, ADMIN, "second", False)
        set_role(session, ADMIN, "root", Role.MANAGER)
    assert user(accounts, "root").role == "manager"


@pytest.mark.slow
def test_demo_accounts_are_made_once_with_their_demo_passwords(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        first = ensure_demo_accounts(session)
    assert first == [
        ("analyst", "analyst", "analyst-demo-pass"),
        ("developer", "developer", "developer-demo-pass"),
        ("manager", "manager", "manager-demo-pass"),
        ("admin", "admin", "admin-demo-pass"),
    ]
    assert sign_in(sessions, "manager", "manager-demo-pass") == Actor("manager", Role.MANAGER)
    with sessions.begin() as session:
        set_password(session, None, "analyst", "not the demo one", system=True)
    with sessions.begin() as session:
        again = ensure_demo_accounts(session)
    # Once changed, a password is not printed as if it were still the demo one.
    assert [name for name, _, _ in again] == ["developer", "manager", "admin"]
    with sessions() as session:
        assert len(list_users(session, None, system=True)) == 4


# --- advertiser tokens -------------------------------------------------------------------------


def test_tokens_are_shown_once_stored_hashed_and_revocable(
    accounts: sessionmaker[Session],
) -> None:
    with accounts.begin() as session:
        advertiser_id = make_advertiser(session).id
        token = create_advertiser_token(session, ADMIN, advertiser_id, "front end")
        with pytest.raises(InvalidInput, match="at most 200"):
            create_advertiser_token(session, ADMIN, advertiser_id, "x" * 201)
        with pytest.raises(NotFoundError):
            create_advertiser_token(session, ADMIN, advertiser_id + 100, "front end")
    assert len(token) >= 40

    with accounts() as session:
        (row,) = list_advertiser_tokens(session)
        assert token not in row.token_sha256
        assert (row.label, row.created_by, row.advertiser.name) == (
            "front end",
            "root",
            "Sunrise Motors",
        )
        assert row.last_used_at is None

    with accounts.begin() as session:
        assert advertiser_for_token(session, token, now=T0).name == "Sunrise Motors"
    with accounts() as session:
        assert utc(session.get(AdvertiserToken, row.id).last_used_at) == T0

    with accounts.begin() as session:
        for wrong in ("", token[:-1] + ("A" if token[-1] != "A" else "B"), "x" * 10_000):
            with pytest.raises(AuthenticationError, match="unknown advertiser token"):
                advertiser_for_token(session, wrong)

    with accounts.begin() as session:
        revoke_advertiser_token(session, ADMIN, row.id)
        revoke_advertiser_token(session, ADMIN, row.id)  # again: no change, no error
        with pytest.raises(NotFoundError):
            revoke_advertiser_token(session, ADMIN, row.id + 100)
    with accounts.begin() as session, pytest.raises(AuthenticationError, match="revoked"):
        advertiser_for_token(session, token)


def test_only_admins_handle_tokens(accounts: sessionmaker[Session]) -> None:
    with accounts.begin() as session:
        advertiser_id = make_advertiser(session).id
        token = create_advertiser_token(session, None, advertiser_id, system=True)
        token_id = list_advertiser_tokens(session, advertiser_id)[0].id
        for role in (Role.ANALYST, Role.MANAGER):
            with pytest.raises(PermissionDenied):
                create_advertiser_token(session, Actor("alice", role), advertiser_id)
            with pytest.raises(PermissionDenied):
                revoke_advertiser_token(session, Actor("alice", role), token_id)
        with pytest.raises(NotFoundError):
            create_advertiser_token(session, ADMIN, advertiser_id + 100)
    with accounts.begin() as session:
        assert advertiser_for_token(session, token).id == advertiser_id
        assert list_advertiser_tokens(session)[0].created_by == "system"
