"""The stand-in node's settings (JSON, every key optional), and what a stand-in must never touch.

Upstream: the defaults are those of a fresh Proxmox VE 9 install (pve-manager 9.2: `pveversion`,
`/etc/pve/storage.cfg` with `local` and `local-lvm`, pveproxy's 3 s delay before a 401, the
`BC:24:11` MAC prefix of the datacenter config) and pveam's appliance index (`aplinfo`).
See tests/proxmox/README.md for the table of settings.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    # the root devN paths are looked up under: /dev/nvidia0 is <dev_root>/dev/nvidia0 (tests put stand-in nodes there)
    dev_root: str = "/"

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
