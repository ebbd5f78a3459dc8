"""Settings read from the environment, in one typed object.

| variable | meaning | default |
| --- | --- | --- |
| ``TAGGING_DATA_DIR`` | where databases, models, demo files and the ML cache live | ``./data`` |
| ``TAGGING_DATABASE_URL`` | the app database (SQLAlchemy URL) | SQLite in the data dir |
| ``TAGGING_ML_URL`` | the ML server's base URL | ``http://127.0.0.1:8800`` |
| ``TAGGING_ML_TOKEN`` | the ML server's bearer token | ``<data dir>/ml_token`` if present |
| ``TAGGING_ML_CACHE_URL`` | the ML server's own cache store | SQLite in the data dir |
| ``TAGGING_ALLOWED_HOSTS`` | ``host`` or ``host:port`` entries allowed to be private | none |
| ``TAGGING_COLOR_VENDOR_URL`` | the third-party color model's URL | the embedded model |
| ``TAGGING_TEST_POSTGRES_URL`` | PostgreSQL for the test suite | tests skip PostgreSQL |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tagging.errors import ConfigError

DEFAULT_ML_URL = "http://127.0.0.1:8800"


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        data_dir = Path(env.get("TAGGING_DATA_DIR") or "data").resolve()
        ml_url = (env.get("TAGGING_ML_URL") or DEFAULT_ML_URL).rstrip("/")
        if urlsplit(ml_url).scheme not in ("http", "https"):
            raise ConfigError(f"TAGGING_ML_URL must be an http(s) URL, got {ml_url!r}")
        token = env.get("TAGGING_ML_TOKEN") or _read_token_file(data_dir / "ml_token")
        hosts = tuple(
            h.strip().lower()
            for h in (env.get("TAGGING_ALLOWED_HOSTS") or "").split(",")
            if h.strip()
        )
        return cls(
            data_dir=data_dir,
            database_url=env.get("TAGGING_DATABASE_URL")
            or f"sqlite:///{data_dir / 'tagdesk.sqlite'}",
            ml_url=ml_url,
            ml_token=token,
            ml_cache_url=env.get("TAGGING_ML_CACHE_URL")
            or f"sqlite:///{data_dir / 'ml_cache.sqlite'}",
            allowed_hosts=hosts,
            color_vendor_url=env.get("TAGGING_COLOR_VENDOR_URL") or None,
        )

    @property
    def models_dir(self) -> Path:
        """Where model artifacts live, one folder per version."""
        return self.data_dir / "models"

    @property
    def demo_dir(self) -> Path:
        """Where the generated demo inventory lives."""
        return self.data_dir / "demo"

    def ml_host_entry(self) -> str:
        """The ``host:port`` of the ML server, trusted because the operator configured it."""
        parts = urlsplit(self.ml_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"


def _read_token_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
