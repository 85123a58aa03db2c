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


def veth_ifindex(vmid: int) -> int:
    """The host end of the container's eth0; a replugged veth is a new interface with a new index."""
    return int(Path(f"/sys/class/net/veth{vmid}i0/ifindex").read_text())


def test_net0_without_hwaddr_gets_a_new_mac_and_replugs_a_running_container(
    standin: Node, api, running_ct: int, ssh_key: Path, tmp_path: Path
):
    """pve-container LXC/Config.pm parse_lxc_network draws a MAC for a net0 without hwaddr; LXC.pm update_net then
    deletes the running container's veth and hot-plugs a new one. The same hwaddr changes nothing."""
    path = f"/nodes/{standin.node}/lxc/{running_ct}/config"
    before = api.get(path).json()["data"]["net0"]
    mac, index = re.search(r"hwaddr=([0-9A-F:]+)", before).group(1), veth_ifindex(running_ct)

    # what community.proxmox 1.4.0 sends with a memory change: every option, net0 as the play wrote it
    resent = f"name=eth0,bridge=esprx0,ip={RUNNING_IP}/24,gw=10.216.0.1"
    assert api.put(path, data={"memory": 320, "net0": resent}).status_code == 200
    after = api.get(path).json()["data"]["net0"]
    new_mac = re.search(r"hwaddr=([0-9A-F:]+)", after).group(1)
    assert new_mac != mac and veth_ifindex(running_ct) != index, "no new MAC, or the veth was not replugged"
    inside = ssh(standin, running_ct, RUNNING_IP, ssh_key, "cat /sys/class/net/eth0/address", tmp_path)
    assert inside.returncode == 0 and inside.stdout.strip().upper() == new_mac, inside

    # with its hwaddr the same net0 is no change: no new MAC, no replug
    index = veth_ifindex(running_ct)
    assert api.put(path, data={"memory": 256, "net0": after}).status_code == 200
    assert api.get(path).json()["data"]["net0"] == after and veth_ifindex(running_ct) == index


def test_an_unprivileged_container_has_pves_id_map_and_devn_nodes_the_service_user_opens(
    standin: Node, api, ssh_key: Path, tmp_path: Path
):
    """PVE runs `unprivileged: 1` containers with `lxc.idmap = u|g 0 100000 65536` (pve-container src/PVE/LXC.pm
    parse_id_maps, update_lxc_config) and makes each devN node root:root 0660 unless gid=/uid=/mode= say otherwise,
    chowned through that map (src/PVE/LXC.pm create_passthrough_device_node, from src/lxc-pve-prestart-hook).
    The stand-in GPU is /dev/null's device number under nvidia names. A service like vllm.service (User=,
    SupplementaryGroups=video) opens the node that has gid=44, and not the one PVE left to root."""
    vmid, ip = 212, "10.216.0.22"
    conf_file = Path(standin.lxc_path).parent / f"pve/nodes/{standin.node}/lxc/{vmid}.conf"
    path = f"/nodes/{standin.node}/lxc/{vmid}"
    try:
        created = api.post(f"/nodes/{standin.node}/lxc", data=ct_params(vmid, ip, ssh_key))
        assert standin.wait_task(api, created.json()["data"])["exitstatus"] == "OK"
        # devN cannot go through a token (root@pam only): pve_gpu_passthrough writes the file on the node, like this
        conf_file.write_text("dev0: /dev/nvidia0,gid=44\ndev1: /dev/nvidiactl\n" + conf_file.read_text())
        started = api.post(f"{path}/status/start")
        assert standin.wait_task(api, started.json()["data"])["exitstatus"] == "OK"
        wait_for_ssh(standin, vmid, ip, ssh_key, tmp_path)

        def inside(command: str) -> subprocess.CompletedProcess[str]:
            return ssh(standin, vmid, ip, ssh_key, command, tmp_path)

        assert inside("cat /proc/self/uid_map").stdout.split() == ["0", "100000", "65536"]
        nodes = inside("stat -c '%n %u:%g %a %t:%T' /dev/nvidia0 /dev/nvidiactl").stdout.splitlines()
        assert nodes == ["/dev/nvidia0 0:44 660 1:3", "/dev/nvidiactl 0:0 660 1:3"], nodes
        rootfs = Path(standin.lxc_path, str(vmid), "rootfs")
        assert (rootfs.stat().st_uid, (rootfs / "etc/passwd").stat().st_gid) == (100000, 100000)
        host_node = Path(standin.lxc_path, str(vmid), "passthrough/dev/nvidia0").stat()
        assert (host_node.st_uid, host_node.st_gid) == (100000, 100044), "not chowned through the id map"

        def as_service(node: str, groups: str = "video") -> subprocess.CompletedProcess[str]:
            unit = f"-p User=nobody -p SupplementaryGroups={groups}" if groups else "-p User=nobody"
            return inside(f"systemd-run --wait --pipe --quiet {unit} sh -c 'exec 3<>{node} && echo opened'")

        opened = as_service("/dev/nvidia0")
        assert opened.stdout.strip() == "opened", opened
        for refused in (as_service("/dev/nvidiactl"), as_service("/dev/nvidia0", groups="")):
            assert refused.returncode != 0 and "Permission denied" in refused.stdout + refused.stderr, refused

        # a devN node missing on the host stops the start, with the prestart hook's message
        stopped = api.post(f"{path}/status/stop")
        assert standin.wait_task(api, stopped.json()["data"])["exitstatus"] == "OK"
        conf_file.write_text("dev2: /dev/nvidia1\n" + conf_file.read_text())
        refused = api.post(f"{path}/status/start")
        status = standin.wait_task(api, refused.json()["data"])
        assert status["exitstatus"] == "Could not get mode or device ID of /dev/nvidia1", status
    finally:
        gone = api.delete(path, params={"force": 1, "purge": 1})
        if gone.status_code == 200:
            standin.wait_task(api, gone.json()["data"])


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
