"""schemathesis fuzzes the running gateway (real model) from the OpenAPI document it serves.

Every generated request, valid or not, must get no 5xx, a status the document lists, and a body
that matches it (every 4xx in OpenAI's error shape); schema-violating requests must be refused.
The gateway allows 16 inputs a request so that valid cases stay quick on the CPU. One worker:
with several, hypothesis's lambda descriptions race in CPython 3.11's ast.parse (a SystemError).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from gateway_process import API_KEY, GatewayProcess

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    )
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    env = {"EMBEDSTACK_API_KEYS": API_KEY, "EMBEDSTACK_MAX_INPUTS_PER_REQUEST": "16"}
    process = GatewayProcess(tmp_path_factory.mktemp("fuzz"), env=env)
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def test_no_generated_request_gets_a_5xx_or_an_undocumented_answer(gateway, tmp_path: Path):
    schemathesis = Path(sys.executable).parent / "schemathesis"
    cmd = [
        str(schemathesis), "run", gateway.url + "/openapi.json",
        "-H", f"Authorization: Bearer {API_KEY}",
        "--checks", CHECKS, "--max-examples", "100", "--seed", "20261130", "--workers", "1",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path)
    summary = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    print(f"schemathesis: {summary.group(0) if summary else 'no summary'}")
    assert run.returncode == 0, run.stdout[-6000:]
    assert summary and int(summary.group(1)) >= 300  # every operation got cases, not a shortcut
