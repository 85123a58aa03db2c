"""Helpers for the tests that talk to the Proxmox VE API stand-in (tests/standins/pve/)."""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the stand-in runs as its own process: `python -m standins.pve` with tests/ as the working directory
TESTS = HERE.parent
STANDIN = [sys.executable, "-m", "standins.pve"]
BASE_ROOTFS = Path("/var/cache/embedstack/bookworm-base")
TOKEN_ID = "root@pam!embedstack"
TOKEN_SECRET = "4c1b2d8e-5f3a-4e7b-9c0d-standin-test"  # a test-only secret for a loopback server
TEMPLATE = "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst"
# Guests that are not ours: a container and a VM that exist before any test
FOREIGN_CT, FOREIGN_VM = 150, 151
# the nodes pve_gpu_passthrough passes by default
STANDIN_GPU_NODES = (
    "nvidia0",
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
)  # <dev_root>/dev/<name>, with /dev/null's device number


def missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "needs root (real LXC containers and a bridge)"
    if not shutil.which("lxc-start"):
        return "needs LXC"
    if not (BASE_ROOTFS / "etc/debian_version").exists():
        return f"needs the cached Debian 12 rootfs at {BASE_ROOTFS} (make lab builds it)"
    try:
        import cryptography  # noqa: F401 - the stand-in makes its certificate with it
        import httpx  # noqa: F401
    except ImportError as e:
        return f"needs {e.name}"
    return None


@dataclass
class Node:
    """A running stand-in: where it listens and how to reach it."""

    url: str
    host: str
    port: int
    node: str
    ca_file: str
    lxc_path: str
    request_log: str
    settings_file: Path

    def client(self, token: str | None = f"{TOKEN_ID}={TOKEN_SECRET}", **kwargs):
        import httpx

        headers = {"Authorization": f"PVEAPIToken={token}"} if token else {}
        tls = ssl.create_default_context(cafile=self.ca_file)  # trust only the stand-in's own certificate
        return httpx.Client(base_url=self.url, verify=tls, headers=headers, timeout=30, **kwargs)

    def wait_task(self, client, upid: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = client.get(f"/nodes/{self.node}/tasks/{upid}/status").json()["data"]
            if status["status"] == "stopped":
                return status
            assert time.monotonic() < deadline, f"task {upid} still running after {timeout} s"
            time.sleep(0.3)

    def lxc_ls(self, running: bool = False) -> list[str]:
        cmd = ["lxc-ls", "-P", self.lxc_path, *(["--running"] if running else [])]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()

    def requests(self) -> list[dict]:
        log = Path(self.request_log)
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def cleanup(settings_file: Path) -> None:
    subprocess.run([*STANDIN, "cleanup", "--config", str(settings_file)], cwd=TESTS, check=True, timeout=180)


def ct_params(vmid: int, ip: str, ssh_key: Path, **extra) -> dict:
    """What the provisioning play will ask for (issue 4, section 1), as community.proxmox sends it."""
    return {
        "vmid": vmid,
        "ostemplate": TEMPLATE,
        "hostname": f"es-pve-{vmid}",
        "cores": 1,
        "memory": 256,
        "swap": 128,
        "rootfs": "local-lvm:2",
        "net0": f"name=eth0,bridge=esprx0,ip={ip}/24,gw=10.216.0.1",
        "ssh-public-keys": ssh_key.with_suffix(".pub").read_text(),
        "tags": "embedstack",
        "onboot": 1,
        "unprivileged": 1,
        "features": "nesting=1",
        "cmode": "tty",
        "storage": "local",
        "force": 0,
        **extra,
    }


def ssh(node: Node, vmid: int, ip: str, key: Path, command: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """Log in as root with the key from ssh-public-keys, trusting only the host key in the rootfs."""
    host_key = Path(node.lxc_path, str(vmid), "rootfs/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]
    known_hosts = tmp / f"known_hosts_{vmid}"
    known_hosts.write_text(f"{ip} {' '.join(host_key)}\n")
    return subprocess.run(
        [
            "ssh",
            "-i",
            str(key),
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            f"root@{ip}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_for_ssh(node: Node, vmid: int, ip: str, key: Path, tmp: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (proc := ssh(node, vmid, ip, key, "true", tmp)).returncode != 0:
        assert time.monotonic() < deadline, f"no SSH login to {ip}: {proc.stderr}"
        time.sleep(1)


def cgroup_memory_limit(node: Node, vmid: int) -> int:
    key = "memory.max" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "memory.limit_in_bytes"
    out = subprocess.run(
        ["lxc-cgroup", "-P", node.lxc_path, "-n", str(vmid), key], capture_output=True, text=True, check=True
    ).stdout
    return int(re.sub(r"\s", "", out))
