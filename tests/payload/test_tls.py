"""The gateway over HTTPS: the official openai client succeeds with the gateway's CA and fails
without it, and the port speaks no plaintext HTTP, so neither keys nor code cross the wire readable."""

from __future__ import annotations

import httpx
import openai
import pytest
from gateway_process import API_KEY, MODEL, GatewayProcess
from standins.base import self_signed_certificate


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
