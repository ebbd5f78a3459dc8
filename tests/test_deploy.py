"""The cluster of ``deploy/compose.yaml``, tested with the same processes started by hand.

Docker is not available where the suite runs, so the topology is rebuilt from real processes on
loopback. First the file itself, run as processes (:class:`LocalCompose`): every Tagdesk
service's ``command`` with its ``environment``, in its ``depends_on`` order, N copies of the
scrape worker, the demo profile; then the demo is scraped through the queue, across the workers
and both ML replicas, with nothing lost. Then by hand: ML server replicas (``python -m tagging
serve``, each its own process group) sharing one PostgreSQL cache store in a database of their
own, a scrape through ``MLClient`` given every replica's URL, and a replica killed mid-scrape.
Also: ``serve`` in several worker processes on one SQLite store, the store created once however
many processes open it at the same time, and the compose file's text (every service, every
setting a known one).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

import db.models
from db.engine import make_engine, make_session_factory
from db.models import Advertiser, ItemStatus, Scrape, SitemapItem
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
        """Launch the server and wait until it answers."""
        return self.launch().wait_healthy(timeout)

    def launch(self) -> Serve:
        """Launch the server without waiting (see :meth:`wait_healthy`)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tagging", "serve", "--port", str(self.port)],
                env=self.env(),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_healthy(self, timeout: float = 180.0) -> Serve:
        """Wait until ``/health`` answers; fails if the process exits first."""
        assert self.process is not None
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


# --- the cluster from the compose file, as processes -------------------------------------------

EXTERNAL = ("postgres", "redis")
"""Compose services this machine runs already: the test's PostgreSQL server and Redis."""

DOTENV = {"POSTGRES_PASSWORD": "unused-here", "TAGGING_ML_TOKEN": ML_TOKEN}
"""What ``deploy/.env`` gives compose (README, "Running a cluster")."""

ENQUEUE = """
from db.accounts import Actor
from db.advertisers import advertiser_names
from db.engine import make_engine, make_session_factory
from db.models import Role
from tagging.config import Settings
from tagging.jobs.tasks import enqueue_scrape

settings = Settings.from_env()
engine = make_engine(settings.database_url)
with make_session_factory(engine)() as session:
    names = advertiser_names(session)
engine.dispose()
for name in names:
    print(enqueue_scrape(settings, Actor("analyst", Role.ANALYST), name).advertiser)
"""
"""An analyst's "Relaunch scrape" of every advertiser, run in the app's environment (what
``docker compose exec app python -c ...`` would run)."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variables: ``${X}``, ``${X:-default}``, ``${X-default}``, ``${X:?error}``,
    ``${X?error}`` (with a colon, an empty value counts as unset)."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3) or ""
        value = env.get(name)
        if operator.startswith(":") and value == "":
            value = None
        if value is not None:
            return value
        if operator.endswith("?"):
            raise AssertionError(f"compose needs {name}: {argument}")
        return argument if operator.endswith("-") else ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", one, text)


def container_ports(command: list[str]) -> list[int]:
    """The ports a service's command listens on (``--port N``, ``--server.port N``)."""
    return [int(command[i + 1]) for i, arg in enumerate(command[:-1]) if arg in PORT_OPTIONS]


PORT_OPTIONS = ("--port", "--server.port")
HOST_OPTIONS = ("--host", "--server.address")


@dataclass
class Started:
    service: str
    name: str
    """``worker-2`` for the second copy of a replicated service."""
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return f"--- {self.name} ({self.log})\n{self.log.read_text(errors='replace')[-3000:]}"


class LocalCompose:
    """``deploy/compose.yaml``'s Tagdesk services as processes on this machine.

    What compose gives a container, this gives a process: the service's ``command`` (``python``
    is the venv's, first on ``PATH``, as the image's is its own), its ``environment``, the
    ``depends_on`` order and conditions (started; healthy by its own ``healthcheck``; completed
    successfully), ``deploy.replicas`` copies, and the active profiles. What only a container
    network has is mapped: every service name becomes 127.0.0.1 and every container port a free
    local port (so ``--host 0.0.0.0`` listens on loopback only), the ``postgres`` and ``redis``
    services are this machine's (a fresh database for each database the file names, the test
    Redis), and ``/data`` (the shared volume) is ``data_dir``.
    """

    def __init__(
        self,
        compose: dict[str, Any],
        *,
        data_dir: Path,
        database: Callable[[str], str],
        redis_url: str,
        profiles: tuple[str, ...] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.services: dict[str, dict[str, Any]] = {
            name: spec
            for name, spec in compose["services"].items()
            if name not in EXTERNAL and set(spec.get("profiles", [])) <= set(profiles)
        }
        self.data_dir, self.database, self.redis_url = data_dir, database, redis_url
        self.extra_env = dict(extra_env or {})
        self.ports = {
            (name, port): free_port()
            for name, spec in self.services.items()
            for port in container_ports(spec["command"])
        }
        self.started: dict[str, list[Started]] = {}
        self._healthy: set[str] = set()
        self._checked: dict[str, float] = {}

    # -- names on the compose network -> this machine ------------------------------------------

    def localize(self, value: str, service: str) -> str:
        def postgres(match: re.Match[str]) -> str:
            return self.database(str(make_url(match.group(0)).database))

        value = re.sub(r"postgresql\+psycopg://[^\s,'\"]+", postgres, value)
        value = re.sub(r"redis://redis:6379/\d+", self.redis_url, value)
        for (name, port), local in self.ports.items():
            value = re.sub(rf"(?<![\w.-]){re.escape(name)}:{port}\b", f"127.0.0.1:{local}", value)
            if name == service:  # the container's own port, as its healthcheck reaches it
                value = re.sub(
                    rf"\b(?:127\.0\.0\.1|localhost):{port}\b", f"127.0.0.1:{local}", value
                )
        return re.sub(r"(?<![\w./-])/data(?![\w.-])", str(self.data_dir), value)

    def url(self, service: str, port: int) -> str:
        return f"http://127.0.0.1:{self.ports[(service, port)]}"

    def command(self, service: str) -> list[str]:
        original = [str(arg) for arg in self.services[service]["command"]]
        argv = [self.localize(arg, service) for arg in original]
        for i, arg in enumerate(original[:-1]):
            if arg in HOST_OPTIONS and argv[i + 1] == "0.0.0.0":  # noqa: S104 - replaced, not bound
                argv[i + 1] = "127.0.0.1"
            if arg in PORT_OPTIONS:
                argv[i + 1] = str(self.ports[(service, int(original[i + 1]))])
        return argv

    def env(self, service: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"  # the Dockerfile's ENV
        for name, value in (self.services[service].get("environment") or {}).items():
            env[str(name)] = self.localize(str(value), service)
        env.update(self.extra_env)
        return env

    # -- up and down ---------------------------------------------------------------------------

    def up(self, timeout: float = 240.0) -> None:
        """Start every service once its dependencies allow, as ``docker compose up`` does."""
        pending = list(self.services)
        deadline = time.monotonic() + timeout
        while pending:
            for name in [n for n in pending if self._ready_to_start(n)]:
                self._start(name)
                pending.remove(name)
            self.check()
            if time.monotonic() > deadline:
                raise AssertionError(f"never started: {pending}\n{self.tails()}")
            time.sleep(0.3)

    def _start(self, service: str) -> None:
        copies = int((self.services[service].get("deploy") or {}).get("replicas", 1))
        for number in range(1, copies + 1):
            name = service if copies == 1 else f"{service}-{number}"
            log = self.data_dir.parent / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    self.command(service),
                    env=self.env(service),
                    cwd=ROOT,  # the image's WORKDIR: the repository
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.started.setdefault(service, []).append(Started(service, name, process, log))

    def _ready_to_start(self, service: str) -> bool:
        needs = self.services[service].get("depends_on") or {}
        if isinstance(needs, list):
            needs = {name: {} for name in needs}
        for dependency, spec in needs.items():
            if dependency in EXTERNAL:
                continue  # the test's own servers, up and healthy already
            if dependency not in self.started:
                return False
            condition = (spec or {}).get("condition", "service_started")
            if condition == "service_completed_successfully" and not self._completed(dependency):
                return False
            if condition == "service_healthy" and not self.healthy(dependency):
                return False
        return True

    def _completed(self, service: str) -> bool:
        processes = [s.process for s in self.started[service]]
        return all(p.poll() == 0 for p in processes)

    def healthy(self, service: str) -> bool:
        """The service's own ``healthcheck`` (its ``test`` command, localized) passes."""
        if service in self._healthy:
            return True
        # Not more often than every 2 s (compose: `interval`): each check starts an interpreter,
        # and the services starting meanwhile need the two cores.
        if time.monotonic() - self._checked.get(service, 0.0) < 2.0:
            return False
        self._checked[service] = time.monotonic()
        test = [str(arg) for arg in self.services[service]["healthcheck"]["test"]]
        argv = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
        argv = [self.localize(arg, service) for arg in argv]
        env = self.env(service)
        result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=30)
        if result.returncode == 0:
            self._healthy.add(service)
        return result.returncode == 0

    def check(self) -> None:
        """Fail on a service that stopped: a one-shot (``restart: "no"``) may end, with 0."""
        for service, copies in self.started.items():
            one_shot = self.services[service].get("restart") == "no"
            for started in copies:
                code = started.process.poll()
                if code is not None and not (one_shot and code == 0):
                    raise AssertionError(f"{started.name} exited ({code})\n{started.tail()}")

    def tails(self) -> str:
        return "\n".join(s.tail() for copies in self.started.values() for s in copies)

    def down(self) -> None:
        everything = [s.process for copies in self.started.values() for s in copies]
        for process in everything:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10  # for all of them together: a test waits on none long
        for process in everything:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@pytest.fixture
def postgres_databases() -> Iterator[Callable[[str], str]]:
    """``database(name)``: the URL of a fresh PostgreSQL database standing for the compose
    file's database ``name`` (the same one for the same name); all dropped after the test."""
    base = os.environ.get("TAGGING_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("TAGGING_REQUIRE_POSTGRES") == "1":
            pytest.fail("TAGGING_REQUIRE_POSTGRES=1 but TAGGING_TEST_POSTGRES_URL is not set")
        pytest.skip("PostgreSQL tests need TAGGING_TEST_POSTGRES_URL (CI sets it)")
    admin = make_engine(base, isolation_level="AUTOCOMMIT")
    made: dict[str, str] = {}

    def database(name: str) -> str:
        if name not in made:
            real = f"tagdesk_compose_{name}_{uuid.uuid4().hex[:8]}"
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{real}"'))
            made[name] = make_url(base).set(database=real).render_as_string(hide_password=False)
        return made[name]

    yield database
    with admin.connect() as connection:
        for url in made.values():
            real = make_url(url).database
            connection.execute(text(f'DROP DATABASE IF EXISTS "{real}" WITH (FORCE)'))
    admin.dispose()


def wait_http(url: str, cluster: LocalCompose, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cluster.check()
        try:
            if requests.get(url, timeout=3).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout:.0f}s\n{cluster.tails()}")


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (a replica's uvicorn workers)."""
    total = 0.0
    for process in [pid, *children(pid)]:
        with contextlib.suppress(OSError):  # a process that has just exited
            total += cpu_seconds(process)
    return total


@pytest.mark.slow
@pytest.mark.postgres
def test_the_cluster_starts_from_the_compose_file_and_scrapes_the_demo_with_nothing_lost(
    redis_queue: tuple[str, str],  # first: without Redis or PostgreSQL it skips before training
    postgres_databases: Callable[[str], str],
    tmp_path: Path,
    models_dir: Path,
    demo_dir: Path,
) -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load(interpolate(compose_text(), DOTENV))
    data = tmp_path / "data"  # the tagdesk-data volume: the model made by `init`, the demo
    data.mkdir()
    (data / "models").symlink_to(models_dir, target_is_directory=True)
    (data / "demo").symlink_to(demo_dir, target_is_directory=True)  # `demo` finds it drawn
    redis_url, queue = redis_queue
    cluster = LocalCompose(
        compose,
        data_dir=data,
        database=postgres_databases,
        redis_url=redis_url,
        profiles=("demo",),
        extra_env={
            # Queues of this test alone in the shared test Redis (a deployment has its own).
            "TAGGING_QUEUE_NAME": queue,
            # The suite's demo is a tenth of the real one: chunks of 10 items split each
            # advertiser's scrape, so the workers share every scrape, not just the six of them.
            "TAGGING_SCRAPE_CHUNK_SIZE": "10",
        },
    )
    try:
        cluster.up()
        assert len(cluster.started["worker"]) >= 2 and len(cluster.started) >= 8
        replicas = [s for s in cluster.started if re.fullmatch(r"ml-\d+", s)]
        assert len(replicas) >= 2
        for replica in replicas:
            wait_http(cluster.url(replica, 8800) + "/health", cluster)
        generations = {
            requests.get(cluster.url(r, 8800) + "/health", timeout=10).json()["cache_generation"]
            for r in replicas
        }
        assert len(generations) == 1  # one shared PostgreSQL store
        wait_http(cluster.url("app", 8501) + "/_stcore/health", cluster)
        wait_http(cluster.url("api", 8810) + "/health", cluster)
        cdn = cluster.url("cdn", 8765)
        wait_http(cdn + "/sitemap_index.xml", cluster)

        workers = [s.process.pid for s in cluster.started["worker"]]
        ml_pids = {r: cluster.started[r][0].process.pid for r in replicas}
        ml_before = {r: tree_cpu(pid) for r, pid in ml_pids.items()}
        queued = subprocess.run(
            [sys.executable, "-c", ENQUEUE],
            env=cluster.env("app"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert queued.returncode == 0, queued.stderr
        inventory = DemoInventory.load(demo_dir)
        listed = {
            a.name: [cdn + p for v in a.vehicles for p in v.images] for a in inventory.advertisers
        }
        assert sorted(queued.stdout.splitlines()) == sorted(listed)

        engine = make_engine(postgres_databases("tagdesk"))
        try:
            scrapes = wait_for_scrapes(engine, set(listed), cluster)
            with engine.connect() as connection:
                for name, scrape in scrapes.items():
                    assert scrape.status != "failed", (name, scrape.error)
                    rows = connection.execute(
                        select(SitemapItem.image_url, SitemapItem.status).where(
                            SitemapItem.scrape_id == scrape.id
                        )
                    ).all()
                    # Every item of the sitemap stored exactly once: nothing lost, none twice.
                    assert Counter(r.image_url for r in rows) == Counter(listed[name]), name
                    assert not [r for r in rows if r.status == ItemStatus.ML_FAILURE], name
                    assert scrape.item_count == scrape.expected_items == len(listed[name])
                claimers = chunk_claimers(connection, [s.id for s in scrapes.values()])
        finally:
            engine.dispose()
        # The scrape workers shared the scrapes: chunks claimed by two worker processes.
        if claimers is not None:
            assert claimers <= set(workers) and len(claimers) >= 2, (claimers, workers)
        # The replicas did the classifying. Not asserted per replica: each task builds a new
        # MLClient, whose first batch always goes to the first URL of TAGGING_ML_URLS, and the
        # suite's small demo makes one batch per chunk, so ml-1 gets them all.
        ml_used = {r: tree_cpu(pid) - ml_before[r] for r, pid in ml_pids.items()}
        assert sum(ml_used.values()) > 0.3, ml_used
        cluster.check()  # and nothing fell over meanwhile
    finally:
        cluster.down()


def wait_for_scrapes(engine: Any, names: set[str], cluster: LocalCompose) -> dict[str, Any]:
    """Each advertiser's scrape once none is running (the workers finish them)."""
    deadline = time.monotonic() + 180
    found: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            rows = connection.execute(
                select(
                    Advertiser.name,
                    Scrape.id,
                    Scrape.status,
                    Scrape.error,
                    Scrape.item_count,
                    Scrape.expected_items,
                    Scrape.finished_at,
                ).join(Scrape, Scrape.advertiser_id == Advertiser.id)
            ).all()
        found = {row.name: row for row in rows}
        if set(found) == names and all(s.finished_at is not None for s in found.values()):
            assert len(rows) == len(names)  # one scrape each: none retried, none started twice
            return found
        cluster.check()
        time.sleep(0.3)
    raise AssertionError(f"the scrapes did not finish: {found}\n{cluster.tails()}")


def chunk_claimers(connection: Any, scrape_ids: list[int]) -> set[int] | None:
    """The process ids that stored the scrapes' chunks; None when scrapes are not chunked."""
    chunk = getattr(db.models, "ScrapeChunk", None)
    if chunk is None:
        return None
    claimed = connection.scalars(
        select(chunk.claimed_by).where(chunk.scrape_id.in_(scrape_ids))
    ).all()
    assert claimed and all(claimed)
    states = connection.scalars(select(chunk.state).where(chunk.scrape_id.in_(scrape_ids))).all()
    assert set(states) == {"done"}
    return {int(worker.split(":")[1]) for worker in claimed}  # host:pid:thread:…


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
    # Both start at once (two machines booting): each imports and loads the model meanwhile.
    first.launch(), second.launch()
    first.wait_healthy(), second.wait_healthy()
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
