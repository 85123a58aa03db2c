"""An unexpected failure is logged and answered as a 500 in the OpenAI error shape."""

from __future__ import annotations

import logging
import time

from embedstack.app import create_app
from embedstack.config import load_settings
from starlette.testclient import TestClient


def test_a_bug_becomes_a_logged_500_with_the_error_shape(caplog):
    app = create_app(load_settings({}, env={"EMBEDSTACK_COMPILE": "off"}))
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 180  # the model loads in a few seconds, longer on a busy machine
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the gateway never became ready"
            time.sleep(0.1)
        batcher = app.state.gateway.batchers["all-minilm-l6-v2"]

        async def broken(*args, **kwargs):
            raise RuntimeError("simulated bug in the batcher")

        batcher.embed = broken
        with caplog.at_level(logging.ERROR):
            response = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x"})
        metrics = client.get("/metrics").text
    assert 'embedstack_requests_total{route="/v1/embeddings",status="500"} 1.0' in metrics
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "internal server error; the gateway logged the cause",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    assert "simulated bug in the batcher" in caplog.text
