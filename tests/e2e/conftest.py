"""The whole stack for browser tests: demo CDN, ML server, a scraped database, and the real app
(``streamlit run app.py`` in its own process), driven by Debian's Chromium through Playwright.

Starting that stack is most of a browser test's time (Streamlit's start and its first runs cost
seconds, the scrape more), so the tests of the review and session pages share one, started once
for the whole ``tests/e2e`` package: :func:`shared_app`. Each of them still starts from the same
state: the app database and the ML server's cache are put back as the scrape left them (SQLite's
online backup, under the running servers), the app's caches are cleared (what Streamlit's "Clear
cache" does), and each test opens its own browser context (no cookie, storage or HTTP cache
carried over). Chromium is launched once too; whatever a test opens in it is closed after the
test.

``running_app`` (with ``app_settings``) is still a Streamlit process of the test's own, on the
test's own database, for tests that build their world themselves.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tagging.cli.up import app_command
from tests.utils.browser import ScrapedDemo, SharedApp, scraped_demo
from tests.utils.servers import cdn_host, ml_settings

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="package")
def chromium() -> Iterator[object]:
    """Debian's Chromium, launched once for the browser tests (see :func:`browser`)."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
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
        yield launched
        launched.close()


@pytest.fixture
def browser(chromium: object) -> Iterator[object]:
    """The browser; every context (and page) the test opens in it is closed after the test, so
    that no page of one test keeps talking to a server while the next runs."""
    before = list(chromium.contexts)  # type: ignore[attr-defined]
    yield chromium
    for context in chromium.contexts:  # type: ignore[attr-defined]
        if context not in before:
            context.close()


@contextmanager
def streamlit_app(settings: object, log_path: Path) -> Iterator[dict]:
    """``streamlit run`` (``serve.py``) on a free port, against ``settings``' database and ML
    server; yields ``{"url", "log"}`` once its health check answers."""
    port = free_port()
    env = {
        **os.environ,
        **settings.to_env(),  # type: ignore[attr-defined]
        # No watching of the sources for changes (a developer's convenience: "Source file
        # changed, rerun?"). Each browser session of the app had its own watcher of the
        # repository, which cost the app most of a core while a page was open whenever files
        # changed around it (a queue overflow makes it walk every folder again).
        "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none",
    }
    log = log_path.open("w")
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
            time.sleep(0.1)
    else:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        pytest.fail(f"streamlit did not start: {log_path.read_text()[-2000:]}")
    try:
        yield {"url": url, "log": log_path}
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def running_app(app_settings: object, tmp_path: Path) -> Iterator[dict]:
    """``streamlit run app.py`` on a free port against the test's database and ML server."""
    with streamlit_app(app_settings, tmp_path / "streamlit.log") as app:
        yield app


@pytest.fixture
def demo(
    app_settings: object, demo_dir: Path, cdn: object, ml_server: object
) -> Iterator[ScrapedDemo]:
    """The demo registered and its default advertiser scraped, for the app in ``running_app``."""
    with scraped_demo(app_settings, demo_dir, cdn) as scraped:
        yield scraped


# --- one scraped demo and one app for the package, put back before each test --------------------


@dataclass(frozen=True)
class _Stack:
    app: SharedApp
    snapshots: dict[Path, Path]
    """Each live SQLite database (the app's, the ML server's cache), and its copy as the scrape
    left it."""


def _copy_database(source: Path, target: Path) -> None:
    """Copy a live SQLite database onto another, live or not, with SQLite's online backup: the
    target's other connections (the app's) see the new content at their next transaction."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def clear_app_caches(url: str) -> None:
    """Clear the running app's ``st.cache_data`` and ``st.cache_resource`` (query results, the
    engine, the sign-in throttle): the message Streamlit's own "Clear cache" sends, over a
    WebSocket of its own. Returns once the app has handled it (it answers the heartbeat sent
    after it, in order)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    clear, heartbeat = BackMsg(), BackMsg()
    clear.clear_cache = True
    heartbeat.app_heartbeat = True
    stream = url.replace("http://", "ws://", 1) + "/_stcore/stream"
    with connect(stream, subprotocols=["streamlit"], open_timeout=30) as socket_:  # type: ignore[list-item]
        socket_.send(clear.SerializeToString())
        socket_.send(heartbeat.SerializeToString())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = ForwardMsg()
            message.ParseFromString(socket_.recv(timeout=30))  # type: ignore[arg-type]
            if message.WhichOneof("type") == "heartbeat_ack":
                return
    pytest.fail("the app did not acknowledge the cache clearing")


@pytest.fixture(scope="package")
def _shared_stack(
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
    demo_dir: Path,
    classifier: object,
) -> Iterator[_Stack]:
    from tagging.demo.cdn import make_server
    from tagging.ml.color import EmbeddedColorModel
    from tagging.server.app import create_app
    from tagging.testing import UvicornThread

    root = tmp_path_factory.mktemp("e2e-app")
    database = root / "app.sqlite"
    shutil.copy(sqlite_template, database)
    cdn = make_server(demo_dir, port=0)
    cdn.serve_in_thread()
    cache_url = f"sqlite:///{root / 'ml_cache.sqlite'}"
    ml_app = create_app(
        ml_settings(root, cache_url, cdn_host(cdn)),  # type: ignore[arg-type]
        classifier=classifier,  # type: ignore[arg-type]
        color_model=EmbeddedColorModel(),
    )
    try:
        with UvicornThread(ml_app) as ml_server:
            settings = ml_settings(
                root,
                cache_url,
                cdn_host(cdn),
                database_url=f"sqlite:///{database}",
                ml_url=ml_server.url,
            )
            with scraped_demo(settings, demo_dir, cdn) as scraped:
                snapshots = {
                    live: live.with_name(f"{live.stem}-scraped.sqlite")
                    for live in (database, root / "ml_cache.sqlite")
                }
                for live, snapshot in snapshots.items():
                    _copy_database(live, snapshot)
                with streamlit_app(settings, root / "streamlit.log") as app:
                    yield _Stack(
                        SharedApp(app["url"], app["log"], settings, ml_server.url, scraped),
                        snapshots,
                    )
    finally:
        cdn.shutdown()


@pytest.fixture
def shared_app(_shared_stack: _Stack) -> SharedApp:
    """The package's app and scraped demo, put back as the scrape left them: the app database
    and the ML server's cache (what this test's predecessors wrote is gone), and the app's
    caches."""
    stack = _shared_stack
    for live, snapshot in stack.snapshots.items():
        _copy_database(snapshot, live)
    clear_app_caches(stack.app.url)
    return stack.app
