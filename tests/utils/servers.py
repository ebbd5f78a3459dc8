"""Helpers for the real servers the tests run on loopback (demo CDN, ML server)."""

from __future__ import annotations

import socket
from pathlib import Path

ML_TOKEN = "test-token-0123456789"
"""The ML server's bearer token in every test that starts one."""


def cdn_host(cdn: object) -> str:
    """``host:port`` of a demo CDN server, as ``Settings.allowed_hosts`` lists it."""
    return cdn.url.split("://", 1)[1].rstrip("/")  # type: ignore[attr-defined]


def ml_settings(tmp_path: Path, cache_url: str, *allowed: str, **overrides: object) -> object:
    """Settings of an ML server (or of a process talking to one) allowed to reach ``allowed``."""
    from tagging.config import Settings

    values: dict[str, object] = {
        "data_dir": tmp_path,
        "database_url": f"sqlite:///{tmp_path / 'unused.sqlite'}",
        "ml_url": "http://127.0.0.1:1",
        "ml_token": ML_TOKEN,
        "ml_cache_url": cache_url,
        "allowed_hosts": tuple(allowed),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released): connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
