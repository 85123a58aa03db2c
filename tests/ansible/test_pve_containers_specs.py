"""The pve_containers role turns inventory hosts into container specs and refuses vmids that are not
embedstack's. These are its filters: a bad inventory must fail naming the variable, the host and what
is allowed, before the play reaches the Proxmox VE API.

Each call runs in a child interpreter: importing ansible patches sys.intern process-wide, which
torch's compiler then trips over in the payload tests that share this pytest process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parents[2] / "roles/pve_containers/filter_plugins/pve_containers.py"
CALL = f"""
import importlib.util, json, sys
from ansible.errors import AnsibleFilterError
spec = importlib.util.spec_from_file_location("pve_containers_filters", {str(PLUGIN)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
name, args = json.load(sys.stdin)
try:
    print(json.dumps({{"result": getattr(module, name)(*args)}}))
except AnsibleFilterError as e:
    print(json.dumps({{"error": str(e)}}))
"""


class AnsibleFilterError(Exception):
    """What the filter raised in the child interpreter."""


def call(name: str, *args):
    proc = subprocess.run(
        [sys.executable, "-c", CALL], input=json.dumps([name, args]), capture_output=True, text=True, check=True
    )
    answer = json.loads(proc.stdout)
    if "error" in answer:
        raise AnsibleFilterError(answer["error"])
    return answer["result"]


DEFAULTS = {
    "vmid": "",
    "cores": 2,
    "memory": 2048,
    "swap": 512,
    "disk_size": 16,
    "storage": "local-lvm",
    "bridge": "vmbr0",
    "ip": "static",
    "prefix_length": 24,
    "gateway": "192.168.1.1",
    "nameserver": "",
    "unprivileged": True,
    "nesting": True,
    "onboot": True,
}


def specs(**hosts):
    return call("pve_containers_specs", list(hosts), hosts, DEFAULTS)


def test_a_container_takes_its_own_settings_over_the_nodes():
    (embed,) = specs(
        **{"es-embed": {"ansible_host": "192.168.1.50", "pve_containers_vmid": 250, "pve_containers_memory": "16384"}}
    )
    assert embed["vmid"] == 250 and embed["memory"] == 16384 and embed["cores"] == 2
    assert embed["net0"] == "name=eth0,bridge=vmbr0,ip=192.168.1.50/24,gw=192.168.1.1"
    assert embed["gpu"] is False


@pytest.mark.parametrize(
    ("hostvars", "message"),
    [
        ({"ansible_host": "192.168.1.50"}, "pve_containers_vmid is not set for es-embed"),
        ({"ansible_host": "192.168.1.50", "pve_containers_vmid": 99}, "must be from 100 to 999999999, got 99"),
        (
            {"ansible_host": "es-embed.lan", "pve_containers_vmid": 250},
            "ansible_host of es-embed must be an IPv4 address with pve_containers_ip: static",
        ),
        (
            {"ansible_host": "192.168.1.50", "pve_containers_vmid": 250, "pve_containers_ip": "auto"},
            "pve_containers_ip of es-embed must be one of: static, dhcp (got 'auto')",
        ),
        (
            {"ansible_host": "192.168.1.50", "pve_containers_vmid": 250, "pve_containers_gateway": "10.0.0.1"},
            "pve_containers_gateway 10.0.0.1 of es-embed must be another address inside 192.168.1.0/24",
        ),
        (
            {"ansible_host": "192.168.1.50", "pve_containers_vmid": 250, "pve_containers_cores": "two"},
            "pve_containers_cores of es-embed must be an integer from 1 to 8192, got 'two'",
        ),
    ],
)
def test_bad_settings_name_the_variable_and_what_is_allowed(hostvars, message):
    with pytest.raises(AnsibleFilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        specs(**{"es-embed": hostvars})


def test_two_containers_cannot_share_a_vmid():
    with pytest.raises(AnsibleFilterError, match="two containers share pve_containers_vmid 250"):
        specs(
            **{
                "es-embed": {"ansible_host": "192.168.1.50", "pve_containers_vmid": 250},
                "es-qdrant": {"ansible_host": "192.168.1.51", "pve_containers_vmid": 250},
            }
        )


def test_dhcp_needs_no_address():
    (embed,) = specs(
        **{"es-embed": {"ansible_host": "es-embed.lan", "pve_containers_vmid": 250, "pve_containers_ip": "dhcp"}}
    )
    assert embed["net0"] == "name=eth0,bridge=vmbr0,ip=dhcp"


def guest(vmid, name, tags="embedstack", kind="lxc", node="pve", status="running"):
    return {"vmid": vmid, "name": name, "tags": tags, "type": kind, "node": node, "status": status}


def test_only_our_tagged_container_with_our_name_counts_as_ours():
    ours = specs(
        **{
            "es-embed": {"ansible_host": "192.168.1.50", "pve_containers_vmid": 250},
            "es-qdrant": {"ansible_host": "192.168.1.51", "pve_containers_vmid": 251},
        }
    )
    match = call("pve_containers_match", ours, [guest(250, "es-embed", "backup;embedstack")], "pve", "embedstack")
    assert match["problems"] == []
    assert [(c["hostname"], c["exists"], c["running"]) for c in match["containers"]] == [
        ("es-embed", True, True),
        ("es-qdrant", False, False),
    ]


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        (
            [guest(250, "es-embed", tags="")],
            "vmid 250 is already used by container 'es-embed' on node 'pve' (tags: none)",
        ),
        ([guest(250, "web", tags="embedstack")], "vmid 250 is already used by container 'web'"),
        ([guest(250, "es-embed", kind="qemu")], "vmid 250 is already used by VM 'es-embed'"),
        ([guest(250, "es-embed", node="pve2")], "es-embed (vmid 250) lives on node 'pve2', not 'pve'"),
        ([guest(260, "es-embed")], "embedstack's es-embed already exists as vmid 260: set pve_containers_vmid: 260"),
    ],
)
def test_a_vmid_that_is_not_ours_is_a_problem(resources, problem):
    ours = specs(**{"es-embed": {"ansible_host": "192.168.1.50", "pve_containers_vmid": 250}})
    assert any(problem in p for p in call("pve_containers_match", ours, resources, "pve", "embedstack")["problems"])


def test_containers_belong_to_the_first_node_unless_they_name_another():
    hostvars = {"a": {}, "b": {"pve_containers_node_host": "pve2"}, "c": {"pve_containers_node_host": "pve9"}}
    assert call("pve_containers_on", ["a", "b"], hostvars, "pve1", ["pve1", "pve2"]) == ["a"]
    assert call("pve_containers_on", ["a", "b"], hostvars, "pve2", ["pve1", "pve2"]) == ["b"]
    with pytest.raises(
        AnsibleFilterError, match="pve_containers_node_host of c is 'pve9', not a host of the pve group"
    ):
        call("pve_containers_on", ["c"], hostvars, "pve1", ["pve1", "pve2"])


# Every privilege the provisioning play needs from a least-privilege token: pve-container src/PVE/LXC.pm
# (check_ct_modify_config_perm, check_bridge_access → SDN.Use on /sdn/zones/localnetwork/<bridge>) and the
# audit privileges of the GET calls (configs, status, /cluster/resources, storage content, nodes).
TOKEN_PRIVILEGES = [
    *("VM.Allocate", "VM.Audit", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Disk", "VM.Config.Network"),
    *("VM.Config.Options", "VM.PowerMgmt", "Datastore.AllocateSpace", "Datastore.AllocateTemplate"),
    *("Datastore.Audit", "Sys.Audit", "SDN.Use"),
]


@pytest.mark.parametrize(
    "guide", ["README.md", "roles/pve_containers/README.md", "inventories/proxmox/group_vars/pve.yml"]
)
def test_the_token_guide_lists_every_privilege_the_play_needs(guide):
    text = (Path(__file__).parents[2] / guide).read_text()
    missing = [p for p in TOKEN_PRIVILEGES if not re.search(rf"(?<![\w.]){re.escape(p)}(?![\w.])", text)]
    assert not missing, f"{guide} does not list {missing}"
    assert "/sdn/zones/localnetwork/" in text


CURRENT_NET0 = "name=eth0,bridge=vmbr0,firewall=1,gw=192.168.1.1,hwaddr=BC:24:11:3E:5A:71,ip=192.168.1.45/24,type=veth"


@pytest.mark.parametrize(
    ("wanted", "current", "sent"),
    [
        # a new container: the spec, PVE draws the MAC
        (
            "name=eth0,bridge=vmbr0,ip=192.168.1.45/24,gw=192.168.1.1",
            "",
            "name=eth0,bridge=vmbr0,ip=192.168.1.45/24,gw=192.168.1.1",
        ),
        # unchanged network (PVE's key order, its type and our firewall flag aside): nothing is sent
        ("name=eth0,bridge=vmbr0,ip=192.168.1.45/24,gw=192.168.1.1", CURRENT_NET0, None),
        # a new address: sent with the MAC and the keys the play does not manage
        (
            "name=eth0,bridge=vmbr0,ip=192.168.1.46/24,gw=192.168.1.1",
            CURRENT_NET0,
            "name=eth0,bridge=vmbr0,firewall=1,gw=192.168.1.1,hwaddr=BC:24:11:3E:5A:71,ip=192.168.1.46/24,type=veth",
        ),
        # the gateway removed
        (
            "name=eth0,bridge=vmbr0,ip=192.168.1.45/24",
            CURRENT_NET0,
            "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:3E:5A:71,ip=192.168.1.45/24,type=veth",
        ),
    ],
)
def test_net0_is_sent_only_when_the_network_changes_and_keeps_the_mac(wanted, current, sent):
    """community.proxmox 1.4.0 resends net0 with any update; without hwaddr PVE draws a new MAC and replugs the
    veth of a running container (pve-container LXC/Config.pm parse_lxc_network, LXC.pm update_net)."""
    assert call("pve_containers_net0", wanted, current) == sent
