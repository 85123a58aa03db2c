"""The upstream engine against in-process fake vLLM servers: truncation, answer checks, rotation,
re-verification, deadlines. tests/vllm repeats the essentials against the real vLLM."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from embedstack.api.error_responses import error_response, status_of
from embedstack.config import load_settings, parse_model
from embedstack.core.batcher import Batcher
from embedstack.core.embedding_cache import EmbeddingCache
from embedstack.core.metrics import Metrics
from embedstack.engines import upstream as upstream_module
from embedstack.engines.upstream import UpstreamEngine
from embedstack.errors import ConfigError, InvalidInput, QueueFull, Unavailable, UpstreamError
from fake_vllm import FakeVllm, vector_of

pytestmark = pytest.mark.fast

DIM = 8
MAX_TOKENS = 16


@pytest.fixture(autouse=True)
def quick_checks(monkeypatch):
    monkeypatch.setattr(upstream_module, "_CHECK_PAUSE", 0.05)
    monkeypatch.setattr(upstream_module, "_RETRY_PAUSE", 0.0)
    monkeypatch.setattr(upstream_module, "_WAIT_FOR_UPSTREAM", 0.3)


def engine_for(
    fakes: dict[str, FakeVllm], max_tokens: int = MAX_TOKENS, weights: str = "", **settings
) -> UpstreamEngine:
    spec = parse_model(
        {
            "id": "m",
            "engine": "upstream",
            "dimension": DIM,
            "max_tokens": max_tokens,
            "upstreams": [f"http://{host}" for host in fakes],
            "weights": weights,
        },
        "test",
    )
    base = load_settings({}, env={})
    config = dataclasses.replace(base, models=(spec,), **settings)

    async def route(request: httpx.Request) -> httpx.Response:
        return await fakes[request.url.host].handle(request)

    return UpstreamEngine(spec, config, transport=httpx.MockTransport(route))


@contextlib.asynccontextmanager
async def serving(fakes: dict[str, FakeVllm], **settings) -> AsyncIterator[UpstreamEngine]:
    """A started engine with every fake upstream verified; closed whatever happens."""
    engine = engine_for(fakes, **settings)
    await engine.start()
    try:
        await eventually(lambda: all(s.verified for s in engine._states))
        yield engine
    finally:
        await engine.close()


async def embed(engine: UpstreamEngine, inputs, truncate: bool = True):
    items = await engine.prepare(inputs, truncate=truncate, input_type="document")
    (output,) = await engine.run(items)
    return output


async def eventually(condition, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def embedding_requests(fake: FakeVllm) -> list[dict]:
    return [body for path, body in fake.requests if path == "/v1/embeddings"]


def long_text(words: int = 40) -> str:
    return "word " * words


def test_truncation_is_forwarded_so_long_inputs_are_embedded():
    fake = FakeVllm(dimension=DIM, max_model_len=MAX_TOKENS)

    async def main():
        async with serving({"a": fake}) as engine:
            return await embed(engine, ["short", long_text()])

    out = asyncio.run(main())
    assert out.vectors.shape == (2, DIM)
    assert out.tokens <= 2 * MAX_TOKENS
    assert embedding_requests(fake)[-1]["truncate_prompt_tokens"] == MAX_TOKENS


def test_truncation_never_asks_for_more_than_the_upstream_takes():
    fake = FakeVllm(dimension=DIM, max_model_len=12)

    async def main():
        async with serving({"a": fake}, max_tokens=512) as engine:
            return await embed(engine, [long_text()])

    assert asyncio.run(main()).vectors.shape == (1, DIM)
    assert embedding_requests(fake)[-1]["truncate_prompt_tokens"] == 12


def test_with_truncation_off_a_long_input_is_a_400_naming_it():
    fake = FakeVllm(dimension=DIM, max_model_len=MAX_TOKENS)

    async def main():
        async with serving({"a": fake}) as engine:
            await embed(engine, ["short", "also short", long_text()], truncate=False)

    with pytest.raises(InvalidInput) as caught:
        asyncio.run(main())
    assert caught.value.message.startswith("input[2] has 42 tokens, more than the model's maximum of 16")
    assert (caught.value.param, caught.value.code) == ("input", "context_length_exceeded")
    assert status_of(caught.value)[0] == 400


def test_token_ids_are_cut_or_refused_before_they_reach_an_upstream():
    fake = FakeVllm(dimension=DIM, max_model_len=MAX_TOKENS)

    async def main():
        async with serving({"a": fake}) as engine:
            await embed(engine, [[7] * 100])
            sent = embedding_requests(fake)[-1]["input"][0]
            with pytest.raises(InvalidInput, match=r"input\[1\] has 100 tokens"):
                await embed(engine, [[7, 8], [7] * 100], truncate=False)
            return sent, len(embedding_requests(fake))

    sent, calls = asyncio.run(main())
    assert len(sent) == MAX_TOKENS
    assert calls == 2  # the probe and the truncated request; the refused one never left


FAULTS = ["down", "500", "401", "404", "garbage", "one-missing", "wrong-dimension", "wrong-model", "nan"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failing_upstream_leaves_the_rotation_and_comes_back_when_healthy(fault):
    first, second = FakeVllm(dimension=DIM), FakeVllm(dimension=DIM)

    async def main():
        async with serving({"a": first, "b": second}) as engine:
            first.fault = fault
            out = await embed(engine, ["def f(): pass"])
            assert not engine._states[0].verified  # out of rotation
            assert engine.unavailable_reason() is None  # the second still serves
            before = len(first.requests)
            await embed(engine, ["def g(): pass"])
            served_by_first = any(p == "/v1/embeddings" for p, _ in first.requests[before:])
            first.fault = None
            await eventually(lambda: engine._states[0].verified)
            return out, served_by_first

    out, served_by_first = asyncio.run(main())
    assert np.allclose(out.vectors[0], vector_of("def f(): pass", DIM), atol=1e-6)
    assert not served_by_first


@pytest.mark.parametrize("fault", ["500", "down", "wrong-dimension"])
def test_with_no_good_upstream_the_request_is_a_retryable_5xx_without_param(fault):
    only = FakeVllm(dimension=DIM)

    async def main():
        async with serving({"a": only}) as engine:
            only.fault = fault
            with pytest.raises((Unavailable, UpstreamError)) as caught:
                await embed(engine, ["x"])
            reason = engine.unavailable_reason()
            only.fault = None
            await eventually(lambda: engine.unavailable_reason() is None)
            recovered = await embed(engine, ["x"])
            return caught.value, reason, recovered

    error, reason, recovered = asyncio.run(main())
    status, _ = status_of(error)
    assert status in (502, 503)
    assert error.param is None
    response = error_response(status, error.message, "server_error", error.code, error.param)
    assert response.headers["retry-after"] == "1"
    assert reason and "http://a" in reason
    assert recovered.vectors.shape == (1, DIM)


def test_an_idle_gateway_notices_a_dead_upstream_and_its_return():
    only = FakeVllm(dimension=DIM)

    async def main():
        async with serving({"a": only}) as engine:
            only.fault = "down"
            await eventually(lambda: engine.unavailable_reason() is not None)
            reason = engine.unavailable_reason()
            only.fault = None
            await eventually(lambda: engine.unavailable_reason() is None)
            return reason

    assert "ConnectError" in asyncio.run(main())


def test_a_request_rides_out_a_short_upstream_restart():
    only = FakeVllm(dimension=DIM)

    async def main():
        async with serving({"a": only}) as engine:
            only.fault = "down"
            await eventually(lambda: engine.unavailable_reason() is not None)
            asyncio.get_running_loop().call_later(0.1, setattr, only, "fault", None)
            return await embed(engine, ["x"])

    assert asyncio.run(main()).vectors.shape == (1, DIM)


def test_overloaded_upstreams_give_429_and_stay_in_rotation():
    first, second = FakeVllm(dimension=DIM), FakeVllm(dimension=DIM)

    async def main():
        async with serving({"a": first, "b": second}) as engine:
            first.fault = second.fault = "429"
            with pytest.raises(QueueFull):
                await embed(engine, ["x"])
            return [s.verified for s in engine._states]

    assert asyncio.run(main()) == [True, True]


def test_a_refusal_fails_over_without_dropping_the_upstream():
    first, second = FakeVllm(dimension=DIM), FakeVllm(dimension=DIM)

    async def main():
        async with serving({"a": first, "b": second}) as engine:
            first.fault = "400"
            out = await embed(engine, ["x"])
            return out, engine._states[0].verified

    out, still_verified = asyncio.run(main())
    assert out.vectors.shape == (1, DIM)
    assert still_verified


def test_one_deadline_covers_every_retry_and_upstream():
    first, second = FakeVllm(dimension=DIM), FakeVllm(dimension=DIM)

    async def main():
        async with serving({"a": first, "b": second}, upstream_timeout=0.5, upstream_retries=3) as engine:
            first.fault = second.fault = "hang"
            started = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                await embed(engine, ["x"])
            return caught.value, time.monotonic() - started

    error, elapsed = asyncio.run(main())
    assert error.code == "upstream_timeout"
    assert elapsed < 1.5


def test_an_upstream_of_another_dimension_is_refused_at_start():
    async def main():
        engine = engine_for({"a": FakeVllm(dimension=DIM * 2)})
        try:
            await engine.start()
        finally:
            await engine.close()

    with pytest.raises(ConfigError, match="at 16 dimensions, but this gateway is configured for 8; refusing it"):
        asyncio.run(main())


async def cached_rounds(fake: FakeVllm, weights: str, rounds: list[list]) -> list:
    """Each round's (vectors, usage) and the inputs each sent upstream, through a batcher with a cache."""
    async with serving({"a": fake}, weights=weights) as engine:
        metrics = Metrics()
        batcher = Batcher(
            engine, max_batch_tokens=8192, max_wait_ms=0, max_queue_inputs=100, max_queue_seconds=60,
            metrics=metrics, cache=EmbeddingCache(1 << 20, metrics),
        )  # fmt: skip
        batcher.start()
        try:
            answers = []
            for inputs in rounds:
                sent = len(embedding_requests(fake))
                result = await batcher.embed(inputs, truncate=True, input_type="document")
                answers.append(
                    (result.vectors, result.prompt_tokens, [b["input"] for b in embedding_requests(fake)[sent:]])
                )
            return answers
        finally:
            await batcher.close()


def test_answers_of_a_named_revision_are_cached_with_each_inputs_tokens():
    fake = FakeVllm(dimension=DIM, max_model_len=MAX_TOKENS)
    batch = ["one two three", "four five", [7, 8, 9], long_text(40)]
    first, again, mixed = asyncio.run(cached_rounds(fake, "m@1a2b3c", [batch, batch, ["four five", "six seven eight"]]))
    assert first[1] == 5 + 4 + 3 + MAX_TOKENS  # usage as vLLM counts it, the long text cut to 16
    np.testing.assert_array_equal(again[0], first[0])
    assert (again[1], again[2]) == (first[1], [])  # same vectors and usage, no upstream call
    assert mixed[2] == [["six seven eight"]]  # only what was not cached goes upstream
    np.testing.assert_array_equal(mixed[0][0], first[0][1])
    assert mixed[1] == 4 + 5


def test_answers_are_not_cached_without_a_revision_or_when_counts_disagree_with_usage():
    batch = ["one two three", "four five"]
    unnamed = asyncio.run(cached_rounds(FakeVllm(dimension=DIM), "", [batch, batch]))
    miscounting = FakeVllm(dimension=DIM)
    miscounting.fault = "tokenize-miscounts"
    disagreeing = asyncio.run(cached_rounds(miscounting, "m@1a2b3c", [batch, batch]))
    for first, again in (unnamed, disagreeing):
        assert again[2] == [batch]  # embedded upstream again, never served from a guess
        np.testing.assert_array_equal(again[0], first[0])
        assert again[1] == first[1] == 9


# --- an upstream is not trusted with sizes (issue 21, section 2) ---


def test_an_endless_answer_is_cut_off_and_its_upstream_leaves_the_rotation():
    endless, good = FakeVllm(dimension=DIM), FakeVllm(dimension=DIM)

    async def main():
        async with serving({"a": endless, "b": good}, upstream_timeout=3.0) as engine:
            endless.fault = "endless"
            started = time.monotonic()
            out = await embed(engine, ["def f(): pass"])
            return out, time.monotonic() - started, engine._states[0].verified, engine._states[0].reason

    out, took, still_in, reason = asyncio.run(main())
    assert np.allclose(out.vectors[0], vector_of("def f(): pass", DIM), atol=1e-6)  # the second upstream's
    assert took < 1.0
    assert not still_in and "more than" in reason
    # one input of 8 dimensions is allowed 64 KiB + 8 x 32 + 256 bytes: reading stops right after
    assert endless.sent <= (64 << 10) + 8 * 32 + 256 + (64 << 10)


def test_an_upstreams_error_message_reaches_the_client_cut_to_one_line():
    only = FakeVllm(dimension=DIM)

    async def main():
        async with serving({"a": only}) as engine:
            only.fault = "long-error"
            with pytest.raises(UpstreamError) as caught:
                await embed(engine, ["x"])
            return caught.value

    error = asyncio.run(main())
    assert "bad input" in error.message
    assert len(error.message) < 2000 and "\n" not in error.message


@pytest.mark.parametrize(
    "usage", ["Infinity", "-Infinity", "NaN", "-1", "1e300", "1000000000000000000000", '"12"', "true", "1.5"]
)
def test_usage_that_is_no_token_count_is_an_upstream_fault(usage):
    liar, honest = FakeVllm(dimension=DIM), FakeVllm(dimension=DIM)

    async def main():
        async with serving({"a": liar, "b": honest}) as engine:
            liar.fault = f"usage:{usage}"
            out = await embed(engine, ["def f(): pass"])
            return out, engine._states[0].verified

    out, liar_still_in = asyncio.run(main())
    assert out.tokens == 5  # the honest upstream's count
    assert not liar_still_in


def test_usage_of_infinity_from_the_only_upstream_is_a_502_not_a_500():
    only = FakeVllm(dimension=DIM)

    async def main():
        async with serving({"a": only}) as engine:
            only.fault = "usage:Infinity"
            with pytest.raises((Unavailable, UpstreamError)) as caught:
                await embed(engine, ["x"])
            return caught.value

    assert status_of(asyncio.run(main()))[0] in (502, 503)


@pytest.mark.parametrize("count", ["Infinity", "-3", "1e30"])
def test_a_tokenize_count_that_is_no_count_costs_the_cache_not_the_request(count):
    fake = FakeVllm(dimension=DIM)
    fake.fault = f"tokenize:{count}"
    batch = ["one two three", "four five"]
    first, again = asyncio.run(cached_rounds(fake, "m@1a2b3c", [batch, batch]))
    assert first[1] == again[1] == 9
    assert again[2] == [batch]  # not cached: embedded upstream again


def test_answers_cut_below_max_tokens_are_not_cached():
    """vLLM's max_model_len (12) is below the gateway's max_tokens (16): a long input is cut at 12 there, while
    the cache key says 16, so another upstream (or the local engine) would make another vector for that key."""
    fake = FakeVllm(dimension=DIM, max_model_len=12)

    async def main():
        async with serving({"a": fake}, weights="m@1a2b3c") as engine:
            metrics = Metrics()
            batcher = Batcher(
                engine, max_batch_tokens=8192, max_wait_ms=0, max_queue_inputs=100, max_queue_seconds=60,
                metrics=metrics, cache=EmbeddingCache(1 << 20, metrics),
            )  # fmt: skip
            batcher.start()
            try:
                for inputs in ([long_text(40)], [long_text(40)], [[7] * 30], [[7] * 30]):
                    await batcher.embed(inputs, truncate=True, input_type="document")
                return len(embedding_requests(fake)), batcher.cache
            finally:
                await batcher.close()

    calls, cache = asyncio.run(main())
    assert calls == 1 + 4  # the probe, then every request went upstream: none was answered from the cache
    assert len(cache) == 0


def test_tokenize_calls_are_bounded_and_heartbeats_keep_a_busy_upstream_in_rotation(monkeypatch):
    """A request of 1,024 texts with the cache on counts each text with /tokenize. Over a real connection pool
    the counting must neither flood the upstream nor queue the heartbeats behind it: a heartbeat that waits
    past its timeout takes a healthy upstream out of the rotation."""
    from loopback_server import serve_on_loopback

    monkeypatch.setattr(upstream_module, "_HEARTBEAT_TIMEOUT", 0.5)
    fake = FakeVllm(dimension=DIM, max_model_len=MAX_TOKENS)
    fake.tokenize_delay = 0.01
    texts = [f"text number {i}" for i in range(1024)]

    async def main(url: str):
        spec = parse_model(
            {"id": "m", "engine": "upstream", "dimension": DIM, "max_tokens": MAX_TOKENS, "upstreams": [url],
             "weights": "m@1a2b3c"},
            "test",
        )  # fmt: skip
        engine = UpstreamEngine(spec, dataclasses.replace(load_settings({}, env={}), models=(spec,)))
        await engine.start()
        await eventually(lambda: engine._states[0].verified)
        dropped: list[str] = []

        async def watch():
            while True:
                if not engine._states[0].verified:
                    dropped.append(engine._states[0].reason)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        try:
            out = await embed(engine, texts)
        finally:
            watcher.cancel()
            await engine.close()
        return out, dropped

    with serve_on_loopback(fake.asgi) as url:
        out, dropped = asyncio.run(main(url))
    assert out.input_tokens == [5] * 1024  # every text counted
    assert dropped == []
    assert fake.most_in_flight["/tokenize"] <= 16
