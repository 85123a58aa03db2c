"""community.proxmox's LXC module works against the stand-in: the acceptance test of the stand-in.

Runs tests/proxmox/lxc_module.yml with the repository's ansible-playbook. The module needs proxmoxer
and requests in the Python that runs it: the venv's own, or the interpreter named by
EMBEDSTACK_PROXMOXER_PYTHON (e.g. a scratch venv with `pip install proxmoxer requests`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from standin_node import TEMPLATE, TOKEN_ID, TOKEN_SECRET, Node

HERE = Path(__file__).resolve().parent
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def proxmoxer_python() -> str | None:
    for python in (os.environ.get("EMBEDSTACK_PROXMOXER_PYTHON"), sys.executable):
        if python and subprocess.run([python, "-c", "import proxmoxer, requests"], capture_output=True).returncode == 0:
            return python
    return None


PYTHON = proxmoxer_python()
pytestmark = pytest.mark.skipif(
    PYTHON is None, reason="community.proxmox needs proxmoxer and requests (or set EMBEDSTACK_PROXMOXER_PYTHON)"
)


def test_the_lxc_module_creates_starts_and_removes_a_container(standin: Node, ssh_key: Path, tmp_path: Path):
    user, token_name = TOKEN_ID.split("!")
    variables = {
        "ansible_python_interpreter": PYTHON,
        "pve_api_host": standin.host,
        "pve_api_port": standin.port,
        "pve_api_user": user,
        "pve_api_token_id": token_name,
        "pve_api_token_secret": TOKEN_SECRET,
        "pve_node": standin.node,
        "pve_ca_file": standin.ca_file,
        "pve_vmid": 240,
        "pve_hostname": "es-pve-module",
        "pve_ip": "10.216.0.24",
        "pve_pubkey": ssh_key.with_suffix(".pub").read_text().strip(),
        "pve_template": TEMPLATE,
    }
    varfile = tmp_path / "vars.json"
    varfile.write_text(json.dumps(variables))
    seen_before = len(standin.requests())

    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(HERE / "lxc_module.yml"), "-e", f"@{varfile}"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0"},
        check=False,
    )

    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "ok=12   changed=4    unreachable=0    failed=0" in proc.stdout
    calls = {(r["method"], r["path"].removeprefix("/api2/json")) for r in standin.requests()[seen_before:]}
    assert {
        ("GET", "/version"),
        ("GET", "/cluster/resources"),
        ("GET", f"/nodes/{standin.node}/storage/local/content"),
        ("POST", f"/nodes/{standin.node}/lxc"),
        ("POST", f"/nodes/{standin.node}/lxc/240/status/start"),
        ("GET", f"/nodes/{standin.node}/lxc/240/status/current"),
        ("POST", f"/nodes/{standin.node}/lxc/240/status/shutdown"),
        ("DELETE", f"/nodes/{standin.node}/lxc/240"),
    } <= calls
    assert "240" not in standin.lxc_ls()
