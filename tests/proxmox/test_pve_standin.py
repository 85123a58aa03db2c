"""The Proxmox VE API stand-in answers like PVE and creates real LXC containers.

Real HTTPS clients (httpx, verifying the stand-in's own certificate) against the stand-in process;
the containers are checked with lxc-ls, lxc-cgroup and an SSH login. Needs root and the cached
Debian 12 rootfs; run with `.venv/bin/pytest tests/proxmox`.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standin_node import (
    FOREIGN_CT,
    FOREIGN_VM,
    TEMPLATE,
    TOKEN_ID,
    Node,
    cgroup_memory_limit,
    ct_params,
    ssh,
    wait_for_ssh,
)

# PVE::UPID::decode's pattern
UPID = re.compile(
    r"UPID:(?P<node>[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):(?P<pid>[0-9A-F]{8}):(?P<pstart>[0-9A-F]{8,9}):"
    r"(?P<starttime>[0-9A-F]{8}):(?P<type>[^:\s/]+):(?P<id>[^:\s/]*):(?P<user>[^:\s/]+):"
)
RUNNING_CT, RUNNING_IP = 210, "10.216.0.21"


@pytest.fixture(scope="module")
def api(standin: Node) -> Iterator:
    with standin.client() as client:
        yield client


@pytest.fixture(scope="module")
def running_ct(standin: Node, api, ssh_key: Path, tmp_path_factory) -> Iterator[int]:
    """One container created and started through the API, as the provisioning play will do it."""
    try:
        created = api.post(f"/nodes/{standin.node}/lxc", data=ct_params(RUNNING_CT, RUNNING_IP, ssh_key))
        assert created.status_code == 200, created.text
        assert standin.wait_task(api, created.json()["data"])["exitstatus"] == "OK"
        started = api.post(f"/nodes/{standin.node}/lxc/{RUNNING_CT}/status/start")
        assert standin.wait_task(api, started.json()["data"])["exitstatus"] == "OK"
        wait_for_ssh(standin, RUNNING_CT, RUNNING_IP, ssh_key, tmp_path_factory.mktemp("known-hosts"))
        yield RUNNING_CT
    finally:
        # the stand-in's own teardown removes it too; deleting here keeps the other tests independent
        gone = api.delete(f"/nodes/{standin.node}/lxc/{RUNNING_CT}", params={"force": 1})
        if gone.status_code == 200:
            standin.wait_task(api, gone.json()["data"])


def test_version_is_served_over_https_on_loopback_only(standin: Node, api):
    answer = api.get("/version")

    assert answer.status_code == 200
    assert answer.headers["server"] == "pve-api-daemon/3.0"
    assert set(answer.json()["data"]) == {"version", "release", "repoid"}
    assert standin.host == "127.0.0.1"
    # the node's bridge address is on this machine, but nothing listens there
    with pytest.raises(OSError), socket.create_connection(("10.216.0.1", standin.port), timeout=3):
        pass


def test_a_wrong_token_is_refused_like_pveproxy_does(standin: Node):
    for token, reason in [
        (f"{TOKEN_ID}=not-the-secret", "Authentication failed!"),
        ("root@pam!other=whatever", "Authentication failed!"),
        (None, "No ticket"),
    ]:
        with standin.client(token=token) as client:
            started = time.monotonic()
            answer = client.get("/version")
            elapsed = time.monotonic() - started
        assert (answer.status_code, answer.reason_phrase, answer.content) == (401, reason, b"")
        assert elapsed >= 2.9, "pveproxy delays every refused login by 3 s"


def test_unknown_parameters_and_bad_values_are_refused_with_pves_messages(standin: Node, api):
    answer = api.post(
        f"/nodes/{standin.node}/lxc",
        data={
            "vmid": 99,
            "ostemplate": TEMPLATE,
            "ip_address": "10.216.0.5",  # what community.proxmox sends for its ip_address option
            "memory": "2G",
            "onboot": "true",
            "cmode": "default",  # what community.proxmox 2.0.0 sends on update
            "net0": "name=eth0,bridge=esprx0,ip=10.216.0.300/24",
            "tags": "embedstack;not!ok",
        },
    )

    assert (answer.status_code, answer.reason_phrase) == (400, "Parameter verification failed.")
    assert answer.json()["errors"] == {
        "vmid": "invalid format - value does not look like a valid VM ID\n",
        "ip_address": "property is not defined in schema and the schema does not allow additional properties",
        "memory": "type check ('integer') failed - got '2G'",
        "onboot": "type check ('boolean') failed - got 'true'",
        "cmode": "value 'default' does not have a value in the enumeration 'shell, console, tty'",
        "net0": "invalid format - format error\nip: invalid format - value does not look like a valid ipv4 network"
        " configuration\n\n",
        "tags": "invalid format - invalid characters in tag\n",
    }
    assert not Path(standin.lxc_path, "99").exists()


def test_an_unknown_node_fails_like_pves_proxy_step(standin: Node, api):
    for method, path in [("GET", "/nodes/pve2/lxc/210/config"), ("POST", "/nodes/pve2/lxc")]:
        answer = api.request(method, path, data={"vmid": 300} if method == "POST" else None)

        assert answer.status_code == 500
        assert answer.reason_phrase == (
            "hostname lookup 'pve2' failed - failed to get address info for: pve2: Name or service not known"
        )


def test_a_missing_template_fails_the_create_task_and_leaves_nothing(standin: Node, api, ssh_key: Path):
    missing = "local:vztmpl/debian-11-standard_11.7-1_amd64.tar.zst"
    listed = [c["volid"] for c in api.get(f"/nodes/{standin.node}/storage/local/content").json()["data"]]
    assert missing not in listed

    answer = api.post(f"/nodes/{standin.node}/lxc", data=ct_params(220, "10.216.0.22", ssh_key, ostemplate=missing))
    task = standin.wait_task(api, answer.json()["data"])

    assert task["exitstatus"] == (
        "unable to create CT 220 - can't find file '/var/lib/vz/template/cache/debian-11-standard_11.7-1_amd64.tar.zst'"
    )
    assert api.get(f"/nodes/{standin.node}/lxc/220/config").status_code == 500
    assert "220" not in standin.lxc_ls()
    # pveam knows no such appliance either
    download = api.post(f"/nodes/{standin.node}/aplinfo", data={"storage": "local", "template": "nope.tar.zst"})
    assert download.json()["errors"] == {"template": "no such template"}


def test_a_used_vmid_is_refused_and_the_other_guest_is_untouched(standin: Node, api, ssh_key: Path):
    before = api.get(f"/nodes/{standin.node}/lxc/{FOREIGN_CT}/config").json()["data"]

    for vmid, kind in [(FOREIGN_CT, "CT"), (FOREIGN_VM, "VM")]:
        answer = api.post(f"/nodes/{standin.node}/lxc", data=ct_params(vmid, "10.216.0.23", ssh_key))
        assert (answer.status_code, answer.reason_phrase) == (500, f"{kind} {vmid} already exists on node 'pve'")

    assert api.get(f"/nodes/{standin.node}/lxc/{FOREIGN_CT}/config").json()["data"] == before
    resources = {r["vmid"]: r for r in api.get("/cluster/resources", params={"type": "vm"}).json()["data"]}
    assert resources[FOREIGN_CT]["tags"] == "other"
    assert resources[FOREIGN_VM]["type"] == "qemu"


def test_the_created_container_runs_in_lxc_and_takes_the_ssh_key(
    standin: Node, api, running_ct: int, ssh_key: Path, tmp_path: Path
):
    assert str(running_ct) in standin.lxc_ls(running=True)
    status = api.get(f"/nodes/{standin.node}/lxc/{running_ct}/status/current").json()["data"]
    assert (status["status"], status["vmid"], status["name"]) == ("running", running_ct, f"es-pve-{running_ct}")
    resources = api.get("/cluster/resources", params={"type": "vm"}).json()["data"]
    ours = next(r for r in resources if r["vmid"] == running_ct)
    assert (ours["id"], ours["type"], ours["status"], ours["tags"]) == (
        f"lxc/{running_ct}",
        "lxc",
        "running",
        "embedstack",
    )

    login = ssh(standin, running_ct, RUNNING_IP, ssh_key, "hostname; ip -4 -o addr show dev eth0", tmp_path)

    assert login.returncode == 0, login.stderr
    assert login.stdout.splitlines()[0] == f"es-pve-{running_ct}"
    assert f"inet {RUNNING_IP}/24" in login.stdout
    assert cgroup_memory_limit(standin, running_ct) == 256 * 1024 * 1024


def test_the_config_round_trips_like_pve_normalises_it(standin: Node, api, running_ct: int):
    path = f"/nodes/{standin.node}/lxc/{running_ct}/config"
    conf = api.get(path).json()["data"]
    assert {k: conf[k] for k in ("cores", "memory", "swap", "onboot", "unprivileged", "arch", "ostype")} == {
        "cores": 1,
        "memory": 256,
        "swap": 128,
        "onboot": 1,
        "unprivileged": 1,
        "arch": "amd64",
        "ostype": "debian",
    }
    assert conf["rootfs"] == f"local-lvm:vm-{running_ct}-disk-0,size=2G"
    assert re.fullmatch(
        r"name=eth0,bridge=esprx0,gw=10\.216\.0\.1,hwaddr=BC:24:11(:[0-9A-F]{2}){3},ip=10\.216\.0\.21/24,type=veth",
        conf["net0"],
    )
    assert (conf["features"], conf["cmode"], conf["tags"]) == ("nesting=1", "tty", "embedstack")

    # community.proxmox's update: every option again, plus vmid and node in the body
    update = {"vmid": running_ct, "node": standin.node, "memory": 384, "tags": ["Embedstack", "qdrant"]}
    assert api.put(path, data=update).json() == {"data": None}
    changed = api.get(path).json()["data"]
    assert (changed["memory"], changed["tags"]) == (384, "embedstack;qdrant")
    assert changed["digest"] != conf["digest"]

    stale = api.put(path, data={"description": "x", "digest": conf["digest"]})
    read_only = api.put(path, data={"unprivileged": 0})
    bad_cmode = api.put(path, data={"cmode": "default"})
    assert stale.reason_phrase == "detected modified configuration - file changed by other user? Try again."
    assert read_only.reason_phrase == "unable to modify read-only option: 'unprivileged'"
    assert bad_cmode.json()["errors"] == {
        "cmode": "value 'default' does not have a value in the enumeration 'shell, console, tty'"
    }
    assert api.get(path).json()["data"] == changed


def test_upids_and_task_logs_have_pves_shape(standin: Node, api):
    answer = api.post(
        f"/nodes/{standin.node}/aplinfo",
        data={"storage": "local", "template": "debian-13-standard_13.1-2_amd64.tar.zst"},
    )
    upid = answer.json()["data"]

    m = UPID.fullmatch(upid)
    assert m, upid
    assert (m["node"], m["type"], m["user"]) == (standin.node, "download", TOKEN_ID)
    status = standin.wait_task(api, upid)
    assert {k: status[k] for k in ("user", "tokenid", "type", "exitstatus", "upid")} == {
        "user": "root@pam",
        "tokenid": "embedstack",
        "type": "download",
        "exitstatus": "OK",
        "upid": upid,
    }
    assert status["pid"] == int(m["pid"], 16) and status["starttime"] == int(m["starttime"], 16)
    log = api.get(f"/nodes/{standin.node}/tasks/{upid}/log").json()
    assert log["data"][-1] == {"n": log["total"], "t": "TASK OK"}
    listed = [c["volid"] for c in api.get(f"/nodes/{standin.node}/storage/local/content").json()["data"]]
    assert "local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst" in listed


def test_shutdown_and_delete_remove_the_container(standin: Node, api, ssh_key: Path):
    vmid = 230
    created = api.post(f"/nodes/{standin.node}/lxc", data=ct_params(vmid, "10.216.0.23", ssh_key))
    assert standin.wait_task(api, created.json()["data"])["exitstatus"] == "OK"
    started = api.post(f"/nodes/{standin.node}/lxc/{vmid}/status/start")
    assert standin.wait_task(api, started.json()["data"])["exitstatus"] == "OK"

    refused = api.delete(f"/nodes/{standin.node}/lxc/{vmid}")
    assert (refused.status_code, refused.reason_phrase) == (500, f"unable to destroy CT {vmid} - container is running")

    shutdown = api.post(f"/nodes/{standin.node}/lxc/{vmid}/status/shutdown", data={"timeout": 30})
    assert standin.wait_task(api, shutdown.json()["data"])["exitstatus"] == "OK"
    assert api.get(f"/nodes/{standin.node}/lxc/{vmid}/status/current").json()["data"]["status"] == "stopped"
    deleted = api.delete(f"/nodes/{standin.node}/lxc/{vmid}", params={"purge": 1})
    assert standin.wait_task(api, deleted.json()["data"])["exitstatus"] == "OK"

    assert str(vmid) not in standin.lxc_ls()
    assert not Path(standin.lxc_path, str(vmid)).exists()
    assert api.get(f"/nodes/{standin.node}/lxc/{vmid}/config").reason_phrase == (
        f"Configuration file 'nodes/pve/lxc/{vmid}.conf' does not exist"
    )
    volumes = [c["volid"] for c in api.get(f"/nodes/{standin.node}/storage/local-lvm/content").json()["data"]]
    assert f"local-lvm:vm-{vmid}-disk-0" not in volumes
    assert subprocess.run(["ip", "link", "show", f"veth{vmid}i0"], capture_output=True).returncode != 0
