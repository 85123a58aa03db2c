"""The gateway over HTTPS: the official openai client succeeds with the gateway's CA and fails
without it, and the port speaks no plaintext HTTP, so neither keys nor code cross the wire readable."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest
from gateway_process import API_KEY, MODEL, GatewayProcess
from standins.base import self_signed_certificate, write_certificate


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "gateway.pem", tmp / "gateway-key.pem"
    self_signed_certificate(cert, key, "embedstack-gateway")
    env = {"EMBEDSTACK_TLS_CERT": str(cert), "EMBEDSTACK_TLS_KEY": str(key), "EMBEDSTACK_API_KEYS": API_KEY}
    gateway = GatewayProcess(tmp, env=env)
    try:
        yield gateway.wait_ready()
    finally:
        gateway.stop()


def client(url: str, verify) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, http_client=httpx.Client(verify=verify))


def test_the_openai_client_embeds_over_https_when_it_trusts_the_gateways_ca(tls_gateway):
    answer = client(tls_gateway.url, tls_gateway.verify).embeddings.create(model=MODEL, input=["def main(): pass"])
    assert tls_gateway.url.startswith("https://")
    assert len(answer.data[0].embedding) == 384


def test_a_client_without_the_ca_refuses_the_gateway_before_sending_its_key(tls_gateway):
    with pytest.raises(openai.APIConnectionError) as refused:
        client(tls_gateway.url, True).embeddings.create(model=MODEL, input=["secret code"])
    assert "CERTIFICATE_VERIFY_FAILED" in repr(refused.value.__cause__)


def test_the_https_port_answers_no_plaintext_http(tls_gateway):
    plain = tls_gateway.url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.post(
            plain + "/v1/embeddings",
            json={"model": MODEL, "input": "x"},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=5,
        )


def ca_signed_pair(tmp: Path, names: list[str]) -> tuple[Path, Path]:
    """A server certificate for `names`, issued by a throw-away CA (as a deployment's would be)."""
    ca = write_certificate(tmp / "ca.pem", tmp / "ca-key.pem", "embedstack test CA", ca=True, days=1)
    cert, key_file = tmp / "leaf.pem", tmp / "leaf-key.pem"
    write_certificate(cert, key_file, "gateway", names, issuer=ca, days=1)
    return cert, key_file


def test_health_checks_an_https_gateway_by_the_name_clients_use(tmp_path_factory):
    """embedstack health's on-host check connects to 127.0.0.1 but verifies the certificate the host
    serves for the address in the inventory, with that certificate as the anchor (pinned)."""
    from embedstack.ops import remote_checks

    tmp = tmp_path_factory.mktemp("health-tls")
    cert, key = ca_signed_pair(tmp, ["gpu-1.example", "10.1.2.3"])
    gateway = GatewayProcess(tmp, env={"EMBEDSTACK_TLS_CERT": str(cert), "EMBEDSTACK_TLS_KEY": str(key)})
    try:
        deadline = time.monotonic() + 120
        while gateway.proc.poll() is None and time.monotonic() < deadline:
            status, _ = remote_checks.http("GET", gateway.url + "/ready", tls={"cert": str(cert), "name": "10.1.2.3"})
            if status == 200:
                break
            time.sleep(0.3)
        found = {}
        for name in ("gpu-1.example", "10.1.2.3", "other.example"):
            remote_checks.results.clear()
            remote_checks.PARAMS["gateway"] = {
                "port": gateway.port, "model": MODEL, "dimension": 384, "tls": {"cert": str(cert), "name": name},
            }  # fmt: skip
            remote_checks.check_gateway()
            found[name] = {r["check"]: (r["ok"], r["detail"]) for r in remote_checks.results}
    finally:
        remote_checks.PARAMS.pop("gateway", None)
        gateway.stop()
    assert found["gpu-1.example"]["gateway embedding"] == (True, "384 dims (expected 384)")
    assert found["10.1.2.3"]["gateway /ready"][0]
    ok, detail = found["other.example"]["gateway /ready"]
    assert not ok and "other.example" in detail and "mismatch" in detail.lower(), detail
