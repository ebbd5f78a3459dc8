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
| ``TAGGING_ARCHIVE_S3_BUCKET`` | an S3-compatible bucket for the archive instead | the folder |
| ``TAGGING_ARCHIVE_S3_URL`` | the bucket's endpoint, e.g. ``http://127.0.0.1:9000`` | AWS S3 |
| ``TAGGING_ARCHIVE_S3_PREFIX`` | the folder in the bucket that holds the archive | its root |
| ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` | the bucket's credentials | boto3's chain |
| ``AWS_SESSION_TOKEN`` | a temporary credential's token, for the bucket | none |
| ``AWS_DEFAULT_REGION`` | the bucket's region | ``us-east-1`` |
| ``TAGGING_SESSION_IDLE_MINUTES`` | idle minutes before the app asks to sign in again | ``480`` |
| ``TAGGING_SESSION_MAX_HOURS`` | hours after sign-in before the app asks again | ``12`` |
| ``TAGGING_TEST_POSTGRES_URL`` | PostgreSQL for the test suite | tests skip PostgreSQL |
| ``MLFLOW_TRACKING_URI`` | MLflow's runs and registry: a server or a database | data dir SQLite |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
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
    archive_s3_bucket: str | None = None
    """The S3-compatible bucket that holds the archive instead of the folder
    (``TAGGING_ARCHIVE_S3_BUCKET``); None: the folder :attr:`archive_dir`."""
    archive_s3_url: str | None = None
    """The bucket's endpoint (``TAGGING_ARCHIVE_S3_URL``, e.g. MinIO's ``http://127.0.0.1:9000``);
    None: AWS S3 itself. Set by the operator, so it is not an advertiser URL: the archive talks
    to it directly, not through the guarded fetch client."""
    robustness_per_class: int = 100
    """Images per Image Type of the robustness set a model comparison measures on
    (``TAGGING_ROBUSTNESS_PER_CLASS``): its seed is fixed, its size is the operator's."""
    archive_s3_prefix: str = ""
    """The folder inside the bucket (``TAGGING_ARCHIVE_S3_PREFIX``), without slashes at either
    end; empty: the bucket's root."""
    aws_access_key_id: str | None = None
    """The bucket's access key (``AWS_ACCESS_KEY_ID``); read only when a bucket is configured.
    None: boto3's own chain (instance role, ``~/.aws``)."""
    aws_secret_access_key: str | None = field(default=None, repr=False)
    """Its secret (``AWS_SECRET_ACCESS_KEY``); kept out of ``repr`` so no log line shows it."""
    aws_session_token: str | None = field(default=None, repr=False)
    """A temporary credential's token (``AWS_SESSION_TOKEN``), if any."""
    aws_region: str | None = None
    """The bucket's region (``AWS_DEFAULT_REGION``); None: ``us-east-1``, what MinIO expects."""
    mlflow_tracking_uri: str | None = None
    """MLflow's tracking and registry store (``MLFLOW_TRACKING_URI``, MLflow's own variable): a
    tracking server ``http(s)://...`` or a database (``sqlite:///...``, ``postgresql://...``);
    None: SQLite in the data dir. See :attr:`mlflow_uri`."""

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
        s3 = _archive_s3(env)
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
            archive_s3_bucket=s3.bucket,
            archive_s3_url=s3.url,
            archive_s3_prefix=s3.prefix,
            aws_access_key_id=s3.access_key_id,
            aws_secret_access_key=s3.secret_access_key,
            aws_session_token=s3.session_token,
            aws_region=s3.region,
            mlflow_tracking_uri=_mlflow_tracking_uri(env),
            robustness_per_class=_positive_int(env, "TAGGING_ROBUSTNESS_PER_CLASS") or 100,
        )

    def to_env(self) -> dict[str, str]:
        """The ``TAGGING_*`` variables that reproduce these settings in a subprocess.

        ``Settings.from_env(settings.to_env()) == settings``. Unset optional settings are left
        out, so a caller may merge the result into a copy of ``os.environ`` stripped of
        ``TAGGING_*``. The archive bucket's ``AWS_*`` credentials and region are included when
        these settings hold them (only when a bucket is configured), and so is
        ``MLFLOW_TRACKING_URI`` when it is set.
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
            "TAGGING_ROBUSTNESS_PER_CLASS": str(self.robustness_per_class),
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
        if self.archive_s3_bucket:
            env["TAGGING_ARCHIVE_S3_BUCKET"] = self.archive_s3_bucket
        if self.archive_s3_url:
            env["TAGGING_ARCHIVE_S3_URL"] = self.archive_s3_url
        if self.archive_s3_prefix:
            env["TAGGING_ARCHIVE_S3_PREFIX"] = self.archive_s3_prefix
        for name, value in (
            ("AWS_ACCESS_KEY_ID", self.aws_access_key_id),
            ("AWS_SECRET_ACCESS_KEY", self.aws_secret_access_key),
            ("AWS_SESSION_TOKEN", self.aws_session_token),
            ("AWS_DEFAULT_REGION", self.aws_region),
        ):
            if value:
                env[name] = value
        if self.mlflow_tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri
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
    def mlflow_uri(self) -> str:
        """MLflow's tracking and registry URI: ``MLFLOW_TRACKING_URI``, else
        ``sqlite:///<data dir>/mlflow.sqlite``."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_dir / 'mlflow.sqlite'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Where MLflow runs' artifacts go when the store is a database, not a tracking server
        (a server keeps them itself)."""
        return self.data_dir / "mlruns"

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


class _ArchiveS3(NamedTuple):
    bucket: str | None = None
    url: str | None = None
    prefix: str = ""
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    region: str | None = None


def _archive_s3(env: Mapping[str, str]) -> _ArchiveS3:
    """The archive bucket's settings (all None: no bucket, the archive is the folder).

    The ``AWS_*`` variables are read only when ``TAGGING_ARCHIVE_S3_BUCKET`` is set: other tools'
    credentials in the environment are not this app's business otherwise.

    Raises:
        ConfigError: the bucket name is unusable, the endpoint is not an http(s) URL or carries
            credentials, an endpoint or prefix is set without a bucket, or only half of an
            access key pair is set.
    """
    bucket = (env.get("TAGGING_ARCHIVE_S3_BUCKET") or "").strip()
    raw_url = (env.get("TAGGING_ARCHIVE_S3_URL") or "").strip()
    prefix = (env.get("TAGGING_ARCHIVE_S3_PREFIX") or "").strip().strip("/")
    if not bucket:
        if raw_url or prefix:
            raise ConfigError(
                "TAGGING_ARCHIVE_S3_URL or TAGGING_ARCHIVE_S3_PREFIX is set but "
                "TAGGING_ARCHIVE_S3_BUCKET is not: name the bucket, or unset them"
            )
        return _ArchiveS3()
    if "/" in bucket or any(c.isspace() for c in bucket):
        raise ConfigError(f"TAGGING_ARCHIVE_S3_BUCKET must be a bucket name, got {bucket!r:.80}")
    url = None
    if raw_url:
        # Checked before the URL is echoed in any message: user:password@ would be printed.
        if "@" in urlsplit(raw_url).netloc:
            raise ConfigError(
                "TAGGING_ARCHIVE_S3_URL must not carry credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY instead"
            )
        url = _http_url("TAGGING_ARCHIVE_S3_URL", raw_url)
    key_id = (env.get("AWS_ACCESS_KEY_ID") or "").strip() or None
    secret = (env.get("AWS_SECRET_ACCESS_KEY") or "").strip() or None
    if (key_id is None) != (secret is None):
        missing = "AWS_SECRET_ACCESS_KEY" if secret is None else "AWS_ACCESS_KEY_ID"
        raise ConfigError(f"the archive bucket's credentials are incomplete: {missing} is not set")
    return _ArchiveS3(
        bucket=bucket,
        url=url,
        prefix=prefix,
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=(env.get("AWS_SESSION_TOKEN") or "").strip() or None,
        region=(env.get("AWS_DEFAULT_REGION") or "").strip() or None,
    )


# The stores MLflow itself can use for both runs and the model registry (a ``+driver`` suffix is
# allowed, as in ``postgresql+psycopg``). Its file store (a bare path, ``file://``) is not: MLflow
# 3 has it in maintenance mode, and a mistyped URI must not quietly become a folder of files.
_MLFLOW_SCHEMES = frozenset(
    {"http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc"}
)


def _mlflow_tracking_uri(env: Mapping[str, str]) -> str | None:
    """``MLFLOW_TRACKING_URI``, or None when it is unset or empty.

    Raises:
        ConfigError: it names no store MLflow can use for runs and the registry (the message
            leaves out any password the URI carries).
    """
    raw = (env.get("MLFLOW_TRACKING_URI") or "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    scheme = parts.scheme.lower().split("+", 1)[0]
    # A server or a networked database needs a host; SQLite's is empty (sqlite:///path).
    if raw.lower() == "databricks" or (
        scheme in _MLFLOW_SCHEMES and (scheme == "sqlite" or parts.netloc)
    ):
        return raw
    shown = raw
    if "@" in parts.netloc:  # user:password@host: only the host is echoed
        shown = raw.replace(parts.netloc, "***@" + parts.netloc.rsplit("@", 1)[1], 1)
    raise ConfigError(
        "MLFLOW_TRACKING_URI must be an MLflow tracking server (http://host:5000) or a database "
        f"(sqlite:///path/mlflow.sqlite, postgresql://...), got {shown!r:.120}"
    )


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
