"""Helpers for the real servers the tests run on loopback (demo CDN, ML server)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


@contextmanager
def static_server(bodies: Mapping[str, tuple[bytes, str]]) -> Iterator[str]:
    """``host:port`` of a loopback HTTP server answering each path of ``bodies`` with its
    ``(body, content type)``, and 404 for any other path."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, content_type = bodies.get(self.path, (b"gone", "text/plain"))
            self.send_response(200 if self.path in bodies else 404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
