"""The one guarded, pooled HTTP client every outbound request goes through.

Advertisers hand us URLs (sitemaps, images), so every request is a potential SSRF probe. The guard:

* only ``http`` and ``https``;
* the host is resolved *inside* connection creation, every address is checked (private, loopback,
  link-local, reserved, multicast, unspecified, IPv4-mapped/6to4/NAT64-embedded private ones are
  refused unless the URL's ``host`` or ``host:port`` is allow-listed) and the socket is connected
  to exactly the address that was checked, so DNS rebinding has no window between check and use;
* redirects are followed by hand, each hop re-checked the same way;
* bodies are streamed under a byte cap and a wall-clock deadline that also covers a server
  dripping its headers or body a byte at a time (slow-loris).

One :class:`GuardedClient` is safe to share between threads: requests goes through one pooled
``requests.Session`` whose cookies are disabled, so no per-request state is shared.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http.cookiejar import DefaultCookiePolicy
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.util import connection as urllib3_connection

from tagging.config import Settings
from tagging.errors import (
    BlockedURLError,
    ConfigError,
    FetchError,
    FetchTimeoutError,
    ResponseTooLargeError,
    UnexpectedContentTypeError,
)

__all__ = [
    "MAX_URL_LENGTH",
    "FetchPolicy",
    "FetchResult",
    "Freshness",
    "GuardedClient",
    "HTTPStatusError",
    "client_from_settings",
    "is_allowed_host",
    "response_freshness",
]

MAX_URL_LENGTH = 2048
"""The longest URL fetched (every redirect hop too), in characters; what most CDNs accept."""

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
# Headers that carry credentials must not follow a redirect to another origin (the ML token!).
_CREDENTIAL_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie")
_ALLOW_HINT_ENV = "TAGGING_ALLOWED_HOSTS"


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and allow-list of one :class:`GuardedClient`."""

    allowed_hosts: tuple[str, ...] = ()
    """``host`` (any port) or ``host:port`` entries that may resolve to non-public addresses."""
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    """Longest wait for any single piece of data from the server."""
    total_timeout: float = 30.0
    """Wall-clock cap for a whole request, redirects and body included (slow-loris)."""
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    max_concurrency: int = 16
    """Requests in flight at once; also the size of each host's connection pool."""
    user_agent: str = "Tagdesk/0.1"


@dataclass(frozen=True)
class FetchResult:
    """A successful (2xx) response, body fully read; or a 304 (``get(..., not_modified=True)``)."""

    url: str
    """The final URL, after redirects."""
    status: int
    headers: Mapping[str, str] = field(repr=False)
    """Response headers; lookups are case-insensitive."""
    body: bytes = field(repr=False)
    """The (content-decoded) body; ``b""`` for HEAD."""
    elapsed: float
    """Seconds from the first connection attempt to the last byte."""


class HTTPStatusError(FetchError):
    """The server answered a non-2xx status (after following redirects).

    Attributes:
        status: the HTTP status code.
        url: the URL that answered it.
        body: the first bytes of the answer's body (only read by ``request_json``, else ``b""``).
    """

    def __init__(self, message: str, *, status: int, url: str, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.url = url
        self.body = body


# --- addresses and the allow-list ------------------------------------------------------------


def _normalize_host(host: str) -> str:
    """Lower-case, drop a trailing dot and IPv6 brackets; canonical text for IP literals."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def _parse_allowed(entry: str) -> tuple[str, int | None]:
    """Split an allow-list entry into (normalized host, port or None); ValueError if malformed."""
    text = entry.strip().lower()
    if not text or "/" in text or "@" in text:
        raise ValueError(entry)
    port: str | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(entry)
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(entry)
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        # No colon, or a bare IPv6 address.
        host = text
    if not host:
        raise ValueError(entry)
    if port is None:
        return _normalize_host(host), None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(entry)
    return _normalize_host(host), int(port)


def is_allowed_host(host: str, port: int, allowed: Sequence[str]) -> bool:
    """Whether ``host:port`` is allow-listed, so it may resolve to a non-public address.

    Args:
        host: the host exactly as written in the URL (a name or an IP literal, brackets optional).
        port: the effective port (80/443 when the URL names none).
        allowed: entries ``host`` (any port) or ``host:port``; malformed entries never match.

    Returns:
        True when an entry names this host with no port, or this host and this port. Names are
        compared as written: allowing ``localhost`` does not allow ``127.0.0.1``.
    """
    wanted = _normalize_host(host)
    for entry in allowed:
        try:
            entry_host, entry_port = _parse_allowed(entry)
        except ValueError:
            continue
        if entry_host == wanted and entry_port in (None, port):
            return True
    return False


def _address_problem(address: str) -> str | None:
    """What makes ``address`` non-public ("a private address"), or None when it is public."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 address can carry an IPv4 one; judge what it really reaches.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = _address_problem(str(embedded))
            if inner is not None:
                return f"an IPv6 form of {embedded}, {inner}"
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    )
    return next((what for failed, what in checks if failed), None)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class _AddressGuard:
    """Resolves a host and checks every address against the policy's allow-list."""

    def __init__(self, allowed_hosts: Sequence[str]) -> None:
        self.allowed = tuple(allowed_hosts)
        for entry in self.allowed:
            try:
                _parse_allowed(entry)
            except ValueError:
                raise ConfigError(
                    f"allowed host entry {entry!r} is not 'host' or 'host:port' "
                    f"(check {_ALLOW_HINT_ENV})"
                ) from None

    def addresses(self, host: str, port: int) -> list[tuple[int, str]]:
        """The (family, address) pairs to connect to for ``host:port``.

        Raises:
            BlockedURLError: an address is not public and ``host`` is not allow-listed, or
                ``host`` is not a valid name.
            socket.gaierror: the name does not resolve.
        """
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            infos = socket.getaddrinfo(bare, port, 0, socket.SOCK_STREAM)
        except UnicodeError as exc:
            # The IDNA codec refuses the name (an empty or over-long label): not a valid URL.
            raise BlockedURLError(f"{bare[:100]!r} is not a valid host name ({exc})") from exc
        found: list[tuple[int, str]] = []
        for family, _type, _proto, _canon, sockaddr in infos:
            pair = (int(family), str(sockaddr[0]))
            if pair not in found:
                found.append(pair)
        if is_allowed_host(bare, port, self.allowed):
            return found
        for _family, address in found:
            problem = _address_problem(address)
            if problem is not None:
                # Every address is refused if one is: a name mixing public and private answers
                # is exactly what a rebinding attacker serves.
                if _normalize_host(bare) == _normalize_host(address):
                    said = f"{bare} is {problem}"
                else:
                    said = f"{bare} resolves to {address}, {problem}"
                with_port = f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"
                raise BlockedURLError(
                    f"{said}; add {bare!r} (or {with_port!r}) to {_ALLOW_HINT_ENV} to allow it"
                )
        return found


# --- connections that connect only to checked addresses ---------------------------------------

_request_deadline = threading.local()
"""The current thread's request deadline (monotonic seconds), read by new responses."""


class _DeadlineRawIO(io.RawIOBase):
    """A socket reader that never waits past a deadline, however slowly the server drips bytes."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline
        self._read_timeout = sock.gettimeout()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's total time ran out")
        # Each recv waits at most the remaining time, so the whole read ends by the deadline.
        wait = remaining if self._read_timeout is None else min(self._read_timeout, remaining)
        self._sock.settimeout(wait)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineHTTPResponse(http.client.HTTPResponse):
    """http.client's response, reading through :class:`_DeadlineRawIO` when a deadline is set."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        deadline: float | None = getattr(_request_deadline, "value", None)
        if deadline is not None:
            # Nothing has been read yet, so swapping the reader loses no buffered bytes.
            self.fp.close()
            self.fp = io.BufferedReader(_DeadlineRawIO(sock, deadline))


class _GuardedConnectionMixin:
    """Overrides urllib3's ``_new_conn``: resolve, check, connect to the checked address."""

    _guard: _AddressGuard
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    sock: socket.socket | None

    response_class: type[http.client.HTTPResponse] = _DeadlineHTTPResponse

    def _new_conn(self) -> socket.socket:
        try:
            addresses = self._guard.addresses(self.host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        last_error: OSError | None = None
        for _family, address in addresses:
            try:
                sock = urllib3_connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                last_error = exc
            except OSError as exc:
                last_error = exc
            else:
                sys.audit("http.client.connect", self, self.host, self.port)
                return sock
        if isinstance(last_error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from last_error
        raise NewConnectionError(
            self,  # type: ignore[arg-type]
            f"Failed to establish a new connection: {last_error or 'no address'}",
        ) from last_error

    def request(self, *args: Any, **kwargs: Any) -> None:
        # A reused connection's socket still has the last response's shrinking deadline timeout;
        # sending must start from the connect timeout urllib3 chose for this request.
        if self.sock is not None:
            self.sock.settimeout(self.timeout)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    # HTTPSConnection.connect() calls _new_conn() then wraps the socket with TLS using self.host,
    # so certificates and SNI still name the original host, not the checked IP.
    pass


class _GuardedAdapter(HTTPAdapter):
    """An adapter whose pools only make guarded connections, and which refuses proxies."""

    def __init__(self, guard: _AddressGuard, **kwargs: Any) -> None:
        # Set before super().__init__, which calls init_poolmanager.
        self._guard = guard
        super().__init__(**kwargs)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        guard = self._guard
        http_conn = type("GuardedHTTPConnection", (_GuardedHTTPConnection,), {"_guard": guard})
        https_conn = type("GuardedHTTPSConnection", (_GuardedHTTPSConnection,), {"_guard": guard})
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type(
                "GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}
            ),
        }

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # Through a proxy, the address we check is not the one the request reaches.
        raise BlockedURLError("the guarded client does not use proxies")


# --- the client --------------------------------------------------------------------------------


class GuardedClient:
    """The guarded, pooled, thread-safe HTTP client (see the module docstring).

    Args:
        policy: limits and allow-list; the default allows no private address.

    Raises:
        ConfigError: an allow-list entry is malformed.
    """

    def __init__(self, policy: FetchPolicy = FetchPolicy()) -> None:
        self.policy = policy
        self._guard = _AddressGuard(policy.allowed_hosts)
        self._slots = threading.BoundedSemaphore(max(1, policy.max_concurrency))
        session = requests.Session()
        # No proxies or .netrc from the environment: they would bypass or leak past the guard.
        session.trust_env = False
        # Cookies would be state shared between threads and between advertisers.
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        session.headers["User-Agent"] = policy.user_agent
        adapter = _GuardedAdapter(
            self._guard,
            pool_connections=32,
            pool_maxsize=max(1, policy.max_concurrency),
            max_retries=0,
        )
        session.adapters.clear()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session

    def get(
        self,
        url: str,
        *,
        accept: Sequence[str] | None = None,
        max_bytes: int | None = None,
        headers: Mapping[str, str] | None = None,
        before_body: Callable[[Mapping[str, str]], None] | None = None,
        not_modified: bool = False,
    ) -> FetchResult:
        """GET ``url`` and read its whole body.

        Args:
            url: an absolute http(s) URL.
            accept: allowed Content-Type prefixes (e.g. ``["image/"]``); None accepts any.
            max_bytes: body cap; default the policy's ``max_bytes``.
            headers: extra request headers (``If-None-Match`` / ``If-Modified-Since`` make it a
                conditional GET).
            before_body: called with the final response's headers once its status, Content-Type
                and declared length have passed, just before the body is read (the ML server
                waits there for room in its memory budget); what it raises ends the request.
                Its wait counts against the request's total timeout.
            not_modified: a ``304 Not Modified`` answer (to a conditional GET) is a result, with
                status 304 and an empty body, instead of an :class:`HTTPStatusError`; its
                connection goes back to the pool.

        Returns:
            The 2xx response (or the 304, see ``not_modified``), after redirects.

        Raises:
            BlockedURLError: bad scheme, or a hop reaches a non-public address not allow-listed.
            FetchTimeoutError: connect, read or total timeout.
            ResponseTooLargeError: the body is over the cap.
            UnexpectedContentTypeError: the Content-Type matches no ``accept`` prefix.
            HTTPStatusError: a non-2xx status (a :class:`FetchError` with ``.status``).
            FetchError: connection failures, too many redirects, broken bodies.
        """
        return self._fetch(
            "GET",
            url,
            headers=headers,
            accept=accept,
            max_bytes=max_bytes,
            before_body=before_body,
            not_modified=not_modified,
        )

    def head(self, url: str, *, headers: Mapping[str, str] | None = None) -> FetchResult:
        """HEAD ``url`` (redirects followed); the result's body is ``b""``.

        Raises:
            FetchError: as :meth:`get`.
        """
        return self._fetch("HEAD", url, headers=headers)

    def request_json(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> FetchResult:
        """Call one of our own JSON services (ML server, color vendor) through the same guard.

        Args:
            method: HTTP method.
            url: absolute http(s) URL; its host must be allow-listed if it is private.
            json: body to send as JSON; None sends no body.
            headers: extra headers, e.g. ``Authorization`` (dropped on a cross-origin redirect).
            timeout: seconds to wait for the answer, used both as the read timeout and as the
                whole call's cap; default the policy's.

        Returns:
            The 2xx response; the caller parses ``body``.

        Raises:
            HTTPStatusError: a non-2xx status; ``.status`` and ``.body`` (first 64 KiB) are set
                and the message quotes the start of the body.
            FetchError: as :meth:`get`.
        """
        return self._fetch(
            method.upper(),
            url,
            headers=headers,
            json_body=json,
            read_timeout=timeout,
            total_timeout=timeout,
            error_body=True,
        )

    def close(self) -> None:
        """Close every pooled connection."""
        self._session.close()

    def __enter__(self) -> GuardedClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------------

    def _fetch(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        accept: Sequence[str] | None = None,
        max_bytes: int | None = None,
        json_body: Any = None,
        read_timeout: float | None = None,
        total_timeout: float | None = None,
        error_body: bool = False,
        before_body: Callable[[Mapping[str, str]], None] | None = None,
        not_modified: bool = False,
    ) -> FetchResult:
        policy = self.policy
        cap = policy.max_bytes if max_bytes is None else max_bytes
        read_timeout = policy.read_timeout if read_timeout is None else read_timeout
        total = policy.total_timeout if total_timeout is None else total_timeout
        request_headers = dict(headers or {})
        with self._slots:
            start = time.monotonic()
            deadline = start + total
            current, hops = url, 0
            while True:
                _check_url(current, url)
                response = self._send(
                    method, current, url, request_headers, json_body, read_timeout, deadline, total
                )
                target = _redirect_target(response)
                if target is None:
                    break
                response.close()
                next_url = urljoin(current, target)
                if hops >= policy.max_redirects:
                    raise FetchError(
                        f"gave up on {url}: more than {policy.max_redirects} redirects "
                        f"(the last one from {current} to {next_url})"
                    )
                hops += 1
                if (response.status_code == 303 and method != "HEAD") or (
                    response.status_code in (301, 302) and method == "POST"
                ):
                    # What browsers do, and what requests does: the body is not re-sent.
                    method, json_body = "GET", None
                if _origin(next_url) != _origin(current):
                    for name in _CREDENTIAL_HEADERS:
                        for key in [k for k in request_headers if k.lower() == name.lower()]:
                            del request_headers[key]
                current = next_url
            try:
                status = response.status_code
                if status == 304 and not_modified:
                    # No body follows a 304 either: the connection goes back to the pool.
                    response.raw.release_conn()
                    return FetchResult(
                        url=current,
                        status=status,
                        headers=CaseInsensitiveDict(response.headers),
                        body=b"",
                        elapsed=time.monotonic() - start,
                    )
                if not 200 <= status < 300:
                    body = b""
                    if error_body:
                        body = _read_body(
                            response, current, url, 64 * 1024, deadline, total, truncate=True
                        )
                    raise _status_error(method, current, url, response, body)
                if accept is not None:
                    _check_content_type(response, current, accept)
                if method == "HEAD":
                    body = b""
                    # No body follows a HEAD: hand the connection back to the pool now, or closing
                    # the unread response drops the socket and every HEAD opens a new connection.
                    response.raw.release_conn()
                else:
                    _check_content_length(response, current, cap)
                    if before_body is not None:
                        before_body(CaseInsensitiveDict(response.headers))
                    body = _read_body(response, current, url, cap, deadline, total)
            finally:
                response.close()
            return FetchResult(
                url=current,
                status=status,
                headers=CaseInsensitiveDict(response.headers),
                body=body,
                elapsed=time.monotonic() - start,
            )

    def _send(
        self,
        method: str,
        url: str,
        original: str,
        headers: Mapping[str, str],
        json_body: Any,
        read_timeout: float,
        deadline: float,
        total: float,
    ) -> requests.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchTimeoutError(f"{_named(url, original)} took longer than {total:g}s in all")
        timeout = (min(self.policy.connect_timeout, remaining), min(read_timeout, remaining))
        _request_deadline.value = deadline
        try:
            return self._session.request(
                method,
                url,
                headers=headers,
                json=json_body,
                timeout=timeout,
                allow_redirects=False,
                stream=True,
            )
        except BlockedURLError as exc:
            raise BlockedURLError(f"refused {_named(url, original)}: {exc}") from exc
        except requests.exceptions.ConnectTimeout as exc:
            raise FetchTimeoutError(
                f"{_named(url, original)} timed out: no connection within {timeout[0]:g}s"
            ) from exc
        except requests.exceptions.ReadTimeout as exc:
            if time.monotonic() >= deadline - 0.05:
                message = f"took longer than {total:g}s in all"
            else:
                message = f"the server sent nothing for {timeout[1]:g}s"
            raise FetchTimeoutError(f"{_named(url, original)} timed out: {message}") from exc
        except requests.exceptions.SSLError as exc:
            raise FetchError(
                f"could not fetch {_named(url, original)}: TLS failed ({_cause(exc)})"
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            host = urlsplit(url).hostname
            raise FetchError(
                f"could not connect to {host} for {_named(url, original)}: {_cause(exc)}"
            ) from exc
        except (requests.exceptions.InvalidURL, requests.exceptions.URLRequired) as exc:
            raise BlockedURLError(
                f"refused {_named(url, original)}: not a valid URL ({_cause(exc)})"
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise FetchError(f"could not fetch {_named(url, original)}: {_cause(exc)}") from exc
        finally:
            _request_deadline.value = None


# --- HTTP caching (RFC 9111): how long a response may be reused without asking again ---------

MAX_FRESHNESS = 365 * 24 * 3600
"""The longest lifetime believed, in seconds (RFC 9111 suggests a year for "never expires")."""


@dataclass(frozen=True)
class Freshness:
    """What one response says about reusing it (RFC 9111, as a cache of results derived from it
    needs it: the ML server keeps an image's classification, not the response).

    * ``Cache-Control: max-age`` (``s-maxage`` first: the ML cache is shared by every advertiser),
      else ``Expires`` (against the response's ``Date``), minus ``Age``, gives the lifetime;
    * ``no-cache`` (or ``Pragma: no-cache`` without Cache-Control), and a response that states no
      lifetime, are stale at once: every reuse asks the server first (a conditional GET);
    * ``no-store`` and ``private`` keep nothing: no lifetime and no validators, so the next check
      is a HEAD, whose headers give the key;
    * ``must-revalidate`` / ``proxy-revalidate`` change nothing here: a stale image is always
      revalidated before its result is reused, never served stale.
    """

    max_age: int | None
    """Seconds the response stays fresh from when it was received; None: stale at once."""
    etag: str | None
    """The validator for ``If-None-Match`` (None under ``no-store``)."""
    last_modified: str | None
    """The validator for ``If-Modified-Since`` (None under ``no-store``)."""
    stated: bool
    """Whether the response said anything about caching (Cache-Control, Expires, Pragma): a 304
    that says nothing keeps the lifetime the stored response had (RFC 9111 4.3.4)."""

    def fresh_until(self, received: datetime) -> datetime | None:
        """When a response received at ``received`` goes stale (None: it is stale already)."""
        if self.max_age is None or self.max_age <= 0:
            return None
        return received + timedelta(seconds=self.max_age)


def response_freshness(headers: Mapping[str, str]) -> Freshness:
    """The caching information of a response's ``headers`` (lookups case-insensitive)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    directives = _cache_control(lowered.get("cache-control", ""))
    pragma_no_cache = "no-cache" in lowered.get("pragma", "").lower()
    stated = bool(directives) or "expires" in lowered or pragma_no_cache
    etag = (lowered.get("etag") or "").strip() or None
    last_modified = (lowered.get("last-modified") or "").strip() or None
    if "no-store" in directives or "private" in directives:
        return Freshness(None, None, None, stated=True)
    if "no-cache" in directives or (pragma_no_cache and not directives):
        return Freshness(None, etag, last_modified, stated=True)
    lifetime: int | None = None
    for name in ("s-maxage", "max-age"):
        if name in directives:
            value = directives[name]
            # An invalid lifetime means stale (RFC 9111 4.2.1), not "use the next rule".
            lifetime = int(value) if value is not None and value.isdigit() else 0
            break
    else:
        if "expires" in lowered:
            lifetime = _expires_lifetime(lowered["expires"], lowered.get("date"))
    if lifetime is not None:
        age = (lowered.get("age") or "").strip()
        lifetime = min(lifetime, MAX_FRESHNESS) - (int(age) if age.isdigit() else 0)
    return Freshness(lifetime, etag, last_modified, stated=stated)


def _cache_control(value: str) -> dict[str, str | None]:
    """``Cache-Control`` directives, names lower-cased, quotes taken off values."""
    directives: dict[str, str | None] = {}
    for part in value.split(","):
        name, sep, argument = part.strip().partition("=")
        name = name.strip().lower()
        if name:
            directives.setdefault(name, argument.strip().strip('"') if sep else None)
    return directives


def _expires_lifetime(expires: str, date: str | None) -> int:
    """Seconds from ``Date`` (else now) to ``Expires``; 0 for an invalid date ("already stale")."""
    try:
        until = parsedate_to_datetime(expires)
    except (TypeError, ValueError, IndexError):
        return 0
    origin = datetime.now(UTC)
    if date:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            origin = parsedate_to_datetime(date)
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    if origin.tzinfo is None:
        origin = origin.replace(tzinfo=UTC)
    return max(0, int((until - origin).total_seconds()))


def client_from_settings(settings: Settings, *, extra_allowed: Sequence[str] = ()) -> GuardedClient:
    """A client allow-listing ``settings.allowed_hosts`` plus ``extra_allowed``.

    Args:
        settings: the process settings.
        extra_allowed: more ``host``/``host:port`` entries, e.g. ``[settings.ml_host_entry()]``
            for the client that talks to the ML server. Keep such entries off the client that
            fetches advertisers' URLs, or an advertiser could aim a sitemap at our own services.

    Raises:
        ConfigError: an entry is malformed.
    """
    allowed = tuple(settings.allowed_hosts) + tuple(extra_allowed)
    return GuardedClient(FetchPolicy(allowed_hosts=allowed))


# --- helpers -----------------------------------------------------------------------------------


def _named(url: str, original: str) -> str:
    """``url``, saying where it came from when it is a redirect hop."""
    return url if url == original else f"{url} (redirected from {original})"


def _check_url(url: str, original: str) -> None:
    if len(url) > MAX_URL_LENGTH:
        # Quote only the start: the whole URL would be a message as long as the URL.
        raise BlockedURLError(
            f"refused {url[:100]}…: the URL is {len(url):,} characters, over the "
            f"{MAX_URL_LENGTH:,}-character cap"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise BlockedURLError(f"refused {_named(url, original)}: not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        what = f"{scheme}: URLs" if scheme else "URLs without a scheme"
        raise BlockedURLError(
            f"refused {_named(url, original)}: only http and https URLs may be fetched, not {what}"
        )
    if not parts.hostname:
        raise BlockedURLError(f"refused {_named(url, original)}: the URL names no host")
    problem = _host_name_problem(parts.hostname)
    if problem is not None:
        raise BlockedURLError(f"refused {_named(url, original)}: not a valid URL ({problem})")


def _host_name_problem(host: str) -> str | None:
    """What keeps ``host`` (as ``urlsplit`` gives it) from being a DNS name, or None.

    Resolving ``a..b`` or a label over 63 characters raises UnicodeError from the IDNA codec deep
    inside ``getaddrinfo``; this says so in words, before any connection is tried.
    """
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host  # one trailing dot: a fully qualified name
    if len(name) > 253:
        return f"the host name is {len(name):,} characters, over the 253 DNS allows"
    for label in name.split("."):
        if not label:
            return f"the host name {host[:100]!r} has an empty label"
        try:
            size = len(label) if label.isascii() else len("xn--") + len(label.encode("punycode"))
        except UnicodeError:
            return f"the host name {host[:100]!r} has a label that is not valid text"
        if size > 63:
            return f"the host name has a label of {size} characters, over the 63 DNS allows"
    return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or ""), parts.port or (443 if scheme == "https" else 80)


def _redirect_target(response: requests.Response) -> str | None:
    if response.status_code not in _REDIRECT_STATUSES:
        return None
    location = response.headers.get("Location")
    if not location:
        return None
    # http.client decodes headers as latin-1; servers that send UTF-8 bytes mean UTF-8.
    try:
        return location.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return location


def _status_error(
    method: str, url: str, original: str, response: requests.Response, body: bytes
) -> HTTPStatusError:
    reason = response.reason or http.client.responses.get(response.status_code, "")
    message = f"{method} {_named(url, original)} answered HTTP {response.status_code} {reason}"
    if body:
        snippet = body[:300].decode("utf-8", errors="replace").strip()
        message = f"{message}: {snippet}"
    return HTTPStatusError(message.strip(), status=response.status_code, url=url, body=body)


def _check_content_type(response: requests.Response, url: str, accept: Sequence[str]) -> None:
    content_type = (response.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if any(content_type.startswith(prefix.lower()) for prefix in accept):
        return
    got = content_type or "no Content-Type"
    raise UnexpectedContentTypeError(
        f"refused {url}: the server sent {got}, expected {' or '.join(accept)}"
    )


def _check_content_length(response: requests.Response, url: str, cap: int) -> None:
    declared = response.headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > cap:
        raise ResponseTooLargeError(
            f"refused {url}: its body is {_size(int(declared))} (Content-Length), "
            f"over the {_size(cap)} cap"
        )


def _read_body(
    response: requests.Response,
    url: str,
    original: str,
    cap: int,
    deadline: float,
    total: float,
    *,
    truncate: bool = False,
) -> bytes:
    """Read the (content-decoded) body under ``cap`` and the deadline set at request time."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in _stream(response):
            size += len(chunk)
            if size > cap:
                if truncate:
                    chunks.append(chunk[: len(chunk) - (size - cap)])
                    break
                raise ResponseTooLargeError(
                    f"refused {url}: its body is over the {_size(cap)} cap (stopped reading)"
                )
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise FetchTimeoutError(
                    f"{_named(url, original)} timed out: took longer than {total:g}s in all"
                )
    except urllib3.exceptions.ReadTimeoutError as exc:
        if time.monotonic() >= deadline - 0.05:
            message = f"took longer than {total:g}s in all"
        else:
            message = "the server stopped sending the body"
        raise FetchTimeoutError(f"{_named(url, original)} timed out: {message}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise FetchError(
            f"could not read the body of {_named(url, original)}: {_cause(exc)}"
        ) from exc
    return b"".join(chunks)


def _stream(response: requests.Response) -> Iterator[bytes]:
    # raw.stream decodes gzip/deflate with a bounded output per read, so a compressed bomb is
    # caught by the cap before it is inflated in memory.
    yield from response.raw.stream(_CHUNK, decode_content=True)


def _cause(exc: BaseException) -> str:
    """The innermost human-meaningful reason inside requests/urllib3's exception wrapping."""
    current: BaseException = exc
    for _ in range(12):
        inner: BaseException | None = None
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            inner = reason
        elif current.__cause__ is not None:
            inner = current.__cause__
        else:
            inner = next((a for a in reversed(current.args) if isinstance(a, BaseException)), None)
        if inner is None or inner is current:
            break
        current = inner
    if isinstance(current, socket.gaierror):
        return f"the host name does not resolve ({current.strerror or current})"
    if isinstance(current, ConnectionRefusedError):
        return "connection refused"
    if isinstance(current, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(current, OSError) and current.strerror:
        return current.strerror
    text = str(current).strip()
    return text or type(current).__name__


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"
