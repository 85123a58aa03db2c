"""The gateway's last moment: connections the kernel queued just before the listener closes are
answered (503, Connection: close), not reset. In-process, with the real uvicorn server class."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest
import uvicorn
from embedstack.asgi_app import create_app
from embedstack.config import load_settings, parse_model
from embedstack.http_server import DrainingServer

pytestmark = pytest.mark.fast

BODY = b'{"model": "m", "input": ["def f(): 1"]}'
REQUEST = (
    b"POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


def answer(conn: socket.socket) -> bytes:
    conn.settimeout(10)
    chunks = []
    try:
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        chunks.append(b"<reset>")
    conn.close()
    return b"".join(chunks)


def test_connections_queued_at_the_close_are_answered_not_reset():
    # An upstream model that never becomes ready: the test needs the HTTP layer only, no weights.
    spec = parse_model(
        {"id": "m", "engine": "upstream", "dimension": 8, "max_tokens": 8, "upstreams": ["http://127.0.0.1:9"]}, "t"
    )
    settings = dataclasses.replace(load_settings({}, env={}), models=(spec,))

    async def main() -> list[bytes]:
        app = create_app(settings)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        server = DrainingServer(config, app.state.served_models, drain_seconds=0)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        # Blocking connects from the event loop's own thread: the kernel completes them and
        # queues them while the server cannot accept, as in the instant before a close.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        for client in clients:
            client.sendall(REQUEST)
        app.state.served_models.draining = True
        await server.close_listeners()
        answers = await asyncio.gather(*(asyncio.to_thread(answer, c) for c in clients))
        server.should_exit = True
        await serving
        return answers

    for raw in asyncio.run(main()):
        head = raw.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 503"), raw[:200]
        assert b"connection: close" in head and b"retry-after: 1" in head
