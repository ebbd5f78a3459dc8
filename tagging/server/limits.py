"""Request-body limits shared by both servers: one small pure-ASGI middleware, no framework code.

A request that announces a body (``Content-Length`` above 0, or ``Transfer-Encoding``) is judged
before a byte of that body is read: first its credentials (401), then its declared length (413).
The bytes that do arrive are counted as the app reads them, so a chunked body, which declares no
length, is cut off with a 413 as soon as it passes the cap. Either way the app never holds more
than the cap of any body, and an unauthenticated client cannot make the server read anything.

Routes keep their own token checks: this only makes sure that no body is read for a request
that would be refused anyway.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MIB = 1024 * 1024

Authenticate = Callable[[Scope], Awaitable[bool]]
"""Whether a request's credentials are good; called before its body is read."""


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    value = Headers(scope=scope).get("authorization", "")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` (413) and bodies from unauthenticated callers (401).

    Args:
        app: the ASGI app to protect.
        max_bytes: the largest body accepted, in bytes.
        authenticate: checks the credentials of a request that has a body, before the body is
            read; None accepts every caller (the cap still applies).
        unauthorized: the ``detail`` of the 401 answer (the one the routes' own check gives).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        authenticate: Authenticate | None = None,
        *,
        unauthorized: str = "missing or wrong bearer token",
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.authenticate = authenticate
        self.unauthorized = unauthorized

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared_text = headers.get("content-length")
        declared: int | None = None
        if declared_text is not None:
            try:
                declared = int(declared_text)
            except ValueError:
                declared = None  # the server's parser refuses it; count what arrives anyway
        has_body = "transfer-encoding" in headers or (declared_text is not None and declared != 0)
        if has_body and self.authenticate is not None and not await self.authenticate(scope):
            await _refuse(send, 401, self.unauthorized, {"WWW-Authenticate": "Bearer"})
            return
        if declared is not None and declared > self.max_bytes:
            await _refuse(send, 413, self._too_large(f"{declared:,} bytes"))
            return

        received = 0
        refused = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Answer now, and tell the app the client left: it stops reading, and
                    # whatever it answers to that is dropped by guarded_send.
                    refused = True
                    if not started:
                        await _refuse(send, 413, self._too_large(f"over {self.max_bytes:,} bytes"))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)

    def _too_large(self, size: str) -> str:
        return f"the request body is {size}, over the {self.max_bytes:,}-byte cap"


async def _refuse(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    """Answer ``{"detail": ...}`` as FastAPI does, and close the connection (a body is unread)."""
    body = json.dumps({"detail": detail}).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((name.lower().encode(), value.encode()) for name, value in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
