"""PVE::Exception, PVE::JSONSchema and the container schemas and config file format the LXC endpoints use.

Upstream: pve-common (`src/PVE/Exception.pm`, `src/PVE/JSONSchema.pm`: check_prop, check_object,
parse_property_string, print_property_string and the register_format verifiers;
`src/PVE/Tools.pm` split_list), pve-storage (the storage and volume ID formats),
pve-access-control (the pool ID format), pve-guest-common (`PVE/GuestHelpers.pm` get_unique_tags)
and pve-container 6.1 (`src/PVE/LXC/Config.pm`: confdesc, the property strings net0, rootfs/mpN,
features, devN, parse_pct_config and write_pct_config; `src/PVE/API2/LXC.pm` and
`src/PVE/API2/LXC/Config.pm`: the create and update parameters).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from pathlib import Path
from typing import Any


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
