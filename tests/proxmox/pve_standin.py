#!/usr/bin/env python3
"""Proxmox VE API stand-in, for embedstack's tests only. It is NOT Proxmox VE.

No Proxmox VE can run on the test machine, so this program plays one PVE node for the
`community.proxmox` modules (through proxmoxer's HTTPS backend) and for our own clients.

What follows the real PVE API (pve-manager 9.2 / pve-container 6.1 / pve-common sources):
- HTTPS on 127.0.0.1 only, base `/api2/json`, form-encoded (or JSON) bodies, `{"data": ...}` answers,
  `Server: pve-api-daemon/3.0`, errors in the HTTP reason phrase and in `{"message", "errors"}`.
- API token auth `Authorization: PVEAPIToken=user@realm!tokenid=secret`; anything else is 401
  (`No ticket` / `Authentication failed!`, delayed 3 s like pveproxy).
- The parameter schemas of the endpoints the LXC module calls, checked like PVE::JSONSchema: unknown
  parameters, types, ranges, enums, formats and property strings (net0, rootfs, features) answer 400
  `Parameter verification failed.` with PVE's per-parameter messages.
- A node other than this one answers 500 `hostname lookup '<node>' failed ...` (PVE's proxy step).
- Real-shaped UPIDs (`UPID:node:pid:pstart:starttime:type:id:user@realm!token:`), task status and log.
- Container configs are kept as PVE-format files under `<state>/pve/nodes/<node>/lxc/<vmid>.conf`.

What is handed to the machine: creating a container copies the cached Debian 12 rootfs into a real
privileged LXC container (`lxc-create -P` layout under `<state>/lxc/<vmid>`), installs the root SSH
keys from `ssh-public-keys`, and start/shutdown/stop/destroy run lxc-start/lxc-stop. The node's
bridge (default `esprx0`, 10.216.0.1/24) is created at start and removed at exit.

What is only recorded (returned by GET config, not enforced): unprivileged (the containers always
run privileged), features, onboot, rootfs size, tags, description, startup, timezone, protection,
cmode, devN. Enforced: hostname, net0 (bridge, static IPv4/IPv6, gateway, MAC, MTU), memory and
swap, cores (cpuset), cpulimit, cpuunits, tty, console, root SSH keys, password,
nameserver/searchdomain, raw lxc.* lines of the config file.

Every template volume in the configuration unpacks to the same cached Debian 12 rootfs.

Usage:  pve_standin.py serve [--config FILE] [--ready-file FILE]
        pve_standin.py cleanup [--config FILE]     (removes everything a crashed run left behind)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------------
# Settings

# Directories a stand-in must never use: they belong to the lab and molecule containers.
FORBIDDEN_LXC_PATHS = {"/var/lib/embedstack/lxc"}
FORBIDDEN_BRIDGES = {"eslab0", "esmol0"}


@dataclass
class Settings:
    node: str = "pve"
    listen: str = "127.0.0.1"
    port: int = 0
    # token id (user@realm!name) -> secret
    tokens: dict[str, str] = field(default_factory=lambda: {"root@pam!embedstack": "embedstack-test-secret"})
    version: dict[str, str] = field(
        default_factory=lambda: {"version": "9.2.11", "release": "9.2", "repoid": "14a22df35955d97d"}
    )
    state_dir: str = "/var/lib/embedstack/pve-standin"
    base_rootfs: str = "/var/cache/embedstack/bookworm-base"
    bridge: str = "esprx0"
    bridge_address: str = "10.216.0.1/24"
    nat: bool = False
    storages: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            # like a default PVE install: templates on "local", guest disks on "local-lvm"
            "local": {"type": "dir", "path": "/var/lib/vz", "content": ["backup", "iso", "vztmpl"]},
            "local-lvm": {"type": "lvmthin", "content": ["images", "rootdir"]},
        }
    )
    templates: list[str] = field(default_factory=lambda: ["local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst"])
    # what POST /nodes/{node}/aplinfo can "download" (pveam's index)
    appliances: list[str] = field(
        default_factory=lambda: [
            "debian-12-standard_12.12-1_amd64.tar.zst",
            "debian-13-standard_13.1-2_amd64.tar.zst",
        ]
    )
    # guests that exist before any test, e.g. {"vmid": 150, "type": "lxc", "name": "not-ours", "tags": "other"}
    guests: list[dict[str, Any]] = field(default_factory=list)
    auth_failure_delay: float = 3.0
    mac_prefix: str = "BC:24:11"

    @classmethod
    def load(cls, path: str | None) -> Settings:
        data = json.loads(Path(path).read_text()) if path else {}
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise SystemExit(f"pve-standin: unknown settings {sorted(unknown)}")
        settings = cls(**data)
        settings.check()
        return settings

    def check(self) -> None:
        if self.listen not in ("127.0.0.1", "::1"):
            raise SystemExit("pve-standin: listens on loopback only")
        if not Path(self.state_dir).is_absolute() or not Path(self.state_dir).name.startswith("pve-standin"):
            # cleanup deletes the whole state directory: it must be one of ours
            raise SystemExit(f"pve-standin: state_dir must be an absolute path named pve-standin*: {self.state_dir}")
        if str(Path(self.lxc_path)) in FORBIDDEN_LXC_PATHS or self.bridge in FORBIDDEN_BRIDGES:
            raise SystemExit("pve-standin: that LXC path or bridge belongs to the lab or molecule")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", self.bridge):
            raise SystemExit(f"pve-standin: bad bridge name {self.bridge!r}")
        ipaddress.ip_interface(self.bridge_address)

    @property
    def lxc_path(self) -> str:
        return str(Path(self.state_dir) / "lxc")

    @property
    def nft_table(self) -> str:
        return "embedstack_" + re.sub(r"[^A-Za-z0-9_]", "_", self.bridge)


# --------------------------------------------------------------------------------------------------
# Errors: what PVE::Exception carries (HTTP status, message, per-parameter errors)


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or {}


def param_exc(errors: dict[str, str]) -> ApiError:
    return ApiError(400, "Parameter verification failed.\n", errors)


def die(message: str) -> ApiError:
    # A plain Perl `die` inside an API handler: 500 with the message as reason phrase.
    return ApiError(500, message if message.endswith("\n") else message + "\n")


class FormatError(Exception):
    """A format verifier's `die`; the text keeps Perl's trailing newline."""


# --------------------------------------------------------------------------------------------------
# PVE::JSONSchema, the parts the LXC endpoints use

IPV4_RE = r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
TAG_RE = r"[a-z0-9_][a-z0-9_\-+.]*"


def split_list(text: str) -> list[str]:
    # PVE::ParseUtils::split_list
    if "\0" in text:
        return text.split("\0")
    return [p for p in re.split(r"\s+", re.sub(r"[,;]", " ", text).strip()) if p]


def parse_boolean(value: str) -> str | None:
    if re.fullmatch(r"1|on|yes|true", value, re.I):
        return "1"
    if re.fullmatch(r"0|off|no|false", value, re.I):
        return "0"
    return None


def parse_size(value: str) -> int | None:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT](?:iB)?)?", value)
    if not m:
        return None
    scale = {"K": 1, "M": 2, "G": 3, "T": 4}.get((m.group(2) or " ")[0], 0)
    return int(float(m.group(1)) * 1024**scale)


def format_size(size: int) -> str:
    for unit in ("", "K", "M", "G"):
        if size % 1024:
            return f"{size}{unit}"
        size //= 1024
    return f"{size}T"


def _is_ipv6(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


def _cidr(value: str, v6: bool) -> bool:
    addr, _, prefix = value.partition("/")
    if not prefix.isdigit():
        return False
    if v6:
        return _is_ipv6(addr) and 7 < int(prefix) <= 128
    return re.fullmatch(IPV4_RE, addr) is not None and 7 < int(prefix) <= 32


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise FormatError(message + "\n")


def _verify_timezone(value: str) -> None:
    if value in ("host", "UTC"):
        return
    zones = Path("/usr/share/zoneinfo/zone.tab")
    known = {line.split("\t")[2] for line in zones.read_text().splitlines() if line and not line.startswith("#")}
    _check(value in known, f"invalid time zone '{value}'")


def _verify_storage_id(value: str) -> None:
    _check(len(value) >= 2, f"storage ID '{value}' cannot be shorter than 2 characters")
    _check(
        re.fullmatch(r"[a-z][a-z0-9\-_.]*[a-z0-9]", value, re.I) is not None,
        f"storage ID '{value}' contains illegal characters",
    )


# Named formats (register_format in pve-common, pve-storage, pve-container, pve-access-control).
FORMATS = {
    "pve-node": lambda v: _check(
        re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?", v) is not None,
        "value does not look like a valid node name",
    ),
    "pve-vmid": lambda v: _check(
        re.fullmatch(r"[1-9][0-9]{2,8}", v) is not None, "value does not look like a valid VM ID"
    ),
    "pve-storage-id": _verify_storage_id,
    "pve-configid": lambda v: _check(
        re.fullmatch(r"[a-z][a-z0-9_-]+", v, re.I) is not None, f"invalid configuration ID '{v}'"
    ),
    "pve-poolid": lambda v: _check(
        re.fullmatch(r"[A-Za-z0-9.\-_]+(?:/[A-Za-z0-9.\-_]+){0,2}", v) is not None,
        f"pool name '{v}' contains invalid characters",
    ),
    "pve-volume-id": lambda v: _check(
        re.fullmatch(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)", v, re.I | re.S) is not None,
        f"unable to parse volume ID '{v}'",
    ),
    "pve-storage-content": lambda v: _check(
        v in ("images", "rootdir", "vztmpl", "iso", "backup", "snippets", "none", "import"),
        f"invalid content type '{v}'",
    ),
    "dns-name": lambda v: _check(
        re.fullmatch(r"(([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)\.)*([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)", v)
        is not None,
        "value does not look like a valid DNS name",
    ),
    "pve-tag": lambda v: _check(re.fullmatch(TAG_RE, v, re.I) is not None, "invalid characters in tag"),
    "ipv4": lambda v: _check(re.fullmatch(IPV4_RE, v) is not None, "value does not look like a valid IPv4 address"),
    "ipv6": lambda v: _check(_is_ipv6(v), "value does not look like a valid IPv6 address"),
    "pve-ipv4-config": lambda v: _check(
        v in ("dhcp", "manual") or _cidr(v, False), "value does not look like a valid ipv4 network configuration"
    ),
    "pve-ipv6-config": lambda v: _check(
        v in ("auto", "dhcp", "manual") or _cidr(v, True),
        "value does not look like a valid ipv6 network configuration",
    ),
    "lxc-ip-with-ll-iface": lambda v: _check(
        re.fullmatch(IPV4_RE, v) is not None or _is_ipv6(v.split("%")[0]), "value does not look like a valid IP address"
    ),
    "mac-addr": lambda v: _check(
        re.fullmatch(r"[a-f0-9][02468ace](?::[a-f0-9]{2}){5}", v, re.I) is not None,
        "value does not look like a valid unicast MAC address",
    ),
    "disk-size": lambda v: _check(parse_size(v) is not None, f"value does not look like a valid disk size: {v}"),
    "pve-startup-order": lambda v: _check(
        all(re.fullmatch(r"(order=)?\d+|up=\d+|down=\d+", p) for p in v.split(",") if p.strip()) and v != "",
        "unable to parse startup options",
    ),
    "pve-lxc-mp-string": lambda v: _check(
        not re.search(r"/\.\.?/|/\.\.?$|^\.\./", v), f"{v} contains illegal character sequences"
    ),
    "pve-lxc-dev-string": lambda v: _check(
        v.startswith("/dev/") and not re.search(r"/\.\.?(?:/|$)", v), f"{v} is not a valid device path"
    ),
    "pve-ct-timezone": _verify_timezone,
}


def check_format(fmt: str | dict, value: str) -> None:
    if isinstance(fmt, dict):
        parse_property_string(fmt, value)
        return
    name, _, kind = fmt.rpartition("-") if fmt.endswith(("-list", "-opt")) else (fmt, "", "")
    verify = FORMATS[name]
    if kind == "list":
        for item in split_list(value):  # empty lists are allowed, like PVE
            verify(item)
    elif kind == "opt":
        if value:
            verify(value)
    else:
        verify(value)


def add_error(errors: dict[str, str], path: str | None, message: str) -> None:
    path = path or "_root"
    errors[path] = errors[path] + "\\n" + message if path in errors else message


def is_number(value: str) -> bool:
    return re.fullmatch(r"[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?", value) is not None


def check_type(path: str, typ: str | None, value: Any, errors: dict[str, str]) -> bool:
    if isinstance(value, list):
        add_error(errors, path, f"type check ('{typ}') failed - got ARRAY")
        return False
    if typ == "boolean" and value not in ("0", "1"):
        add_error(errors, path, f"type check ('boolean') failed - got '{value}'")
        return False
    if typ == "integer" and not re.fullmatch(r"[+-]?\d+", value):
        add_error(errors, path, f"type check ('integer') failed - got '{value}'")
        return False
    if typ == "number" and not is_number(value):
        add_error(errors, path, f"type check ('number') failed - got '{value}'")
        return False
    return True


def check_prop(value: Any, schema: dict, path: str, errors: dict[str, str]) -> None:
    # PVE::JSONSchema::check_prop for scalar parameters, in PVE's order of checks.
    if value is None:
        if not schema.get("optional"):
            add_error(errors, path, "property is missing and it is not optional")
        return
    if not check_type(path, schema.get("type"), value, errors):
        return
    if fmt := schema.get("format"):
        try:
            check_format(fmt, value)
        except FormatError as e:
            add_error(errors, path, f"invalid format - {e}")
            return
    if (pattern := schema.get("pattern")) and not re.fullmatch(pattern, value, re.S):
        add_error(errors, path, "value does not match the regex pattern")
        return
    if (limit := schema.get("maxLength")) is not None and len(value) > limit:
        add_error(errors, path, f"value may only be {limit} characters long")
        return
    if (limit := schema.get("minLength")) is not None and len(value) < limit:
        add_error(errors, path, f"value must be at least {limit} characters long")
        return
    if is_number(value):
        if (limit := schema.get("maximum")) is not None and float(value) > limit:
            add_error(errors, path, f"value must have a maximum value of {limit}")
            return
        if (limit := schema.get("minimum")) is not None and float(value) < limit:
            add_error(errors, path, f"value must have a minimum value of {limit}")
            return
    if (enum := schema.get("enum")) and value not in enum:
        add_error(errors, path, f"value '{value}' does not have a value in the enumeration '{', '.join(enum)}'")


def check_object(path: str | None, schema: dict, value: dict, errors: dict[str, str]) -> None:
    for key, sub in schema.items():
        check_prop(value.get(key), sub, f"{path}.{key}" if path else key, errors)
    for key in value:
        if key not in schema:
            add_error(
                errors,
                f"{path}.{key}" if path else key,
                "property is not defined in schema and the schema does not allow additional properties",
            )
        elif (requires := schema[key].get("requires")) and value.get(requires) is None:
            add_error(errors, requires, f"missing property required by '{key}'")


def parse_property_string(desc: dict, data: str) -> dict[str, str]:
    res: dict[str, str] = {}
    default_key = None
    for part in data.split(","):
        if not part.strip():
            continue
        if m := re.fullmatch(r"([^=]+)=(.+)", part, re.S):
            key, value = m.groups()
            if key in res:
                raise FormatError(f"duplicate key in comma-separated list property: {key}\n")
            if key not in desc:
                raise FormatError(f"invalid key in comma-separated list property: {key}\n")
            if desc[key].get("type") == "boolean":
                value = parse_boolean(value) or value
            res[key] = value
        elif "=" not in part:
            if default_key:
                raise FormatError(f"duplicate key in comma-separated list property: {default_key}\n")
            default_key = next((k for k, s in desc.items() if s.get("default_key")), None)
            if not default_key:
                raise FormatError("value without key, but schema does not define a default key\n")
            if default_key in res:
                raise FormatError(f"duplicate key in comma-separated list property: {default_key}\n")
            res[default_key] = part
        else:
            raise FormatError("missing key in comma-separated list property\n")
    errors: dict[str, str] = {}
    check_object(None, desc, res, errors)
    if errors:
        # how PVE::Exception stringifies "format error" with its per-key errors
        raise FormatError("format error\n" + "".join(f"{k}: {v}\n" for k, v in errors.items()))
    return res


def print_property_string(data: dict[str, Any], desc: dict, skip: tuple[str, ...] = ()) -> str:
    # default key first, then the required keys, then the rest, each group sorted
    default = next((k for k, s in desc.items() if s.get("default_key")), None)
    order = [default] if default in data else []
    order += sorted(k for k in data if k not in order and not desc.get(k, {}).get("optional"))
    order += sorted(k for k in data if k not in order)
    out = []
    for key in order:
        if key in skip or data[key] is None:
            continue
        value = data[key]
        if desc.get(key, {}).get("format") == "disk-size":
            value = format_size(int(value))
        out.append(str(value) if key == default else f"{key}={value}")
    return ",".join(out)


# --------------------------------------------------------------------------------------------------
# Schemas from pve-container (src/PVE/LXC/Config.pm, src/PVE/API2/LXC*.pm)

BOOL = {"type": "boolean", "optional": 1}
NODE = {"type": "string", "format": "pve-node"}
VMID = {"type": "integer", "format": "pve-vmid", "minimum": 100, "maximum": 999_999_999}
STORAGE_ID = {"type": "string", "format": "pve-storage-id"}

ROOTFS_DESC = {
    "volume": {"type": "string", "default_key": 1, "format": "pve-lxc-mp-string"},
    "size": {"type": "string", "format": "disk-size", "optional": 1},
    "acl": BOOL,
    "mountoptions": {
        "type": "string",
        "optional": 1,
        "pattern": r"(discard|lazytime|noatime|nodev|noexec|nosuid)(;(discard|lazytime|noatime|nodev|noexec|nosuid))*",
    },
    "idmap": {
        "type": "string",
        "optional": 1,
        "pattern": r"passthrough|[ug]:\d+:\d+:[1-9]\d*(;[ug]:\d+:\d+:[1-9]\d*)*",
    },
    "ro": BOOL,
    "quota": BOOL,
    "replicate": BOOL,
    "shared": BOOL,
}
MP_DESC = {
    **ROOTFS_DESC,
    "backup": BOOL,
    "mp": {"type": "string", "format": "pve-lxc-mp-string"},
    "keepattrs": BOOL,
}
UNUSED_DESC = {"volume": {"type": "string", "default_key": 1, "format": "pve-volume-id"}}
FEATURES_DESC = {
    "mount": {"type": "string", "optional": 1, "pattern": r"[a-zA-Z0-9_; ]+"},
    "nesting": BOOL,
    "keyctl": BOOL,
    "fuse": BOOL,
    "mknod": BOOL,
    "force_rw_sys": BOOL,
}
NETCONF_DESC = {
    "type": {"type": "string", "optional": 1, "enum": ["veth"]},
    "name": {"type": "string", "pattern": r"[-_.\w\d]+"},
    "bridge": {"type": "string", "pattern": r"[-_.\w\d]+", "optional": 1},
    "hwaddr": {"type": "string", "format": "mac-addr", "optional": 1},
    "mtu": {"type": "integer", "minimum": 64, "maximum": 65535, "optional": 1},
    "ip": {"type": "string", "format": "pve-ipv4-config", "optional": 1},
    "gw": {"type": "string", "format": "ipv4", "optional": 1},
    "ip6": {"type": "string", "format": "pve-ipv6-config", "optional": 1},
    "gw6": {"type": "string", "format": "ipv6", "optional": 1},
    "firewall": BOOL,
    "tag": {"type": "integer", "minimum": 1, "maximum": 4094, "optional": 1},
    "trunks": {"type": "string", "pattern": r"\d+(?:;\d+)*", "optional": 1},
    "rate": {"type": "number", "optional": 1},
    "link_down": BOOL,
    "host-managed": BOOL,
}
DEV_DESC = {
    "path": {"type": "string", "optional": 1, "default_key": 1, "format": "pve-lxc-dev-string"},
    "mode": {"type": "string", "optional": 1, "pattern": r"0[0-7]{3}"},
    "uid": {"type": "integer", "optional": 1, "minimum": 0},
    "gid": {"type": "integer", "optional": 1, "minimum": 0},
    "deny-write": BOOL,
}

CONFDESC: dict[str, dict] = {
    "lock": {
        "type": "string",
        "optional": 1,
        "enum": [
            "backup",
            "create",
            "destroyed",
            "disk",
            "fstrim",
            "migrate",
            "mounted",
            "rollback",
            "snapshot",
            "snapshot-delete",
        ],
    },
    "onboot": BOOL,
    "startup": {"type": "string", "format": "pve-startup-order", "optional": 1},
    "template": BOOL,
    "arch": {"type": "string", "optional": 1, "enum": ["amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"]},
    "ostype": {
        "type": "string",
        "optional": 1,
        "enum": [
            "debian",
            "devuan",
            "ubuntu",
            "centos",
            "fedora",
            "opensuse",
            "archlinux",
            "alpine",
            "gentoo",
            "nixos",
            "unmanaged",
        ],
    },
    "console": BOOL,
    "tty": {"type": "integer", "optional": 1, "minimum": 0, "maximum": 6},
    "cores": {"type": "integer", "optional": 1, "minimum": 1, "maximum": 8192},
    "cpulimit": {"type": "number", "optional": 1, "minimum": 0, "maximum": 8192},
    "cpuunits": {"type": "integer", "optional": 1, "minimum": 0, "maximum": 500000},
    "memory": {"type": "integer", "optional": 1, "minimum": 16},
    "swap": {"type": "integer", "optional": 1, "minimum": 0},
    "hostname": {"type": "string", "optional": 1, "format": "dns-name", "maxLength": 255},
    "description": {"type": "string", "optional": 1, "maxLength": 8192},
    "searchdomain": {"type": "string", "optional": 1, "format": "dns-name-list"},
    "nameserver": {"type": "string", "optional": 1, "format": "lxc-ip-with-ll-iface-list"},
    "timezone": {"type": "string", "optional": 1, "format": "pve-ct-timezone"},
    "rootfs": {"type": "string", "optional": 1, "format": ROOTFS_DESC},
    # the enum real PVE checks: community.proxmox 2.0.0 sends cmode=default on update, which fails here too
    "cmode": {"type": "string", "optional": 1, "enum": ["shell", "console", "tty"]},
    "entrypoint": {"type": "string", "optional": 1, "pattern": r"[^\x00-\x08\x0a-\x1F\x7F]+"},
    "protection": BOOL,
    "unprivileged": BOOL,
    "features": {"type": "string", "optional": 1, "format": FEATURES_DESC},
    "env": {
        "type": "string",
        "optional": 1,
        "pattern": r"(?:\w+=[^\x00-\x08\x0a-\x1F\x7F]*)(?:\0\w+=[^\x00-\x08\x0a-\x1F\x7F]*)*",
    },
    "hookscript": {"type": "string", "optional": 1, "format": "pve-volume-id"},
    "tags": {"type": "string", "optional": 1, "format": "pve-tag-list"},
    "debug": BOOL,
}
for _i in range(32):
    CONFDESC[f"net{_i}"] = {"type": "string", "optional": 1, "format": NETCONF_DESC}
for _i in range(256):
    CONFDESC[f"mp{_i}"] = {"type": "string", "optional": 1, "format": MP_DESC}
    CONFDESC[f"unused{_i}"] = {"type": "string", "optional": 1, "format": UNUSED_DESC}
    CONFDESC[f"dev{_i}"] = {"type": "string", "optional": 1, "format": DEV_DESC}

CREATE_PARAMS = {
    **CONFDESC,
    "node": NODE,
    "vmid": VMID,
    "ostemplate": {"type": "string", "maxLength": 255},
    "password": {"type": "string", "optional": 1, "minLength": 5},
    "storage": {**STORAGE_ID, "optional": 1},
    "force": BOOL,
    "restore": BOOL,
    "unique": {**BOOL, "requires": "restore"},
    "pool": {"type": "string", "optional": 1, "format": "pve-poolid"},
    "ignore-unpack-errors": BOOL,
    "ssh-public-keys": {"type": "string", "optional": 1},
    "bwlimit": {"type": "number", "optional": 1, "minimum": 0},
    "start": BOOL,
    "ha-managed": BOOL,
}
UPDATE_PARAMS = {
    **CONFDESC,
    "node": NODE,
    "vmid": VMID,
    "delete": {"type": "string", "optional": 1, "format": "pve-configid-list"},
    "revert": {"type": "string", "optional": 1, "format": "pve-configid-list"},
    "digest": {"type": "string", "optional": 1, "maxLength": 40},
}


def config_value_type(key: str) -> str:
    return CONFDESC.get(key, {}).get("type", "string")


# --------------------------------------------------------------------------------------------------
# Container config files, in PVE's format (PVE::LXC::Config parse_pct_config / write_pct_config)


def encode_text(text: str) -> str:
    # control characters, non-ASCII and ':' are %-escaped (PVE::ParseUtils::encode_text)
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c != ":" else urllib.parse.quote(c, safe="") for c in text)


def parse_config(raw: str) -> dict[str, Any]:
    conf: dict[str, Any] = {"lxc": []}
    description = ""
    for line in raw.splitlines():
        if not line.strip():
            continue
        if line.startswith("["):
            break  # snapshots and pending sections: the stand-in never writes them
        if line.startswith("#"):
            description += urllib.parse.unquote(line[1:]) + "\n"
        elif m := re.fullmatch(r"(lxc\.[a-z0-9_\-.]+)(?::|\s*=)\s*(.*?)\s*", line):
            conf["lxc"].append([m.group(1), m.group(2)])
        elif m := re.fullmatch(r"([a-z][a-z_]*\d*):\s*(.+?)\s*", line):
            conf[m.group(1)] = m.group(2)
    if description:
        conf["description"] = description
    return conf


def write_config(conf: dict[str, Any]) -> str:
    raw = "".join(f"#{encode_text(line)}\n" for line in str(conf.get("description", "")).split("\n") if line)
    for key in sorted(conf):
        if key in ("description", "lxc", "digest") or conf[key] is None:
            continue
        raw += f"{key}: {conf[key]}\n"
    for key, value in conf.get("lxc", []):
        raw += f"{key}: {value}\n"
    return raw


def typed_config(conf: dict[str, Any]) -> dict[str, Any]:
    # GET config answers integers and booleans as JSON numbers, everything else as strings
    out: dict[str, Any] = {}
    for key, value in conf.items():
        if key == "lxc":
            continue  # raw lxc.* keys are only shown to root@pam with a ticket, never to a token
        typ = config_value_type(key)
        out[key] = int(value) if typ in ("integer", "boolean") and re.fullmatch(r"\d+", str(value)) else value
    return out


def unique_tags(value: str) -> str:
    # PVE::GuestHelpers::get_unique_tags with the default tag style: lower-case, sorted, unique, ';'
    seen: list[str] = []
    for tag in sorted(split_list(value), key=str.lower):
        if tag.lower() not in seen:
            seen.append(tag.lower())
    return ";".join(seen)


# --------------------------------------------------------------------------------------------------
# Tasks (PVE's fork_worker): a thread per task; its kernel thread id plays the worker's pid


def _proc_starttime(tid: int) -> int:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks since boot


UPID_RE = re.compile(
    r"UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):"
    r"([^:\s/]+):([^:\s/]*):([^:\s/]+):"
)


class TaskFailed(Exception):
    pass


class Tasks:
    def __init__(self, node: str, log_dir: Path):
        self.node = node
        self.log_dir = log_dir
        self.tasks: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def fork_worker(self, dtype: str, vid: str, user: str, work) -> str:
        started = threading.Event()
        box: dict[str, str] = {}

        def run() -> None:
            tid = threading.get_native_id()
            task = {
                "node": self.node,
                "pid": tid,
                "pstart": _proc_starttime(tid),
                "starttime": int(time.time()),
                "type": dtype,
                "id": vid,
                "user": user,
            }
            upid = "UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{type}:{id}:{user}:".format(**task)
            # PVE's layout: /var/log/pve/tasks/<last hex digit of the start time>/<UPID>
            path = self.log_dir / f"{task['starttime']:08X}"[7] / upid
            path.parent.mkdir(parents=True, exist_ok=True)
            task.update(upid=upid, status="running", path=path)
            with self.lock:
                self.tasks[upid] = task
            box["upid"] = upid
            started.set()
            with path.open("a", buffering=1) as log:
                try:
                    work(lambda line: log.write(line.rstrip("\n") + "\n"))
                    exitstatus = "OK"
                except Exception as e:  # any die() in a PVE worker ends as "TASK ERROR: <message>"
                    exitstatus = (e.message if isinstance(e, ApiError) else str(e)).strip() or "unknown error"
                log.write("TASK OK\n" if exitstatus == "OK" else f"TASK ERROR: {exitstatus}\n")
            with self.lock:
                task.update(status="stopped", exitstatus=exitstatus)

        thread = threading.Thread(target=run, name=f"task-{dtype}-{vid}", daemon=True)
        thread.start()
        self.threads.append(thread)
        started.wait()
        return box["upid"]

    def get(self, upid: str) -> dict[str, Any]:
        if not UPID_RE.fullmatch(upid):
            raise param_exc({"upid": "unable to parse worker upid"})
        with self.lock:
            task = self.tasks.get(upid)
        if task is None:
            raise param_exc({"upid": "no such task"})
        return task

    def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------------------------------
# The machine side: real privileged LXC containers, the node's bridge, NAT


def run(cmd: list[str], check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise TaskFailed(f"command '{' '.join(cmd)}' failed: exit code {proc.returncode}: {proc.stderr.strip()}")
    return proc


def cgroup_version() -> int:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return 2
    return 1


class Machine:
    def __init__(self, settings: Settings):
        self.s = settings
        self.lxc_path = Path(settings.lxc_path)
        self.record = Path(settings.state_dir) / "host.json"  # what we changed on the host, for cleanup
        self._du: dict[int, tuple[float, int]] = {}

    # network ---------------------------------------------------------------------------------------

    def _remember(self, **changes: Any) -> None:
        data = json.loads(self.record.read_text()) if self.record.exists() else {}
        data.update(changes)
        self.record.write_text(json.dumps(data))

    def setup_network(self) -> None:
        bridge, iface = self.s.bridge, ipaddress.ip_interface(self.s.bridge_address)
        if run(["ip", "link", "show", "dev", bridge], check=False).returncode != 0:
            run(["ip", "link", "add", "name", bridge, "type", "bridge"])
            self._remember(bridge=bridge)
        addrs = json.loads(run(["ip", "-j", "addr", "show", "dev", bridge]).stdout)[0].get("addr_info", [])
        if not any(a.get("local") == str(iface.ip) for a in addrs):
            run(["ip", "addr", "add", str(iface), "dev", bridge])
        run(["ip", "link", "set", "dev", bridge, "up"])
        if self.s.nat:
            if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0":
                self._remember(ip_forward="0")
                run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            table, subnet = self.s.nft_table, iface.network
            rules = (
                f"table ip {table}\ndelete table ip {table}\n"
                f"table ip {table} {{\n chain postrouting {{\n"
                "  type nat hook postrouting priority srcnat; policy accept;\n"
                f"  ip saddr {subnet} ip daddr != {subnet} masquerade\n }}\n}}\n"
            )
            run(["nft", "-f", "-"], input=rules)

    def bridge_mtu(self, bridge: str) -> int | None:
        path = Path(f"/sys/class/net/{bridge}/mtu")
        return int(path.read_text()) if path.exists() else None

    # containers ------------------------------------------------------------------------------------

    def ct_dir(self, vmid: int) -> Path:
        return self.lxc_path / str(vmid)

    def state(self, vmid: int) -> tuple[str, int | None]:
        if not (self.ct_dir(vmid) / "config").exists():
            return "stopped", None
        out = run(["lxc-info", "-P", str(self.lxc_path), "-n", str(vmid), "-s", "-p"], check=False).stdout
        running = re.search(r"(?m)^State:\s+RUNNING$", out) is not None
        pid = re.search(r"(?m)^PID:\s+(\d+)$", out)
        return ("running" if running else "stopped"), (int(pid.group(1)) if running and pid else None)

    def create_rootfs(self, vmid: int, log) -> Path:
        rootfs = self.ct_dir(vmid) / "rootfs"
        partial = rootfs.with_name("rootfs.partial")
        self.ct_dir(vmid).mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(partial, ignore_errors=True)
        # copy, then rename, so a half-copied rootfs is never used
        run(["cp", "-a", "--reflink=auto", self.s.base_rootfs, str(partial)], timeout=600)
        partial.rename(rootfs)
        total = sum(f.stat().st_size for f in rootfs.rglob("*") if f.is_file() and not f.is_symlink())
        log(f"Total bytes read: {total}")
        return rootfs

    def customize(self, rootfs: Path, conf: dict[str, Any], ssh_keys: str | None, password: str | None, log) -> None:
        # what PVE::LXC::Setup's post_create_hook does for a Debian template
        hostname = conf.get("hostname", "")
        (rootfs / "etc/machine-id").write_text(f"{random.getrandbits(128):032x}\n")
        (rootfs / "etc/hostname").write_text(hostname + "\n")
        ip = ""
        for key in sorted(k for k in conf if re.fullmatch(r"net\d+", k)):
            net = parse_property_string(NETCONF_DESC, conf[key])
            if net.get("ip", "dhcp") not in ("dhcp", "manual"):
                ip = net["ip"].split("/")[0]
                break
        (rootfs / "etc/hosts").write_text(
            f"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n{ip or '127.0.1.1'} {hostname}\n"
        )
        resolv = self._resolv_conf(conf)
        (rootfs / "etc/resolv.conf").unlink(missing_ok=True)
        (rootfs / "etc/resolv.conf").write_text(resolv)
        for key in ("rsa", "ecdsa", "ed25519"):
            log(f"Creating SSH host key 'ssh_host_{key}_key' - this may take some time ...")
        run(["chroot", str(rootfs), "ssh-keygen", "-A"])
        if ssh_keys:
            ssh_dir = rootfs / "root/.ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            keys = ssh_dir / "authorized_keys"
            keys.write_text(ssh_keys if ssh_keys.endswith("\n") else ssh_keys + "\n")
            keys.chmod(0o600)
        if password:
            run(["chroot", str(rootfs), "chpasswd"], input=f"root:{password}\n")

    def _resolv_conf(self, conf: dict[str, Any]) -> str:
        if "nameserver" in conf or "searchdomain" in conf:
            servers, search = conf.get("nameserver", "").split(), conf.get("searchdomain", "").split()
        else:
            # PVE copies the host's settings when neither is given
            host = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else ""
            servers = re.findall(r"(?m)^\s*nameserver\s+(\S+)", host)
            search = (re.findall(r"(?m)^\s*search\s+(.+)$", host) or [""])[0].split()
        return "".join(f"search {' '.join(search)}\n" if search else "") + "".join(f"nameserver {s}\n" for s in servers)

    def write_lxc_config(self, vmid: int, conf: dict[str, Any]) -> None:
        # what PVE::LXC::update_lxc_config writes, on this host's LXC and cgroup version
        d = self.ct_dir(vmid)
        lines = [
            f"# pve-standin: generated from the config of CT {vmid} at every start",
            "lxc.include = /usr/share/lxc/config/common.conf",
            f"lxc.arch = {conf.get('arch', 'amd64')}",
            "lxc.apparmor.profile = unconfined",  # privileged, like the lab containers
            "lxc.signal.halt = SIGRTMIN+3",  # a clean systemd shutdown on lxc-stop
            f"lxc.tty.max = {conf.get('tty', 2)}",
            "lxc.environment = TERM=linux",
            f"lxc.uts.name = {conf.get('hostname') or f'CT{vmid}'}",
            f"lxc.rootfs.path = dir:{d}/rootfs",
            f"lxc.log.file = {d}/{vmid}.log",
            "lxc.log.level = WARN",
        ]
        if conf.get("console") == "0":
            lines.append("lxc.console.path = none")
        memory, swap = int(conf.get("memory", 512)), int(conf.get("swap", 0))
        cores, cpulimit, cpuunits = conf.get("cores"), conf.get("cpulimit"), conf.get("cpuunits")
        cpus = sorted(os.sched_getaffinity(0))
        if cgroup_version() == 2:
            high = memory - 128 if memory >= 16384 else memory * 1016 / 1024  # calculate_memory_constraints
            lines += [
                f"lxc.cgroup2.memory.max = {memory * 1024 * 1024}",
                f"lxc.cgroup2.memory.high = {high * 1024 * 1024:.0f}",
                f"lxc.cgroup2.memory.swap.max = {swap * 1024 * 1024}",
            ]
            if cpulimit and float(cpulimit) > 0:
                lines.append(f"lxc.cgroup2.cpu.max = {int(100000 * float(cpulimit))} 100000")
            if cpuunits is not None:
                lines.append(f"lxc.cgroup2.cpu.weight = {min(max(int(cpuunits), 1), 10000)}")
            if cores:
                lines.append(f"lxc.cgroup2.cpuset.cpus = {','.join(map(str, cpus[: int(cores)]))}")
        else:
            # cgroup v1 (this build machine): PVE 6's keys; memsw is memory plus swap
            lines.append(f"lxc.cgroup.memory.limit_in_bytes = {memory * 1024 * 1024}")
            if Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists():
                lines.append(f"lxc.cgroup.memory.memsw.limit_in_bytes = {(memory + swap) * 1024 * 1024}")
            if cpulimit and float(cpulimit) > 0:
                lines += [
                    "lxc.cgroup.cpu.cfs_period_us = 100000",
                    f"lxc.cgroup.cpu.cfs_quota_us = {int(100000 * float(cpulimit))}",
                ]
            if cpuunits is not None:
                lines.append(f"lxc.cgroup.cpu.shares = {min(max(int(cpuunits), 2), 262144)}")
            if cores:
                lines.append(f"lxc.cgroup.cpuset.cpus = {','.join(map(str, cpus[: int(cores)]))}")
        for key in sorted((k for k in conf if re.fullmatch(r"net\d+", k)), key=lambda k: int(k[3:])):
            ind, net = key[3:], parse_property_string(NETCONF_DESC, conf[key])
            bridge = net.get("bridge", "")
            mtu = self.bridge_mtu(bridge)
            if mtu is None:
                raise TaskFailed(f"bridge '{bridge}' does not exist")
            if bridge != self.s.bridge:
                # never attach to a bridge that is not this stand-in's (the lab's, molecule's, the host's)
                raise TaskFailed(f"pve-standin: bridge '{bridge}' is not this node's bridge '{self.s.bridge}'")
            if net.get("mtu") and int(net["mtu"]) > mtu:
                raise TaskFailed(f"{key}: MTU size '{net['mtu']}' is bigger than bridge MTU '{mtu}'")
            lines += [
                f"lxc.net.{ind}.type = veth",
                f"lxc.net.{ind}.veth.pair = veth{vmid}i{ind}",
                f"lxc.net.{ind}.link = {bridge}",
                f"lxc.net.{ind}.hwaddr = {net['hwaddr']}",
                f"lxc.net.{ind}.name = {net['name']}",
                f"lxc.net.{ind}.mtu = {net.get('mtu') or mtu}",
                f"lxc.net.{ind}.flags = {'down' if net.get('link_down') == '1' else 'up'}",
            ]
            # PVE writes the guest's own network files; the stand-in sets the addresses from the
            # host side, as PVE does for host-managed=1
            if net.get("ip", "dhcp") not in ("dhcp", "manual"):
                lines.append(f"lxc.net.{ind}.ipv4.address = {net['ip']}")
            if net.get("gw"):
                lines.append(f"lxc.net.{ind}.ipv4.gateway = {net['gw']}")
            if net.get("ip6", "dhcp") not in ("auto", "dhcp", "manual"):
                lines.append(f"lxc.net.{ind}.ipv6.address = {net['ip6']}")
            if net.get("gw6"):
                lines.append(f"lxc.net.{ind}.ipv6.gateway = {net['gw6']}")
        lines += [f"{k} = {v}" for k, v in conf.get("lxc", [])]
        (d / "config").write_text("\n".join(lines) + "\n")
        (d / "config").chmod(0o600)

    def start(self, vmid: int, conf: dict[str, Any], debug: bool) -> None:
        self.write_lxc_config(vmid, conf)
        name, path = str(vmid), str(self.lxc_path)
        cmd = ["lxc-start", "-P", path, "-n", name, "-d"]
        if debug:
            cmd += ["-l", "DEBUG"]
        proc = run(cmd, check=False)
        wait = run(["lxc-wait", "-P", path, "-n", name, "-s", "RUNNING", "-t", "30"], check=False)
        if proc.returncode or wait.returncode:
            log = self.ct_dir(vmid) / f"{vmid}.log"
            tail = log.read_text().strip().splitlines()[-3:] if log.exists() else []
            raise TaskFailed(f"startup for container '{vmid}' failed: {' | '.join(tail) or proc.stderr.strip()}")

    def stop(self, vmid: int, kill: bool, timeout: int = 60, force: bool = False) -> None:
        # PVE::LXC::vm_stop: --kill, or a clean shutdown that is killed after the timeout only when forced
        cmd = ["lxc-stop", "-P", str(self.lxc_path), "-n", str(vmid)]
        cmd += ["--kill"] if kill else ["--timeout", str(timeout)] + ([] if force else ["--nokill"])
        run(cmd, timeout=timeout + 30)

    def destroy(self, vmid: int) -> None:
        if self.state(vmid)[0] == "running":
            self.stop(vmid, kill=True)
        shutil.rmtree(self.ct_dir(vmid), ignore_errors=True)

    def used_bytes(self, vmid: int) -> int:
        # du walks the whole rootfs: the module polls /cluster/resources, so keep the figure 30 s
        cached = self._du.get(vmid)
        if cached and time.monotonic() - cached[0] < 30:
            return cached[1]
        out = run(["du", "-sxb", str(self.ct_dir(vmid) / "rootfs")], check=False).stdout.split()
        self._du[vmid] = (time.monotonic(), int(out[0]) if out else 0)
        return self._du[vmid][1]

    def memory_used(self, vmid: int) -> int:
        for path in (
            f"/sys/fs/cgroup/memory/lxc.payload.{vmid}/memory.usage_in_bytes",
            f"/sys/fs/cgroup/lxc.payload.{vmid}/memory.current",
        ):
            with contextlib.suppress(OSError, ValueError):
                return int(Path(path).read_text())
        return 0


def cleanup(settings: Settings) -> list[str]:
    """Remove every container, veth, bridge, NAT table and file a stand-in with these settings made.

    Safe to run at any time (also when nothing is left); returns what it removed.
    """
    settings.check()
    done: list[str] = []
    lxc_path = Path(settings.lxc_path)
    if lxc_path.is_dir():
        for ct in sorted(p for p in lxc_path.iterdir() if p.is_dir()):
            state = run(["lxc-info", "-P", str(lxc_path), "-n", ct.name, "-s"], check=False).stdout
            if re.search(r"(?m)^State:\s+(?!STOPPED)", state):
                run(["lxc-stop", "-P", str(lxc_path), "-n", ct.name, "--kill"], check=False)
            shutil.rmtree(ct, ignore_errors=True)
            done.append(f"container {ct.name}")
    for link in json.loads(run(["ip", "-j", "link", "show", "master", settings.bridge], check=False).stdout or "[]"):
        run(["ip", "link", "del", "dev", link["ifname"]], check=False)
        done.append(f"veth {link['ifname']}")
    if run(["nft", "list", "table", "ip", settings.nft_table], check=False).returncode == 0:
        run(["nft", "delete", "table", "ip", settings.nft_table])
        done.append(f"nft table {settings.nft_table}")
    if run(["ip", "link", "show", "dev", settings.bridge], check=False).returncode == 0:
        run(["ip", "link", "del", "dev", settings.bridge])
        done.append(f"bridge {settings.bridge}")
    record = Path(settings.state_dir) / "host.json"
    changed = json.loads(record.read_text()) if record.exists() else {}
    others = run(["nft", "list", "tables"], check=False).stdout
    # give forwarding back only when no other embedstack environment (lab, molecule) still needs it
    if changed.get("ip_forward") == "0" and "embedstack_" not in others:
        run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
        done.append("net.ipv4.ip_forward=1 (set back to 0)")
    if Path(settings.state_dir).exists():
        shutil.rmtree(settings.state_dir, ignore_errors=True)
        done.append(f"state {settings.state_dir}")
    return done


# --------------------------------------------------------------------------------------------------
# The API


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Any
    params: dict[str, dict]
    proxyto_node: bool = True


class StandIn:
    def __init__(self, settings: Settings):
        self.s = settings
        self.node = settings.node
        state = Path(settings.state_dir)
        self.conf_dir = state / "pve" / "nodes" / self.node / "lxc"
        self.qemu_dir = state / "pve" / "nodes" / self.node / "qemu-server"
        for d in (self.conf_dir, self.qemu_dir, state / "tasks", Path(settings.lxc_path)):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.request_log = state / "requests.jsonl"
        self.tasks = Tasks(self.node, state / "tasks")
        self.machine = Machine(settings)
        self.templates = list(settings.templates)
        self.config_lock = threading.RLock()
        self.ct_locks: dict[int, threading.Lock] = {}
        self.routes = self._routes()
        for guest in settings.guests:
            self._seed(guest)

    # state -----------------------------------------------------------------------------------------

    def _seed(self, guest: dict[str, Any]) -> None:
        vmid, kind = int(guest["vmid"]), guest.get("type", "lxc")
        if kind == "qemu":
            (self.qemu_dir / f"{vmid}.conf").write_text(f"name: {guest.get('name', f'VM{vmid}')}\nmemory: 2048\n")
            return
        conf = {
            "arch": "amd64",
            "hostname": guest.get("name", f"CT{vmid}"),
            "memory": "512",
            "swap": "512",
            "ostype": "debian",
            "rootfs": f"local-lvm:vm-{vmid}-disk-0,size=8G",
            "unprivileged": "1",
            "lxc": [],
        }
        if guest.get("tags"):
            conf["tags"] = unique_tags(guest["tags"])
        self._write_conf(vmid, conf)

    def _conf_path(self, vmid: int) -> Path:
        return self.conf_dir / f"{vmid}.conf"

    def _load_conf(self, vmid: int) -> tuple[dict[str, Any], str]:
        path = self._conf_path(vmid)
        if not path.exists():
            raise die(f"Configuration file 'nodes/{self.node}/lxc/{vmid}.conf' does not exist")
        raw = path.read_text()
        return parse_config(raw), hashlib.sha1(raw.encode()).hexdigest()

    def _write_conf(self, vmid: int, conf: dict[str, Any]) -> None:
        path = self._conf_path(vmid)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(write_config(conf))
        tmp.rename(path)

    def _vmlist(self) -> dict[int, str]:
        ids = {int(p.stem): "lxc" for p in self.conf_dir.glob("*.conf")}
        ids.update({int(p.stem): "qemu" for p in self.qemu_dir.glob("*.conf")})
        return ids

    def _ct_lock(self, vmid: int) -> threading.Lock:
        with self.config_lock:
            return self.ct_locks.setdefault(vmid, threading.Lock())

    def _check_lock(self, conf: dict[str, Any]) -> None:
        if conf.get("lock"):
            raise die(f"CT is locked ({conf['lock']})")

    def _storage(self, sid: str) -> dict[str, Any]:
        if sid not in self.s.storages:
            raise die(f"storage '{sid}' does not exist")
        return self.s.storages[sid]

    def _status(self, vmid: int, conf: dict[str, Any]) -> dict[str, Any]:
        # PVE::LXC::vmstatus for one container
        state, pid = self.machine.state(vmid)
        rootfs = parse_property_string(ROOTFS_DESC, conf["rootfs"]) if conf.get("rootfs") else {}
        d: dict[str, Any] = {
            "vmid": vmid,
            "type": "lxc",
            "status": state,
            "name": re.sub(r"\s", "", conf.get("hostname") or f"CT{vmid}"),
            "cpus": int(conf.get("cores") or float(conf.get("cpulimit") or 0) or os.cpu_count() or 1),
            "maxmem": int(conf.get("memory", 512)) * 1024 * 1024,
            "maxswap": int(conf.get("swap", 0)) * 1024 * 1024,
            "maxdisk": parse_size(rootfs["size"]) if rootfs.get("size") else 4 * 1024**3,
            "disk": 0,
            "mem": 0,
            "swap": 0,
            "cpu": 0,
            "uptime": 0,
            "netin": 0,
            "netout": 0,
            "diskread": 0,
            "diskwrite": 0,
        }
        if conf.get("tags"):
            d["tags"] = conf["tags"]
        if conf.get("lock"):
            d["lock"] = conf["lock"]
        if conf.get("template") == "1":
            d["template"] = 1
        if pid:
            d["pid"] = pid
            d["disk"] = self.machine.used_bytes(vmid)
            d["mem"] = self.machine.memory_used(vmid)
            with contextlib.suppress(OSError):
                started = _proc_starttime_of(pid)
                d["uptime"] = int(float(Path("/proc/uptime").read_text().split()[0]) - started)
            for veth, counters in _net_dev().items():
                if re.fullmatch(rf"veth{vmid}i\d+", veth):
                    d["netout"] += counters[0]
                    d["netin"] += counters[1]
        return d

    # routing ---------------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        n, v = r"(?P<node>[^/]+)", r"(?P<vmid>[^/]+)"
        lxc = rf"/nodes/{n}/lxc/{v}"

        def r(method: str, path: str, handler, params: dict, proxy: bool = True) -> Route:
            return Route(method, re.compile(path), handler, params, proxy)

        status_params = {"node": NODE, "vmid": VMID}
        return [
            r("GET", r"/version", self.version, {}, proxy=False),
            r("GET", r"/nodes", self.nodes, {}, proxy=False),
            r(
                "GET",
                r"/cluster/resources",
                self.resources,
                {"type": {"type": "string", "optional": 1, "enum": ["vm", "storage", "node", "sdn"]}},
                proxy=False,
            ),
            r("GET", r"/cluster/nextid", self.nextid, {"vmid": {**VMID, "optional": 1}}, proxy=False),
            r("GET", rf"/nodes/{n}/storage", self.storage_index, {"node": NODE}),
            r(
                "GET",
                rf"/nodes/{n}/storage/(?P<storage>[^/]+)/content",
                self.storage_content,
                {
                    "node": NODE,
                    "storage": STORAGE_ID,
                    "content": {"type": "string", "optional": 1, "format": "pve-storage-content"},
                    "vmid": {**VMID, "optional": 1},
                },
            ),
            r("GET", rf"/nodes/{n}/aplinfo", self.aplinfo, {"node": NODE}),
            r(
                "POST",
                rf"/nodes/{n}/aplinfo",
                self.apl_download,
                {"node": NODE, "storage": STORAGE_ID, "template": {"type": "string", "maxLength": 255}},
            ),
            r("GET", rf"/nodes/{n}/lxc", self.vmlist, {"node": NODE}),
            r("POST", rf"/nodes/{n}/lxc", self.create_vm, CREATE_PARAMS),
            r(
                "GET",
                rf"{lxc}/config",
                self.vm_config,
                {
                    "node": NODE,
                    "vmid": VMID,
                    "current": BOOL,
                    "snapshot": {"type": "string", "optional": 1, "format": "pve-configid", "maxLength": 40},
                },
            ),
            r("PUT", rf"{lxc}/config", self.update_vm, UPDATE_PARAMS),
            r("GET", rf"{lxc}/status/current", self.vm_status, status_params),
            r(
                "POST",
                rf"{lxc}/status/start",
                self.vm_start,
                {**status_params, "skiplock": BOOL, "debug": BOOL},
            ),
            r(
                "POST",
                rf"{lxc}/status/shutdown",
                self.vm_shutdown,
                {**status_params, "timeout": {"type": "integer", "optional": 1, "minimum": 0}, "forceStop": BOOL},
            ),
            r(
                "POST",
                rf"{lxc}/status/stop",
                self.vm_stop,
                {**status_params, "skiplock": BOOL, "overrule-shutdown": BOOL},
            ),
            r(
                "DELETE",
                lxc,
                self.destroy_vm,
                {**status_params, "force": BOOL, "purge": BOOL, "destroy-unreferenced-disks": BOOL},
            ),
            r(
                "GET",
                rf"/nodes/{n}/tasks/(?P<upid>[^/]+)/status",
                self.task_status,
                {"node": NODE, "upid": {"type": "string"}},
            ),
            r(
                "GET",
                rf"/nodes/{n}/tasks/(?P<upid>[^/]+)/log",
                self.task_log,
                {
                    "node": NODE,
                    "upid": {"type": "string"},
                    "start": {"type": "integer", "optional": 1, "minimum": 0},
                    "limit": {"type": "integer", "optional": 1, "minimum": 0},
                    "download": BOOL,
                },
            ),
        ]

    def dispatch(self, method: str, rel: str, params: dict[str, Any], user: str) -> tuple[Any, dict[str, Any]]:
        """PVE::HTTPServer::rest_handler: find the method, merge URI params, proxy check, validate, run."""
        for route in self.routes:
            m = route.pattern.fullmatch(rel)
            if m and route.method == method:
                break
        else:
            raise ApiError(501, f"Method '{method} {rel}' not implemented")
        uri = {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
        for key in sorted(params):
            if key in uri and uri[key] != params[key]:
                raise param_exc({key: "duplicate parameter (already defined in URI) with conflicting values!"})
            uri[key] = params[key]
        if route.proxyto_node and uri["node"] not in (self.node, "localhost"):
            # PVE would proxy to that node: its name must resolve (PVE::Network::get_ip_from_hostname)
            node = uri["node"]
            raise die(
                f"hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
            )
        self._normalize(uri, route.params)
        errors: dict[str, str] = {}
        check_object(None, route.params, uri, errors)
        if errors:
            raise param_exc(errors)
        extra: dict[str, Any] = {}
        return route.handler(uri, user, extra), extra

    @staticmethod
    def _normalize(params: dict[str, Any], schema: dict[str, dict]) -> None:
        # RESTHandler's normalize_legacy_param_formats: repeated keys of a *-list string are joined
        for key, value in params.items():
            sub = schema.get(key, {})
            fmt = sub.get("format")
            if (
                isinstance(value, list)
                and sub.get("type") == "string"
                and isinstance(fmt, str)
                and fmt.endswith("-list")
            ):
                params[key] = ",".join(value)

    # endpoints: cluster ----------------------------------------------------------------------------

    def version(self, p, user, extra):
        return dict(self.s.version)

    def nodes(self, p, user, extra):
        return [
            {
                "node": self.node,
                "id": f"node/{self.node}",
                "type": "node",
                "status": "online",
                "maxcpu": os.cpu_count(),
                "maxmem": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                "level": "",
                "ssl_fingerprint": getattr(self, "fingerprint", ""),
            }
        ]

    def resources(self, p, user, extra):
        out: list[dict[str, Any]] = []
        kind = p.get("type")
        if kind in (None, "vm"):
            for vmid, vtype in sorted(self._vmlist().items()):
                if vtype == "qemu":
                    name = re.search(r"(?m)^name: (.*)$", (self.qemu_dir / f"{vmid}.conf").read_text())
                    out.append(
                        {
                            "id": f"qemu/{vmid}",
                            "type": "qemu",
                            "vmid": vmid,
                            "node": self.node,
                            "name": name.group(1) if name else f"VM{vmid}",
                            "status": "stopped",
                            "template": 0,
                        }
                    )
                    continue
                with contextlib.suppress(ApiError):
                    conf, _ = self._load_conf(vmid)
                    st = self._status(vmid, conf)
                    entry = {k: st[k] for k in st if k not in ("pid", "maxswap", "swap", "cpus")}
                    entry.update(id=f"lxc/{vmid}", node=self.node, maxcpu=st["cpus"], template=st.get("template", 0))
                    out.append(entry)
        if kind in (None, "node"):
            out.append({"id": f"node/{self.node}", "type": "node", "node": self.node, "status": "online"})
        if kind in (None, "storage"):
            for sid, scfg in sorted(self.s.storages.items()):
                out.append(
                    {
                        "id": f"storage/{self.node}/{sid}",
                        "type": "storage",
                        "storage": sid,
                        "node": self.node,
                        "status": "available",
                        "plugintype": scfg["type"],
                        "content": ",".join(scfg["content"]),
                        "shared": 0,
                    }
                )
        return out

    def nextid(self, p, user, extra):
        ids = self._vmlist()
        if vmid := p.get("vmid"):
            if int(vmid) in ids:
                raise param_exc({"vmid": f"VM {vmid} already exists"})
            return int(vmid)
        # PVE's JSON carries it as a string, and community.proxmox passes it on as such
        return str(next(i for i in range(100, 1_000_000) if i not in ids))

    # endpoints: storage ----------------------------------------------------------------------------

    def storage_index(self, p, user, extra):
        return [
            {
                "storage": sid,
                "type": s["type"],
                "content": ",".join(s["content"]),
                "active": 1,
                "enabled": 1,
                "shared": 0,
            }
            for sid, s in sorted(self.s.storages.items())
        ]

    def storage_content(self, p, user, extra):
        sid = p["storage"]
        scfg = self._storage(sid)
        items: list[dict[str, Any]] = []
        for volid in self.templates:
            if volid.startswith(f"{sid}:"):
                name = volid.split("/", 1)[1]
                fmt = {"zst": "tzst", "gz": "tgz", "xz": "txz"}.get(name.rsplit(".", 1)[-1], "raw")
                items.append(
                    {"volid": volid, "content": "vztmpl", "format": fmt, "size": 129_384_448, "ctime": 1_735_689_600}
                )
        if "rootdir" in scfg["content"]:
            for vmid, vtype in sorted(self._vmlist().items()):
                if vtype != "lxc":
                    continue
                with contextlib.suppress(ApiError):
                    conf, _ = self._load_conf(vmid)
                    root = parse_property_string(ROOTFS_DESC, conf["rootfs"]) if conf.get("rootfs") else {}
                    if root.get("volume", "").startswith(f"{sid}:"):
                        items.append(
                            {
                                "volid": root["volume"],
                                "content": "rootdir",
                                "format": "raw",
                                "vmid": vmid,
                                "size": parse_size(root.get("size", "4G")),
                            }
                        )
        if content := p.get("content"):
            items = [i for i in items if i["content"] == content]
        if vmid := p.get("vmid"):
            items = [i for i in items if i.get("vmid") == int(vmid)]
        return items

    def aplinfo(self, p, user, extra):
        return [
            {"template": t, "type": "lxc", "os": t.split("-")[0], "package": t.rsplit("_", 2)[0], "section": "system"}
            for t in self.s.appliances
        ]

    def apl_download(self, p, user, extra):
        template, sid = p["template"], p["storage"]
        if template not in self.s.appliances:
            raise param_exc({"template": "no such template"})
        scfg = self._storage(sid)
        if "vztmpl" not in scfg["content"]:
            raise die(f"storage '{sid}' does not support templates")
        volid = f"{sid}:vztmpl/{template}"

        def work(log):
            # nothing is downloaded: the template becomes listed, and unpacks to the cached base rootfs
            log(
                f"downloading http://download.proxmox.com/images/system/{template} to "
                f"{scfg.get('path', '/var/lib/vz')}/template/cache/{template}"
            )
            log("pve-standin: no download; the template is backed by the cached Debian 12 rootfs")
            with self.config_lock:
                if volid not in self.templates:
                    self.templates.append(volid)
            log("download of template finished")

        return self.tasks.fork_worker("download", template, user, work)

    # endpoints: containers -------------------------------------------------------------------------

    def vmlist(self, p, user, extra):
        out = []
        for vmid, vtype in sorted(self._vmlist().items()):
            if vtype == "lxc":
                with contextlib.suppress(ApiError):
                    conf, _ = self._load_conf(vmid)
                    out.append(self._status(vmid, conf))
        return out

    def _apply_conf_params(self, vmid: int, conf: dict[str, Any], params: dict[str, Any]) -> None:
        # PVE::LXC::Config::update_pct_config for a stopped container: check, normalise, store
        for key in sorted(params):
            value = params[key]
            if key == "rootfs" or re.fullmatch(r"mp\d+", key):
                mp = parse_property_string(ROOTFS_DESC if key == "rootfs" else MP_DESC, value)
                volume = mp["volume"]
                if m := re.fullmatch(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)", volume, re.I):
                    scfg = self._storage(m.group(1))
                    if "rootdir" not in scfg["content"]:
                        raise die(f"storage '{m.group(1)}' does not allow content type 'rootdir' (Container)")
            elif key == "unprivileged":
                raise die(f"unable to modify read-only option: '{key}'")
            elif key == "nameserver" or key == "searchdomain":
                value = " ".join(split_list(value))
            elif key == "tags":
                value = unique_tags(value)
            elif re.fullmatch(r"net\d+", key):
                net = parse_property_string(NETCONF_DESC, value)
                net["type"] = "veth"
                if not net.get("hwaddr"):
                    # PVE::Tools::random_ether_addr with the datacenter's default prefix
                    tail = ":".join(f"{random.randrange(256):02X}" for _ in range(3))
                    net["hwaddr"] = f"{self.s.mac_prefix}:{tail}"
                value = print_property_string(net, NETCONF_DESC)
            conf[key] = value

    def create_vm(self, p, user, extra):
        vmid = int(p.pop("vmid"))
        p.pop("node")
        for unused in ("ignore-unpack-errors", "bwlimit"):
            p.pop(unused, None)
        start_after_create = p.pop("start", "0") == "1"
        if p.pop("ha-managed", "0") == "1" or p.pop("restore", "0") == "1":
            raise ApiError(501, "pve-standin: restore and ha-managed are not implemented")
        p.pop("unique", None)
        unprivileged = p.pop("unprivileged", "1")
        force = p.pop("force", "0") == "1"
        with self.config_lock:
            ids = self._vmlist()
            if vmid in ids and not force:
                raise die(f"{'VM' if ids[vmid] == 'qemu' else 'CT'} {vmid} already exists on node '{self.node}'")
            if vmid in ids:
                raise ApiError(501, "pve-standin: force-overwriting an existing guest is not implemented")
        password = p.pop("password", None)
        ssh_keys = p.pop("ssh-public-keys", None)
        if ssh_keys:
            for line in ssh_keys.split("\n"):
                if line.strip() and run(["ssh-keygen", "-l", "-f", "-"], check=False, input=line).returncode:
                    raise die("SSH public key validation error")
        if pool := p.pop("pool", None):
            raise die(f"pool '{pool}' does not exist")
        ostemplate = p.pop("ostemplate")
        storage = p.pop("storage", "local")
        # PVE::Storage::check_volume_access for the template
        m = re.fullmatch(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)", ostemplate, re.I)
        if not m:
            raise die("Only root can pass arbitrary filesystem paths.")
        tmpl_store, volname = m.groups()
        tmpl_cfg = self._storage(tmpl_store)
        if not volname.startswith("vztmpl/"):
            raise die(f"unable to use volume {ostemplate} - content type needs to be 'vztmpl'")
        disks = {k: p.pop(k) for k in list(p) if k == "rootfs" or re.fullmatch(r"mp\d+|unused\d+", k)}
        if any(k != "rootfs" for k in disks):
            raise ApiError(501, "pve-standin: mount points (mpN/unusedN) are not implemented")
        rootfs = disks.get("rootfs") or f"{storage}:4"  # PVE's default: 4 GiB on the default storage
        if re.fullmatch(r"\d+(\.\d+)?", rootfs):
            rootfs = f"{storage}:{rootfs}"
        try:
            root = parse_property_string(ROOTFS_DESC, rootfs)
        except FormatError as e:
            raise param_exc({"rootfs": f"invalid format - {e}"}) from None
        new_disk = re.fullmatch(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(\d+(?:\.\d+)?)", root["volume"], re.I)
        if not new_disk:
            raise ApiError(501, "pve-standin: only new volumes (STORAGE:SIZE_GiB) can be the rootfs")
        disk_store, size_gb = new_disk.groups()
        if "rootdir" not in self._storage(disk_store)["content"]:
            raise param_exc({"storage": f"storage '{disk_store}' does not support container directories"})

        conf: dict[str, Any] = {"lxc": []}
        self._apply_conf_params(vmid, conf, p)
        if unprivileged == "1":
            conf["unprivileged"] = "1"
        with self.config_lock:
            # create_and_lock_config: the vmid is taken (and visible, locked) before the worker runs
            if self._conf_path(vmid).exists() or vmid in self._vmlist():
                raise die(f"unable to create CT {vmid} - CT {vmid} already exists on node '{self.node}'")
            self._write_conf(vmid, {"lock": "create", "lxc": []})

        def work(log):
            with self._ct_lock(vmid):
                try:
                    template_path = f"{tmpl_cfg.get('path', '/var/lib/vz')}/template/cache/{volname.split('/', 1)[1]}"
                    if ostemplate not in self.templates:
                        raise TaskFailed(f"can't find file '{template_path}'")
                    volume = f"{disk_store}:vm-{vmid}-disk-0"
                    size = int(float(size_gb) * 1024**3)
                    log(f'  Logical volume "vm-{vmid}-disk-0" created.')
                    log(f"extracting archive '{template_path}'")
                    rootfs_dir = self.machine.create_rootfs(vmid, log)
                    log("Detected container architecture: amd64")
                    conf.update(
                        {
                            "arch": "amd64",
                            "ostype": "debian" if (rootfs_dir / "etc/debian_version").exists() else "unmanaged",
                            "rootfs": print_property_string({**root, "volume": volume, "size": size}, ROOTFS_DESC),
                        }
                    )
                    conf.setdefault("hostname", f"CT{vmid}")
                    conf.setdefault("memory", "512")
                    conf.setdefault("swap", "512")
                    self.machine.customize(rootfs_dir, conf, ssh_keys, password, log)
                    self._write_conf(vmid, conf)
                except Exception as e:
                    self.machine.destroy(vmid)
                    self._conf_path(vmid).unlink(missing_ok=True)
                    raise TaskFailed(f"unable to create CT {vmid} - {e}") from e
            if start_after_create:
                self._start(vmid, False, log)

        return self.tasks.fork_worker("vzcreate", str(vmid), user, work)

    def vm_config(self, p, user, extra):
        vmid = int(p["vmid"])
        conf, digest = self._load_conf(vmid)
        if p.get("snapshot"):
            raise param_exc({"snapshot": f"snapshot '{p['snapshot']}' does not exist"})
        return {**typed_config(conf), "digest": digest}

    def update_vm(self, p, user, extra):
        vmid = int(p.pop("vmid"))
        p.pop("node")
        digest = p.pop("digest", None)
        if not p:
            raise die("no options specified")
        delete = split_list(p.pop("delete", ""))
        revert = split_list(p.pop("revert", ""))
        if revert:
            raise ApiError(501, "pve-standin: pending changes (revert) are not implemented")
        with self._ct_lock(vmid), self.config_lock:
            conf, current = self._load_conf(vmid)
            self._check_lock(conf)
            if digest and digest != current:
                raise die("detected modified configuration - file changed by other user? Try again.")
            for opt in delete:
                if opt not in CONFDESC:
                    raise param_exc({"delete": f"unknown option '{opt}'"})
                if opt in p:
                    raise param_exc({"delete": f"you can't use '-{opt}' and -delete {opt}' at the same time"})
            for opt in delete:
                if opt in ("memory", "rootfs", "ostype"):
                    raise die(f"unable to delete required option '{opt}'")
                if opt == "unprivileged":
                    raise die(f"unable to delete read-only option: '{opt}'")
                conf.pop(opt, None)
            # the stand-in applies every change at once; PVE keeps what cannot be hot-plugged into a
            # running container as pending (GET config shows pending values either way)
            self._apply_conf_params(vmid, conf, p)
            self._write_conf(vmid, conf)
        return None

    def vm_status(self, p, user, extra):
        vmid = int(p["vmid"])
        conf, _ = self._load_conf(vmid)
        return {**self._status(vmid, conf), "ha": {"managed": 0}}

    def _start(self, vmid: int, debug: bool, log) -> None:
        with self._ct_lock(vmid):
            conf, _ = self._load_conf(vmid)
            self._check_lock(conf)
            if conf.get("template") == "1":
                raise TaskFailed("you can't start a CT if it's a template")
            if not (self.machine.ct_dir(vmid) / "rootfs").is_dir():
                raise TaskFailed(f"pve-standin: CT {vmid} has no root filesystem on this node (a seeded guest?)")
            self.machine.start(vmid, conf, debug)
            log(f"pve-standin: CT {vmid} started by lxc-start")

    def vm_start(self, p, user, extra):
        vmid = int(p["vmid"])
        if self.machine.state(vmid)[0] == "running":
            raise die(f"CT {vmid} already running")
        debug = p.get("debug") == "1"
        return self.tasks.fork_worker("vzstart", str(vmid), user, lambda log: self._start(vmid, debug, log))

    def vm_shutdown(self, p, user, extra):
        vmid = int(p["vmid"])
        timeout = int(p.get("timeout", 60))
        force = p.get("forceStop") == "1"
        if self.machine.state(vmid)[0] != "running":
            raise die(f"CT {vmid} not running")

        def work(log):
            with self._ct_lock(vmid):
                conf, _ = self._load_conf(vmid)
                self._check_lock(conf)
                self.machine.stop(vmid, kill=False, timeout=timeout, force=force)

        return self.tasks.fork_worker("vzshutdown", str(vmid), user, work)

    def vm_stop(self, p, user, extra):
        vmid = int(p["vmid"])
        if self.machine.state(vmid)[0] != "running":
            raise die(f"CT {vmid} not running")

        def work(log):
            with self._ct_lock(vmid):
                conf, _ = self._load_conf(vmid)
                if p.get("skiplock") != "1":
                    self._check_lock(conf)
                self.machine.stop(vmid, kill=True)

        return self.tasks.fork_worker("vzstop", str(vmid), user, work)

    def destroy_vm(self, p, user, extra):
        vmid = int(p["vmid"])
        conf, _ = self._load_conf(vmid)
        self._check_lock(conf)
        force = p.get("force") == "1"
        running_msg = f"unable to destroy CT {vmid} - container is running"
        if not force and self.machine.state(vmid)[0] == "running":
            raise die(running_msg)

        def work(log):
            with self._ct_lock(vmid):
                self._check_lock(self._load_conf(vmid)[0])
                if self.machine.state(vmid)[0] == "running":
                    if not force:
                        raise TaskFailed(running_msg)
                    log(f"forced to stop CT {vmid} before destroying!")
                    self.machine.stop(vmid, kill=True)
                with self.config_lock:
                    self._write_conf(vmid, {**self._load_conf(vmid)[0], "lock": "destroyed"})
                self.machine.destroy(vmid)
                log(f'  Logical volume "vm-{vmid}-disk-0" successfully removed.')
                if p.get("purge") == "1":
                    log(f"purging CT {vmid} from related configurations..")
                self._conf_path(vmid).unlink(missing_ok=True)

        return self.tasks.fork_worker("vzdestroy", str(vmid), user, work)

    # endpoints: tasks ------------------------------------------------------------------------------

    def task_status(self, p, user, extra):
        task = self.tasks.get(p["upid"])
        out = {k: task[k] for k in ("upid", "node", "pid", "pstart", "starttime", "type", "id", "user", "status")}
        if "!" in out["user"]:
            out["user"], out["tokenid"] = out["user"].split("!", 1)
        if task["status"] == "stopped":
            out["exitstatus"] = task["exitstatus"]
        return out

    def task_log(self, p, user, extra):
        task = self.tasks.get(p["upid"])
        start, limit = int(p.get("start", 0)), int(p.get("limit", 50))
        lines = task["path"].read_text().splitlines() if task["path"].exists() else []
        out = [{"n": i + 1, "t": t} for i, t in enumerate(lines)][start : start + limit if limit else None]
        if not lines:
            out = [{"n": 1, "t": "no content"}]
        extra["total"] = max(len(lines), 1)
        return out


def _proc_starttime_of(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")


def _net_dev() -> dict[str, tuple[int, int]]:
    out = {}
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, data = line.split(":", 1)
        fields = data.split()
        out[name.strip()] = (int(fields[0]), int(fields[8]))  # received, transmitted by the host side
    return out


# --------------------------------------------------------------------------------------------------
# HTTP: what pveproxy and PVE::APIServer::AnyEvent do around the handlers


def decode_urlencoded(data: str) -> dict[str, Any]:
    # repeated keys become lists (PVE::APIServer::AnyEvent::decode_urlencoded)
    res: dict[str, Any] = {}
    for kv in re.split(r"[&;]", data):
        if not kv:
            continue
        key, sep, value = kv.partition("=")
        key = urllib.parse.unquote_plus(key)
        if not sep:
            res[key] = None
            continue
        value = urllib.parse.unquote_plus(value)
        if key in res and res[key] is not None:
            res[key] = [*res[key], value] if isinstance(res[key], list) else [res[key], value]
        else:
            res[key] = value
    return res


def _json_scalars(data: dict[str, Any]) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, bool):
            return "1" if v else "0"
        if isinstance(v, int | float):
            return str(v)
        return v

    return {k: conv(v) for k, v in data.items()}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    sys_version = ""
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are logged as JSON lines instead

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _auth(self) -> str:
        header = self.headers.get("Authorization", "")
        if re.search(r"(?:^|\s)PVEAuthCookie(?:=| )", header) or "PVEAuthCookie=" in self.headers.get("Cookie", ""):
            raise ApiError(401, "Authentication failed!")  # the stand-in issues no tickets
        m = re.search(r"(?:^|\s)PVEAPIToken(?:=| )([^;]*)", header)
        if not m:
            raise ApiError(401, "No ticket")
        token = urllib.parse.unquote(m.group(1))
        tm = re.fullmatch(r"(.*)=(.*)", token, re.S)
        if (
            not tm
            or not self.server.standin.s.tokens.get(tm.group(1))
            or (not _consteq(self.server.standin.s.tokens[tm.group(1)], tm.group(2)))
        ):
            raise ApiError(401, "Authentication failed!")
        return tm.group(1)

    def _handle(self, method: str) -> None:
        standin = self.server.standin
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        params: dict[str, Any] = {}
        entry: dict[str, Any] = {"method": method, "path": path}
        try:
            if not path.startswith("/api2/json/"):
                raise ApiError(501, "no such uri")
            rel = path[len("/api2/json") :].rstrip("/") or "/"
            try:
                user = self._auth()
            except ApiError:
                time.sleep(standin.s.auth_failure_delay)  # pveproxy delays unauthorized answers by 3 s
                raise
            if length and method not in ("PUT", "POST"):
                raise ApiError(501, f"Unexpected content for method '{method}'")
            if body and self.headers.get("Content-Type", "").split(";")[0].strip() == "application/json":
                params = _json_scalars(json.loads(body))
            else:
                params = decode_urlencoded(body)
            params.update(decode_urlencoded(url.query))
            params.pop("_dc", None)
            entry["params"] = {k: ("<secret>" if k == "password" else v) for k, v in params.items()}
            try:
                data, extra = standin.dispatch(method, rel, dict(params), user)
            except (ValueError, KeyError, OSError, subprocess.SubprocessError) as e:
                raise die(f"pve-standin: {type(e).__name__}: {e}") from e  # PVE answers any other die() with 500
            self._reply(200, "OK", {"data": data, **extra})
            entry["status"] = 200
        except ApiError as e:
            entry.update(status=e.status, message=e.message, errors=e.errors)
            if e.status == 401:
                self._reply(401, e.message, None)  # pveproxy sends no body with a 401
            else:
                body_out: dict[str, Any] = {"data": None, "message": e.message}
                if e.errors:
                    body_out["errors"] = e.errors
                self._reply(e.status, e.message, body_out)
        finally:
            with standin.config_lock, standin.request_log.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def _reply(self, status: int, reason: str, payload: dict | None) -> None:
        raw = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status, reason.split("\n")[0])
        if payload is not None:
            self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Cache-Control", "max-age=0")
        self.send_header("Pragma", "no-cache")
        if status >= 400:
            self.send_header("Connection", "close")  # pveproxy ends keep-alive after an error
            self.close_connection = True
        self.end_headers()
        self.wfile.write(raw)


def _consteq(a: str, b: str) -> bool:
    return hashlib.sha256(a.encode()).digest() == hashlib.sha256(b.encode()).digest()


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, standin: StandIn, context: ssl.SSLContext):
        self.standin = standin
        super().__init__((standin.s.listen, standin.s.port), Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True)


def make_certificate(directory: Path, node: str) -> tuple[Path, Path, str]:
    """A self-signed certificate for 127.0.0.1/localhost, like pveproxy's own at first install."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{node}.pve-standin.invalid")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "pve-ssl.pem", directory / "pve-ssl.key"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return cert_file, key_file, ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def serve(settings: Settings, ready_file: str | None) -> int:
    if os.geteuid() != 0:
        raise SystemExit("pve-standin: must run as root (it creates LXC containers and a bridge)")
    if not Path(settings.base_rootfs, "etc/debian_version").exists():
        raise SystemExit(f"pve-standin: no cached base rootfs at {settings.base_rootfs} (make lab builds it)")
    standin = StandIn(settings)
    standin.machine.setup_network()
    # a fresh temporary directory inside the state directory, so cleanup also removes it after a crash
    tls_dir = Path(tempfile.mkdtemp(prefix="tls-", dir=settings.state_dir))
    try:
        cert, key, fingerprint = make_certificate(tls_dir, settings.node)
        standin.fingerprint = fingerprint
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = ApiServer(standin, context)
        host, port = server.server_address[:2]
        info = {
            "url": f"https://{host}:{port}/api2/json",
            "host": host,
            "port": port,
            "node": settings.node,
            "pid": os.getpid(),
            "ca_file": str(cert),
            "fingerprint": fingerprint,
            "lxc_path": settings.lxc_path,
            "state_dir": settings.state_dir,
            "request_log": str(standin.request_log),
        }
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        thread = threading.Thread(target=server.serve_forever, name="https", daemon=True)
        thread.start()
        if ready_file:
            Path(ready_file).write_text(json.dumps(info))
        print(json.dumps(info), flush=True)
        while not stop.wait(1):
            pass
        server.shutdown()
        server.server_close()
        standin.tasks.wait_all(60)
    finally:
        shutil.rmtree(tls_dir, ignore_errors=True)
        # a test node: nothing it created outlives it
        for item in cleanup(settings):
            print(f"pve-standin: removed {item}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["serve", "cleanup"])
    parser.add_argument("--config", help="JSON settings (see Settings in this file and the README)")
    parser.add_argument("--ready-file", help="write the URL, port and CA file here once listening")
    args = parser.parse_args(argv)
    settings = Settings.load(args.config)
    if args.command == "cleanup":
        for item in cleanup(settings):
            print(f"removed {item}")
        return 0
    return serve(settings, args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
