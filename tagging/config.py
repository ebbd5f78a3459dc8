"""Settings read from the environment, in one typed object.

| variable | meaning | default |
| --- | --- | --- |
| ``TAGGING_DATA_DIR`` | where databases, models, demo files and the ML cache live | ``./data`` |
| ``TAGGING_DATABASE_URL`` | the app database (SQLAlchemy URL) | SQLite in the data dir |
| ``TAGGING_ML_URL`` | the ML server (or a load balancer) | ``http://127.0.0.1:8800`` |
| ``TAGGING_ML_URLS`` | ML server replicas, comma-separated | ``TAGGING_ML_URL`` alone |
| ``TAGGING_ML_WORKERS`` | worker processes of one ML server | the number of cores |
| ``TAGGING_ML_TOKEN`` | the ML server's bearer token | ``<data dir>/ml_token`` if present |
| ``TAGGING_ML_CACHE_URL`` | the ML server's own cache store | SQLite in the data dir |
| ``TAGGING_ALLOWED_HOSTS`` | ``host`` or ``host:port`` entries allowed to be private | none |
| ``TAGGING_COLOR_VENDOR_URL`` | the third-party color model's URL | the embedded model |
| ``TAGGING_REDIS_URL`` | Redis for the task queue (several workers) | SQLite in the data dir |
| ``TAGGING_QUEUE_NAME`` | prefix of the task queues' names (``<name>-scrapes``...) | ``tagdesk`` |
| ``TAGGING_SCRAPE_CHUNK_SIZE`` | sitemap items per chunk of a queued scrape | ``500`` |
| ``TAGGING_CHUNK_LEASE_SECONDS`` | a chunk's lease: a worker silent this long lost it | ``60`` |
| ``TAGGING_RECLAIM_SECONDS`` | how often a scrapes worker re-queues lost chunks | half the lease |
| ``TAGGING_ARCHIVE_DIR`` | the archive of fixed images' bytes | ``<data dir>/archive`` |
| ``TAGGING_SESSION_IDLE_MINUTES`` | idle minutes before the app asks to sign in again | ``480`` |
| ``TAGGING_SESSION_MAX_HOURS`` | hours after sign-in before the app asks again | ``12`` |
| ``TAGGING_TEST_POSTGRES_URL`` | PostgreSQL for the test suite | tests skip PostgreSQL |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tagging.errors import ConfigError

DEFAULT_ML_URL = "http://127.0.0.1:8800"
DEFAULT_SESSION_IDLE_MINUTES = 480
DEFAULT_SESSION_MAX_HOURS = 12
DEFAULT_QUEUE_NAME = "tagdesk"
DEFAULT_SCRAPE_CHUNK_SIZE = 500
DEFAULT_CHUNK_LEASE_SECONDS = 60.0


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """Everything a process needs to know about its environment."""

    data_dir: Path
    database_url: str
    ml_url: str
    ml_token: str | None
    ml_cache_url: str
    allowed_hosts: tuple[str, ...] = ()
    color_vendor_url: str | None = None
    redis_url: str | None = None
    session_idle_minutes: int = DEFAULT_SESSION_IDLE_MINUTES
    session_max_hours: int = DEFAULT_SESSION_MAX_HOURS
    ml_urls: tuple[str, ...] = ()
    """The ML server replicas (``TAGGING_ML_URLS``); empty: ``ml_url`` alone. See
    :attr:`ml_replicas`."""
    ml_workers: int = field(default_factory=available_cores)
    """Worker processes of ``python -m tagging serve`` (``TAGGING_ML_WORKERS``)."""
    queue_name: str = DEFAULT_QUEUE_NAME
    """Prefix of the task queues' names (``TAGGING_QUEUE_NAME``): ``<name>-scrapes`` and so on,
    so that two deployments (or test runs) can share one Redis."""
    scrape_chunk_size: int = DEFAULT_SCRAPE_CHUNK_SIZE
    """Sitemap items per chunk of a queued scrape (``TAGGING_SCRAPE_CHUNK_SIZE``)."""
    chunk_lease_seconds: float = DEFAULT_CHUNK_LEASE_SECONDS
    """A chunk's (and a finisher's) lease (``TAGGING_CHUNK_LEASE_SECONDS``): a worker that has
    not pushed it forward for this long is taken for dead and its chunk is queued again."""
    reclaim_seconds: float | None = None
    """How often a scrapes worker looks for lost chunks (``TAGGING_RECLAIM_SECONDS``); None:
    half the lease. See :attr:`reclaim_period`."""
    archive_root: Path | None = None
    """The archive of training images (``TAGGING_ARCHIVE_DIR``); None: ``<data dir>/archive``.
    See :attr:`archive_dir`."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: ``os.environ``).

        Raises:
            ConfigError: a variable holds an unusable value.
        """
        env = os.environ if env is None else env
        data_dir = Path(env.get("TAGGING_DATA_DIR") or "data").resolve()
        ml_url = _http_url("TAGGING_ML_URL", env.get("TAGGING_ML_URL") or DEFAULT_ML_URL)
        ml_urls = _ml_urls(env)
        if ml_urls:
            if env.get("TAGGING_ML_URL") and ml_url not in ml_urls:
                raise ConfigError(
                    f"TAGGING_ML_URL ({ml_url}) is not one of TAGGING_ML_URLS: set only "
                    "TAGGING_ML_URLS to name several ML servers"
                )
            ml_url = ml_urls[0]
        token = env.get("TAGGING_ML_TOKEN") or _read_token_file(data_dir / "ml_token")
        hosts = tuple(
            h.strip().lower()
            for h in (env.get("TAGGING_ALLOWED_HOSTS") or "").split(",")
            if h.strip()
        )
        return cls(
            data_dir=data_dir,
            database_url=env.get("TAGGING_DATABASE_URL")
            or f"sqlite:///{data_dir / 'tagdesk.sqlite'}",  # default_database_url
            ml_url=ml_url,
            ml_token=token,
            ml_cache_url=env.get("TAGGING_ML_CACHE_URL")
            or f"sqlite:///{data_dir / 'ml_cache.sqlite'}",
            allowed_hosts=hosts,
            color_vendor_url=env.get("TAGGING_COLOR_VENDOR_URL") or None,
            redis_url=env.get("TAGGING_REDIS_URL") or None,
            session_idle_minutes=_positive_int(env, "TAGGING_SESSION_IDLE_MINUTES")
            or DEFAULT_SESSION_IDLE_MINUTES,
            session_max_hours=_positive_int(env, "TAGGING_SESSION_MAX_HOURS")
            or DEFAULT_SESSION_MAX_HOURS,
            ml_urls=ml_urls,
            ml_workers=_positive_int(env, "TAGGING_ML_WORKERS") or available_cores(),
            queue_name=(env.get("TAGGING_QUEUE_NAME") or "").strip() or DEFAULT_QUEUE_NAME,
            scrape_chunk_size=_positive_int(env, "TAGGING_SCRAPE_CHUNK_SIZE")
            or DEFAULT_SCRAPE_CHUNK_SIZE,
            chunk_lease_seconds=_positive_float(env, "TAGGING_CHUNK_LEASE_SECONDS")
            or DEFAULT_CHUNK_LEASE_SECONDS,
            reclaim_seconds=_positive_float(env, "TAGGING_RECLAIM_SECONDS"),
            archive_root=Path(env["TAGGING_ARCHIVE_DIR"]).resolve()
            if (env.get("TAGGING_ARCHIVE_DIR") or "").strip()
            else None,
        )

    def to_env(self) -> dict[str, str]:
        """The ``TAGGING_*`` variables that reproduce these settings in a subprocess.

        ``Settings.from_env(settings.to_env()) == settings``. Unset optional settings are left
        out, so a caller may merge the result into a copy of ``os.environ`` stripped of
        ``TAGGING_*``.
        """
        env = {
            "TAGGING_DATA_DIR": str(self.data_dir),
            "TAGGING_DATABASE_URL": self.database_url,
            "TAGGING_ML_URL": self.ml_url,
            "TAGGING_ML_CACHE_URL": self.ml_cache_url,
            "TAGGING_ALLOWED_HOSTS": ",".join(self.allowed_hosts),
            "TAGGING_SESSION_IDLE_MINUTES": str(self.session_idle_minutes),
            "TAGGING_SESSION_MAX_HOURS": str(self.session_max_hours),
            "TAGGING_ML_WORKERS": str(self.ml_workers),
            "TAGGING_QUEUE_NAME": self.queue_name,
            "TAGGING_SCRAPE_CHUNK_SIZE": str(self.scrape_chunk_size),
            "TAGGING_CHUNK_LEASE_SECONDS": repr(float(self.chunk_lease_seconds)),
        }
        if self.reclaim_seconds is not None:
            env["TAGGING_RECLAIM_SECONDS"] = repr(float(self.reclaim_seconds))
        if self.archive_root is not None:
            env["TAGGING_ARCHIVE_DIR"] = str(self.archive_root)
        if self.ml_urls:
            env["TAGGING_ML_URLS"] = ",".join(self.ml_urls)
        if self.ml_token:
            env["TAGGING_ML_TOKEN"] = self.ml_token
        if self.color_vendor_url:
            env["TAGGING_COLOR_VENDOR_URL"] = self.color_vendor_url
        if self.redis_url:
            env["TAGGING_REDIS_URL"] = self.redis_url
        return env

    @property
    def default_database_url(self) -> str:
        """The app database's URL when ``TAGGING_DATABASE_URL`` is unset: SQLite in the data dir."""
        return f"sqlite:///{self.data_dir / 'tagdesk.sqlite'}"

    @property
    def creates_database(self) -> bool:
        """Whether a process may create the app database when it is missing.

        Only the default one in the data dir (what ``make run`` sets up); a database named by
        ``TAGGING_DATABASE_URL`` is created by ``python -m tagging migrate`` alone, so that a
        mistyped URL is an error instead of a new, empty database.
        """
        return self.database_url == self.default_database_url

    @property
    def reclaim_period(self) -> float:
        """Seconds between two looks for lost chunks: ``TAGGING_RECLAIM_SECONDS``, else half the
        chunk lease (a dead worker's chunk is queued again within 1.5 leases)."""
        return self.reclaim_seconds or self.chunk_lease_seconds / 2

    @property
    def models_dir(self) -> Path:
        """Where model artifacts live, one folder per version."""
        return self.data_dir / "models"

    @property
    def archive_dir(self) -> Path:
        """The content-addressed archive of training images (:mod:`tagging.datasets.archive`)."""
        return self.archive_root or self.data_dir / "archive"

    @property
    def demo_dir(self) -> Path:
        """Where the generated demo inventory lives."""
        return self.data_dir / "demo"

    @property
    def ml_replicas(self) -> tuple[str, ...]:
        """Every ML server the clients use: ``TAGGING_ML_URLS``, else ``TAGGING_ML_URL`` alone."""
        return self.ml_urls or (self.ml_url,)

    def ml_host_entry(self) -> str:
        """The ``host:port`` of the ML server, trusted because the operator configured it."""
        return _host_entry(self.ml_url)

    def ml_host_entries(self) -> list[str]:
        """The ``host:port`` of every ML server replica (:attr:`ml_replicas`)."""
        return list(dict.fromkeys(_host_entry(url) for url in self.ml_replicas))


def _host_entry(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _http_url(name: str, raw: str) -> str:
    """``raw`` without trailing slashes, checked to be an http(s) URL with a host.

    Raises:
        ConfigError: it is not.
    """
    url = raw.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL, got {raw!r}")
    return url


def _ml_urls(env: Mapping[str, str]) -> tuple[str, ...]:
    """``TAGGING_ML_URLS``: comma-separated http(s) URLs, duplicates dropped, in order.

    Raises:
        ConfigError: an entry is not an http(s) URL.
    """
    entries = [e for e in (env.get("TAGGING_ML_URLS") or "").split(",") if e.strip()]
    return tuple(dict.fromkeys(_http_url("TAGGING_ML_URLS", entry) for entry in entries))


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    """``env[name]`` as a positive integer, or None when it is unset or empty.

    Raises:
        ConfigError: the value is not a positive whole number.
    """
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a positive whole number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be a positive whole number, got {raw!r}")
    return value


def _positive_float(env: Mapping[str, str], name: str) -> float | None:
    """``env[name]`` as a positive number of seconds, or None when it is unset or empty.

    Raises:
        ConfigError: the value is not a positive number.
    """
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a positive number, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a positive number, got {raw!r}")
    return value


def _read_token_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
