"""Concurrency, back-pressure and graceful drain against real gateway processes."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from gateway_process import API_KEY, MODEL

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def chunk(i: int, words: int = 40) -> str:
    return f"def handler_{i}(request):\n" + " ".join(f"value_{i}_{k}" for k in range(words))


def embed(client: httpx.Client, url: str, inputs: list[str], **headers) -> httpx.Response:
    return client.post(url + "/v1/embeddings", json={"model": MODEL, "input": inputs, "encoding_format": "float"})


def test_twenty_concurrent_clients_get_their_own_vectors_in_order(gateway):
    """Merged, length-sorted batches must still hand every input its own vector, in input order."""
    requests = [[chunk(c * 100 + k, words=5 + (k * 7) % 60) for k in range(12)] for c in range(20)]
    with httpx.Client(headers=AUTH, timeout=120) as client:
        expected = [np.array([d["embedding"] for d in embed(client, gateway.url, r).json()["data"]]) for r in requests]

    def send(r: list[str]) -> np.ndarray:
        with httpx.Client(headers=AUTH, timeout=120) as c:
            response = embed(c, gateway.url, r)
            assert response.status_code == 200, response.text
            data = response.json()["data"]
            assert [d["index"] for d in data] == list(range(len(r)))
            return np.array([d["embedding"] for d in data])

    with ThreadPoolExecutor(20) as pool:
        got = list(pool.map(send, requests))
    for want, have in zip(expected, got, strict=True):
        similarity = have @ want.T
        # each vector is its own best match, and equal up to batch-padding rounding
        assert (similarity.argmax(axis=1) == np.arange(len(want))).all()
        assert similarity.diagonal().min() > 0.995


def test_overload_answers_429_with_retry_after_and_stays_up(start_gateway):
    # The same batch twelve times: without the embedding cache, so that each one is work for the engine.
    gw = start_gateway(
        env={
            "EMBEDSTACK_MAX_QUEUE_INPUTS": "64",
            "EMBEDSTACK_MAX_INPUTS_PER_REQUEST": "64",
            "EMBEDSTACK_CACHE_BYTES": "0",
        }
    )
    batch = [chunk(k, words=150) for k in range(60)]

    def send(_: int) -> httpx.Response:
        with httpx.Client(timeout=300) as c:
            return embed(c, gw.url, batch)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(send, range(12)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 1
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["Retry-After"].isdigit()
    assert refused.json()["error"]["code"] == "queue_full"
    with httpx.Client() as c:  # still serving after the burst
        assert embed(c, gw.url, ["after the storm"]).status_code == 200


def test_sigterm_drains_without_losing_an_accepted_request(start_gateway):
    gw = start_gateway()
    outcomes: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    sent_after_term = threading.Event()

    def client_loop(worker: int) -> None:
        with httpx.Client(timeout=60) as c:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    response = embed(c, gw.url, [chunk(worker * 1000 + n + k, words=120) for k in range(20)])
                except httpx.ConnectError:
                    outcome = "refused"  # the listener is gone: nothing was accepted
                except httpx.TransportError as exc:
                    outcome = f"lost: {type(exc).__name__}"
                else:
                    outcome = str(response.status_code)
                    if response.status_code == 503:
                        assert response.headers["Retry-After"].isdigit()
                        sent_after_term.set()
                with lock:
                    outcomes.append(outcome)
                if outcome in ("503", "refused"):
                    return

    threads = [threading.Thread(target=client_loop, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    time.sleep(4)  # let the queue fill
    gw.proc.send_signal(signal.SIGTERM)
    ready_after = httpx.get(gw.url + "/ready", timeout=5)
    assert ready_after.status_code == 503
    assert ready_after.json()["error"]["code"] == "draining"
    assert gw.wait_exit(timeout=40) == 0
    stop.set()
    for t in threads:
        t.join(60)

    lost = [o for o in outcomes if o.startswith("lost")]
    assert not lost, outcomes
    assert set(outcomes) <= {"200", "503", "refused"}, outcomes
    assert outcomes.count("200") >= 6
    assert sent_after_term.is_set()
    assert "drained (complete)" in gw.log
