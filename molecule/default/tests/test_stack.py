"""The converged stack, checked from the host: units, users, real vectors, real packets, configs.

testinfra runs every test once per container; tests that concern one group skip the other.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
GATEWAY_KEY = "molecule-gateway-key-0123456789"
BRIDGE = "esmol0"
OUTSIDER = "10.214.0.200"  # a host address outside firewall_admin_cidrs and firewall_client_cidrs


def groups(host) -> list[str]:
    return host.ansible.get_variables().get("group_names", [])


def address(host) -> str:
    return host.ansible.get_variables()["ansible_host"]


def only(host, group: str) -> None:
    if group not in groups(host):
        pytest.skip(f"not in group {group}")


def runs_vllm(host) -> bool:
    return host.ansible.get_variables().get("vllm_build") == "cpu"


def connects(ip: str, port: int, source: str | None = None, timeout: float = 3) -> str:
    """'open', 'refused' (an answer: reachable but nothing listens) or 'dropped' (no answer at all)."""
    with socket.socket() as s:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        try:
            s.connect((ip, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "dropped"
    return "open"


@contextlib.contextmanager
def outsider_address():
    """A second address on the host's side of the bridge, removed again whatever happens."""
    subprocess.run(["ip", "addr", "add", f"{OUTSIDER}/24", "dev", BRIDGE], check=True)
    try:
        yield OUTSIDER
    finally:
        subprocess.run(["ip", "addr", "del", f"{OUTSIDER}/24", "dev", BRIDGE], check=False)


def test_units_are_active_and_enabled(host):
    units = ["nftables.service", "ssh.service"]
    if "embedding" in groups(host):
        units.append("embedstack-gateway.service")
    if runs_vllm(host):
        units.append("vllm.service")
    for unit in units:
        service = host.service(unit)
        assert service.is_running, unit
        assert service.is_enabled, unit


def test_no_running_unit_is_more_exposed_than_its_threshold(host):
    """systemd's own score of each loaded unit (drop-ins included) against tests/ansible/fixtures/unit_exposure.yml."""
    exposure = yaml.safe_load((REPO / "tests/ansible/fixtures/unit_exposure.yml").read_text())
    upstream = host.ansible.get_variables().get("embedding_service_engine") == "upstream"
    checked = []
    for name, entry in exposure.items():
        if name.startswith("gateway") and (name == "gateway-upstream") != upstream:
            continue
        if not host.file(f"/etc/systemd/system/{entry['unit']}").exists:
            continue
        report = host.run(f"systemd-analyze security --no-pager {entry['unit']}")
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", report.stdout)
        assert found, report.stdout + report.stderr
        assert float(found.group(1)) <= entry["max"], f"{entry['unit']} scores {found.group(1)}:\n{report.stdout}"
        checked.append(entry["unit"])
    assert checked, "no service unit found to score"


def test_qdrant_unit_is_installed_but_not_started_without_a_binary(host):
    only(host, "qdrant")
    assert host.file("/etc/systemd/system/qdrant.service").exists
    assert not host.file("/usr/bin/qdrant").exists and not host.file("/usr/local/bin/qdrant").exists
    assert not host.service("qdrant.service").is_running


def test_qdrant_snapshot_timer_is_scheduled(host):
    only(host, "qdrant")
    timer = host.service("qdrant-snapshots.timer")
    assert timer.is_enabled and timer.is_running
    assert host.file("/usr/local/libexec/qdrant-snapshot-upload").exists
    assert "molecule-qdrant-snapshots" in host.file("/etc/default/qdrant-snapshots").content_string


def test_gateway_runs_as_its_own_user(host):
    only(host, "embedding")
    pid = host.check_output("systemctl show -p MainPID --value embedstack-gateway.service")
    assert host.check_output(f"ps -o user= -p {pid}") == "embedstack"
    unit = host.file("/etc/systemd/system/embedstack-gateway.service").content_string
    for hardening in ("NoNewPrivileges=true", "ProtectSystem=strict", "User=embedstack", "CapabilityBoundingSet="):
        assert hardening in unit


def test_embeddings_from_the_host_are_real_384_dim_vectors(host):
    only(host, "embedding")
    body = {"model": "all-minilm-l6-v2", "input": ["def read_yaml(path): ...", "parse a yaml file", "SELECT 1"]}
    request = urllib.request.Request(
        f"http://{address(host)}:8080/v1/embeddings",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {GATEWAY_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        data = json.loads(response.read())["data"]
    vectors = [d["embedding"] for d in data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    dot = [sum(a * b for a, b in zip(vectors[1], v, strict=True)) for v in vectors]
    assert dot[0] > dot[2]  # the query is closer to the yaml code than to SQL


def test_firewall_allows_admins_and_clients_only(host):
    ip = address(host)
    client_port = 8080 if "embedding" in groups(host) else 6333
    assert connects(ip, 22) == "open"
    if "embedding" in groups(host):
        assert connects(ip, client_port) == "open"
    with outsider_address() as outsider:
        assert connects(ip, 22, source=outsider) == "dropped"
        assert connects(ip, client_port, source=outsider) == "dropped"


def test_vllm_port_is_never_reachable_from_outside(host):
    only(host, "embedding")
    if runs_vllm(host):
        pytest.skip("the real vLLM holds 8001 here: test_vllm_chain.py checks it")
    # Something listens on 8001 (as vLLM would): reachable on loopback, dropped from the host.
    host.run("systemd-run --unit=fake-8001 --collect python3 -m http.server 8001 --bind 0.0.0.0")
    try:
        host.run("for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:8001/ && break; sleep 0.1; done")
        assert host.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8001/").stdout == "200"
        assert connects(address(host), 8001) == "dropped"
        assert connects(address(host), 6333) == "dropped"
    finally:
        host.run("systemctl stop fake-8001.service")


def test_config_files_are_valid(host):
    assert host.run("nft -c -f /etc/nftables.conf").rc == 0
    if "embedding" in groups(host):
        models = yaml.safe_load(host.file("/etc/embedstack/models.yaml").content_string)
        assert models["models"][0]["dimension"] == 384
        keys = host.file("/etc/embedstack/api-keys")
        assert (keys.user, keys.group, keys.mode) == ("root", "embedstack", 0o640)  # readable, not writable
        assert host.file("/etc/embedstack/gateway.env").mode == 0o600
        assert "EMBEDSTACK_PORT=8080" in host.file("/etc/embedstack/gateway.env").content_string
    if "qdrant" in groups(host):
        config = yaml.safe_load(host.file("/etc/qdrant/config.yaml").content_string)
        assert config["service"]["http_port"] == 6333 and config["service"]["grpc_port"] == 6334
        assert config["service"]["api_key"]
        assert config["telemetry_disabled"] is True
        assert host.file("/etc/qdrant/config.yaml").mode & 0o007 == 0
