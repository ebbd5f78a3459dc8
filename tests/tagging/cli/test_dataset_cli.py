"""``python -m tagging dataset …``: build, list, show, freeze, export, replay, headless."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory
from tagging.__main__ import main
from tests.tagging.datasets.world import build_world


@pytest.fixture
def cli_env(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> sessionmaker[Session]:
    monkeypatch.setenv("TAGGING_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TAGGING_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("TAGGING_ARCHIVE_DIR", str(tmp_path / "archive"))
    return make_session_factory(make_engine(sqlite_url))


def test_build_freeze_export_replay(
    cli_env: sessionmaker[Session], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_world(cli_env, tmp_path)
    args = ["dataset", "build", "--parent", "none", "--seed", "2", "--min-size", "100x100"]
    assert main([*args, "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["version"] == 1 and built["state"] == "draft"
    assert set(built["by_split"]) == {"train", "test"}
    assert built["exclusions"] == {"conflicting near-duplicates": 2}
    assert main(["dataset", "freeze", "1"]) == 0
    assert "frozen" in capsys.readouterr().out
    assert main(["dataset", "list"]) == 0
    assert "frozen" in capsys.readouterr().out
    assert main(["dataset", "show", "1"]) == 0
    shown = capsys.readouterr().out
    assert built["manifest_sha256"] in shown and "train" in shown
    out = tmp_path / "export"
    assert main(["dataset", "export", "1", "--out", str(out)]) == 0
    assert (out / "manifest.csv").is_file() and list((out / "train").rglob("*.jpg"))
    assert main(["dataset", "replay", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["same"] is True


def test_errors_are_one_line(
    cli_env: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dataset", "show", "9"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: no dataset version 9" and "Traceback" not in err
    assert main(["dataset", "build", "--min-size", "big"]) == 1
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["dataset", "build", "--user", "nobody"]) == 1
    assert "no enabled account" in capsys.readouterr().err
    # No version and no model to make version 1 from: said, not guessed.
    assert main(["dataset", "build"]) == 1
    assert "--parent none" in capsys.readouterr().err
    assert main(["dataset", "build", "--parent", "none", "--test-set", "oops"]) == 1
    assert "NAME=ADVERTISER" in capsys.readouterr().err


def test_build_makes_version_1_first_and_keeps_named_test_sets(
    cli_env: sessionmaker[Session],
    tmp_path: Path,
    models_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    shutil.copytree(models_dir, tmp_path / "models")
    build_world(cli_env, tmp_path)
    args = ["dataset", "build", "--test-set", "summit=Summit Auto Group", "--freeze"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "made version 1" in out and "version 2 (parent 1)" in out
    assert "likely label errors" in out and "leaked" not in out
    assert main(["dataset", "show", "1"]) == 0
    assert "its own split leaked" in capsys.readouterr().out
    assert main(["dataset", "build", "--no-model", "--json"]) == 0
    third = json.loads(capsys.readouterr().out)
    assert third["version"] == 3 and third["parent"] == 2 and third["prune"] == {}
    assert '"Summit Auto Group"' in third["recipe"]["recipe"]  # inherited
    assert main(["dataset", "init"]) == 1
    assert "exist already" in capsys.readouterr().err
