"""What a connection may cost before the app sees a request: bounded headers, a deadline for the
request head, and a cap on connections in all and per client, as nginx and Envoy promise in front
of a service (nginx `large_client_header_buffers`, `client_header_timeout`, `limit_conn`; Envoy
`max_request_headers_kb`, `request_headers_timeout`, `max_connections`).

uvicorn's httptools protocol has none of these: httptools collects header bytes without a limit,
and a connection that never finishes its head is kept forever. The subclass below adds them
around the parser (uvicorn/protocols/http/httptools_impl.py, uvicorn 0.54.0): header bytes are
counted before they reach it, so what it buffers is bounded too.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from embedstack.api.error_responses import error_response

# A scope key: an asyncio.Event set when the request's connection closes, so the app can end a wait that
# reads nothing from the client (asgi_app.PaceRefusedTenants); ASGI tells a disconnect only through receive().
CLIENT_GONE = "embedstack.client_gone"


@dataclass
class ConnectionLimits:
    max_header_bytes: int  # request line and headers together
    max_header_count: int
    header_timeout: float  # from accept (or a request's first byte) to its complete head
    max_connections: int
    max_connections_per_client: int
    open_by_client: collections.Counter[str] = field(default_factory=collections.Counter)
    # Connections whose request head has not arrived yet, oldest first: at the cap, the oldest is closed
    # to make room, so slow heads spread over many addresses cannot lock everyone out.
    heads_awaited: dict[asyncio.Protocol, None] = field(default_factory=dict)

    @property
    def open(self) -> int:
        return sum(self.open_by_client.values())


def _raw_error(status: int, reason: bytes, message: str, code: str) -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})
    head = (
        f"HTTP/1.1 {status} ".encode()
        + reason
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
    )
    return head + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `_limits` enforced; guarded_protocol binds them."""

    _limits: ConnectionLimits  # one server's, shared by all its connections (set by guarded_protocol)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # bytes now arriving belong to a request line or headers
        self._head_started = False  # a request's first byte has arrived, its head has not ended
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._client_host: str | None = None
        self._refusal: str | None = None  # why this connection's requests are answered 429

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else ""
        self._limits.open_by_client[host] += 1
        self._client_host = host
        if self._limits.open_by_client[host] > self._limits.max_connections_per_client:
            self._refusal = (
                f"this client holds {self._limits.max_connections_per_client} connections, the most one address "
                "may hold; reuse them"
            )
        elif self._limits.open > self._limits.max_connections:
            oldest = next(iter(self._limits.heads_awaited), None)
            if oldest is None:  # every connection is busy with a request
                self._refusal = f"the gateway holds {self._limits.max_connections} connections, its most; retry shortly"
            else:
                oldest._make_room()
        self._limits.heads_awaited[self] = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        scope = getattr(self, "scope", None)  # the last request's (uvicorn sets it once a request begins)
        if scope is not None and CLIENT_GONE in scope:
            scope[CLIENT_GONE].set()
        if self._client_host is not None:
            self._limits.open_by_client[self._client_host] -= 1
            if not self._limits.open_by_client[self._client_host]:
                del self._limits.open_by_client[self._client_host]
            self._client_host = None
        self._limits.heads_awaited.pop(self, None)
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            room = self._limits.max_header_bytes - self._head_bytes
            if len(data) > room:
                super().data_received(data[:room])  # the head may end inside them
                if self._in_head:
                    self._close_with(431, b"Request Header Fields Too Large", self._too_large())
                    return
                data = data[room:]
            else:
                self._head_bytes += len(data)
        if not self.transport.is_closing():
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[CLIENT_GONE] = asyncio.Event()
        self._head_started = True
        if self._head_timer is None:  # a request after the first on this connection
            self._limits.heads_awaited[self] = None
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._limits.heads_awaited.pop(self, None)
        self._cancel_head_timer()
        self._in_head, self._head_started, self._head_bytes = False, False, 0
        if len(self.headers) > self._limits.max_header_count:
            self._close_with(
                431,
                b"Request Header Fields Too Large",
                f"the request has {len(self.headers)} headers; the most this gateway reads is "
                f"{self._limits.max_header_count}",
            )
            return
        if self._refusal is None:
            super().on_headers_complete()
            return
        app, self.app = self.app, _refusal_app(self._refusal)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what comes next is the next request's head

    def _too_large(self) -> str:
        return f"the request line and headers exceed {self._limits.max_header_bytes} bytes, the most this gateway reads"

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self._limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_started:
            self._close_with(
                408, b"Request Timeout", f"the request head did not arrive within {self._limits.header_timeout:g} s"
            )
        elif self._in_head and self.cycle is None:  # accepted, and not one byte since
            self.transport.close()

    def _make_room(self) -> None:
        self._limits.heads_awaited.pop(self, None)
        self._cancel_head_timer()
        if self._head_started:
            self._close_with(
                408,
                b"Request Timeout",
                "the gateway is at its connection limit and this request head is not complete",
            )
        else:
            self.transport.close()

    def _close_with(self, status: int, reason: bytes, message: str) -> None:
        if not self.transport.is_closing():
            code = "request_timeout" if status == 408 else "request_header_fields_too_large"
            self.transport.write(_raw_error(status, reason, message, code))
            self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` enforced; pass it as uvicorn.Config(http=...)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"_limits": limits})


def _refusal_app(message: str):
    """The ASGI app for a request on a connection over a limit: 429, Retry-After, and the connection closed."""

    async def refuse(scope, receive, send) -> None:
        response = error_response(429, message, "rate_limit_error", "too_many_connections")
        response.headers["connection"] = "close"
        await response(scope, receive, send)

    return refuse
