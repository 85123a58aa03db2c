"""/ready on a GCP GPU VM whose boot failed for good (issue 23, section 3): the bootstrap writes the reason to the
file EMBEDSTACK_BOOT_FAILURE_FILE names and leaves the VM up, the gateway's /health stays 200 so autohealing keeps the
VM, and /ready answers 503 with that reason so the load balancer sends it nothing and the operator reads why."""

from __future__ import annotations

import pytest
from embedstack.asgi_app import create_app
from embedstack.config import load_settings
from fake_engine import FakeEngines
from starlette.testclient import TestClient

pytestmark = pytest.mark.fast

REASON = "the NVIDIA driver did not load after the reboot for kernel 6.1.0-41-cloud-amd64: nvidia-smi failed"


def start(tmp_path, **env: str) -> TestClient:
    settings = load_settings({}, env={"EMBEDSTACK_API_KEYS": "fast-test-key-0123456789", **env})
    return TestClient(create_app(settings, engine_factory=FakeEngines()), raise_server_exceptions=False)


def test_a_recorded_boot_failure_turns_ready_503_with_its_reason_while_health_stays_200(tmp_path):
    failure = tmp_path / "boot-failure"
    with start(tmp_path, EMBEDSTACK_BOOT_FAILURE_FILE=str(failure)) as client:
        assert client.get("/ready").status_code == 200  # no failure recorded
        failure.write_text(REASON + "\n")
        ready = client.get("/ready")
        assert ready.status_code == 503
        error = ready.json()["error"]
        assert error["code"] == "boot_failed" and REASON in error["message"], error
        assert "Retry-After" in ready.headers
        assert client.get("/health").status_code == 200  # autohealing probes /health: the VM is kept
        failure.unlink()  # an operator cleared it
        assert client.get("/ready").status_code == 200


def test_the_setting_is_off_by_default_and_a_huge_file_is_cut(tmp_path):
    with start(tmp_path) as client:
        assert client.get("/ready").status_code == 200
    failure = tmp_path / "boot-failure"
    failure.write_text("x" * 100_000)
    with start(tmp_path, EMBEDSTACK_BOOT_FAILURE_FILE=str(failure)) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503 and len(ready.json()["error"]["message"]) < 2_000
