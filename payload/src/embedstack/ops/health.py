"""`embedstack health -i INVENTORY`: check every host of a deployment over OpenSSH."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from embedstack.ops.inventory import (
    Host,
    first_key,
    gateway_model,
    load_inventory,
    qdrant_not_running_record,
    truthy,
)

SSH_TIMEOUT = 10


# Exit status of `embedstack health` when the only checks not ok are components the deployment recorded as left out
# (a Qdrant host whose release could not be fetched): not healthy, and not a fault `make lab` should stop on.
EXIT_NOT_RUNNING = 3


@dataclass
class Check:
    host: str
    check: str
    ok: bool
    detail: str
    # Not ok because the role left the component out and recorded why on the host (not a failure of what runs).
    missing: bool = False


def params_for(host: Host) -> dict[str, Any]:
    units = ["nftables.service"]
    params: dict[str, Any] = {"gpu": host.gpu, "vllm": host.runs_vllm, "controller_time": time.time()}
    if "embedding" in host.groups:
        units.append("embedstack-gateway.service")
        if host.runs_vllm:
            units.append("vllm.service")
        model, dimension = gateway_model(host)
        params["gateway"] = {
            "port": host.gateway_port,
            "model": model,
            "dimension": dimension,
            "api_key": first_key(host.vars.get("embedding_service_api_keys")),
        }
        if host.gateway_tls:  # the certificate is where the embedding_service role writes it
            config_dir = host.vars.get("embedding_service_config_dir", "/etc/embedstack")
            params["gateway"]["tls"] = {"cert": f"{config_dir}/tls-cert.pem", "name": host.address}
    if "qdrant" in host.groups:
        # Whether Qdrant is installed is read on the host: the role records there why it is not (remote_checks.py).
        params["qdrant"] = {
            "port": host.qdrant_port,
            "api_key": str(host.vars.get("qdrant_api_key", "")),
            "not_running_record": qdrant_not_running_record(host),
        }
        if truthy(host.vars.get("qdrant_enable_tls", False)):
            params["qdrant"]["tls"] = {"cert": str(host.vars.get("qdrant_tls_cert", "")), "name": host.address}
    params["units"] = units
    params["min_free_gib"] = float(host.vars.get("embedstack_health_min_free_gib", 2))
    return params


def ssh_target(host: Host) -> list[str]:
    """`ssh [options] user@host` with the inventory's connection settings, ready for a remote command."""
    v = host.vars
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT}"]
    if v.get("ansible_port"):
        cmd += ["-p", str(v["ansible_port"])]
    key = v.get("ansible_ssh_private_key_file") or v.get("ansible_private_key_file")
    if key:
        cmd += ["-i", str(key)]
    for extra in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        cmd += shlex.split(str(v.get(extra, "")))
    user = v.get("ansible_user")
    cmd.append(f"{user}@{host.address}" if user else host.address)
    return cmd


def ssh_command(host: Host) -> list[str]:
    # Only root can read every unit's state and the nftables ruleset.
    root = host.vars.get("ansible_user") in (None, "root")
    return ssh_target(host) + (["python3", "-"] if root else ["sudo", "-n", "python3", "-"])


def check_host(host: Host, params: dict[str, Any] | None = None) -> list[Check]:
    """Runs remote_checks.py on the host with params (all of the host's checks by default)."""
    params = params_for(host) if params is None else params
    script = f"PARAMS = {params!r}\n" + resources.files("embedstack.ops").joinpath("remote_checks.py").read_text()
    try:
        proc = subprocess.run(
            ssh_command(host), input=script, capture_output=True, text=True, timeout=SSH_TIMEOUT + 90, check=False
        )
    except subprocess.TimeoutExpired:
        return [Check(host.name, "ssh", False, "unreachable: no answer within the timeout")]
    if proc.returncode == 255:  # OpenSSH's own failure: the host was never reached
        return [Check(host.name, "ssh", False, "unreachable: " + (proc.stderr.strip().splitlines() or ["?"])[-1])]
    try:
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return [Check(host.name, "remote checks", False, f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}")]
    return [Check(host.name, "ssh", True, "reachable")] + [Check(host.name, **row) for row in rows]


def run_health(inventory: list[str], as_json: bool) -> int:
    hosts = [h for h in load_inventory(inventory) if h.groups & {"embedding", "qdrant"}]
    if not hosts:
        print(f"embedstack health: inventory {', '.join(inventory)} has no hosts in groups 'embedding' or 'qdrant'")
        return 2
    with ThreadPoolExecutor(max(1, min(8, len(hosts)))) as pool:
        checks = [c for per_host in pool.map(check_host, hosts) for c in per_host]
    failed = [c for c in checks if not c.ok and not c.missing]
    missing = [c for c in checks if c.missing]
    if as_json:
        print(json.dumps({"healthy": not failed and not missing, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(render_table(checks))
        passed = len(checks) - len(failed) - len(missing)
        verdict = "UNHEALTHY" if failed else "NOT COMPLETE" if missing else "HEALTHY"
        print(f"\n{verdict}: {passed} passed, {len(failed)} failed, {len(missing)} not running")
        for c in failed:
            print(f"  FAIL {c.host}: {c.check}: {c.detail}")
        for c in missing:
            print(f"  NOT RUNNING {c.host}: {c.check} is {c.detail}")
    return 1 if failed else EXIT_NOT_RUNNING if missing else 0


def status_word(check: Check) -> str:
    return "ok" if check.ok else "NOT RUNNING" if check.missing else "FAIL"


def render_table(checks: list[Check]) -> str:
    rows = [("HOST", "CHECK", "STATUS", "DETAIL")] + [(c.host, c.check, status_word(c), c.detail) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)
