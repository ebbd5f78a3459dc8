"""The whole stack for browser tests: demo CDN, ML server, a scraped database, and the real app
(``streamlit run app.py`` in its own process), driven by Debian's Chromium through Playwright.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tagging.cli.up import app_command
from tests.utils.browser import ScrapedDemo, scraped_demo

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def running_app(app_settings: object, tmp_path: Path) -> Iterator[dict]:
    """``streamlit run app.py`` on a free port against the test's database and ML server."""
    port = free_port()
    env = {**os.environ, **app_settings.to_env()}  # type: ignore[attr-defined]
    log = (tmp_path / "streamlit.log").open("w")
    process = subprocess.Popen(
        app_command("127.0.0.1", port),
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.3)
    else:
        process.terminate()
        pytest.fail(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
    try:
        yield {"url": url, "log": tmp_path / "streamlit.log"}
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def demo(
    app_settings: object, demo_dir: Path, cdn: object, ml_server: object
) -> Iterator[ScrapedDemo]:
    """The demo registered and its default advertiser scraped, for the app in ``running_app``."""
    with scraped_demo(app_settings, demo_dir, cdn) as scraped:
        yield scraped
