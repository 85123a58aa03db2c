"""Run the app under uvicorn, turning SIGTERM into a graceful drain that exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from embedstack.asgi_app import create_app
from embedstack.config import Settings
from embedstack.connection_limits import ConnectionLimits, guarded_protocol
from embedstack.core.served_models import ServedModels

log = logging.getLogger("embedstack")

NO_KEYS_WARNING = """
########################################################################
# WARNING: no API keys configured. The embeddings API is OPEN to anyone
# who can reach {where}.
# Set EMBEDSTACK_API_KEYS or --api-keys FILE to require a key.
########################################################################"""


CLOSE_GRACE_SECONDS = 0.5


class DrainingServer(uvicorn.Server):
    """First SIGTERM/SIGINT drains the gateway and then stops; a second one stops at once."""

    def __init__(self, config: uvicorn.Config, served: ServedModels, drain_seconds: float):
        super().__init__(config)
        self.served = served
        self.drain_seconds = drain_seconds
        self._drain_task: asyncio.Task | None = None
        self._last_accepts: set[asyncio.Task] = set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is None and not self.should_exit:
            # Not recorded in _captured_signals: uvicorn would re-raise it and the exit code would be 143.
            self._drain_task = asyncio.get_event_loop().create_task(self._drain())
            return
        self.force_exit = True
        self.should_exit = True

    async def _drain(self) -> None:
        await self.served.drain(self.drain_seconds)
        # Stop accepting before closing connections: connections that arrived in the last instant
        # get their request answered (503, Connection: close) during the grace instead of a reset.
        await self.close_listeners()
        await asyncio.sleep(CLOSE_GRACE_SECONDS)
        self.should_exit = True

    async def close_listeners(self) -> None:
        """Close the listening sockets without resetting anyone.

        Closing a listening socket resets the connections the kernel has completed but the server
        has not accepted yet. So the queue is emptied right before each close, with no await in
        between, and those connections are served like any other.
        """
        queued: list[socket.socket] = []
        for server in self.servers:
            for listening in server.sockets:
                sweep = socket.fromfd(listening.fileno(), listening.family, listening.type)
                sweep.setblocking(False)
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while True:
                        queued.append(sweep.accept()[0])
                sweep.close()
            server.close()
        loop = asyncio.get_running_loop()
        for conn in queued:
            conn.setblocking(False)
            # ssl=: a TLS client's handshake must not be read as HTTP (uvicorn's own accept passes it too).
            # Not awaited one by one: a client slow to shake hands must not hold up the others.
            accepted = loop.create_task(loop.connect_accepted_socket(self._http_protocol, conn, ssl=self.config.ssl))
            self._last_accepts.add(accepted)
            accepted.add_done_callback(self._last_accepts.discard)

    def _http_protocol(self) -> asyncio.Protocol:
        # What uvicorn's own accept path builds for a connection (uvicorn/server.py, startup)
        return self.config.http_protocol_class(
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.api_keys:
        log.warning(NO_KEYS_WARNING.format(where=f"{settings.host}:{settings.port}"))
    if settings.tls_cert is None and not _loopback(settings.host):
        log.warning(
            "serving plain HTTP on %s: API keys and inputs cross the network readable; "
            "set --tls-cert/--tls-key for HTTPS",
            settings.host,
        )
    app = create_app(settings)
    server = build_server(settings, app)

    def fatal(exc: BaseException) -> None:
        server.should_exit = True

    served: ServedModels = app.state.served_models
    served.on_fatal = fatal
    server.run()
    if served.failure is not None:
        return 1
    return 0 if server.started else 1


def build_server(settings: Settings, app: Starlette) -> DrainingServer:
    """The uvicorn server `serve` runs, with the connection limits; the fast tests run it in-process."""
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        max_header_count=settings.max_header_count,
        header_timeout=settings.header_timeout,
        max_connections=settings.max_connections,
        max_connections_per_client=settings.max_connections_per_client,
    )
    config = uvicorn.Config(
        app,
        http=guarded_protocol(limits),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        # Behind a load balancer an idle keep-alive must outlive the LB's, or requests hit closed sockets.
        timeout_keep_alive=75,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
    )
    return DrainingServer(config, app.state.served_models, settings.drain_seconds)
