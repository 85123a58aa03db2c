"""A hostile or broken client costs the gateway a bounded amount and is told why, on real sockets
(issue 21): headers that never end, heads and bodies that never finish, too many connections, a
client that hangs up mid-upload, a TLS client in the last instant of a drain."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time

import httpx
import orjson
import pytest
from inprocess_gateway import KEY, in_process_gateway, read_answer, request_bytes
from standins.base import self_signed_certificate

pytestmark = pytest.mark.fast

BODY = orjson.dumps({"model": "all-minilm-l6-v2", "input": ["def f(): return 1"]})
AUTH = {"Authorization": f"Bearer {KEY}"}


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def embed_ok(url: str) -> None:
    answer = httpx.post(url + "/v1/embeddings", content=BODY, headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text


def test_headers_that_never_end_get_431_after_the_cap_not_megabytes_later():
    with in_process_gateway() as gw:
        conn = gw.connect()
        conn.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\nX-Pad: ")
        sent = 0
        with pytest.raises(OSError):  # the server closes once the cap is passed: sending fails
            while sent < 64 << 20:
                conn.sendall(b"a" * 65536)
                sent += 65536
        assert sent < 4 << 20, f"{sent} bytes of one header were taken"
        answer = read_answer(conn)
        if answer:  # the 431 may be lost to the reset the unread bytes cause
            assert status_of(answer) == 431 and b"32768 bytes" in answer
        embed_ok(gw.url)


def test_more_headers_than_the_limit_get_431():
    with in_process_gateway() as gw:
        conn = gw.connect()
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
        conn.sendall(request_bytes(BODY, extra=many))
        answer = read_answer(conn)
        assert status_of(answer) == 431 and b"headers; the most this gateway reads is 100" in answer


def test_a_head_that_never_finishes_is_closed_at_the_header_deadline():
    with in_process_gateway(EMBEDSTACK_HEADER_TIMEOUT="0.5") as gw:
        conn = gw.connect()
        conn.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\nContent-Type: applic")
        started = time.monotonic()
        answer = read_answer(conn)
        assert time.monotonic() - started < 5
        assert status_of(answer) == 408 and b"request_timeout" in answer
        silent = gw.connect()  # accepted, and not one byte
        started = time.monotonic()
        assert read_answer(silent) == b""
        assert time.monotonic() - started < 5
        embed_ok(gw.url)


def test_a_body_that_never_finishes_is_408_and_the_connection_closed():
    with in_process_gateway(EMBEDSTACK_BODY_TIMEOUT="0.5") as gw:
        conn = gw.connect()
        conn.sendall(request_bytes(BODY)[:-5])  # the head and all but 5 bytes of the body
        started = time.monotonic()
        answer = read_answer(conn)  # also proves the connection closed: read_answer reads to EOF
        assert time.monotonic() - started < 5
        assert status_of(answer) == 408
        assert b"connection: close" in answer.lower()
        assert gw.served.inflight == 0


def test_one_address_cannot_hold_more_than_its_connections():
    with in_process_gateway(EMBEDSTACK_MAX_CONNECTIONS_PER_CLIENT="4") as gw:
        held = [gw.connect() for _ in range(4)]
        extra = gw.connect()
        extra.sendall(request_bytes(BODY))
        answer = read_answer(extra)
        assert status_of(answer) == 429 and b"too_many_connections" in answer
        assert b"retry-after" in answer.lower()
        for conn in held:
            conn.close()
        time.sleep(0.2)
        embed_ok(gw.url)


def test_a_client_that_hangs_up_mid_body_is_a_499_not_a_500(caplog):
    with caplog.at_level(logging.INFO), in_process_gateway() as gw:
        for _ in range(20):
            conn = gw.connect()
            conn.sendall(request_bytes(b'{"model": "all-minilm-l6-v2", "input": ["' + b"x" * 100_000 + b'"]}')[:5000])
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()  # a reset, as a killed client's kernel sends
        time.sleep(0.5)
        metrics = httpx.get(gw.url + "/metrics").text
    assert 'status="500"' not in metrics
    assert 'embedstack_requests_total{route="/v1/embeddings",status="499"} 20.0' in metrics
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[0].getMessage()


def test_a_drain_answers_an_upload_in_progress_at_once():
    with in_process_gateway(EMBEDSTACK_DRAIN_SECONDS="20") as gw:
        conn = gw.connect()
        conn.sendall(request_bytes(BODY)[:-5])
        time.sleep(0.2)
        started = time.monotonic()
        draining = asyncio.run_coroutine_threadsafe(gw.served.drain(20), gw.loop)
        answer = read_answer(conn)
        assert status_of(answer) == 503 and b"draining" in answer
        draining.result(timeout=10)
        assert time.monotonic() - started < 5, "the drain waited for the upload"


def test_a_tls_client_in_the_last_instant_of_a_drain_gets_a_503_over_tls(tmp_path):
    cert, key = tmp_path / "gateway.pem", tmp_path / "gateway.key"
    self_signed_certificate(cert, key, "gateway")
    with in_process_gateway(EMBEDSTACK_TLS_CERT=str(cert), EMBEDSTACK_TLS_KEY=str(key)) as gw:
        context = ssl.create_default_context(cafile=str(cert))

        async def queue_then_close() -> socket.socket:
            # A blocking connect from the loop's own thread: the kernel queues it while the server cannot accept.
            raw = socket.create_connection(("127.0.0.1", gw.port))
            gw.served.draining = True
            await gw.server.close_listeners()
            return raw

        raw = gw.call(queue_then_close())
        raw.settimeout(10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(request_bytes(BODY))
            answer = read_answer(tls)
        assert status_of(answer) == 503 and b"connection: close" in answer.lower()


def test_one_key_holding_every_slot_leaves_room_for_another_key():
    key_a, key_b = "tenant-a-key-0123456789", "tenant-b-key-0123456789"
    env = {"EMBEDSTACK_API_KEYS": f"{key_a},{key_b}", "EMBEDSTACK_MAX_CONCURRENT_REQUESTS": "8"}
    with in_process_gateway(**env) as gw:
        uploads = []
        for _ in range(8):  # key A starts 8 uploads and sends one byte of each body
            conn = gw.connect()
            conn.sendall(request_bytes(BODY, key=key_a)[: -len(BODY) + 1])
            uploads.append(conn)
        time.sleep(0.3)
        answer = httpx.post(gw.url + "/v1/embeddings", content=BODY, headers={"Authorization": f"Bearer {key_b}"})
        assert answer.status_code == 200, answer.text
        more = httpx.post(gw.url + "/v1/embeddings", content=BODY, headers={"Authorization": f"Bearer {key_a}"})
        assert more.status_code == 429 and "its share" in more.json()["error"]["message"]
        for conn in uploads:
            conn.close()


def test_slow_heads_from_many_addresses_make_room_for_a_new_client():
    with in_process_gateway(EMBEDSTACK_MAX_CONNECTIONS="150", EMBEDSTACK_MAX_CONNECTIONS_PER_CLIENT="50") as gw:
        slow = []
        for i in range(150):  # a distributed slowloris: half a head each, from 30 loopback addresses
            conn = socket.create_connection(("127.0.0.1", gw.port), source_address=(f"127.0.1.{i % 30 + 1}", 0))
            conn.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: gate")
            slow.append(conn)
        time.sleep(0.3)
        for _ in range(5):
            embed_ok(gw.url)
        for conn in slow:
            conn.close()
