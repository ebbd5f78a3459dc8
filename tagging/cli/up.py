"""``make run``: set everything up, start the demo CDN, the ML server and the app, stop on Ctrl-C.

First run: token, database, demo data, initial model, and a scrape of every demo advertiser.
Later runs find all of that in place and start in seconds.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tagging.config import Settings
from tagging.errors import FetchTimeoutError, TaggingError

ROOT = Path(__file__).resolve().parents[2]
"""The repository (where app.py is): the working directory of every service `up` starts."""


@dataclass(frozen=True)
class LaunchConfig:
    app_port: int = 8501
    ml_port: int = 8800
    cdn_port: int = 8765
    api_port: int = 8810
    host: str = "127.0.0.1"
    startup_timeout: float = 120.0


def ensure_token(settings: Settings) -> str:
    """The ML token: from the environment, else from ``<data>/ml_token``, made once."""
    if settings.ml_token:
        return settings.ml_token
    path = settings.data_dir / "ml_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # Created private (0600) from its first byte: write-then-chmod would leave a moment in which
    # any local user could read it. An empty or unreadable file left by a crash is replaced.
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(token + "\n")
    return token


def launch(settings: Settings, config: LaunchConfig) -> int:
    """Run everything until Ctrl-C; returns the exit code."""
    from tagging.cli.console import progress_bar
    from tagging.demo.setup import ensure_demo
    from tagging.ml.model import production_version

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    cdn_url = f"http://{config.host}:{config.cdn_port}"
    ml_url = f"http://{config.host}:{config.ml_port}"
    settings = replace(
        settings,
        ml_url=ml_url,
        ml_urls=(),  # the one ML server started here (its workers use every core)
        ml_token=ensure_token(settings),
        allowed_hosts=(*settings.allowed_hosts, f"{config.host}:{config.cdn_port}".lower()),
    )
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    env.pop("TAGGING_ML_URLS", None)
    os.environ.update(env)

    step("database and demo data")
    with progress_bar("drawing the demo") as progress:
        inventory = ensure_demo(settings, cdn_url=cdn_url, progress=progress)
    print(f"  {len(inventory.advertisers)} advertisers, {len(inventory.images)} images")

    accounts = ensure_accounts(settings)

    if production_version(settings.models_dir) is None:
        step("training the initial Image Type model (once)")
        run_module(["train", "--promote"], env)

    processes: list[subprocess.Popen[bytes]] = []

    def stop_all(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    try:
        step("starting the demo CDN and the ML server")
        processes.append(start_module(["cdn", "--port", str(config.cdn_port)], env))
        processes.append(start_module(ml_server_args(settings, config), env))
        wait_for(f"{cdn_url}/sitemap_index.xml", config.startup_timeout, processes)
        wait_for(f"{ml_url}/health", config.startup_timeout, processes)
        processes.append(start_module(["worker"], env))
        processes.append(start_module(["api", "--port", str(config.api_port)], env))
        api_url = f"http://{config.host}:{config.api_port}"
        wait_for(f"{api_url}/health", config.startup_timeout, processes)

        if not has_scrapes(settings):
            step("scraping every demo advertiser (first run)")
            run_module(["scrape", "--all"], env)
            step("staging the weird cases of the demo (first run)")
            stage_demo_weird_cases(settings, cdn_url)

        step("starting the app")
        processes.append(
            subprocess.Popen(app_command(config.host, config.app_port), env=env, cwd=ROOT)
        )
        wait_for(f"http://{config.host}:{config.app_port}/_stcore/health", 60, processes)
        print(
            "\nTagdesk is running:\n"
            f"  app        http://{config.host}:{config.app_port}\n"
            f"  ML server  {ml_url}/docs   ({settings.ml_workers} worker processes; token in "
            f"{settings.data_dir / 'ml_token'})\n"
            f"  fix API    {api_url}/docs\n"
            f"  demo CDN   {cdn_url}/sitemap_index.xml\n"
            + (
                "Demo accounts (for this machine only):\n"
                + "".join(f"  {role:<10} {n} / {password}\n" for n, role, password in accounts)
                if accounts
                else "No demo accounts: TAGGING_DATABASE_URL names your own database (add "
                "accounts with `python -m tagging users add`).\n"
            )
            + "Press Ctrl-C to stop them all.",
            flush=True,
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        failed = [p for p in processes if p.poll() is not None]
        print(f"a service stopped (exit {failed[0].returncode}): stopping the others", flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    finally:
        stop_all()


def ml_server_args(settings: Settings, config: LaunchConfig) -> list[str]:
    """``python -m tagging`` arguments of the ML server: ``TAGGING_ML_WORKERS`` processes."""
    return ["serve", "--port", str(config.ml_port), "--workers", str(settings.ml_workers)]


def app_command(host: str, port: int) -> list[str]:
    """The command line that serves the Streamlit app (``make run`` and the browser tests):
    ``serve.py`` serves ``app.py`` with the session cookie's HTTP routes beside it."""
    return [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "serve.py"),
        "--server.port", str(port),
        "--server.address", host,
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def run_module(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "tagging", *args], env=env, cwd=ROOT)
    if result.returncode != 0:
        raise TaggingError(f"`python -m tagging {' '.join(args)}` failed ({result.returncode})")


def start_module(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tagging", *args], env=env, cwd=ROOT)


def wait_for(url: str, timeout: float, processes: list[subprocess.Popen[bytes]]) -> None:
    """Poll ``url`` (one of our services, allow-listed) until it answers; fail early if one died.

    Raises:
        TaggingError: one of ``processes`` exited.
        FetchTimeoutError: ``url`` did not answer within ``timeout`` seconds.
    """
    from urllib.parse import urlsplit

    from tagging.errors import FetchError
    from tagging.ingest.fetch import FetchPolicy, GuardedClient

    parts = urlsplit(url)
    policy = FetchPolicy(allowed_hosts=(parts.netloc,), total_timeout=2.0, read_timeout=2.0)
    deadline = time.monotonic() + timeout
    with GuardedClient(policy) as client:
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in processes):
                raise TaggingError(f"a service exited while waiting for {url}")
            try:
                client.get(url)
                return
            except FetchError:
                time.sleep(0.3)
    raise FetchTimeoutError(f"{url} did not answer within {timeout:.0f}s")


def stage_demo_weird_cases(settings: Settings, cdn_url: str) -> None:
    """Give every weird-results detector something to find (does nothing once fixes exist)."""
    from db.engine import make_engine, make_session_factory
    from tagging.demo.stage import stage_weird_cases

    engine = make_engine(settings.database_url)
    try:
        stage_weird_cases(settings, make_session_factory(engine), cdn_url=cdn_url, say=print)
    finally:
        engine.dispose()


def ensure_accounts(settings: Settings) -> list[tuple[str, str, str]]:
    """Create the demo accounts (one per role) if missing; return them for printing.

    The rule: demo accounts, whose passwords are written in the open, go only into the demo
    database, the default SQLite file in the data dir that ``up`` creates and migrates itself
    (``settings.creates_database``: ``TAGGING_DATABASE_URL`` unset). A database named by
    ``TAGGING_DATABASE_URL`` (PostgreSQL in production, or any other file) is the operator's:
    ``up`` adds no account to it and returns ``[]``; create accounts there with
    ``python -m tagging users add``.
    """
    from db.accounts import ensure_demo_accounts
    from db.engine import make_engine, make_session_factory

    if not settings.creates_database:
        return []
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine).begin() as session:
            return ensure_demo_accounts(session)
    finally:
        engine.dispose()


def has_scrapes(settings: Settings) -> bool:
    from sqlalchemy import func, select

    from db.engine import make_engine
    from db.models import Scrape

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return bool(connection.scalar(select(func.count()).select_from(Scrape)))
    finally:
        engine.dispose()
