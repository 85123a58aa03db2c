"""The firewall role's ruleset, rendered by real Ansible, loaded into network namespaces and probed with real packets.

Topology (all in namespaces this module creates and deletes; nothing touches the host's own ruleset):

    client "ok"  10.215.1.2 (admin+client), 10.215.1.3 (client only), fd15:215:1::2/::3
         | veth
    server       10.215.1.1 / fd15:215:1::1   and   10.215.2.1 / fd15:215:2::1   <- ruleset loaded here
         | veth
    client "bad" 10.215.2.2, fd15:215:2::2 (neither admin nor client)

Needs root, `ip netns` (iproute2) and `nft` (nftables): CI installs them with `apt-get install nftables iproute2`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ansible_play import ROLES, assert_outcome, render_task, run_cases, run_play

TEMPLATE = ROLES / "firewall" / "templates" / "embedstack.nft.j2"

ADMIN_CIDRS = ["10.215.1.2/32", "fd15:215:1::2/128"]
CLIENT_CIDRS = ["10.215.1.0/24", "fd15:215:1::/64"]
CLIENT_PORTS = [8080, 6333, 6334]
SERVER_PORTS = [22, 8080, 8001, 6333]
# (source, server address) of each kind of peer, IPv4 then IPv6.
ADMIN = (("10.215.1.2", "10.215.1.1"), ("fd15:215:1::2", "fd15:215:1::1"))
CLIENT_ONLY = (("10.215.1.3", "10.215.1.1"), ("fd15:215:1::3", "fd15:215:1::1"))
OUTSIDER = (("10.215.2.2", "10.215.2.1"), ("fd15:215:2::2", "fd15:215:2::1"))
ROLE_VARS = {
    "firewall_admin_cidrs": ADMIN_CIDRS,
    "firewall_client_cidrs": CLIENT_CIDRS,
    "firewall_client_tcp_ports": CLIENT_PORTS,
}

# Serves b"ok\n" on every port given, IPv4 and IPv6, until stdin closes (so it dies with the test).
LISTENER = r"""
import socket, sys, threading
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(64)
    socks.append(s)
def serve(s):
    while True:
        conn, _ = s.accept()
        with conn:
            conn.sendall(b"ok\n")
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

# Runs TCP connects and ICMP echoes concurrently; prints {"<check id>": "open|blocked|refused|error ..."}.
PROBE = r"""
import json, os, socket, struct, sys, time
from concurrent.futures import ThreadPoolExecutor
checks, timeout = json.loads(sys.argv[1]), float(sys.argv[2])

def tcp(c):
    family = socket.AF_INET6 if ":" in c["dst"] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            if c.get("src"):
                s.bind((c["src"], 0))
            s.connect((c["dst"], c["port"]))
            data = s.recv(16)
            return "open" if data == b"ok\n" else "unexpected %r" % data
        except socket.timeout:
            return "blocked"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return "error %s" % exc

def checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF

def icmp(c):
    v6 = ":" in c["dst"]
    ident = (os.getpid() + c["port"]) & 0xFFFF
    request, reply = (128, 129) if v6 else (8, 0)
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                       socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP) as s:
        s.bind((c["src"], 0))
        header = struct.pack("!BBHHH", request, 0, 0, ident, 1)
        payload = b"embedstack-firewall-test"
        if not v6:  # the kernel fills in the ICMPv6 checksum, not the ICMP one
            header = struct.pack("!BBHHH", request, 0, checksum(header + payload), ident, 1)
        packet = header + payload
        s.sendto(packet, (c["dst"], 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = s.recv(2048)
            except socket.timeout:
                break
            offset = 0 if v6 else (data[0] & 0x0F) * 4
            kind, _, _, got_ident, _ = struct.unpack("!BBHHH", data[offset:offset + 8])
            if kind == reply and got_ident == ident:
                return "open"
        return "blocked"

def run(c):
    return c["id"], (icmp(c) if c["kind"] == "icmp" else tcp(c))

with ThreadPoolExecutor(max_workers=len(checks)) as pool:
    print(json.dumps(dict(pool.map(run, checks))))
"""

PROBE_TIMEOUT = 1.5


def _need_root_and_tools() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install {package})"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


def _sh(*cmd: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)
    proc = subprocess.run(full, capture_output=True, text=True, check=False, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(full)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class Lab:
    server: str
    ok: str
    bad: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def load(self, rules: Path) -> None:
        _sh("nft", "-f", str(rules), netns=self.server)

    def probe(self, netns: str, checks: list[dict]) -> subprocess.Popen[str]:
        for index, check in enumerate(checks):
            check.setdefault("id", str(index))
        cmd = ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE, json.dumps(checks), str(PROBE_TIMEOUT)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run_probes(self, batches: dict[str, list[dict]]) -> dict[str, str]:
        """Run one probe batch per namespace concurrently; merged results keyed by check id."""
        running = [self.probe(netns, checks) for netns, checks in batches.items()]
        results: dict[str, str] = {}
        for proc in running:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, f"probe failed: {err}"
            results.update(json.loads(out))
        return results

    def start_listener(self, netns: str, ports: list[int]) -> None:
        cmd = ["ip", "netns", "exec", netns, sys.executable, "-c", LISTENER, *map(str, ports)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.processes.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "ready", (
            f"listener in {netns} did not start: {proc.stderr.read() if proc.stderr else ''}"
        )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The role's template rendered by ansible-playbook: the normal ruleset and one that bypassed preflight."""
    reason = _need_root_and_tools()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("firewall-render")
    out = {"main": workdir / "main.nft", "bypass": workdir / "bypass.nft"}
    plays = [
        {
            "name": "Render the firewall ruleset",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": ROLE_VARS,
            "tasks": [
                {
                    "name": "Run the firewall preflight checks and load the role defaults",
                    "ansible.builtin.include_role": {"name": "firewall", "tasks_from": "preflight.yml", "public": True},
                },
                render_task(TEMPLATE, out["main"]),
                # asks for 8001, which the preflight checks would have refused
                render_task(TEMPLATE, out["bypass"], {"firewall_client_tcp_ports": [*CLIENT_PORTS, 8001]}),
            ],
        }
    ]
    run_play(plays, workdir)
    return out


@pytest.fixture(scope="module")
def lab(rendered: dict[str, Path]) -> Iterator[Lab]:
    """Three namespaces joined by veth pairs, listeners running, the rendered ruleset loaded on the server."""
    tag = f"{os.getpid() % 100000}"
    lab = Lab(server=f"esfw-srv-{tag}", ok=f"esfw-ok-{tag}", bad=f"esfw-bad-{tag}")
    created: list[str] = []
    try:
        for ns in (lab.server, lab.ok, lab.bad):
            _sh("ip", "netns", "add", ns)
            created.append(ns)
            _sh("ip", "link", "set", "lo", "up", netns=ns)
        for side, client, subnet in (("a", lab.ok, 1), ("b", lab.bad, 2)):
            srv_if, cli_if = f"esfw{tag}{side}s", f"esfw{tag}{side}c"
            _sh(
                "ip",
                "link",
                "add",
                srv_if,
                "netns",
                lab.server,
                "type",
                "veth",
                "peer",
                "name",
                cli_if,
                "netns",
                client,
            )
            _sh("ip", "addr", "add", f"10.215.{subnet}.1/24", "dev", srv_if, netns=lab.server)
            _sh("ip", "-6", "addr", "add", f"fd15:215:{subnet}::1/64", "dev", srv_if, "nodad", netns=lab.server)
            _sh("ip", "link", "set", srv_if, "up", netns=lab.server)
            hosts = (2, 3) if client == lab.ok else (2,)
            for host in hosts:
                _sh("ip", "addr", "add", f"10.215.{subnet}.{host}/24", "dev", cli_if, netns=client)
                _sh("ip", "-6", "addr", "add", f"fd15:215:{subnet}::{host}/64", "dev", cli_if, "nodad", netns=client)
            _sh("ip", "link", "set", cli_if, "up", netns=client)
        # A table owned by someone else: loading our ruleset must leave it alone.
        _sh(
            "nft",
            "add table inet foreign; add chain inet foreign keep { type filter hook input priority 10; }",
            netns=lab.server,
        )
        lab.start_listener(lab.server, SERVER_PORTS)
        lab.start_listener(lab.ok, [9999])
        lab.load(rendered["main"])
        lab.load(rendered["main"])  # a reload replaces the table in place
        yield lab
    finally:
        for proc in lab.processes:
            if proc.stdin:
                proc.stdin.close()
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _tcp(src: str | None, dst: str, port: int) -> dict:
    return {"id": f"tcp {src or 'default'} -> {dst}:{port}", "kind": "tcp", "src": src, "dst": dst, "port": port}


def _icmp(src: str, dst: str) -> dict:
    return {"id": f"icmp {src} -> {dst}", "kind": "icmp", "src": src, "dst": dst, "port": 0}


@pytest.fixture(scope="module")
def probes(lab: Lab) -> dict[str, str]:
    """Every connection attempt of the scenario, run once, concurrently."""
    ok_checks, bad_checks, server_checks = [], [], []
    for src, dst in ADMIN + CLIENT_ONLY:
        ok_checks += [_tcp(src, dst, port) for port in SERVER_PORTS]
    ok_checks += [_icmp(src, dst) for src, dst in ADMIN]
    for src, dst in OUTSIDER:
        bad_checks += [_tcp(src, dst, port) for port in SERVER_PORTS]
    bad_checks += [_icmp(src, dst) for src, dst in OUTSIDER]
    for dst in ("127.0.0.1", "::1", "10.215.1.1"):
        server_checks += [_tcp(None, dst, port) for port in SERVER_PORTS]
    # Connections the server opens itself: the answers come back only through "ct state established".
    server_checks += [_tcp("10.215.1.1", "10.215.1.2", 9999), _tcp("fd15:215:1::1", "fd15:215:1::2", 9999)]
    return lab.run_probes({lab.ok: ok_checks, lab.bad: bad_checks, lab.server: server_checks})


def test_rendered_ruleset_passes_nft_check(rendered: dict[str, Path], lab: Lab) -> None:
    check = _sh("nft", "-c", "-f", str(rendered["main"]), netns=lab.server, check=False)
    assert check.returncode == 0, check.stderr
    text = rendered["main"].read_text()
    assert not [line for line in text.splitlines() if line.strip().startswith("flush")], "must not flush other tables"
    assert "table inet embedstack {" in text
    assert "policy drop;" in text


def test_loading_keeps_other_tables(lab: Lab) -> None:
    tables = _sh("nft", "list", "tables", netns=lab.server).stdout.split("\n")
    assert "table inet foreign" in tables
    assert "table inet embedstack" in tables
    assert tables.count("table inet embedstack") == 1


def test_admin_reaches_ssh_and_client_ports(probes: dict[str, str]) -> None:
    for src, dst in ADMIN:
        for port in (22, 8080, 6333):
            assert probes[f"tcp {src} -> {dst}:{port}"] == "open", (src, port)


def test_client_only_source_reaches_client_ports_but_not_ssh(probes: dict[str, str]) -> None:
    for src, dst in CLIENT_ONLY:
        assert probes[f"tcp {src} -> {dst}:8080"] == "open"
        assert probes[f"tcp {src} -> {dst}:6333"] == "open"
        assert probes[f"tcp {src} -> {dst}:22"] == "blocked"


def test_disallowed_source_is_blocked_everywhere(probes: dict[str, str]) -> None:
    for src, dst in OUTSIDER:
        for port in SERVER_PORTS:
            assert probes[f"tcp {src} -> {dst}:{port}"] == "blocked", (src, port)


def test_vllm_port_is_blocked_from_everyone(probes: dict[str, str]) -> None:
    for src, dst in ADMIN + CLIENT_ONLY + OUTSIDER:
        assert probes[f"tcp {src} -> {dst}:8001"] == "blocked", src


def test_loopback_reaches_every_port(probes: dict[str, str]) -> None:
    for dst in ("127.0.0.1", "::1", "10.215.1.1"):
        for port in SERVER_PORTS:
            assert probes[f"tcp default -> {dst}:{port}"] == "open", (dst, port)


def test_connections_opened_by_the_server_get_their_replies(probes: dict[str, str]) -> None:
    assert probes["tcp 10.215.1.1 -> 10.215.1.2:9999"] == "open"
    assert probes["tcp fd15:215:1::1 -> fd15:215:1::2:9999"] == "open"


def test_ping_is_answered_for_every_source(probes: dict[str, str]) -> None:
    for src, dst in ADMIN + OUTSIDER:
        assert probes[f"icmp {src} -> {dst}"] == "open", src


def test_never_open_port_stays_blocked_even_when_listed_as_client_port(rendered: dict[str, Path], lab: Lab) -> None:
    assert "elements = { 6333, 6334, 8001, 8080 }" in rendered["bypass"].read_text()
    lab.load(rendered["bypass"])
    try:
        results = lab.run_probes(
            {lab.ok: [_tcp("10.215.1.2", "10.215.1.1", 8001), _tcp("10.215.1.2", "10.215.1.1", 8080)]}
        )
    finally:
        lab.load(rendered["main"])
    assert results["tcp 10.215.1.2 -> 10.215.1.1:8001"] == "blocked"
    assert results["tcp 10.215.1.2 -> 10.215.1.1:8080"] == "open"


# Preflight: each case runs the role's preflight.yml inside block/rescue and records the outcome.
PREFLIGHT_CASES: dict[str, dict] = {
    "vllm_port_requested": {"vars": {"firewall_client_tcp_ports": [8080, 8001]}},
    "empty_admin_cidrs": {"vars": {"firewall_admin_cidrs": []}},
    "bad_admin_cidr": {"vars": {"firewall_admin_cidrs": ["10.215.1.300/24"]}},
    "bad_client_cidr": {"vars": {"firewall_client_cidrs": ["clients.example"]}},
    "ssh_from_outside_admin_cidrs": {"ssh": "203.0.113.9 50123 10.215.1.1 22"},
    "ssh_from_outside_admin_cidrs_allowed": {
        "ssh": "203.0.113.9 50123 10.215.1.1 22",
        "vars": {"firewall_allow_lockout": True},
    },
    "ssh_from_admin": {"ssh": "10.215.1.2 50123 10.215.1.1 22"},
    "ssh_from_admin_v6_mapped": {"ssh": "::ffff:10.215.1.2 50123 ::ffff:10.215.1.1 22"},
    "ssh_on_other_port": {"ssh": "10.215.1.2 50123 10.215.1.1 2222"},
    "no_ssh_session": {},
}


@pytest.fixture(scope="module")
def preflight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cases = {
        case: {
            "include": {"name": "firewall", "tasks_from": "preflight.yml"},
            "vars": {**ROLE_VARS, **spec.get("vars", {})},
            "environment": {"SSH_CONNECTION": spec["ssh"]} if "ssh" in spec else {},
        }
        for case, spec in PREFLIGHT_CASES.items()
    }
    outcomes, _ = run_cases(cases, tmp_path_factory.mktemp("firewall-preflight"))
    return outcomes


def test_preflight_refuses_to_open_the_vllm_port(preflight: dict[str, str]) -> None:
    assert_outcome(
        preflight, "vllm_port_requested", ("firewall_client_tcp_ports", "8001", "firewall_never_open_tcp_ports")
    )


def test_preflight_requires_admin_cidrs(preflight: dict[str, str]) -> None:
    assert_outcome(preflight, "empty_admin_cidrs", ("firewall_admin_cidrs is empty",))


def test_preflight_rejects_invalid_cidrs(preflight: dict[str, str]) -> None:
    assert_outcome(preflight, "bad_admin_cidr", ("firewall_admin_cidrs", "10.215.1.300/24"))
    assert_outcome(preflight, "bad_client_cidr", ("firewall_client_cidrs", "clients.example"))


def test_preflight_refuses_rules_that_would_cut_off_the_current_ssh_session(preflight: dict[str, str]) -> None:
    assert_outcome(
        preflight,
        "ssh_from_outside_admin_cidrs",
        ("Refusing to apply the firewall", "203.0.113.9", "firewall_admin_cidrs"),
    )
    assert_outcome(preflight, "ssh_on_other_port", ("firewall_ssh_port", "2222"))


def test_preflight_passes_for_admins_local_runs_and_explicit_lockout(preflight: dict[str, str]) -> None:
    for case in (
        "ssh_from_admin",
        "ssh_from_admin_v6_mapped",
        "no_ssh_session",
        "ssh_from_outside_admin_cidrs_allowed",
    ):
        assert_outcome(preflight, case, refused_with=())
