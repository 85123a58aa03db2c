"""The one hardening block every embedstack service unit starts from (systemd.exec(5), systemd.resource-control(5)).

Roles that install a unit also check their MemoryMax= values with `systemd_memory_max_ok`.
A unit template renders the block with its own exceptions, each with the reason in the template:

    {{ {'MemoryDenyWriteExecute': None, 'ReadWritePaths': '/var/lib/x'} | systemd_hardening }}

A value replaces the baseline's, None drops the directive, a list repeats it; keys the baseline does
not have are added after it. `systemd-analyze security` scores the result (tests/ansible/test_unit_hardening.py
offline, molecule on the running units).
"""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

# MemoryMax= as systemd.resource-control(5) takes it: bytes with a K/M/G/T suffix, a share of the host's
# memory, or infinity
_MEMORY_MAX = re.compile(r"[0-9]+[KMGT]?|(100|[1-9]?[0-9])(\.[0-9]+)?%|infinity")

BASELINE: dict[str, object] = {
    # No privilege of any kind, and no way to gain one
    "NoNewPrivileges": True,
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictSUIDSGID": True,
    # A read-only system and no view of other users' homes, files or processes
    "ProtectSystem": "strict",
    "ProtectHome": True,
    "PrivateTmp": True,
    "PrivateMounts": True,
    "ProtectProc": "invisible",
    "UMask": "0077",
    # No devices, kernel knobs, modules, logs, cgroups, clock or hostname
    "PrivateDevices": True,
    "ProtectKernelTunables": True,
    "ProtectKernelModules": True,
    "ProtectKernelLogs": True,
    "ProtectControlGroups": True,
    "ProtectClock": True,
    "ProtectHostname": True,
    # No new namespaces, real-time scheduling, personality changes, W+X memory or leftover IPC
    "RestrictNamespaces": True,
    "RestrictRealtime": True,
    "LockPersonality": True,
    "MemoryDenyWriteExecute": True,
    "RemoveIPC": True,
    # Sockets for IP and local IPC only, system calls of ordinary services only. A call outside the
    # filter fails with EPERM rather than killing the process.
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    "SystemCallErrorNumber": "EPERM",
}


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def systemd_hardening(exceptions: dict | None = None) -> str:
    """The baseline with a unit's exceptions, as [Service] lines."""
    if exceptions is not None and not isinstance(exceptions, dict):
        raise AnsibleFilterError(f"systemd_hardening: exceptions must be a mapping, got {type(exceptions).__name__}")
    directives = {**BASELINE, **(exceptions or {})}
    lines = []
    for key, value in directives.items():
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key}={_value(item)}")
    return "\n".join(lines)


def systemd_memory_max_ok(value: object) -> bool:
    """True when systemd would parse the value as MemoryMax=."""
    return _MEMORY_MAX.fullmatch(str(value).strip()) is not None


class FilterModule:
    def filters(self) -> dict:
        return {"systemd_hardening": systemd_hardening, "systemd_memory_max_ok": systemd_memory_max_ok}
