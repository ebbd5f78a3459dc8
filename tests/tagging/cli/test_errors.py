"""``python -m tagging`` in real processes: every error is one line on stderr and exit code 1;
the traceback only with ``--debug``."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tagging.cli.up import ROOT


def run_cli(
    data_dir: Path, *args: str, database_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
    env["TAGGING_DATA_DIR"] = str(data_dir)
    if database_url is not None:
        env["TAGGING_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "tagging", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_a_corrupt_database_file_is_one_line_and_debug_shows_the_traceback(
    tmp_path: Path,
) -> None:
    corrupt = tmp_path / "app.sqlite"
    corrupt.write_bytes(b"this is not a database, just garbage " * 100)
    url = f"sqlite:///{corrupt}"
    assert_one_line(run_cli(tmp_path, "advertisers", "list", database_url=url), "not a database")
    debug = run_cli(tmp_path, "--debug", "advertisers", "list", database_url=url)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("error: the database failed")


def test_a_mistyped_database_url_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "tagdesk-typo.sqlite"
    result = run_cli(tmp_path, "advertisers", "list", database_url=f"sqlite:///{typo}")
    assert_one_line(result, f"no database at {typo}", "python -m tagging migrate")
    assert not typo.exists()


def test_migrate_creates_a_private_database_then_an_unknown_advertiser_is_one_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "prod.sqlite"
    url = f"sqlite:///{path}"
    created = run_cli(tmp_path, "migrate", database_url=url)
    assert created.returncode == 0, created.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for extra in ("-wal", "-shm"):
        sidecar = Path(f"{path}{extra}")
        if sidecar.exists():
            assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600
    assert_one_line(run_cli(tmp_path, "report", "Nobody Motors", database_url=url), "Nobody Motors")


def test_the_default_database_in_the_data_dir_is_created_on_first_use(tmp_path: Path) -> None:
    listed = run_cli(tmp_path, "advertisers", "list")
    assert listed.returncode == 0, listed.stderr
    assert stat.S_IMODE((tmp_path / "tagdesk.sqlite").stat().st_mode) == 0o600


def test_an_unreachable_postgresql_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg://tagdesk@127.0.0.1:{port}/tagdesk"
    assert_one_line(run_cli(tmp_path, "advertisers", "list", database_url=url), str(port))


def test_a_full_disk_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tagging import __main__ as entry

    def full(_args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/tagdesk.sqlite")

    monkeypatch.setitem(entry.COMMANDS, "migrate", full)
    assert entry.main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: no space left on the disk: /data/tagdesk.sqlite (--debug shows more)"
    ]
    assert entry.main(["--debug", "migrate"]) == 1
    assert "Traceback" in capsys.readouterr().err
