"""The production chain, gateway -> the real vLLM (CPU build), with the official openai client."""

from __future__ import annotations

import time

import httpx
import numpy as np
import openai
import pytest
from gateway_process import MODEL
from vllm_cpu import MAX_MODEL_LEN, bundled_model_path

CODE = [
    "def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "SELECT id, name FROM users WHERE created_at > now() - interval '1 day' ORDER BY name;",
    'fn main() {\n    let v: Vec<u32> = (1..10).collect();\n    println!("{:?}", v);\n}',
    "# Install\n\nRun `make lab` to bring up the local stack, then `make test`.",
    "class LRU:\n" + "".join(f"    def method_{i}(self, key):\n        return self.data.get(key)\n" for i in range(40)),
]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_vectors_through_the_gateway_match_sentence_transformers(gateways):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(bundled_model_path(), device="cpu")
    reference.max_seq_length = MAX_MODEL_LEN
    expected = reference.encode(CODE, normalize_embeddings=True)
    answer = client(gateways["truncating"].url).embeddings.create(model=MODEL, input=CODE)
    got = np.array([d.embedding for d in answer.data])
    cosines = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1)
    assert got.shape == (len(CODE), 384)
    assert cosines.min() >= 0.999, cosines


def test_re_embedding_the_same_chunks_is_answered_from_the_cache_with_vllms_usage(gateways):
    gateway = client(gateways["caching"].url)
    first = gateway.embeddings.create(model=MODEL, input=CODE)
    hits_before = cache_hits(gateways["caching"].url)
    again = gateway.embeddings.create(model=MODEL, input=CODE)
    # vLLM's /tokenize counts, truncation included, add up to its usage, so the cache kept every vector
    assert cache_hits(gateways["caching"].url) - hits_before == len(CODE)
    assert again.usage.prompt_tokens == first.usage.prompt_tokens
    assert [d.embedding for d in again.data] == [d.embedding for d in first.data]


def cache_hits(url: str) -> float:
    metrics = httpx.get(url + "/metrics").text
    return sum(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("embedstack_cache_hits_total")
    )


def test_an_input_over_the_models_maximum_is_truncated(gateways):
    long_input = "token " * 1000
    answer = client(gateways["truncating"].url).embeddings.create(model=MODEL, input=["short", long_input])
    assert len(answer.data) == 2
    assert answer.usage.prompt_tokens <= 2 * MAX_MODEL_LEN


def test_with_truncation_off_an_overlong_input_is_a_400_naming_it(gateways):
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateways["strict"].url).embeddings.create(model=MODEL, input=["short", "token " * 1000])
    error = caught.value.body
    assert error["message"].startswith(f"input[1] has 1002 tokens, more than the model's maximum of {MAX_MODEL_LEN}")
    assert (error["param"], error["code"]) == ("input", "context_length_exceeded")


def wait_for(url: str, status: int, timeout: float) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    while True:
        response = httpx.get(url, timeout=2)
        if response.status_code == status:
            return time.monotonic() - started, response
        assert time.monotonic() - started < timeout, f"{url} still {response.status_code}: {response.text}"
        time.sleep(0.2)


def test_a_stopped_vllm_turns_ready_503_and_the_gateway_recovers_by_itself(vllm, gateways):
    front = gateways["truncating"]
    vllm.stop()
    took, response = wait_for(front.url + "/ready", 503, timeout=15)
    assert vllm.url in response.json()["error"]["message"]
    assert response.headers["retry-after"]
    with pytest.raises(openai.InternalServerError) as caught:
        client(front.url).embeddings.create(model=MODEL, input=["x"])
    assert caught.value.status_code in (502, 503) and caught.value.body["param"] is None
    print(f"/ready 503 {took:.1f} s after vLLM stopped")

    vllm.start()
    took, _ = wait_for(front.url + "/ready", 200, timeout=30)
    answer = client(front.url).embeddings.create(model=MODEL, input=CODE[:2])
    assert len(answer.data) == 2
    print(f"/ready 200 again {took:.1f} s after vLLM was healthy")
