"""Filters of the pve_containers role: turn inventory hosts into container specs, and match them
against what the Proxmox VE cluster already holds. Standard library only."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from ansible.errors import AnsibleFilterError

# Per-container settings: read from the container's hostvars as pve_containers_<key>, else from the
# role's value on the PVE node (defaults/main.yml), so group_vars/embedding.yml can size one tier.
SETTINGS = (
    "vmid",
    "cores",
    "memory",
    "swap",
    "disk_size",
    "storage",
    "bridge",
    "ip",
    "prefix_length",
    "gateway",
    "nameserver",
    "unprivileged",
    "nesting",
    "onboot",
)
HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
STORAGE_ID = re.compile(r"^[a-z][a-z0-9\-_.]*[a-z0-9]$", re.IGNORECASE)  # pve-storage-id
BRIDGE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$")


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def _int(name: str, host: str, value: Any, low: int, high: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise AnsibleFilterError(f"{name} of {host} must be an integer from {low} to {high}, got {value!r}") from None
    if not low <= number <= high:
        raise AnsibleFilterError(f"{name} of {host} must be from {low} to {high}, got {number}")
    return number


def pve_containers_specs(hosts: list[str], hostvars: Any, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """One validated spec per container host; every error names the variable, the host and what is allowed."""
    specs: list[dict[str, Any]] = []
    for host in hosts:
        hv = hostvars[host]

        def get(key: str, hv=hv) -> Any:
            name = f"pve_containers_{key}"
            return hv[name] if name in hv else defaults.get(key)

        if not HOSTNAME.match(host):
            raise AnsibleFilterError(
                f"inventory host {host!r} becomes the container's hostname: use 1-63 of a-z, 0-9 and '-'"
            )
        if get("vmid") in (None, ""):
            raise AnsibleFilterError(f"pve_containers_vmid is not set for {host}: give each container its vmid")
        spec: dict[str, Any] = {
            "host": host,
            "hostname": host,
            "vmid": _int("pve_containers_vmid", host, get("vmid"), 100, 999999999),
            "cores": _int("pve_containers_cores", host, get("cores"), 1, 8192),
            "memory": _int("pve_containers_memory", host, get("memory"), 16, 268435456),
            "swap": _int("pve_containers_swap", host, get("swap"), 0, 268435456),
            "disk_size": _int("pve_containers_disk_size", host, get("disk_size"), 1, 131072),
            "storage": str(get("storage")),
            "bridge": str(get("bridge")),
            "ip": str(get("ip")),
            "nameserver": str(get("nameserver") or ""),
            "unprivileged": _truthy(get("unprivileged")),
            "nesting": _truthy(get("nesting")),
            "onboot": _truthy(get("onboot")),
            "gpu": _truthy(hv["embedstack_gpu"]) if "embedstack_gpu" in hv else False,
        }
        if not STORAGE_ID.match(spec["storage"]):
            raise AnsibleFilterError(f"pve_containers_storage of {host} is not a storage id: {spec['storage']!r}")
        if not BRIDGE.match(spec["bridge"]):
            raise AnsibleFilterError(f"pve_containers_bridge of {host} is not a bridge name: {spec['bridge']!r}")
        if spec["ip"] not in ("static", "dhcp"):
            raise AnsibleFilterError(f"pve_containers_ip of {host} must be one of: static, dhcp (got {spec['ip']!r})")
        net = f"name=eth0,bridge={spec['bridge']}"
        if spec["ip"] == "static":
            address = str(hv["ansible_host"]) if "ansible_host" in hv else ""
            try:
                addr = ipaddress.IPv4Address(address)
            except ValueError:
                raise AnsibleFilterError(
                    f"ansible_host of {host} must be an IPv4 address with pve_containers_ip: static (got {address!r}); "
                    "use pve_containers_ip: dhcp with a DNS name"
                ) from None
            prefix = _int("pve_containers_prefix_length", host, get("prefix_length"), 1, 32)
            network = ipaddress.IPv4Network(f"{addr}/{prefix}", strict=False)
            net += f",ip={addr}/{prefix}"
            gateway = str(get("gateway") or "")
            if gateway:
                try:
                    gw = ipaddress.IPv4Address(gateway)
                except ValueError:
                    raise AnsibleFilterError(
                        f"pve_containers_gateway of {host} is not an IPv4 address: {gateway!r}"
                    ) from None
                if gw not in network or gw == addr:
                    raise AnsibleFilterError(
                        f"pve_containers_gateway {gw} of {host} must be another address inside {network}"
                    )
                net += f",gw={gw}"
        else:
            net += ",ip=dhcp"
        spec["net0"] = net
        specs.append(spec)
    for key in ("vmid", "hostname"):
        seen = [s[key] for s in specs]
        doubled = sorted({str(v) for v in seen if seen.count(v) > 1})
        if doubled:
            raise AnsibleFilterError(f"two containers share pve_containers_{key} {', '.join(doubled)}")
    return specs


def _tags(guest: dict[str, Any]) -> set[str]:
    return {t for t in re.split(r"[;, ]+", str(guest.get("tags") or "").lower()) if t}


def pve_containers_match(
    specs: list[dict[str, Any]], resources: list[dict[str, Any]], node: str, tag: str
) -> dict[str, Any]:
    """Pair each spec with the guest of the same vmid (from GET /cluster/resources?type=vm).

    A vmid is ours only when it is an LXC container on our node with our hostname and tag; anything
    else is a problem, reported before the play changes anything.
    """
    by_vmid = {int(g["vmid"]): g for g in resources if "vmid" in g}
    matched, problems = [], []
    for spec in specs:
        guest = by_vmid.get(spec["vmid"])
        exists = guest is not None
        if exists:
            name = guest.get("name", "")
            what = f"{'container' if guest.get('type') == 'lxc' else 'VM'} {name!r} on node {guest.get('node')!r}"
            tags = ";".join(sorted(_tags(guest))) or "none"
            if guest.get("type") != "lxc" or name != spec["hostname"] or tag not in _tags(guest):
                problems.append(
                    f"vmid {spec['vmid']} is already used by {what} (tags: {tags}), not by embedstack's "
                    f"{spec['hostname']}: choose a free pve_containers_vmid for {spec['host']}"
                )
            elif guest.get("node") != node:
                problems.append(
                    f"{spec['hostname']} (vmid {spec['vmid']}) lives on node {guest.get('node')!r}, not {node!r}"
                )
        for other in resources:
            if (
                other.get("name") == spec["hostname"]
                and int(other.get("vmid", -1)) != spec["vmid"]
                and tag in _tags(other)
            ):
                problems.append(
                    f"embedstack's {spec['hostname']} already exists as vmid {other['vmid']}: set "
                    f"pve_containers_vmid: {other['vmid']} for it, or remove that container"
                )
        matched.append({**spec, "exists": exists, "running": exists and guest.get("status") == "running"})
    return {"containers": matched, "problems": problems}


def pve_containers_on(hosts: list[str], hostvars: Any, node_host: str, nodes: list[str]) -> list[str]:
    """The container hosts that a PVE node host provisions: those naming it in pve_containers_node_host,
    or, by default, every container when it is the inventory's first node."""
    mine = []
    for host in hosts:
        hv = hostvars[host]
        owner = str(hv["pve_containers_node_host"]) if "pve_containers_node_host" in hv else (nodes or [""])[0]
        if owner not in nodes:
            raise AnsibleFilterError(
                f"pve_containers_node_host of {host} is {owner!r}, not a host of the pve group ({', '.join(nodes)})"
            )
        if owner == node_host:
            mine.append(host)
    return mine


NET0_MANAGED = ("name", "bridge", "ip", "gw")  # the net0 keys the play sets; PVE's others are kept as they are


def _net_options(value: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in str(value or "").split(",") if "=" in part)


def pve_containers_net0(wanted: str, current: str | None) -> str | None:
    """What to send as net0: the spec for a new container, None (send nothing) for an existing one whose network
    already is what the spec asks, else the current net0 with the play's keys changed and its hwaddr kept.

    community.proxmox 1.4.0's update sends every option again as soon as one differs; a net0 without hwaddr makes
    PVE draw a new MAC (pve-container src/PVE/LXC/Config.pm parse_lxc_network) and replug the veth of a running
    container (src/PVE/LXC.pm update_net): a memory change would break the container's network for a moment
    and change its MAC (DHCP leases, ARP caches, firewalls keyed on it)."""
    if not current:
        return wanted
    want, have = _net_options(wanted), _net_options(current)
    if all(want.get(key) == have.get(key) for key in NET0_MANAGED):
        return None
    # PVE's own key order; the play's keys take the spec's values, or go when the spec has none (a removed gw)
    merged = {k: want.get(k) if k in NET0_MANAGED else v for k, v in have.items() if k not in NET0_MANAGED or k in want}
    merged.update({k: want[k] for k in NET0_MANAGED if k in want and k not in merged})
    return ",".join(f"{k}={v}" for k, v in merged.items())


class FilterModule:
    def filters(self):
        return {
            "pve_containers_on": pve_containers_on,
            "pve_containers_specs": pve_containers_specs,
            "pve_containers_match": pve_containers_match,
            "pve_containers_net0": pve_containers_net0,
        }
