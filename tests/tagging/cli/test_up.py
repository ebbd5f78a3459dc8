"""``up`` (what ``make run`` runs) starts every service from the repository root."""

from __future__ import annotations

from pathlib import Path

from tagging.cli.up import ROOT, app_command

REPO = Path(__file__).resolve().parents[3]


def test_the_services_run_from_the_repository_root() -> None:
    assert ROOT == REPO
    assert (ROOT / "Makefile").is_file()


def test_the_app_command_serves_the_frame_on_the_given_address() -> None:
    command = app_command("127.0.0.1", 8599)
    launcher = Path(command[command.index("run") + 1])
    assert launcher == REPO / "serve.py" and launcher.is_file()
    assert 'st.App("app.py"' in launcher.read_text()  # the launcher serves the frame
    assert command[command.index("--server.port") + 1] == "8599"
    assert command[command.index("--server.address") + 1] == "127.0.0.1"


def test_the_ml_token_file_is_private(tmp_path: Path) -> None:
    import os
    import stat

    from tagging.cli.up import ensure_token
    from tagging.config import Settings

    old = os.umask(0o022)
    try:
        token = ensure_token(Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path)}))
    finally:
        os.umask(old)
    path = tmp_path / "ml_token"
    assert path.read_text().strip() == token and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path)}).ml_token == token


def test_demo_accounts_go_only_into_the_default_demo_database(
    tmp_path: Path, database_url: str
) -> None:
    from sqlalchemy import func, select

    from db.engine import make_engine, migrate
    from db.models import User
    from tagging.cli.up import ensure_accounts
    from tagging.config import Settings

    def users(url: str) -> int:
        engine = make_engine(url)
        with engine.connect() as connection:
            count = connection.scalar(select(func.count()).select_from(User))
        engine.dispose()
        return int(count or 0)

    own = Settings.from_env(
        {"TAGGING_DATA_DIR": str(tmp_path), "TAGGING_DATABASE_URL": database_url}
    )
    assert not own.creates_database
    assert ensure_accounts(own) == []
    assert users(database_url) == 0

    demo = Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path)})
    assert demo.creates_database
    migrate(demo.database_url, create=demo.creates_database)
    accounts = ensure_accounts(demo)
    assert {role for _, role, _ in accounts} == {"analyst", "developer", "manager", "admin"}
    assert users(demo.database_url) == 4
