"""`embedstack health` against a converged stack of real containers, with injected faults.

Run by molecule's verify step (and `make lab-test`), which points EMBEDSTACK_E2E_INVENTORY at the
inventory of the containers it converged. Every fault is undone before the next test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from embedstack.ops.health import ssh_target
from embedstack.ops.inventory import Host, in_group, load_inventory

INVENTORIES = [p for p in os.environ.get("EMBEDSTACK_E2E_INVENTORY", "").split(":") if p]
pytestmark = pytest.mark.skipif(not INVENTORIES, reason="needs EMBEDSTACK_E2E_INVENTORY (molecule verify sets it)")


def health(*extra: str) -> tuple[int, dict]:
    args = [a for path in INVENTORIES for a in ("-i", path)]
    proc = subprocess.run(
        [sys.executable, "-m", "embedstack.cli", "health", *args, *extra, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout)


def failures(report: dict) -> set[tuple[str, str]]:
    """Checks that failed; not those of a component the deployment left out and recorded why (exit 3 alone)."""
    return {(c["host"], c["check"]) for c in report["checks"] if not c["ok"] and not c.get("missing")}


def left_out(report: dict) -> set[tuple[str, str]]:
    return {(c["host"], c["check"]) for c in report["checks"] if c.get("missing")}


def on(host: Host, command: str) -> str:
    proc = subprocess.run([*ssh_target(host), command], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{host.name}: {command}: {proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def hosts() -> dict[str, Host]:
    loaded = load_inventory(INVENTORIES)
    return {"embed": in_group(loaded, "embedding")[0], "qdrant": in_group(loaded, "qdrant")[0]}


def wait_healthy(timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        code, report = health()
        if code in (0, 3) or time.monotonic() > deadline:
            return report
        time.sleep(2)


def test_the_converged_stack_is_healthy(hosts):
    code, report = health()
    embed, qdrant = hosts["embed"].name, hosts["qdrant"].name
    assert not failures(report), failures(report)
    # Where no Qdrant binary is installed (molecule: qdrant_install_binary false), health says so and exits 3.
    assert left_out(report) <= {(qdrant, "qdrant")} and code == (3 if left_out(report) else 0), report
    checks = {(c["host"], c["check"]) for c in report["checks"]}
    for expected in [
        (embed, "unit embedstack-gateway.service"),
        (embed, "gateway /ready"),
        (embed, "gateway embedding"),
        (embed, "nftables ruleset"),
        (embed, "clock"),
        (embed, "free disk /"),
        (qdrant, "unit nftables.service"),
    ]:
        assert expected in checks


def test_a_stopped_unit_is_detected(hosts):
    embed = hosts["embed"]
    on(embed, "systemctl stop embedstack-gateway.service")
    try:
        code, report = health()
        assert code == 1
        assert {(embed.name, "unit embedstack-gateway.service"), (embed.name, "gateway /ready")} <= failures(report)
    finally:
        on(embed, "systemctl start embedstack-gateway.service")
    assert not failures(wait_healthy())


def test_a_flushed_ruleset_is_detected(hosts):
    qdrant = hosts["qdrant"]
    on(qdrant, "nft flush ruleset")
    try:
        code, report = health()
        assert code == 1
        assert (qdrant.name, "nftables ruleset") in failures(report)
    finally:
        on(qdrant, "systemctl restart nftables.service")
    assert not failures(wait_healthy())


def test_a_wrong_api_key_is_detected(hosts, tmp_path):
    override = tmp_path / "wrong-key.yml"
    # Host vars: they outrank the group_vars that hold the real key.
    embed = hosts["embed"].name
    override.write_text(f"embedding:\n  hosts:\n    {embed}:\n      embedding_service_api_keys: [not-the-right-key]\n")
    code, report = health("-i", str(override))
    assert code == 1
    bad = next(c for c in report["checks"] if c["check"] == "gateway embedding")
    assert not bad["ok"] and "HTTP 401" in bad["detail"]


def test_an_unreachable_host_is_reported_not_crashed(hosts, tmp_path):
    qdrant = hosts["qdrant"]
    override = tmp_path / "gone.yml"
    # Same host, a port where nothing listens: the connection is refused, as for a host that is down.
    override.write_text(f"qdrant:\n  hosts:\n    {qdrant.name}:\n      ansible_port: 2\n")
    code, report = health("-i", str(override))
    assert code == 1
    assert failures(report) == {(qdrant.name, "ssh")}
    row = next(c for c in report["checks"] if c["host"] == qdrant.name)
    assert row["detail"].startswith("unreachable")
