"""The firewall keeps service users away from the instance metadata server, with real packets.

One network namespace (created and deleted here) holds GCE's metadata addresses on its loopback and a
listener on the metadata port (80) and the DNS port (53). The role's ruleset is loaded there and
connections are made as root, as a service user, and as a service user whose primary group is
firewall_metadata_group. Needs root, `ip`, `nft` and util-linux's `setpriv`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_play import ROLES, render_task, run_play
from test_firewall_rules import LISTENER, PROBE, PROBE_TIMEOUT, _need_root_and_tools, _sh

METADATA_GID = 4242
NOBODY = 65534
ADDRESSES = ("169.254.169.254", "fd20:ce::254")
ROLE_VARS = {
    "firewall_admin_cidrs": ["10.215.9.2/32"],
    "firewall_client_cidrs": ["10.215.9.0/24"],
    "firewall_client_tcp_ports": [8080],
    "firewall_metadata_group": "embedstack-metadata",
    "firewall_metadata_gid": METADATA_GID,  # what the role's group task registers
}


def render_ruleset(variables: dict, dest: Path) -> None:
    """The role's template with its defaults and filters (loaded through its preflight), as the role renders it."""
    preflight = {
        "name": "Load the firewall role",
        "ansible.builtin.include_role": {"name": "firewall", "tasks_from": "preflight.yml", "public": True},
    }
    tasks = [preflight, render_task(ROLES / "firewall" / "templates" / "embedstack.nft.j2", dest)]
    run_play([{"hosts": "localhost", "gather_facts": False, "vars": variables, "tasks": tasks}], dest.parent)


@pytest.fixture(scope="module")
def namespace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reason = _need_root_and_tools() or (None if shutil.which("setpriv") else "`setpriv` not found (util-linux)")
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("firewall-metadata")
    rules = workdir / "embedstack.nft"
    render_ruleset(ROLE_VARS, rules)
    ns = f"esfw-meta-{os.getpid() % 100000}"
    listener = None
    _sh("ip", "netns", "add", ns)
    try:
        _sh("ip", "link", "set", "lo", "up", netns=ns)
        _sh("ip", "addr", "add", "169.254.169.254/32", "dev", "lo", netns=ns)
        _sh("ip", "-6", "addr", "add", "fd20:ce::254/128", "dev", "lo", "nodad", netns=ns)
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, "80", "53"]
        listener = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert listener.stdout and listener.stdout.readline().strip() == "ready"
        _sh("nft", "-f", str(rules), netns=ns)
        yield ns
    finally:
        if listener:
            listener.stdin.close()
            listener.terminate()
            listener.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def connect_as(ns: str, uid: int, gid: int, ports: tuple[int, ...]) -> dict[str, str]:
    checks = [{"id": f"{dst}:{port}", "kind": "tcp", "dst": dst, "port": port} for dst in ADDRESSES for port in ports]
    who = [] if uid == 0 else ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    cmd = ["ip", "netns", "exec", ns, *who, sys.executable, "-c", PROBE, json.dumps(checks), str(PROBE_TIMEOUT)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_root_reaches_the_metadata_server(namespace: str) -> None:
    assert set(connect_as(namespace, 0, 0, (80,)).values()) == {"open"}


def test_a_service_user_is_refused_at_once_but_keeps_dns(namespace: str) -> None:
    assert set(connect_as(namespace, NOBODY, NOBODY, (80,)).values()) == {"refused"}
    assert set(connect_as(namespace, NOBODY, NOBODY, (53,)).values()) == {"open"}


def test_a_service_running_with_the_metadata_group_reaches_it(namespace: str) -> None:
    assert set(connect_as(namespace, NOBODY, METADATA_GID, (80,)).values()) == {"open"}


def test_without_the_group_setting_no_user_is_kept_away(tmp_path: Path) -> None:
    rules = tmp_path / "open.nft"
    render_ruleset({**ROLE_VARS, "firewall_metadata_group": ""}, rules)
    assert "169.254.169.254" not in rules.read_text()
