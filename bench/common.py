"""Shared set-up of the benchmarks: work dir, demo data, model, real services, tables.

Every benchmark script imports this module first: it puts the project root on ``sys.path`` so
that ``python bench/<script>.py`` finds ``tagging`` and ``db`` without installing anything.

What it provides:

* :func:`prepare` — the work dir (default ``bench/results/work``), the full demo (seed 7, made once)
  and a production Image Type model (``$TAGGING_DATA_DIR/models`` or ``data/models`` if one is
  promoted there, else ``TrainConfig()`` trained once into the work dir);
* :func:`start_cdn` / :func:`start_ml_server` — ``python -m tagging cdn`` and
  ``python -m tagging serve`` as real subprocesses on free loopback ports, health-checked, and
  stopped by :class:`Services` at the end (also on errors, Ctrl-C and SIGTERM);
* :func:`fresh_app_db` — a new, migrated SQLite app database with the demo advertisers;
* :func:`print_table` and :func:`machine` for the reports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


from tagging.cli.console import progress_bar  # noqa: E402
from tagging.config import Settings  # noqa: E402
from tagging.demo.generate import DemoInventory  # noqa: E402

DEFAULT_WORK = ROOT / "bench" / "results" / "work"
DEMO_SEED = 7
HOST = "127.0.0.1"


# --- the work dir, the demo and the model ------------------------------------------------------


@dataclass(frozen=True)
class BenchData:
    """Where the benchmark's inputs live."""

    work: Path
    """The work dir: logs, databases, and (unless reused) the demo and the model."""
    demo_data_dir: Path
    """A ``TAGGING_DATA_DIR`` whose ``demo/`` holds the demo (what the CDN process gets)."""
    model_data_dir: Path
    """A ``TAGGING_DATA_DIR`` whose ``models/`` holds a production model (the ML server's)."""
    inventory: DemoInventory
    model_version: str

    @property
    def demo_dir(self) -> Path:
        return self.demo_data_dir / "demo"

    @property
    def models_dir(self) -> Path:
        return self.model_data_dir / "models"

    def path(self, *parts: str) -> Path:
        """A path inside the work dir (its parent folder is created)."""
        target = self.work.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        help=f"work dir for demo, model, databases and logs (default {DEFAULT_WORK})",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=90.0,
        help="seconds to wait for other processes to leave the CPUs before each measurement "
        "(default 90; 0 measures at once)",
    )


def prepare(work: Path = DEFAULT_WORK) -> BenchData:
    """Make sure the demo and a production model exist; generate/train them once if not."""
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "data"
    inventory = _ensure_demo(data_dir)
    model_data_dir, version = _ensure_model(data_dir)
    return BenchData(work, data_dir, model_data_dir, inventory, version)


def _ensure_demo(data_dir: Path) -> DemoInventory:
    import json

    from tagging.demo.generate import generate_demo

    demo_dir = data_dir / "demo"
    manifest = demo_dir / "manifest.json"
    if manifest.exists():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(manifest.read_text()).get("seed") == DEMO_SEED:
                return DemoInventory.load(demo_dir)
    print(f"generating the full demo (seed {DEMO_SEED}) in {demo_dir} (once)", flush=True)
    with progress_bar("drawing the demo") as progress:
        return generate_demo(demo_dir, seed=DEMO_SEED, progress=progress)


def _ensure_model(data_dir: Path) -> tuple[Path, str]:
    """``(data dir whose models/ has a production model, its version)``."""
    from tagging.ml.model import production_version
    from tagging.ml.train import TrainConfig, train

    shared = Settings.from_env()  # TAGGING_DATA_DIR, else ./data (resolved from the cwd)
    candidates = [shared.data_dir]
    if (ROOT / "data").resolve() != shared.data_dir:
        candidates.append((ROOT / "data").resolve())
    candidates.append(data_dir)
    for candidate in candidates:
        with contextlib.suppress(Exception):
            version = production_version(candidate / "models")
            if version is not None and (candidate / "models" / version).is_dir():
                return candidate, version
    models_dir = data_dir / "models"
    print(
        f"no production model in {shared.data_dir / 'models'}: training TrainConfig() into "
        f"{models_dir} (once, ~1 minute)",
        flush=True,
    )
    with progress_bar("training", unit="step") as progress:
        result = train(TrainConfig(), models_dir, progress=progress, promote=True)
    print(f"  {result.summary().splitlines()[0]}", flush=True)
    return data_dir, result.version


# --- services as real subprocesses -------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """One ``python -m tagging ...`` subprocess listening on ``port``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def host_entry(self) -> str:
        return f"{HOST}:{self.port}"

    def peak_rss_bytes(self) -> int | None:
        """The process's peak resident set so far (``VmHWM``), or None once it has exited.

        With child processes (``serve`` runs uvicorn's workers as its children), the sum of the
        peaks of the process and its live children: an upper bound of the service's peak.
        """
        peaks = [_peak_rss(pid) for pid in [self.process.pid, *_children(self.process.pid)]]
        if peaks[0] is None:
            return None
        return sum(peak or 0 for peak in peaks)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the service has used so far (0.0 once it has exited): the
        process, its waited-for children and its live descendants (uvicorn's workers)."""
        return _tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _peak_rss(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


class Services(contextlib.ExitStack):
    """An exit stack that also turns SIGTERM into KeyboardInterrupt, so services always stop."""

    def __enter__(self) -> Services:
        super().__enter__()
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(*_: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_term)
        self.callback(signal.signal, signal.SIGTERM, previous)
        return self

    def start(self, service: Service) -> Service:
        self.callback(service.stop)
        return service


def _spawn(name: str, args: list[str], env: dict[str, str], data: BenchData, port: int) -> Service:
    log_path = data.path("logs", f"{name}-{port}.log")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tagging", *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own process group: Ctrl-C reaches only the benchmark, which stops it in order.
            start_new_session=True,
        )
    return Service(name, port, process, log_path, env)


def _base_env(data_dir: Path, **overrides: Any) -> dict[str, str]:
    """This environment without its ``TAGGING_*``, plus the settings of ``data_dir``.

    ``overrides`` replace fields of those settings (see :class:`tagging.config.Settings`).
    """
    settings = replace(Settings.from_env({"TAGGING_DATA_DIR": str(data_dir)}), **overrides)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
    env.update({**settings.to_env(), "PYTHONUNBUFFERED": "1"})
    return env


def start_cdn(stack: Services, data: BenchData, timeout: float = 60.0) -> Service:
    """``python -m tagging cdn`` on a free port, once its sitemap index answers."""
    port = free_port()
    env = _base_env(data.demo_data_dir)
    service = stack.start(_spawn("cdn", ["cdn", "--port", str(port)], env, data, port))
    wait_healthy(service, "/sitemap_index.xml", timeout)
    return service


def start_ml_server(
    stack: Services,
    data: BenchData,
    cdn: Service,
    token: str,
    cache_path: Path,
    *,
    extra_allowed: Sequence[str] = (),
    timeout: float = 120.0,
) -> Service:
    """``python -m tagging serve`` on a free port with its own cache file, once it is healthy."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cache_path}{suffix}").unlink(missing_ok=True)
    port = free_port()
    env = _base_env(
        data.model_data_dir,
        ml_token=token,
        allowed_hosts=(cdn.host_entry, *extra_allowed),
        ml_cache_url=f"sqlite:///{cache_path}",
    )
    service = stack.start(_spawn("ml", ["serve", "--port", str(port)], env, data, port))
    wait_healthy(service, "/health", timeout)
    return service


def wait_healthy(service: Service, path: str, timeout: float) -> None:
    from tagging.cli.up import wait_for
    from tagging.errors import TaggingError

    try:
        wait_for(service.url + path, timeout, [service.process])
    except TaggingError as exc:
        tail = service.log_path.read_text(errors="replace")[-2000:]
        raise SystemExit(
            f"{service.name} did not start: {exc}\n--- {service.log_path}\n{tail}"
        ) from exc


def new_token() -> str:
    return secrets.token_urlsafe(24)


# --- the app database --------------------------------------------------------------------------


def app_settings(
    data: BenchData, database_path: Path, ml: Service, token: str, allowed: Sequence[str]
) -> Settings:
    """Settings of a scrape process: its own database, the ML server, the allowed hosts."""
    return Settings(
        data_dir=data.work / "data",
        database_url=f"sqlite:///{database_path}",
        ml_url=ml.url,
        ml_token=token,
        ml_cache_url=f"sqlite:///{data.work / 'unused-ml-cache.sqlite'}",
        allowed_hosts=tuple(allowed),
    )


def fresh_app_db(path: Path) -> str:
    """A new migrated SQLite app database at ``path`` (an old one is removed); its URL."""
    from db.engine import migrate

    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{path}"
    migrate(url)
    return url


def run_main(main: Callable[[], int]) -> None:
    """Exit with ``main()``'s code; Ctrl-C or SIGTERM exits 130 once the services are stopped."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("\ninterrupted: services stopped", file=sys.stderr)
        code = 130
    sys.exit(code)


# --- reporting ---------------------------------------------------------------------------------


def tqdm(iterable: Any, **kwargs: Any) -> Any:
    """A progress bar over ``iterable`` on stderr, quiet when stderr is not a terminal."""
    from tqdm import tqdm as bar

    return bar(iterable, file=sys.stderr, disable=None, **kwargs)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        out = []
        for i, value in enumerate(values):
            out.append(value.rjust(widths[i]) if numeric[i] else value.ljust(widths[i]))
        return "  ".join(out).rstrip()

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_calibration: float | None = None


def calibration_ms() -> float:
    """Wall milliseconds of a fixed CPU workload (best of 5), measured once per process.

    The machine is a VM: a busy host slows every core without showing in ``/proc/stat``, so the
    same code can take 1.5x longer from one hour to the next. Runs are comparable when this
    figure is; it is printed with :func:`machine`.
    """
    global _calibration
    if _calibration is None:
        import io
        import random

        from PIL import Image

        rng = random.Random(0)
        image = Image.new("RGB", (480, 360))
        image.putdata([(rng.randrange(256), 90, 160) for _ in range(480 * 360)])
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        jpeg = buffer.getvalue()
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            total = 0
            for i in range(200_000):  # the interpreter
                total += i * i % 7
            for _ in range(20):  # libjpeg
                with Image.open(io.BytesIO(jpeg)) as decoded:
                    decoded.load()
            best = min(best, time.perf_counter() - started)
        _calibration = 1000 * best
    return _calibration


def machine() -> str:
    """One line describing the machine and the date, for the report."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now} · {cores} cores ({cpu}) · Python {platform.python_version()} · "
        f"calibration {calibration_ms():.0f} ms"
    )


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores, from ``/proc/stat``)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _tree_cpu_seconds(pid: int) -> float:
    """CPU of a live process, its waited-for children, and its live descendants."""
    total = 0.0
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total + sum(_tree_cpu_seconds(child) for child in _children(pid))


def own_cpu_seconds() -> float:
    """CPU seconds of this process and all its descendants, live or waited for."""
    times = os.times()
    reaped = times.children_user + times.children_system
    return times.user + times.system + reaped + sum(map(_tree_cpu_seconds, _children(os.getpid())))


class LoadMeter:
    """How busy the rest of the machine was during a block: other work skews every figure.

    ``background`` is the machine's busy CPU time minus ours (this process and every process it
    started: services, pool workers, scrape children), in cores on average.
    """

    def __init__(self) -> None:
        self.background = 0.0

    def _ours(self) -> float:
        return own_cpu_seconds()

    def __enter__(self) -> LoadMeter:
        self._start = (time.perf_counter(), machine_busy_seconds(), self._ours())
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._start[0]
        busy = machine_busy_seconds() - self._start[1]
        ours = self._ours() - self._start[2]
        self.background = max(0.0, busy - ours) / wall if wall > 0 else 0.0


def wait_for_quiet(max_wait: float = 90.0, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) until other processes use less than ``threshold`` cores.

    Returns the background load last seen, in cores. Other people's test runs on a 2-core
    machine halve every figure; this keeps a benchmark from starting in the middle of one.
    """
    deadline = time.monotonic() + max_wait
    warned = False
    while True:
        with LoadMeter() as meter:
            time.sleep(1.0)
        if meter.background < threshold or time.monotonic() >= deadline:
            if meter.background >= threshold:
                print(
                    f"warning: other processes still use {meter.background:.1f} cores; "
                    "measuring anyway (figures will be low)",
                    file=sys.stderr,
                    flush=True,
                )
            return meter.background
        if not warned:
            print(
                f"other processes use {meter.background:.1f} of the cores: waiting up to "
                f"{max_wait:.0f}s for a quiet machine",
                file=sys.stderr,
                flush=True,
            )
            warned = True
        time.sleep(1.0)


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / (1024 * 1024):,.0f} MiB"


class Stopwatch:
    """Accumulates ``time.perf_counter`` seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
                self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return function(*args, **kwargs)

        return timed
