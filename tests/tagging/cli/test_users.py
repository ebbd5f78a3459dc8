"""``python -m tagging users ...`` on a fresh SQLite database.

One test runs the command as a process, as an operator would; the others call the same entry
point (``tagging.__main__.main``) in-process, which is much faster.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor, authenticate
from db.engine import make_engine, make_session_factory
from db.models import Role
from tagging.__main__ import main
from tagging.cli.users import ROLE_NAMES
from tagging.errors import AuthenticationError

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Result:
    code: int
    out: str
    err: str


Users = Callable[..., Result]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    from db.engine import migrate

    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    migrate(url)  # a database named by TAGGING_DATABASE_URL is created by `migrate` only
    return {
        "TAGGING_DATA_DIR": str(tmp_path),
        "TAGGING_DATABASE_URL": url,
        "TAGGING_ML_TOKEN": "unused",
    }


def run_process(env: dict[str, str], *argv: str, stdin: str = "") -> Result:
    done = subprocess.run(
        [sys.executable, "-m", "tagging", "users", *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def users(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Users:
    """``users(*argv, stdin="")``: ``python -m tagging users ARGV``, in-process."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def run(*argv: str, stdin: str = "") -> Result:
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["users", *argv])
            except SystemExit as exc:  # argparse refusing the command line
                code = int(exc.code or 0)
        return Result(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def cli_db(env: dict[str, str]) -> Iterator[sessionmaker[Session]]:
    """The database the commands write to."""
    engine = make_engine(env["TAGGING_DATABASE_URL"])
    yield make_session_factory(engine)
    engine.dispose()


def sign_in(sessions: sessionmaker[Session], name: str, password: str) -> Actor | str:
    with sessions.begin() as session:
        try:
            return authenticate(session, name, password)
        except AuthenticationError as exc:
            return str(exc)


def listing(users: Users) -> dict[str, dict]:
    result = users("list", "--json")
    assert result.code == 0, result.err
    return {row["username"]: row for row in json.loads(result.out)}


def test_role_names_are_the_roles() -> None:
    assert tuple(role.value for role in Role) == ROLE_NAMES


def test_add_prints_a_generated_password_once_in_a_real_process(
    env: dict[str, str], cli_db: sessionmaker[Session]
) -> None:
    result = run_process(env, "add", "Root", "--role", "admin")
    assert result.code == 0, result.err
    first, second = result.out.splitlines()
    assert first == "added root (admin)"
    prefix = "password (shown once, copy it now): "
    assert second.startswith(prefix)
    password = second.removeprefix(prefix)
    assert len(password) >= 20
    assert sign_in(cli_db, "root", password) == Actor("root", Role.ADMIN)
    again = run_process(env, "add", "root", "--role", "admin")
    assert again.code == 1
    assert "error: the username 'root' is taken" in again.err


def test_the_account_lifecycle(users: Users, cli_db: sessionmaker[Session]) -> None:
    added = users(
        "add",
        "bob",
        "--role",
        "analyst",
        "--email",
        "bob@example.com",
        "--password-stdin",
        stdin="bob password 1\n",
    )
    assert added.code == 0, added.err
    assert added.out == "added bob (analyst)\n"  # a password from stdin is not echoed
    assert users("add", "root", "--role", "admin").code == 0

    rows = listing(users)
    assert sorted(rows) == ["bob", "root"]
    assert rows["bob"]["email"] == "bob@example.com"
    assert rows["bob"]["role"] == "analyst"
    assert rows["bob"]["disabled"] is False

    assert users("set-role", "bob", "manager").out == "bob is now manager\n"
    assert users("disable", "bob").out == "disabled bob\n"
    assert sign_in(cli_db, "bob", "bob password 1") == "this account is disabled"
    assert listing(users)["bob"]["disabled"] is True
    assert users("enable", "bob").out == "enabled bob\n"

    changed = users("passwd", "bob", "--password-stdin", stdin="a new password\n")
    assert changed.out == "new password set for bob\n"
    assert sign_in(cli_db, "bob", "a new password") == Actor("bob", Role.MANAGER)
    assert sign_in(cli_db, "bob", "bob password 1") == "wrong username or password"

    table = users("list")
    assert table.code == 0
    assert "bob" in table.out and "manager" in table.out


def test_errors_exit_1_with_a_message(users: Users) -> None:
    assert users("add", "root", "--role", "admin").code == 0
    cases = [
        (("add", "root", "--role", "analyst"), "", "the username 'root' is taken"),
        (("add", "eve", "--role", "analyst", "--password-stdin"), "short\n", "at least 10"),
        (("add", "eve", "--role", "analyst", "--password-stdin"), "", "gave no password"),
        (("add", "eve", "--role", "analyst", "--no-password"), "", "--no-password needs --email"),
        (("set-role", "nobody", "admin"), "", "no account named 'nobody'"),
        (("disable", "root"), "", "last enabled admin"),
    ]
    for argv, stdin, message in cases:
        result = users(*argv, stdin=stdin)
        assert result.code == 1, (argv, result.out)
        assert message in result.err, (argv, result.err)
    refused = users("set-role", "root", "boss")  # argparse's own refusal
    assert refused.code == 2
    assert "invalid choice: 'boss'" in refused.err
    assert sorted(listing(users)) == ["root"]


def test_an_sso_only_account(users: Users, cli_db: sessionmaker[Session]) -> None:
    result = users("add", "sso", "--role", "manager", "--email", "SSO@example.com", "--no-password")
    assert result.code == 0, result.err
    assert result.out == "added sso (manager)\n"
    assert listing(users)["sso"]["sso_only"] is True
    assert sign_in(cli_db, "sso", "") == "wrong username or password"
