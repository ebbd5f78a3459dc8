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
    app = Path(command[command.index("run") + 1])
    assert app == REPO / "app.py" and app.is_file()
    assert command[command.index("--server.port") + 1] == "8599"
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
