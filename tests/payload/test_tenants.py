"""Tenants of one gateway: keys that belong to different people. With EMBEDSTACK_CACHE_PER_TENANT one tenant's
cache hits cannot tell another what it embedded, and with EMBEDSTACK_METRICS_AUTH /metrics and the reasons
behind /ready need a key. In-process (ASGI client, fake engine), plus `embedstack health`'s on-host check
against a real uvicorn on loopback."""

from __future__ import annotations

import time

import pytest
from embedstack.asgi_app import create_app
from embedstack.config import load_settings
from embedstack.errors import ConfigError
from fake_engine import FakeEngines
from loopback_server import serve_on_loopback
from starlette.testclient import TestClient

pytestmark = pytest.mark.fast

KEY_A = "tenant-a-key-0123456789"
KEY_B = "tenant-b-key-0123456789"
METRICS_KEY = "metrics-only-key-0123456789"
MODEL = "all-minilm-l6-v2"
TEXT = "def rotate_credentials(vault): return vault.rotate('prod')"


def settings(**env: str):
    return load_settings({}, env={"EMBEDSTACK_API_KEYS": f"{KEY_A},{KEY_B}", **env})


def start(engines: FakeEngines, **env: str) -> TestClient:
    return TestClient(create_app(settings(**env), engine_factory=engines), raise_server_exceptions=False)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def embedded_by_engine(client: TestClient, engines: FakeEngines, key: str) -> bool:
    """Embed TEXT as the tenant of `key`; True when the engine computed it (a cache miss)."""
    before = len(engines.made[MODEL].batches)
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": [TEXT]}, headers=auth(key))
    assert response.status_code == 200, response.text
    return len(engines.made[MODEL].batches) > before


def test_with_a_cache_per_tenant_another_tenants_text_is_a_miss():
    engines = FakeEngines()
    with start(engines, EMBEDSTACK_CACHE_PER_TENANT="true") as client:
        assert embedded_by_engine(client, engines, KEY_A)
        assert embedded_by_engine(client, engines, KEY_B)  # B learns nothing of A's text: a miss like any other
        assert not embedded_by_engine(client, engines, KEY_A)  # each tenant still hits its own
        assert not embedded_by_engine(client, engines, KEY_B)


def test_the_shared_cache_answers_one_tenant_from_anothers_text():
    """The default, and why the option exists: B's request is answered from A's entry (1.3 ms against 46 ms
    measured in issue 21)."""
    engines = FakeEngines()
    with start(engines) as client:
        assert embedded_by_engine(client, engines, KEY_A)
        assert not embedded_by_engine(client, engines, KEY_B)


def test_the_cache_never_holds_the_tenants_key(tmp_path):
    engines = FakeEngines()
    with start(engines, EMBEDSTACK_CACHE_PER_TENANT="true", EMBEDSTACK_CACHE_DIR=str(tmp_path)) as client:
        embedded_by_engine(client, engines, KEY_A)
    stored = b"".join(path.read_bytes() for path in tmp_path.iterdir())
    assert stored and KEY_A.encode() not in stored


@pytest.mark.parametrize("mode", ["api-key", "metrics-key"])
def test_metrics_need_a_key_when_asked(mode):
    with start(FakeEngines(), EMBEDSTACK_METRICS_AUTH=mode, EMBEDSTACK_METRICS_KEYS=METRICS_KEY) as client:
        anonymous = client.get("/metrics")
        wrong = client.get("/metrics", headers=auth("not-a-key-of-this-gateway"))
        tenant = client.get("/metrics", headers=auth(KEY_A))
        operator = client.get("/metrics", headers={"api-key": METRICS_KEY})
        embeddings_with_metrics_key = client.post(
            "/v1/embeddings", json={"model": MODEL, "input": ["x"]}, headers=auth(METRICS_KEY)
        )
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "missing_api_key")
    assert wrong.status_code == 401
    assert tenant.status_code == (200 if mode == "api-key" else 401)
    assert operator.status_code == 200 and "embedstack_cache_hits_total" in operator.text
    assert embeddings_with_metrics_key.status_code == 401  # the metrics key embeds nothing


def test_ready_answers_load_balancers_without_a_key_but_keeps_its_details_for_operators():
    engines = FakeEngines()
    with start(engines, EMBEDSTACK_METRICS_AUTH="metrics-key", EMBEDSTACK_METRICS_KEYS=METRICS_KEY) as client:
        while not client.app.state.served_models.ready:
            time.sleep(0.01)
        ok_anonymous, ok_operator = client.get("/ready"), client.get("/ready", headers=auth(METRICS_KEY))
        engines.made[MODEL].unavailable = "no verified upstream: http://10.20.30.40:8001: ConnectError"
        down_anonymous, down_tenant = client.get("/ready"), client.get("/ready", headers=auth(KEY_A))
        down_operator = client.get("/ready", headers=auth(METRICS_KEY))
    assert ok_anonymous.status_code == 200 and ok_anonymous.json() == {"status": "ready"}
    assert ok_operator.json() == {"status": "ready", "models": [MODEL]}
    for hidden in (down_anonymous, down_tenant):
        assert hidden.status_code == 503 and "Retry-After" in hidden.headers
        assert hidden.json()["error"]["code"] == "upstream_unavailable"
        assert "10.20.30.40" not in hidden.text
    assert down_operator.status_code == 503 and "http://10.20.30.40:8001: ConnectError" in down_operator.text


def test_metrics_stay_open_by_default():
    with start(FakeEngines()) as client:
        assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"EMBEDSTACK_METRICS_AUTH": "keyed"}, "EMBEDSTACK_METRICS_AUTH must be one of open, api-key, metrics-key"),
        ({"EMBEDSTACK_METRICS_AUTH": "metrics-key"}, "EMBEDSTACK_METRICS_KEYS"),
        ({"EMBEDSTACK_METRICS_AUTH": "api-key", "EMBEDSTACK_API_KEYS": ""}, "EMBEDSTACK_API_KEYS"),
        ({"EMBEDSTACK_CACHE_PER_TENANT": "per-key"}, "EMBEDSTACK_CACHE_PER_TENANT must be true or false"),
    ],
)
def test_bad_tenant_settings_name_the_variable(env, names):
    with pytest.raises(ConfigError) as caught:
        settings(**env)
    assert names in caught.value.message


def test_metrics_keys_come_from_a_file_too(tmp_path):
    keys = tmp_path / "metrics-keys"
    keys.write_text(f"# for Prometheus\n{METRICS_KEY}\n")
    loaded = load_settings({"metrics_keys_file": str(keys), "metrics_auth": "metrics-key"}, env={})
    assert loaded.metrics_keys == frozenset({METRICS_KEY}) and loaded.metrics_auth == "metrics-key"


def test_health_checks_a_gateway_whose_metrics_need_a_key():
    """`embedstack health` runs remote_checks.py on the host: /ready without a key still says 200, and the
    canary embedding uses the inventory's API key as before."""
    from embedstack.ops import remote_checks

    app = create_app(
        settings(EMBEDSTACK_METRICS_AUTH="metrics-key", EMBEDSTACK_METRICS_KEYS=METRICS_KEY),
        engine_factory=FakeEngines(),
    )
    with serve_on_loopback(app, lifespan="on") as url:
        while not app.state.served_models.ready:
            time.sleep(0.01)
        remote_checks.results.clear()
        remote_checks.PARAMS["gateway"] = {"port": int(url.rsplit(":", 1)[1]), "model": MODEL, "dimension": 384,
                                           "api_key": KEY_A}  # fmt: skip
        try:
            remote_checks.check_gateway()
        finally:
            remote_checks.PARAMS.pop("gateway", None)
    found = {r["check"]: (r["ok"], r["detail"]) for r in remote_checks.results}
    assert found["gateway /ready"] == (True, "HTTP 200")
    assert found["gateway embedding"] == (True, "384 dims (expected 384)")
