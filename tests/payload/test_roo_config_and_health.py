"""roo-config and health against inventories read by the real ansible-inventory.

Hosts here point at loopback ports where nothing listens: the lab tests (tests/e2e) run the
same commands against real containers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

INVENTORY = """
all:
  vars:
    ansible_user: root
  children:
    embedding:
      hosts:
        embed-1:
          ansible_host: 127.0.0.1
          ansible_port: {port}
    qdrant:
      hosts:
        qdrant-1:
          ansible_host: 127.0.0.1
          ansible_port: {port}
"""

GROUP_VARS = {
    "embedding.yml": "embedding_service_api_keys: [gw-key-1, gw-key-2]\nembedding_service_port: 8080\n",
    "qdrant.yml": "qdrant_api_key: qd-key\n",
}


def make_inventory(tmp_path: Path, port: int = 1) -> Path:
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "hosts.yml").write_text(INVENTORY.format(port=port))
    for name, text in GROUP_VARS.items():
        (inv / "group_vars" / name).write_text(text)
    return inv


def embedstack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "embedstack.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_roo_config_prints_what_roo_code_needs(tmp_path):
    inv = make_inventory(tmp_path)
    out = embedstack("roo-config", "-i", str(inv), "--json")
    assert out.returncode == 0, out.stderr
    settings = json.loads(out.stdout)
    assert settings == {
        "Embedder Provider": "OpenAI Compatible",
        "Base URL": "http://127.0.0.1:8080/v1",
        "API Key": "gw-key-1",
        "Model": "all-minilm-l6-v2",
        "Model Dimension": 384,
        "Qdrant URL": "http://127.0.0.1:6333",
        "Qdrant API Key": "qd-key",
    }
    # Nothing answers SSH there: roo-config says it could not check that Qdrant runs (stderr beside --json).
    assert out.stderr.startswith("embedstack roo-config: Could not check whether Qdrant runs on qdrant-1: unreachable")
    table = embedstack("roo-config", "-i", str(inv)).stdout
    assert "Qdrant URL" in table and ":6333" in table
    assert "Could not check whether Qdrant runs on qdrant-1: unreachable" in table
    assert "embeds up to 256 tokens of a chunk, about 947 characters of code" in table
    # Roo's own words for a wrong or empty Model field, explained (issue 22, section 4)
    assert "\"Invalid API endpoint\", the Model field is not 'all-minilm-l6-v2'" in table
    assert "text-embedding-3-small" in table


def test_roo_config_of_an_https_gateway_says_how_vs_code_trusts_its_ca(tmp_path):
    inv = make_inventory(tmp_path)
    with (inv / "group_vars" / "embedding.yml").open("a") as f:
        f.write("embedding_service_tls_cert: '-----BEGIN CERTIFICATE-----'\n")
    table = embedstack("roo-config", "-i", str(inv))
    assert table.returncode == 0, table.stderr
    assert "https://127.0.0.1:8080/v1" in table.stdout
    assert "NODE_EXTRA_CA_CERTS=" in table.stdout


def test_health_reports_unreachable_hosts_without_crashing(tmp_path):
    inv = make_inventory(tmp_path, port=1)  # nothing listens on 127.0.0.1:1
    out = embedstack("health", "-i", str(inv), "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["healthy"] is False
    assert {(c["host"], c["check"]) for c in report["checks"]} == {("embed-1", "ssh"), ("qdrant-1", "ssh")}
    assert all(c["detail"].startswith("unreachable") for c in report["checks"])
    table = embedstack("health", "-i", str(inv))
    assert table.returncode == 1
    assert "FAIL embed-1: ssh: unreachable" in table.stdout


def test_bad_inventory_is_a_clear_error(tmp_path):
    out = embedstack("health", "-i", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert "does not exist" in out.stderr
