"""Models listing, probes, metrics, error shapes and start-up behaviour over real HTTP."""

from __future__ import annotations

import httpx
import pytest
from gateway_process import API_KEY, MODEL

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_models_lists_ids_aliases_dimension_and_max_tokens(gateway):
    for path in ("/v1/models", "/models"):
        body = httpx.get(gateway.url + path, headers=AUTH).json()
        by_id = {m["id"]: m for m in body["data"]}
        assert {MODEL, "sentence-transformers/all-MiniLM-L6-v2"} <= set(by_id)
        assert by_id[MODEL]["dimension"] == 384
        assert by_id[MODEL]["max_tokens"] == 256
        assert by_id[MODEL]["owned_by"] == "embedstack"


def test_probes_and_metrics_need_no_key(gateway):
    assert httpx.get(gateway.url + "/health").json() == {"status": "alive"}
    assert httpx.get(gateway.url + "/ready").status_code == 200
    assert httpx.get(gateway.url + "/metrics").status_code == 200
    assert httpx.get(gateway.url + "/v1/models").status_code == 401


def test_metrics_count_requests_latency_batches_queue_and_tokens(gateway):
    httpx.post(gateway.url + "/v1/embeddings", json={"model": MODEL, "input": ["metric probe"]}, headers=AUTH)
    httpx.post(gateway.url + "/v1/embeddings", json={"model": "nope", "input": ["x"]}, headers=AUTH)
    text = httpx.get(gateway.url + "/metrics").text
    assert 'embedstack_requests_total{route="/v1/embeddings",status="200"}' in text
    assert 'embedstack_requests_total{route="/v1/embeddings",status="404"}' in text
    assert "embedstack_request_duration_seconds_bucket" in text
    assert "embedstack_batch_size_bucket" in text
    assert f'embedstack_queue_depth{{model="{MODEL}"}} 0.0' in text
    tokens = next(line for line in text.splitlines() if line.startswith("embedstack_tokens_total"))
    assert float(tokens.split()[-1]) >= 4


def test_unknown_route_and_wrong_method_use_the_error_shape(gateway):
    missing = httpx.get(gateway.url + "/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(gateway.url + "/v1/embeddings", headers=AUTH)
    assert wrong.status_code == 405
    assert set(wrong.json()["error"]) == {"message", "type", "param", "code"}


def test_invalid_json_is_400(gateway):
    response = httpx.post(gateway.url + "/v1/embeddings", content=b"{not json", headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_truncation_off_rejects_long_input_naming_its_index(start_gateway):
    gw = start_gateway(env={"EMBEDSTACK_TRUNCATE": "false"})
    long = "word " * 600
    response = httpx.post(gw.url + "/v1/embeddings", json={"model": MODEL, "input": ["short", long]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "input[1]" in error["message"] and "256" in error["message"]
    assert error["code"] == "context_length_exceeded"


def test_open_mode_warns_loudly_at_start(start_gateway):
    gw = start_gateway()
    assert "no API keys configured" in gw.log
    assert httpx.post(gw.url + "/v1/embeddings", json={"model": MODEL, "input": "x"}).status_code == 200


def test_ready_is_503_while_loading_and_health_answers(start_gateway):
    gw = start_gateway(ready=False)
    seen_503 = False
    for _ in range(200):
        try:
            ready = httpx.get(gw.url + "/ready", timeout=1)
        except httpx.TransportError:
            continue
        assert httpx.get(gw.url + "/health").status_code == 200
        if ready.status_code == 503:
            seen_503 = True
            assert ready.json()["error"]["code"] == "not_ready"
            break
    assert seen_503
    gw.wait_ready()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EMBEDSTACK_DTYPE": "fp8"}, "EMBEDSTACK_DTYPE must be one of auto, float32, bfloat16, float16"),
        ({"EMBEDSTACK_PORT": "http"}, "EMBEDSTACK_PORT must be an integer"),
        ({"EMBEDSTACK_MAX_QUEUE_INPUTS": "10"}, "EMBEDSTACK_MAX_QUEUE_INPUTS (10) must be at least"),
    ],
)
def test_bad_settings_exit_2_naming_the_variable(start_gateway, env, message):
    gw = start_gateway(env=env, ready=False)
    assert gw.wait_exit() == 2
    assert message in gw.log
