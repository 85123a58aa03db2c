"""Address filters for the firewall role, built on the standard library only (no netaddr needed)."""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """Parse one CIDR or bare address; host bits are cleared. None when it is not an address."""
    text = str(value).strip()
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def firewall_invalid_cidrs(values: list) -> list[str]:
    """Return the entries of a list that are neither IPv4/IPv6 CIDRs nor plain addresses."""
    return [str(value) for value in values or [] if _network(value) is None]


def firewall_cidrs(values: list, family: int) -> list[str]:
    """Return the networks of one family (4 or 6), host bits cleared and overlaps merged, as strings."""
    if family not in (4, 6):
        raise AnsibleFilterError(f"firewall_cidrs: family must be 4 or 6, got {family!r}")
    invalid = firewall_invalid_cidrs(values)
    if invalid:
        raise AnsibleFilterError(f"firewall_cidrs: not an IPv4/IPv6 address or CIDR: {', '.join(invalid)}")
    networks = [net for net in (_network(value) for value in values or []) if net is not None]
    same_family = [net for net in networks if net.version == family]
    return [str(net) for net in ipaddress.collapse_addresses(same_family)]


def firewall_addr_in_cidrs(address: str, values: list) -> bool:
    """True when an address (IPv4, IPv6, IPv4-mapped IPv6 or with a %zone) lies inside one of the CIDRs."""
    text = str(address).strip().split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError as exc:
        raise AnsibleFilterError(f"firewall_addr_in_cidrs: not an IP address: {address!r}") from exc
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(net is not None and addr.version == net.version and addr in net for net in map(_network, values or []))


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict:
        return {
            "firewall_invalid_cidrs": firewall_invalid_cidrs,
            "firewall_cidrs": firewall_cidrs,
            "firewall_addr_in_cidrs": firewall_addr_in_cidrs,
        }
