#!/usr/bin/python
"""Write NVIDIA passthrough entries into the main section of a Proxmox VE container config (stdlib only)."""

# Ansible modules keep DOCUMENTATION/RETURN above the imports.
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
module: pve_lxc_gpu_config
short_description: Write NVIDIA passthrough entries into /etc/pve/lxc/<vmid>.conf
description:
  - Edits only the main section of the config (the lines before the first C([...]) header); snapshot and
    pending sections, the description comments and every line the module does not own stay byte for byte.
  - The module owns C(devN) entries and C(lxc.mount.entry) lines whose device path matches O(owned_regex) or is in
    O(devices), and C(lxc.cgroup2.devices.allow) lines for the nvidia and nvidia-uvm majors. Owned lines of the
    syntax not chosen are removed, so switching O(syntax) is clean.
  - Takes the same flock as pct (C(<lock_dir>/pve-config-<vmid>.lock)), refuses a container with a C(lock:)
    entry, and replaces the file with a write to C(<file>.tmp.<pid>) and a rename, as PVE's own tools do.
options:
  path: {type: path, required: true, description: The container config file.}
  vmid: {type: int, required: true, description: Container id (names the lock file).}
  syntax: {type: str, choices: [dev, classic], default: dev, description: devN entries or raw lxc keys.}
  devices: {type: list, elements: str, required: true, description: Device nodes to pass through.}
  owned_regex: {type: str, default: ^/dev/nvidia, description: Device paths this module owns.}
  nvidia_major: {type: int, required: true, description: Major of /dev/nvidia*.}
  uvm_major: {type: int, required: true, description: Major of /dev/nvidia-uvm*.}
  gid: {type: str, default: "", description: gid option of devN entries; empty leaves it out.}
  mode: {type: str, default: "", description: "mode option of devN entries, 0[0-7]{3} as PVE checks; empty: none."}
  lock_dir: {type: path, default: /run/lock/lxc, description: Directory of PVE's config locks.}
  lock_timeout: {type: int, default: 10, description: Seconds to wait for the config lock.}
author: embedstack
"""

RETURN = r"""
added: {description: Lines written that were not there before., type: list, returned: always}
removed: {description: Lines removed or replaced., type: list, returned: always}
"""

import contextlib
import errno
import fcntl
import os
import re
import time

from ansible.module_utils.basic import AnsibleModule

SECTION = re.compile(r"^\[[^\]]*\]\s*$")
DEV_LINE = re.compile(r"^dev(\d+):\s*(.*?)\s*$")
LXC_LINE = re.compile(r"^(lxc\.[a-z0-9_\-.]+)(?::|\s*=)\s*(.*?)\s*$")
LOCK_LINE = re.compile(r"^lock:\s*(\S+)")
ALLOW_KEY = "lxc.cgroup2.devices.allow"
MOUNT_KEY = "lxc.mount.entry"
MAX_DEVICES = 256  # PVE::LXC::Config $MAX_DEVICES: dev0 .. dev255


def parse_dev(value: str) -> tuple[str, dict[str, str]]:
    """Split a devN value ([path=]<path>[,gid=..][,mode=..][,uid=..][,deny-write=..]) into path and options."""
    path, options = "", {}
    for i, part in enumerate(p.strip() for p in value.split(",")):
        if "=" in part:
            key, val = part.split("=", 1)
            if key == "path":
                path = val
            else:
                options[key] = val
        elif i == 0:
            path = part
    return path, options


def dev_value(path: str, options: dict[str, str]) -> str:
    return ",".join([path] + [f"{k}={v}" for k, v in sorted(options.items())])


def main_section_end(lines: list[str]) -> int:
    return next((i for i, line in enumerate(lines) if SECTION.match(line)), len(lines))


def append_point(main: list[str]) -> int:
    """Index after the last non-blank line of the main section (blank lines before [snapshot] stay below)."""
    end = len(main)
    while end > 0 and not main[end - 1].strip():
        end -= 1
    return end


@contextlib.contextmanager
def pve_config_lock(lock_dir: str, vmid: int, timeout: int):
    os.makedirs(lock_dir, exist_ok=True)
    fd = os.open(os.path.join(lock_dir, f"pve-config-{vmid}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


class Editor:
    def __init__(self, params: dict) -> None:
        self.p = params
        self.owned = re.compile(params["owned_regex"])
        self.devices = list(dict.fromkeys(params["devices"]))
        self.majors = {params["nvidia_major"], params["uvm_major"]}

    def owns_path(self, path: str) -> bool:
        return path in self.devices or bool(self.owned.search(path))

    def owned_kind(self, line: str) -> str | None:
        """'dev', 'classic' or None (not ours)."""
        m = DEV_LINE.match(line)
        if m:
            return "dev" if self.owns_path(parse_dev(m.group(2))[0]) else None
        m = LXC_LINE.match(line)
        if not m:
            return None
        key, tokens = m.group(1), m.group(2).split()
        if key == ALLOW_KEY:
            major = re.fullmatch(r"(\d+):\*", tokens[1]) if len(tokens) == 3 and tokens[0] == "c" else None
            return "classic" if major and int(major.group(1)) in self.majors else None
        if key == MOUNT_KEY and tokens and self.owns_path(tokens[0]):
            return "classic"
        return None

    def desired_options(self) -> dict[str, str]:
        return {k: str(self.p[k]) for k in ("gid", "mode") if str(self.p[k])}

    def classic_lines(self) -> list[str]:
        lines = [f"{ALLOW_KEY}: c {major}:* rwm" for major in (self.p["nvidia_major"], self.p["uvm_major"])]
        lines += [f"{MOUNT_KEY}: {d} {d.lstrip('/')} none bind,optional,create=file" for d in self.devices]
        return list(dict.fromkeys(lines))

    def edit_dev(self, main: list[str]) -> list[str]:
        wanted = self.desired_options()
        out: list[str] = []
        seen: set[str] = set()
        for line in main:
            kind = self.owned_kind(line)
            if kind == "classic":
                continue
            if kind == "dev":
                m = DEV_LINE.match(line)
                path, options = parse_dev(m.group(2))
                if path not in self.devices or path in seen:
                    continue
                seen.add(path)
                if options != wanted:
                    line = f"dev{m.group(1)}: {dev_value(path, wanted)}"
            out.append(line)
        used = {int(m.group(1)) for m in map(DEV_LINE.match, out) if m}
        foreign = {int(m.group(1)) for m in map(DEV_LINE.match, out) if m and not self.owned_kind(m.group(0))}
        index = max(foreign) + 1 if foreign else 0
        new: list[str] = []
        for path in self.devices:
            if path in seen:
                continue
            while index in used:
                index += 1
            if index >= MAX_DEVICES:
                raise ValueError(f"no free devN slot below dev{MAX_DEVICES} for {path}")
            used.add(index)
            new.append(f"dev{index}: {dev_value(path, wanted)}")
        if new:
            dev_rows = [i for i, line in enumerate(out) if DEV_LINE.match(line)]
            lxc_rows = [i for i, line in enumerate(out) if LXC_LINE.match(line)]
            at = dev_rows[-1] + 1 if dev_rows else (lxc_rows[0] if lxc_rows else append_point(out))
            out[at:at] = new
        return out

    def edit_classic(self, main: list[str]) -> list[str]:
        wanted = self.classic_lines()
        norm = {" ".join(line.replace(":", " ", 1).split()): line for line in wanted}
        out: list[str] = []
        seen: set[str] = set()
        for line in main:
            kind = self.owned_kind(line)
            if kind == "dev":
                continue
            if kind == "classic":
                m = LXC_LINE.match(line)
                key = " ".join([m.group(1), *m.group(2).split()])
                if key not in norm or key in seen:
                    continue
                seen.add(key)
            out.append(line)
        at = append_point(out)
        out[at:at] = [line for key, line in norm.items() if key not in seen]
        return out


def run(module: AnsibleModule) -> dict:
    p = module.params
    path = p["path"]
    if not os.path.isfile(path):
        module.fail_json(msg=f"container {p['vmid']} has no config at {path}: is it a container on this PVE node?")
    with pve_config_lock(p["lock_dir"], p["vmid"], p["lock_timeout"]):
        with open(path, encoding="utf-8") as handle:
            before = handle.read()
        lines = before.splitlines()
        end = main_section_end(lines)
        main, rest = lines[:end], lines[end:]
        locked = next((m.group(1) for m in map(LOCK_LINE.match, main) if m), None)
        editor = Editor(p)
        try:
            new_main = editor.edit_dev(main) if p["syntax"] == "dev" else editor.edit_classic(main)
        except ValueError as exc:
            module.fail_json(msg=f"container {p['vmid']}: {exc}")
        after = "\n".join(new_main + rest) + ("\n" if before.endswith("\n") or not before else "")
        result = {
            "changed": after != before,
            "added": [line for line in new_main if line not in main],
            "removed": [line for line in main if line not in new_main],
            "diff": {"before": before, "after": after, "before_header": path, "after_header": path},
        }
        if result["changed"] and locked:
            module.fail_json(
                msg=f"container {p['vmid']} is locked ({locked}); wait for that task or run pct unlock", **result
            )
        if result["changed"] and not module.check_mode:
            tmp = f"{path}.tmp.{os.getpid()}"
            try:
                with open(tmp, "w", encoding="utf-8") as handle:
                    handle.write(after)
                    handle.flush()
                    os.fsync(handle.fileno())
                with contextlib.suppress(OSError):  # pmxcfs has fixed modes and refuses chmod
                    os.chmod(tmp, os.stat(path).st_mode & 0o7777)
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "vmid": {"type": "int", "required": True},
            "syntax": {"type": "str", "choices": ["dev", "classic"], "default": "dev"},
            "devices": {"type": "list", "elements": "str", "required": True},
            "owned_regex": {"type": "str", "default": "^/dev/nvidia"},
            "nvidia_major": {"type": "int", "required": True},
            "uvm_major": {"type": "int", "required": True},
            "gid": {"type": "str", "default": ""},
            "mode": {"type": "str", "default": ""},
            "lock_dir": {"type": "path", "default": "/run/lock/lxc"},
            "lock_timeout": {"type": "int", "default": 10},
        },
        supports_check_mode=True,
    )
    bad = [d for d in module.params["devices"] if not re.fullmatch(r"/dev/[A-Za-z0-9._/-]+", d)]
    if bad:
        module.fail_json(msg=f"not a device path under /dev: {', '.join(bad)}")
    # PVE's devN schema (pve-container src/PVE/LXC/Config.pm): gid is an integer, mode matches 0[0-7]{3}
    for key, pattern in (("gid", r"\d*"), ("mode", r"(0[0-7]{3})?")):
        if not re.fullmatch(pattern, module.params[key]):
            module.fail_json(msg=f"{key} must match {pattern}, got {module.params[key]!r}")
    module.exit_json(**run(module))


if __name__ == "__main__":
    main()
