"""The cluster of ``deploy/compose.yaml``, tested with the same processes started by hand.

Docker is not available where the suite runs, so the topology is rebuilt from real processes on
loopback: ML server replicas (``python -m tagging serve``, each its own process group) sharing one
PostgreSQL cache store in a database of their own, a scrape through ``MLClient`` given every
replica's URL, and a replica killed mid-scrape. Also: ``serve`` in several worker processes on
one SQLite store, the store created once however many processes open it at the same time, and the
compose file itself (every service, every setting a known one).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import requests
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory
from db.models import ItemStatus, Scrape, SitemapItem
from tagging.cli.up import ROOT
from tagging.config import Settings
from tagging.demo.generate import DemoInventory
from tagging.demo.setup import register_demo_advertisers
from tagging.ingest.fetch import client_from_settings
from tagging.ingest.scrape import ScrapeConfig, ScrapeSummary, run_scrape
from tagging.server.client import MLClient
from tagging.server.schemas import ImageFix
from tests.utils.servers import ML_TOKEN, cdn_host, ml_settings

COMPOSE = ROOT / "deploy" / "compose.yaml"
AUTH = {"Authorization": f"Bearer {ML_TOKEN}"}


# --- processes started by hand -----------------------------------------------------------------


class Serve:
    """``python -m tagging serve`` in a process group of its own (uvicorn's workers included)."""

    def __init__(self, data_dir: Path, cache_url: str, cdn: object, *, workers: int) -> None:
        self.data_dir, self.cache_url, self.cdn, self.workers = data_dir, cache_url, cdn, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / f"serve-{self.port}.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
        env.update(
            TAGGING_DATA_DIR=str(self.data_dir),
            TAGGING_ML_TOKEN=ML_TOKEN,
            TAGGING_ML_CACHE_URL=self.cache_url,
            TAGGING_ALLOWED_HOSTS=cdn_host(self.cdn),
            TAGGING_ML_WORKERS=str(self.workers),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, timeout: float = 180.0) -> Serve:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tagging", "serve", "--port", str(self.port)],
                env=self.env(),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError(f"serve did not answer in {timeout}s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the whole group at once: a machine that dies, mid-request."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # uvicorn's supervisor stops its workers
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def health(self) -> dict:
        return requests.get(f"{self.url}/health", timeout=10).json()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped yet by init, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def data_dir(tmp_path: Path, models_dir: Path) -> Path:
    """A data dir whose models/ is the suite's trained model (what ``serve`` loads)."""
    path = tmp_path / "data"
    path.mkdir()
    (path / "models").symlink_to(models_dir, target_is_directory=True)
    return path


@pytest.fixture
def servers() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    """A PostgreSQL database of this test alone (the replicas' shared store), dropped after."""
    base = os.environ.get("TAGGING_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("TAGGING_REQUIRE_POSTGRES") == "1":
            pytest.fail("TAGGING_REQUIRE_POSTGRES=1 but TAGGING_TEST_POSTGRES_URL is not set")
        pytest.skip("PostgreSQL tests need TAGGING_TEST_POSTGRES_URL (CI sets it)")
    admin = make_engine(base, isolation_level="AUTOCOMMIT")
    name = f"tagdesk_replicas_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def scrape_everything(
    settings: Settings,
    sessions: sessionmaker[Session],
    ml: MLClient,
    names: list[str],
    on_progress: Callable[[str, int, int], None] | None,
) -> list[ScrapeSummary]:
    client = client_from_settings(settings)
    summaries = []
    try:
        for name in names:
            summaries.append(
                run_scrape(
                    sessions,
                    name,
                    ml=ml,
                    client=client,
                    config=ScrapeConfig(batch_size=4),
                    progress=partial(on_progress, name) if on_progress else None,
                )
            )
    finally:
        client.close()
    return summaries


# --- the cluster: replicas on a shared PostgreSQL store, one killed mid-scrape ------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_a_scrape_across_two_replicas_survives_one_killed_mid_way(
    tmp_path: Path,
    data_dir: Path,
    cdn: object,
    demo_dir: Path,
    sqlite_url: str,
    fresh_postgres: str,
    servers: list[Serve],
) -> None:
    first = Serve(data_dir, fresh_postgres, cdn, workers=1)
    second = Serve(data_dir, fresh_postgres, cdn, workers=1)
    servers += [first, second]
    first.start(), second.start()
    generation = first.health()["cache_generation"]
    assert second.health()["cache_generation"] == generation  # one store

    settings = ml_settings(
        tmp_path,
        "sqlite:///unused",
        cdn_host(cdn),
        database_url=sqlite_url,
        ml_url=first.url,
        ml_urls=(first.url, second.url),
    )
    inventory = DemoInventory.load(demo_dir)
    register_demo_advertisers(settings, inventory, cdn.url)  # type: ignore[arg-type, attr-defined]
    engine = make_engine(sqlite_url)
    sessions = make_session_factory(engine)
    ml = MLClient.from_settings(settings)  # type: ignore[arg-type]
    ml.retry_after = 30.0  # the dead replica is not tried again during the test
    listed = {
        a.name: [cdn.url.rstrip("/") + p for v in a.vehicles for p in v.images]  # type: ignore[attr-defined]
        for a in inventory.advertisers
    }
    total = sum(len(urls) for urls in listed.values())
    done: dict[str, int] = {}
    killed_at: list[int] = []

    def on_progress(name: str, items: int, of: int) -> None:
        """Kill the second replica once a third of all the items are stored."""
        done[name] = items
        if not killed_at and sum(done.values()) >= total // 3:
            killed_at.append(sum(done.values()))
            second.kill()

    summaries = scrape_everything(settings, sessions, ml, list(listed), on_progress)

    assert killed_at and killed_at[0] < total and second.process is not None
    assert second.process.poll() is not None  # really dead
    assert ml.replicas[1].calls > 0 and ml.replicas[1].failures > 0  # used, then failed
    for summary in summaries:
        assert summary.status != "failed", summary
        assert summary.ml_failures == 0, summary.problems
    # Nothing lost, nothing twice: every listed image stored once, none an ML failure.
    with sessions() as session:
        for summary in summaries:
            rows = session.execute(
                select(SitemapItem.image_url, SitemapItem.status, SitemapItem.image_key).where(
                    SitemapItem.scrape_id == summary.scrape_id
                )
            ).all()
            assert sorted(r.image_url for r in rows) == sorted(listed[summary.advertiser])
            assert not [r for r in rows if r.status == ItemStatus.ML_FAILURE]
            assert all(r.image_key for r in rows if r.status == ItemStatus.OK)
        assert session.scalar(select(Scrape.id).where(Scrape.status == "failed")) is None
        assert sum(s.items for s in summaries) == total

    # A fix pushed now reaches the store through the replica that is up …
    key = next(
        r.image_key for r in ml.classify(listed[summaries[0].advertiser][:1]).results if r.image_key
    )
    fix = ImageFix.model_validate({"fix_id": uuid.uuid4().hex, "image_type": "Stock"})
    assert ml.put_fix(key, fix).applied
    # … and the replica, restarted on the same store, finds it (the store was not rebuilt).
    second.start()
    assert second.health()["cache_generation"] == generation
    record = requests.get(f"{second.url}/images/{key}", headers=AUTH, timeout=10).json()
    assert record["image_type"] == "Stock" and fix.fix_id in record["applied_fix_ids"]
    ml.client.close()
    engine.dispose()


# --- one server, several worker processes, one SQLite store ------------------------------------


@pytest.mark.slow
def test_serve_runs_its_workers_in_processes_of_their_own_on_one_store(
    tmp_path: Path,
    data_dir: Path,
    cdn: object,
    demo_dir: Path,
    sqlite_url: str,
    servers: list[Serve],
) -> None:
    cache = data_dir / "ml_cache.sqlite"
    server = Serve(data_dir, f"sqlite:///{cache}", cdn, workers=2)
    servers.append(server)
    server.start()
    assert server.process is not None
    workers = children(server.process.pid)
    assert len(workers) >= 2, workers  # uvicorn's worker processes
    generations = {server.health()["cache_generation"] for _ in range(12)}
    assert len(generations) == 1  # every worker reads the one store's generation

    settings = ml_settings(
        tmp_path, "sqlite:///unused", cdn_host(cdn), database_url=sqlite_url, ml_url=server.url
    )
    inventory = DemoInventory.load(demo_dir)
    register_demo_advertisers(settings, inventory, cdn.url)  # type: ignore[arg-type, attr-defined]
    engine = make_engine(sqlite_url)
    ml = MLClient.from_settings(settings)  # type: ignore[arg-type]
    names = [a.name for a in inventory.advertisers]
    before = {pid: cpu_seconds(pid) for pid in workers}
    summaries = scrape_everything(settings, make_session_factory(engine), ml, names, None)
    assert all(s.ml_failures == 0 and s.status != "failed" for s in summaries)
    # Both worker processes classified: each batch comes on a connection of its own, which
    # whichever worker is free accepts (over one kept-alive connection, one worker did it all).
    used = {pid: cpu_seconds(pid) - before[pid] for pid in workers}
    busy = [pid for pid in workers if used[pid] >= 0.1 * sum(used.values())]
    assert len(busy) >= 2, used
    # (an image two batches in flight both list is classified twice, and stored once)
    assert 0 < server.health()["cache_size"] <= sum(s.classified for s in summaries)
    ml.client.close()
    engine.dispose()

    server.stop()  # SIGTERM: uvicorn's supervisor stops its workers, then itself
    assert server.process.poll() is not None
    deadline = time.monotonic() + 15
    while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_new_store_is_created_once_however_many_servers_open_it(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'new.sqlite'}"
        if store == "sqlite"
        else request.getfixturevalue("fresh_postgres")
    )
    # Every process imports first, then all open the store at the same moment (without the
    # lock, PostgreSQL fails most such rounds: "relation already exists", a store dropped under
    # another process).
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    code = (
        "import os, sys, time, pathlib\n"
        "from tagging.cli.serve import prepare_cache_store\n"
        "barrier = pathlib.Path(sys.argv[2])\n"
        "(barrier / f'ready-{os.getpid()}').touch()\n"
        "while not (barrier / 'go').exists(): time.sleep(0.002)\n"
        "print(prepare_cache_store(sys.argv[1]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, str(barrier)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    deadline = time.monotonic() + 120
    while len(list(barrier.glob("ready-*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    (barrier / "go").touch()
    outputs = [p.communicate(timeout=120)[0].strip() for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert len(set(outputs)) == 1 and re.fullmatch(r"[0-9a-f]{32}", outputs[0])
    engine = make_engine(url)
    with engine.connect() as connection:
        stored = connection.scalar(text("SELECT value FROM cache_meta WHERE key = 'generation'"))
    engine.dispose()
    assert stored == outputs[0]


def test_serve_refuses_zero_workers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
    env["TAGGING_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "tagging", "serve", "--workers", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "--workers must be at least 1" in result.stderr


def test_make_run_starts_the_ml_server_with_the_workers_setting(tmp_path: Path) -> None:
    from tagging.cli.up import LaunchConfig, ml_server_args

    settings = Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path), "TAGGING_ML_WORKERS": "3"})
    args = ml_server_args(settings, LaunchConfig(ml_port=8899))
    assert args == ["serve", "--port", "8899", "--workers", "3"]


# --- the compose file --------------------------------------------------------------------------


def compose_text() -> str:
    return COMPOSE.read_text()


def test_the_compose_file_has_every_service_of_the_cluster() -> None:
    text_ = compose_text()
    services = re.findall(r"^  ([a-z0-9-]+):\s*$", text_, flags=re.MULTILINE)
    assert {"postgres", "redis", "init", "ml-1", "ml-2", "worker", "app", "api"} <= set(services)
    for command in (
        '"python", "-m", "streamlit", "run", "serve.py"',  # app
        '"python", "-m", "tagging", "worker"',  # the N workers
        '"python", "-m", "tagging", "serve"',  # the ML replicas (x-ml)
        '"python", "-m", "tagging", "api"',
    ):
        assert f"command: [{command}" in text_, command
    assert "replicas: ${TAGDESK_WORKERS:-2}" in text_


def test_the_compose_file_names_only_real_settings_and_lists_every_replica() -> None:
    text_ = compose_text()
    named = set(re.findall(r"\b(TAGGING_[A-Z_]+):", text_))
    documented = set(re.findall(r"``(TAGGING_[A-Z_]+)``", (ROOT / "tagging/config.py").read_text()))
    assert named and named <= documented, named - documented
    assert {
        "TAGGING_ML_URLS",
        "TAGGING_ML_WORKERS",
        "TAGGING_ML_CACHE_URL",
        "TAGGING_REDIS_URL",
        "TAGGING_DATABASE_URL",
        "TAGGING_ML_TOKEN",
    } <= named
    urls = re.search(r"TAGGING_ML_URLS: (\S+)", text_)
    assert urls is not None
    replicas = re.findall(r"^  (ml-\d+):", text_, flags=re.MULTILINE)
    assert urls.group(1).split(",") == [f"http://{r}:8800" for r in replicas]
    # The replicas share one PostgreSQL store, not a SQLite file each.
    assert re.search(r"TAGGING_ML_CACHE_URL: postgresql\+psycopg://", text_)
    # Secrets come from deploy/.env, never from the file.
    assert "${POSTGRES_PASSWORD:?" in text_ and "${TAGGING_ML_TOKEN:?" in text_


def test_the_compose_file_is_valid_yaml_when_a_parser_is_at_hand() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load(compose_text())
    services = compose["services"]
    for name in ("ml-1", "ml-2"):
        env = services[name]["environment"]
        assert env["TAGGING_ML_WORKERS"] == "2"
        assert env["TAGGING_ML_CACHE_URL"].startswith("postgresql+psycopg://")
    assert services["worker"]["deploy"]["replicas"] == "${TAGDESK_WORKERS:-2}"
    for name in ("app", "worker", "api"):
        assert services[name]["environment"]["TAGGING_REDIS_URL"] == "redis://redis:6379/0"
