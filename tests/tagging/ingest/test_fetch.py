"""The guarded client against real HTTP servers on 127.0.0.1.

Nothing here sends traffic anywhere but loopback: checks of other addresses patch the connect
function to record (and refuse) any attempt, so a guard failure shows up as a recorded call.
"""

from __future__ import annotations

import gzip
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3.util.connection

from tagging.config import Settings
from tagging.errors import (
    BlockedURLError,
    ConfigError,
    FetchError,
    FetchTimeoutError,
    ResponseTooLargeError,
    UnexpectedContentTypeError,
)
from tagging.ingest.fetch import (
    FetchPolicy,
    GuardedClient,
    HTTPStatusError,
    _AddressGuard,
    client_from_settings,
    is_allowed_host,
)

Route = Callable[[BaseHTTPRequestHandler], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _dispatch(self) -> None:
        self.server.record(self)
        route = self.server.routes.get(self.path.split("?", 1)[0])
        try:
            if route is None:
                send(self, 404, b"no such page", "text/plain")
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # The client gave up on purpose (cap, timeout): that is what is tested.

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The client hanging up mid-exchange (caps, timeouts, pooled sockets) is expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def __init__(self, routes: dict[str, Route]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = routes
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def record(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((handler.command, handler.path, dict(handler.headers), body))

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def send(
    handler: BaseHTTPRequestHandler,
    status: int = 200,
    body: bytes = b"",
    content_type: str = "text/plain",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


@pytest.fixture
def serve() -> Iterator[Callable[[dict[str, Route]], _Server]]:
    servers: list[_Server] = []

    def start(routes: dict[str, Route]) -> _Server:
        server = _Server(routes)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every address the client tries to connect to; only loopback ones really connect."""
    calls: list[tuple[str, int]] = []
    real = urllib3.util.connection.create_connection

    def spy(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        calls.append(address)
        if address[0] not in ("127.0.0.1", "::1"):
            raise ConnectionRefusedError(111, "Connection refused (test spy)")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", spy)
    return calls


def client_for(*servers: _Server, **policy: Any) -> GuardedClient:
    allowed = tuple(f"127.0.0.1:{s.port}" for s in servers) + tuple(policy.pop("allow", ()))
    return GuardedClient(FetchPolicy(allowed_hosts=allowed, **policy))


def ok_text(body: bytes = b"hello") -> Route:
    return lambda h: send(h, 200, body, "text/plain; charset=utf-8", {"X-Thing": "yes"})


# --- the allow-list and the address check ------------------------------------------------------


def test_allow_listed_loopback_server_is_fetched(serve: Callable[..., _Server]) -> None:
    server = serve({"/a": ok_text(b"hello")})
    with client_for(server) as client:
        result = client.get(f"{server.base}/a")
    assert result.status == 200
    assert result.body == b"hello"
    assert result.url == f"{server.base}/a"
    assert result.headers["x-thing"] == "yes"  # Case-insensitive lookup.
    assert result.headers["Content-Type"].startswith("text/plain")
    assert result.elapsed > 0
    assert server.requests[0][2]["User-Agent"] == "Tagdesk/0.1"


def test_loopback_not_allow_listed_is_refused_before_any_request(
    serve: Callable[..., _Server], connects: list[tuple[str, int]]
) -> None:
    server = serve({"/a": ok_text()})
    with GuardedClient() as client, pytest.raises(BlockedURLError) as info:
        client.get(f"{server.base}/a")
    message = str(info.value)
    assert f"refused {server.base}/a" in message
    assert "127.0.0.1 is a loopback address" in message
    assert "TAGGING_ALLOWED_HOSTS" in message
    assert server.requests == []
    assert connects == []


def test_allow_listing_another_port_does_not_allow_this_one(
    serve: Callable[..., _Server],
) -> None:
    server = serve({"/a": ok_text()})
    other = serve({})
    with client_for(other) as client, pytest.raises(BlockedURLError):
        client.get(f"{server.base}/a")
    assert server.requests == []


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("http://10.0.0.5/x.jpg", "10.0.0.5 is a private address"),
        ("http://172.16.3.4/x.jpg", "private address"),
        ("http://192.168.1.1:8080/", "private address"),
        ("http://169.254.169.254/latest/meta-data/", "link-local address"),
        ("http://[::1]:8080/", "::1 is a loopback address"),
        ("http://0.0.0.0/", "unspecified address"),
        ("http://[::]/", "unspecified address"),
        ("http://127.8.9.10/", "loopback address"),
        ("http://224.0.0.1/", "multicast address"),
        ("http://100.64.1.1/", "not a public address"),  # Carrier-grade NAT.
        ("http://240.0.0.1/", "address"),
        ("http://[fe80::1]/", "link-local address"),
        ("http://[fd00::1]/", "private address"),
        ("http://[::ffff:10.0.0.1]/", "IPv6 form of 10.0.0.1, a private address"),
        ("http://[::ffff:127.0.0.1]/", "IPv6 form of 127.0.0.1"),
        ("http://[64:ff9b::a9fe:a9fe]/", "IPv6 form of 169.254.169.254"),  # NAT64.
        ("http://[2002:a00:1::1]/", "IPv6 form of 10.0.0.1"),  # 6to4.
        ("https://10.0.0.5/secure", "private address"),
    ],
)
def test_non_public_addresses_are_refused_without_connecting(
    url: str, what: str, connects: list[tuple[str, int]]
) -> None:
    start = time.monotonic()
    with GuardedClient() as client, pytest.raises(BlockedURLError) as info:
        client.get(url)
    assert what in str(info.value)
    assert str(info.value).startswith(f"refused {url}")
    assert connects == []  # The check runs before any socket is opened.
    assert time.monotonic() - start < 2


def test_hostname_resolving_to_loopback_is_refused_unless_allow_listed(
    serve: Callable[..., _Server],
) -> None:
    server = serve({"/a": ok_text(b"via name")})
    url = f"http://localhost:{server.port}/a"
    with GuardedClient() as client, pytest.raises(BlockedURLError) as info:
        client.get(url)
    assert "localhost resolves to" in str(info.value)
    assert "loopback address" in str(info.value)
    # Allowing the IP does not allow the name, and the other way round: entries match as written.
    with client_for(server) as client, pytest.raises(BlockedURLError):
        client.get(url)
    with GuardedClient(FetchPolicy(allowed_hosts=("localhost",))) as client:
        assert client.get(url).body == b"via name"
        with pytest.raises(BlockedURLError):
            client.get(f"{server.base}/a")


def test_connection_goes_to_the_address_that_was_checked(
    monkeypatch: pytest.MonkeyPatch, connects: list[tuple[str, int]]
) -> None:
    # A rebinding resolver: public first, loopback afterwards. The client must resolve once and
    # connect to the public answer it checked (refused by the spy, so nothing leaves the host).
    real = socket.getaddrinfo
    answers = iter(["93.184.215.14", "127.0.0.1", "127.0.0.1"])
    lookups: list[str] = []

    def resolver(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = next(answers)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with GuardedClient() as client, pytest.raises(FetchError) as info:
        client.get("http://rebind.test/x.jpg")
    assert not isinstance(info.value, BlockedURLError)
    assert "connection refused" in str(info.value)
    assert lookups == ["rebind.test"]
    assert connects == [("93.184.215.14", 80)]


def test_name_with_one_private_answer_among_public_ones_is_refused(
    monkeypatch: pytest.MonkeyPatch, connects: list[tuple[str, int]]
) -> None:
    real = socket.getaddrinfo

    def resolver(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "mixed.test":
            return real(host, port, *args, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with GuardedClient() as client, pytest.raises(BlockedURLError) as info:
        client.get("http://mixed.test/")
    assert "mixed.test resolves to 10.1.2.3, a private address" in str(info.value)
    assert connects == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/sitemap.xml",
        "file:///etc/passwd",
        "gopher://example.com/",
        "data:text/plain,hello",
        "example.com/sitemap.xml",
        "http:///no-host",
        "http://example.com:99999/",
    ],
)
def test_bad_schemes_and_malformed_urls_are_refused(
    url: str, connects: list[tuple[str, int]]
) -> None:
    with GuardedClient() as client, pytest.raises(BlockedURLError) as info:
        client.get(url)
    assert url in str(info.value)
    assert connects == []


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://a..b/x.jpg", "empty label"),
        ("http://.example.com/x.jpg", "empty label"),
        ("http://" + "a" * 300 + ".com/x.jpg", "over the 253"),
        ("http://" + "a" * 64 + ".com/x.jpg", "a label of 64 characters"),
        # 30 different CJK characters: 72 characters once IDNA-encoded.
        ("http://" + "".join(chr(0x4E00 + 37 * i) for i in range(30)) + ".cn/", "over the 63"),
        ("http://[::1/x.jpg", "Invalid IPv6 URL"),
        ("http://example.com/" + "a" * 2048, "over the 2,048-character cap"),
    ],
)
def test_malformed_host_names_and_over_long_urls_are_refused_without_connecting(
    url: str, says: str, connects: list[tuple[str, int]]
) -> None:
    with GuardedClient() as client:
        for method in (client.get, client.head):
            with pytest.raises(BlockedURLError, match=says) as info:
                method(url)
            assert len(str(info.value)) < 500 or "over the 253" in says  # that URL is quoted
    assert connects == []


def test_a_host_name_the_resolver_cannot_encode_is_a_blocked_url() -> None:
    # What the URL check above keeps from ever reaching the resolver, caught there too.
    with pytest.raises(BlockedURLError, match="not a valid host name"):
        _AddressGuard(()).addresses("a..b", 80)


def test_redirect_to_an_over_long_url_is_refused(serve: Callable[..., _Server]) -> None:
    server = serve({"/r": redirect("/" + "a" * 2100)})
    with client_for(server) as client, pytest.raises(BlockedURLError, match="2,048"):
        client.get(f"{server.base}/r")
    assert [path for _, path, _, _ in server.requests] == ["/r"]


def test_before_body_sees_the_headers_before_the_body_is_read(
    serve: Callable[..., _Server],
) -> None:
    def half_sent(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"x" * 10)
        h.wfile.flush()
        time.sleep(3)  # the rest never comes: a hook called after reading would be too late

    server = serve({"/half.jpg": half_sent, "/ok": ok_text(b"hello")})
    seen: list[str | None] = []

    class Stop(Exception):
        pass

    def hook(headers: Any) -> None:
        seen.append(headers.get("CONTENT-LENGTH"))
        raise Stop

    with client_for(server) as client:
        start = time.monotonic()
        with pytest.raises(Stop):
            client.get(f"{server.base}/half.jpg", before_body=hook)
        assert time.monotonic() - start < 2 and seen == ["1000"]
        lengths: list[str] = []
        response = client.get(
            f"{server.base}/ok", before_body=lambda h: lengths.append(h["x-thing"])
        )
        assert response.body == b"hello" and lengths == ["yes"]


def test_unresolvable_host_and_closed_port_are_fetch_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def resolver(host: str, *args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with GuardedClient(FetchPolicy(allowed_hosts=("127.0.0.1",))) as client:
        with pytest.raises(FetchError) as info:
            client.get(f"http://127.0.0.1:{closed_port}/x")
        assert type(info.value) is FetchError
        assert "connection refused" in str(info.value)
        assert f"127.0.0.1:{closed_port}/x" in str(info.value)
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        with pytest.raises(FetchError) as info:
            client.get("http://no-such-host.test/x")
        assert "does not resolve" in str(info.value)


# --- redirects ---------------------------------------------------------------------------------


def redirect(location: str, status: int = 302) -> Route:
    return lambda h: send(h, status, b"", "text/plain", {"Location": location})


def test_redirects_are_followed_and_the_final_url_reported(
    serve: Callable[..., _Server],
) -> None:
    server = serve({"/a": redirect("/b", 301), "/b": redirect("c", 307), "/c": ok_text(b"end")})
    with client_for(server) as client:
        result = client.get(f"{server.base}/a")
    assert result.body == b"end"
    assert result.url == f"{server.base}/c"
    assert [r[1] for r in server.requests] == ["/a", "/b", "/c"]


def test_redirect_to_a_loopback_port_not_allow_listed_is_refused(
    serve: Callable[..., _Server], connects: list[tuple[str, int]]
) -> None:
    target = serve({"/secret": ok_text(b"secret")})
    server = serve({"/a": redirect(f"{target.base}/secret")})
    with client_for(server) as client, pytest.raises(BlockedURLError) as info:
        client.get(f"{server.base}/a")
    assert f"refused {target.base}/secret (redirected from {server.base}/a)" in str(info.value)
    assert target.requests == []
    assert connects == [("127.0.0.1", server.port)]


def test_redirect_to_a_private_address_or_bad_scheme_is_refused(
    serve: Callable[..., _Server], connects: list[tuple[str, int]]
) -> None:
    server = serve(
        {"/meta": redirect("http://169.254.169.254/latest"), "/file": redirect("file:///etc/x")}
    )
    with client_for(server) as client:
        with pytest.raises(BlockedURLError, match="link-local"):
            client.get(f"{server.base}/meta")
        with pytest.raises(BlockedURLError, match="only http and https"):
            client.get(f"{server.base}/file")
    assert all(address == ("127.0.0.1", server.port) for address in connects)


def test_redirect_loop_stops_at_max_redirects(serve: Callable[..., _Server]) -> None:
    server = serve({"/loop": redirect("/loop")})
    with client_for(server, max_redirects=3) as client, pytest.raises(FetchError) as info:
        client.get(f"{server.base}/loop")
    assert "more than 3 redirects" in str(info.value)
    assert len(server.requests) == 4  # The first request and three redirects.


def test_credentials_do_not_follow_a_cross_origin_redirect(
    serve: Callable[..., _Server],
) -> None:
    other = serve({"/landing": lambda h: send(h, 200, b"{}", "application/json")})
    server = serve(
        {"/api": redirect(f"{other.base}/landing", 307), "/same": redirect("/api2", 307)}
    )
    server.routes["/api2"] = lambda h: send(h, 200, b"{}", "application/json")
    with client_for(server, other) as client:
        client.request_json("POST", f"{server.base}/same", json={}, headers={"Authorization": "x"})
        client.request_json("POST", f"{server.base}/api", json={}, headers={"Authorization": "x"})
    same_origin = server.requests[1]
    assert same_origin[1] == "/api2" and same_origin[2].get("Authorization") == "x"
    assert other.requests[0][0] == "POST"  # 307 keeps the method ...
    assert "Authorization" not in other.requests[0][2]  # ... but not the token.


# --- bodies: caps, timeouts, content types ------------------------------------------------------


def test_content_length_over_the_cap_is_refused_before_reading(
    serve: Callable[..., _Server],
) -> None:
    def huge_promise(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(50 * 1024 * 1024))
        h.end_headers()
        h.wfile.flush()
        time.sleep(3)  # No body comes: a client that reads would hang here.

    server = serve({"/big.jpg": huge_promise})
    start = time.monotonic()
    with client_for(server) as client, pytest.raises(ResponseTooLargeError) as info:
        client.get(f"{server.base}/big.jpg", max_bytes=1024 * 1024)
    assert time.monotonic() - start < 2
    assert "Content-Length" in str(info.value) and "50.0 MiB" in str(info.value)


def chunked(pieces: Callable[[], Iterator[bytes]], content_type: str = "image/jpeg") -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for piece in pieces():
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    return route


def test_streamed_body_without_content_length_is_capped_while_reading(
    serve: Callable[..., _Server],
) -> None:
    def endless() -> Iterator[bytes]:
        while True:
            yield b"x" * 65536

    server = serve(
        {"/endless": chunked(endless), "/small": chunked(lambda: iter([b"ab", b"cd", b"ef"]))}
    )
    with client_for(server) as client:
        start = time.monotonic()
        with pytest.raises(ResponseTooLargeError, match=r"over the 1\.0 MiB cap"):
            client.get(f"{server.base}/endless", max_bytes=1024 * 1024)
        assert time.monotonic() - start < 5
        assert client.get(f"{server.base}/small", max_bytes=6).body == b"abcdef"
        with pytest.raises(ResponseTooLargeError):
            client.get(f"{server.base}/small", max_bytes=5)


def test_gzip_content_encoding_bomb_is_capped_on_the_inflated_size(
    serve: Callable[..., _Server],
) -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=1)
    server = serve(
        {"/bomb": lambda h: send(h, 200, bomb, "image/png", {"Content-Encoding": "gzip"})}
    )
    with client_for(server) as client, pytest.raises(ResponseTooLargeError):
        client.get(f"{server.base}/bomb", max_bytes=1024 * 1024)


def test_slow_body_times_out_at_the_total_timeout(serve: Callable[..., _Server]) -> None:
    def drip(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", "1000")
        h.end_headers()
        for _ in range(1000):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.05)  # Far below the read timeout: only the total cap can stop it.

    server = serve({"/slow": drip})
    with client_for(server, read_timeout=5, total_timeout=1.0) as client:
        start = time.monotonic()
        with pytest.raises(FetchTimeoutError) as info:
            client.get(f"{server.base}/slow")
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 2.5
    assert "took longer than 1s" in str(info.value)
    assert f"{server.base}/slow" in str(info.value)


def test_slow_headers_time_out_at_the_total_timeout(serve: Callable[..., _Server]) -> None:
    def drip_headers(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(200):
            h.wfile.write(f"X-{i}: y\r\n".encode())
            h.wfile.flush()
            time.sleep(0.05)

    server = serve({"/slow": drip_headers})
    with client_for(server, read_timeout=5, total_timeout=1.0) as client:
        start = time.monotonic()
        with pytest.raises(FetchTimeoutError):
            client.get(f"{server.base}/slow")
    assert time.monotonic() - start < 2.5


def test_stalled_server_hits_the_read_timeout(serve: Callable[..., _Server]) -> None:
    server = serve({"/stall": lambda h: time.sleep(2)})
    with client_for(server, read_timeout=0.3, total_timeout=10) as client:
        start = time.monotonic()
        with pytest.raises(FetchTimeoutError, match=r"sent nothing for 0\.3s"):
            client.get(f"{server.base}/stall")
    assert time.monotonic() - start < 1.5


def test_content_type_must_match_an_accepted_prefix(serve: Callable[..., _Server]) -> None:
    server = serve(
        {
            "/page": lambda h: send(h, 200, b"<html></html>", "text/html; charset=utf-8"),
            "/img": lambda h: send(h, 200, b"\x89PNG", "IMAGE/PNG"),
            "/none": lambda h: send(h, 200, b"?", ""),
        }
    )
    with client_for(server) as client:
        with pytest.raises(UnexpectedContentTypeError) as info:
            client.get(f"{server.base}/page", accept=["image/"])
        assert "text/html" in str(info.value) and "image/" in str(info.value)
        assert client.get(f"{server.base}/img", accept=["image/"]).body == b"\x89PNG"
        with pytest.raises(UnexpectedContentTypeError, match="no Content-Type"):
            client.get(f"{server.base}/none", accept=["image/"])
        assert client.get(f"{server.base}/page").status == 200  # No accept: anything goes.


def test_head_returns_headers_and_no_body(serve: Callable[..., _Server]) -> None:
    server = serve(
        {
            "/a.jpg": lambda h: send(h, 200, b"x" * 500, "image/jpeg", {"ETag": '"v1"'}),
            "/moved": redirect("/a.jpg", 301),
        }
    )
    with client_for(server) as client:
        result = client.head(f"{server.base}/moved")
    assert result.body == b""
    assert result.status == 200
    assert result.headers["etag"] == '"v1"'
    assert result.headers["content-length"] == "500"
    assert result.url == f"{server.base}/a.jpg"
    assert [r[0] for r in server.requests] == ["HEAD", "HEAD"]


def test_non_2xx_is_a_fetch_error_with_the_status(serve: Callable[..., _Server]) -> None:
    server = serve({"/gone": lambda h: send(h, 410, b"gone", "text/plain")})
    with client_for(server) as client:
        with pytest.raises(HTTPStatusError) as info:
            client.get(f"{server.base}/missing.jpg")
        assert isinstance(info.value, FetchError)
        assert info.value.status == 404
        assert info.value.code == "fetch_failed"
        assert f"GET {server.base}/missing.jpg answered HTTP 404 Not Found" == str(info.value)
        with pytest.raises(HTTPStatusError) as info:
            client.head(f"{server.base}/gone")
        assert info.value.status == 410


def test_request_json_sends_json_and_reports_error_bodies(
    serve: Callable[..., _Server],
) -> None:
    def echo(h: BaseHTTPRequestHandler) -> None:
        body = h.server.requests[-1][3]  # type: ignore[attr-defined]
        send(h, 200, json.dumps({"got": json.loads(body)}).encode(), "application/json")

    server = serve(
        {
            "/echo": echo,
            "/bad": lambda h: send(h, 422, b'{"detail": "urls must not be empty"}', "x/json"),
        }
    )
    with client_for(server) as client:
        result = client.request_json(
            "post", f"{server.base}/echo", json={"urls": ["a"]}, headers={"Authorization": "t"}
        )
        assert json.loads(result.body) == {"got": {"urls": ["a"]}}
        method, _path, headers, _body = server.requests[0]
        assert method == "POST"
        assert headers["Content-Type"] == "application/json"
        assert headers["Authorization"] == "t"
        with pytest.raises(HTTPStatusError) as info:
            client.request_json("POST", f"{server.base}/bad", json={"urls": []})
    assert info.value.status == 422
    assert "urls must not be empty" in str(info.value)
    assert b"urls must not be empty" in info.value.body


def test_request_json_timeout_overrides_the_policy(serve: Callable[..., _Server]) -> None:
    def slow(h: BaseHTTPRequestHandler) -> None:
        time.sleep(0.6)
        send(h, 200, b"{}", "application/json")

    server = serve({"/slow": slow})
    with client_for(server, read_timeout=0.2, total_timeout=0.2) as client:
        assert client.request_json("GET", f"{server.base}/slow", timeout=3).body == b"{}"
        with pytest.raises(FetchTimeoutError):
            client.request_json("GET", f"{server.base}/slow")


def test_concurrent_use_from_a_thread_pool_is_bounded(serve: Callable[..., _Server]) -> None:
    def slow_image(h: BaseHTTPRequestHandler) -> None:
        server: _Server = h.server  # type: ignore[assignment]
        with server.lock:
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        time.sleep(0.05)
        with server.lock:
            server.in_flight -= 1
        send(h, 200, h.path.encode(), "image/jpeg")

    server = serve({f"/{i}.jpg": slow_image for i in range(40)})
    with client_for(server, max_concurrency=4) as client, ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda i: client.get(f"{server.base}/{i}.jpg", accept=["image/"]), range(40))
        )
    assert [r.body for r in results] == [f"/{i}.jpg".encode() for i in range(40)]
    assert 1 < server.max_in_flight <= 4


def test_connections_are_reused(serve: Callable[..., _Server]) -> None:
    ports: set[int] = set()

    def note_peer(h: BaseHTTPRequestHandler) -> None:
        ports.add(h.client_address[1])
        send(h, 200, b"ok")

    server = serve({"/a": note_peer})
    with client_for(server) as client:
        for _ in range(5):
            client.get(f"{server.base}/a")
    assert len(ports) == 1


# --- TLS: the certificate is checked against the URL's name, not the checked IP ---------------


def _make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=DNS:{name}",
            "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "keyUsage=digitalSignature",
            "-addext", "extendedKeyUsage=serverAuth",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_verifies_the_original_hostname(serve: Callable[..., _Server], tmp_path: Path) -> None:
    server = serve({"/a": ok_text(b"secure")})
    key, cert = _make_cert(tmp_path, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    _wrong_key, wrong_cert = _make_cert(tmp_path, "other.test")
    url = f"https://localhost:{server.port}/a"
    with GuardedClient(FetchPolicy(allowed_hosts=("localhost",))) as client:
        client._session.verify = str(cert)  # Trust the test certificate only.
        assert client.get(url).body == b"secure"
        client._session.verify = str(wrong_cert)
        client._session.close()  # Forget the verified pooled connection.
        with pytest.raises(FetchError, match="TLS failed"):
            client.get(url)


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "allowed", "expected"),
    [
        ("ml.internal", 8800, ["ml.internal"], True),
        ("ML.Internal.", 8800, ["ml.internal"], True),
        ("ml.internal", 8800, ["ml.internal:8800"], True),
        ("ml.internal", 8801, ["ml.internal:8800"], False),
        ("other.internal", 8800, ["ml.internal"], False),
        ("127.0.0.1", 80, ["localhost"], False),
        ("::1", 8080, ["[::1]:8080"], True),
        ("[::1]", 8080, ["::1"], True),
        ("0:0::1", 9, ["::1"], True),
        ("::1", 9, ["[::1]:8080"], False),
        ("ml.internal", 8800, ["ml.internal:nope", "http://ml.internal", ""], False),
    ],
)
def test_is_allowed_host(host: str, port: int, allowed: list[str], expected: bool) -> None:
    assert is_allowed_host(host, port, allowed) is expected


def test_malformed_allow_list_entry_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ml:port"):
        GuardedClient(FetchPolicy(allowed_hosts=("ml:port",)))


def test_client_from_settings_allows_settings_and_extra_hosts(
    serve: Callable[..., _Server], tmp_path: Path
) -> None:
    first, second, third = serve({"/": ok_text()}), serve({"/": ok_text()}), serve({"/": ok_text()})
    settings = Settings.from_env(
        {
            "TAGGING_DATA_DIR": str(tmp_path),
            "TAGGING_ALLOWED_HOSTS": f"127.0.0.1:{first.port}",
        }
    )
    with client_from_settings(settings, extra_allowed=[f"127.0.0.1:{second.port}"]) as client:
        assert client.get(f"{first.base}/").status == 200
        assert client.get(f"{second.base}/").status == 200
        with pytest.raises(BlockedURLError):
            client.get(f"{third.base}/")


def test_http_client_module_is_unpatched_for_other_users() -> None:
    # The deadline reader is plugged into our own connection class only.
    assert http.client.HTTPConnection.response_class is http.client.HTTPResponse


def test_head_requests_reuse_the_pooled_connection() -> None:
    """A cached re-scrape is one HEAD per image: each must not cost a new TCP connection."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "1234")
            self.send_header("ETag", '"x"')
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    accepted: list[object] = []

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self):
            connection = super().get_request()
            accepted.append(connection[1])
            return connection

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with GuardedClient(FetchPolicy(allowed_hosts=(f"127.0.0.1:{port}",))) as client:
            for _ in range(20):
                result = client.head(f"http://127.0.0.1:{port}/a.jpg")
                assert result.headers["etag"] == '"x"' and result.body == b""
    finally:
        server.shutdown()
    assert len(accepted) == 1, f"{len(accepted)} connections for 20 HEAD requests"


# --- conditional GETs and HTTP caching -----------------------------------------------------------


def test_a_conditional_get_answered_304_is_a_result_with_no_body(
    serve: Callable[..., _Server],
) -> None:
    def image(handler: BaseHTTPRequestHandler) -> None:
        if handler.headers.get("If-None-Match") == '"v1"':
            handler.send_response(304)
            handler.send_header("ETag", '"v1"')
            handler.send_header("Cache-Control", "max-age=60")
            handler.end_headers()
            return
        send(handler, 200, b"picture", "image/jpeg", {"ETag": '"v1"'})

    server = serve({"/a.jpg": image})
    with GuardedClient(FetchPolicy(allowed_hosts=(f"127.0.0.1:{server.port}",))) as client:
        full = client.get(server.base + "/a.jpg", accept=["image/"])
        assert (full.status, full.body) == (200, b"picture")
        conditional = {"If-None-Match": '"v1"'}
        result = client.get(
            server.base + "/a.jpg", accept=["image/"], headers=conditional, not_modified=True
        )
        assert (result.status, result.body) == (304, b"")
        assert result.headers["cache-control"] == "max-age=60"
        # Without not_modified a 304 is an error, as any other non-2xx status.
        with pytest.raises(HTTPStatusError) as info:
            client.get(server.base + "/a.jpg", headers=conditional)
        assert info.value.status == 304
    assert [r[2].get("If-None-Match") for r in server.requests] == [None, '"v1"', '"v1"']


@pytest.mark.parametrize(
    ("headers", "max_age", "validators"),
    [
        ({"Cache-Control": "public, max-age=3600", "ETag": '"x"'}, 3600, ('"x"', None)),
        ({"Cache-Control": 'max-age="60", s-maxage=120'}, 120, (None, None)),  # shared cache
        ({"Cache-Control": "max-age=600", "Age": "100"}, 500, (None, None)),
        ({"Cache-Control": "max-age=soon"}, 0, (None, None)),  # invalid: stale
        ({"Cache-Control": "no-cache, max-age=600", "ETag": '"x"'}, None, ('"x"', None)),
        ({"Pragma": "no-cache", "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}, None,
         (None, "Mon, 01 Jan 2024 00:00:00 GMT")),
        ({"Cache-Control": "no-store", "ETag": '"x"'}, None, (None, None)),
        ({"Cache-Control": "private, max-age=60", "ETag": '"x"'}, None, (None, None)),
        ({"Cache-Control": "must-revalidate, max-age=60"}, 60, (None, None)),
        ({"Expires": "Thu, 01 Dec 2026 16:00:00 GMT", "Date": "Thu, 01 Dec 2026 15:00:00 GMT"},
         3600, (None, None)),
        ({"Expires": "0"}, 0, (None, None)),  # invalid date: already stale
        ({"ETag": '"x"'}, None, ('"x"', None)),  # no lifetime stated: revalidate every time
    ],
)  # fmt: skip
def test_response_freshness(
    headers: dict[str, str], max_age: int | None, validators: tuple[str | None, str | None]
) -> None:
    from tagging.ingest.fetch import response_freshness

    freshness = response_freshness(headers)
    assert freshness.max_age == max_age
    assert (freshness.etag, freshness.last_modified) == validators
    assert freshness.stated == (set(headers) - {"ETag", "Last-Modified", "Date", "Age"} != set())
