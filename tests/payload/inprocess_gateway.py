"""The real server stack `embedstack serve` runs (http_server.build_server: uvicorn, the connection
limits, the drain) with a fake engine, on a loopback port in a thread of the test process: real
sockets for the fast tests of what clients do on the wire, without loading a model."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from embedstack.asgi_app import create_app
from embedstack.config import load_settings
from embedstack.http_server import DrainingServer, build_server
from fake_engine import FakeEngines
from gateway_process import free_port

KEY = "inprocess-key-0123456789"


class InProcessGateway:
    def __init__(self, engines: FakeEngines, env: dict[str, str]):
        settings = load_settings({}, env={"EMBEDSTACK_API_KEYS": KEY, "EMBEDSTACK_PORT": str(free_port()), **env})
        self.engines = engines
        self.app = create_app(settings, engine_factory=engines)
        self.served = self.app.state.served_models
        self.server: DrainingServer = build_server(settings, self.app)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> InProcessGateway:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not (self.server.started and self.served.ready):
            if time.monotonic() > deadline:
                raise RuntimeError("the in-process gateway did not start")
            time.sleep(0.01)
        sockname = self.server.servers[0].sockets[0].getsockname()
        self.port = sockname[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def call(self, coro) -> object:
        """Run a coroutine on the server's own loop and wait for it."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def connect(self) -> socket.socket:
        conn = socket.create_connection(("127.0.0.1", self.port))
        conn.settimeout(10)
        return conn

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)


@contextlib.contextmanager
def in_process_gateway(engines: FakeEngines | None = None, **env: str) -> Iterator[InProcessGateway]:
    gateway = InProcessGateway(engines or FakeEngines(), env).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def read_answer(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket's timeout)."""
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    conn.close()
    return b"".join(chunks)


def request_bytes(body: bytes, key: str = KEY, path: str = "/v1/embeddings", extra: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
        b"%sContent-Length: %d\r\n\r\n%s" % (path.encode(), key.encode(), extra, len(body), body)
    )
