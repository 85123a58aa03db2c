"""The machine side: real LXC containers, the node's bridge and NAT, and cleanup.

Upstream: pve-container 6.1 (`src/PVE/LXC.pm`: update_lxc_config for the LXC config a start writes,
calculate_memory_constraints, vm_stop, vmstatus; `src/PVE/LXC/Setup.pm` and `Setup/Debian.pm`:
the post_create_hook that sets hostname, hosts, resolv.conf, SSH host keys, root's keys and
password), pve-manager's bridge (`vmbr0`) and LXC itself (lxc.container.conf(5); lxc-start,
lxc-stop, lxc-info, lxc-wait with `-P <state>/lxc`).

Unprivileged containers (`unprivileged: 1`, PVE's default) run as PVE runs them: with PVE's id map
(`src/PVE/LXC.pm` parse_id_maps and update_lxc_config: `lxc.idmap = u 0 100000 65536` and the same for
gids, unless the config has its own `lxc.idmap` lines), from a root filesystem whose owners are shifted
into that range (`src/PVE/LXC/Create.pm` unpacks the template inside the user namespace; here the copy is
shifted after the post-create setup). LXC on this machine runs such containers when root starts them
(it writes the mapping itself); the container root (host uid 100000) must be able to traverse the path
to its root filesystem, so the stand-in adds o+x to the state directory's ancestors that lack it and
takes it back at cleanup.

`devN` entries are set up as PVE's prestart hook does (`src/lxc-pve-prestart-hook` calling
`src/PVE/LXC.pm` create_passthrough_device_node): a node with the host node's type and device number
under `<ct>/passthrough/<path>`, chmod to the entry's mode or 0660, chown to the entry's uid/gid
(default 0) mapped through the id map; a missing host node fails the start with PVE's message. The
cgroup allow line is update_lxc_config's, and the bind mount into the container's /dev is what
`src/lxc-pve-autodev-hook` does, written as an `lxc.mount.entry`. Host paths are looked up under the
`dev_root` setting, so tests can pass a stand-in node without creating /dev/nvidia0 on this machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from standins.pve.schema import DEV_DESC, NETCONF_DESC, parse_property_string
from standins.pve.settings import Settings
from standins.pve.tasks import TaskFailed


def run(cmd: list[str], check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise TaskFailed(f"command '{' '.join(cmd)}' failed: exit code {proc.returncode}: {proc.stderr.strip()}")
    return proc


def cgroup_version() -> int:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return 2
    return 1


# PVE's id map of an unprivileged container without lxc.idmap lines (src/PVE/LXC.pm parse_id_maps)
DEFAULT_ID_MAP = (("u", 0, 100000, 65536), ("g", 0, 100000, 65536))


def id_map(conf: dict[str, Any]) -> list[tuple[str, int, int, int]]:
    """[(type, first id in the container, first id on the host, count)]; empty for a privileged container."""
    custom = []
    for key, value in conf.get("lxc", []):
        if key == "lxc.idmap":
            m = re.fullmatch(r"([ug])\s+(\d+)\s+(\d+)\s+(\d+)\s*", value)
            if not m:
                raise TaskFailed(f"failed to parse idmap: {value}")
            custom.append((m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))))
    if custom:
        return custom
    return list(DEFAULT_ID_MAP) if str(conf.get("unprivileged", "0")) == "1" else []


def map_id(value: int, mapping: list[tuple[str, int, int, int]], kind: str) -> int:
    """src/PVE/LXC.pm map_ct_id_to_host: an id inside the container as the host sees it."""
    for typ, ct, host, length in mapping:
        if typ == kind and ct <= value < ct + length:
            return host - ct + value
    return value


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

    def write_lxc_config(self, vmid: int, conf: dict[str, Any], devices: list[str] | None = None) -> None:
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
        if str(conf.get("unprivileged", "0")) == "1":
            lines.append("lxc.include = /usr/share/lxc/config/userns.conf")
            if not any(k == "lxc.idmap" for k, _ in conf.get("lxc", [])):
                lines += [f"lxc.idmap = {typ} {ct} {host} {n}" for typ, ct, host, n in DEFAULT_ID_MAP]
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
        lines += devices or []
        lines += [f"{k} = {v}" for k, v in conf.get("lxc", [])]
        (d / "config").write_text("\n".join(lines) + "\n")
        (d / "config").chmod(0o600)

    def update_net(self, vmid: int, key: str, old: str | None, new: str) -> bool:
        """A changed netN of a running container, as pve-container `src/PVE/LXC.pm` update_net applies it: a
        new hwaddr or name deletes the host's veth and hot-plugs a new pair (hotplug_net), i.e. the container's
        interface goes away and comes back with another MAC. Returns whether the veth was replugged.

        Other changes (ip, gw, bridge, link_down, ...) are recorded in the config and applied at the next start,
        as the README's "Changes to a running container" says."""
        state, pid = self.state(vmid)
        if state != "running" or not pid or not old:
            return False
        ind = key[3:]
        before, after = parse_property_string(NETCONF_DESC, old), parse_property_string(NETCONF_DESC, new)
        if before.get("hwaddr") == after.get("hwaddr") and before.get("name") == after.get("name"):
            return False
        veth, name = f"veth{vmid}i{ind}", after["name"]
        in_ct = ["nsenter", "-t", str(pid), "-n", "ip"]
        run(["ip", "link", "del", veth], check=False)  # PVE::Network::veth_delete: takes the container's end too
        mtu = after.get("mtu") or self.bridge_mtu(after["bridge"]) or 1500
        run(["ip", "link", "add", veth, "mtu", str(mtu), "type", "veth", "peer", "name", name, "netns", str(pid)])
        run(["ip", "link", "set", veth, "master", after["bridge"], "up"])
        run([*in_ct, "link", "set", name, "address", after["hwaddr"]])
        run([*in_ct, "link", "set", name, "up"])
        if after.get("ip", "dhcp") not in ("dhcp", "manual"):
            run([*in_ct, "addr", "add", after["ip"], "dev", name])
        if after.get("gw"):
            run([*in_ct, "route", "replace", "default", "via", after["gw"], "dev", name])
        return True

    def shift_rootfs(self, rootfs: Path, mapping: list[tuple[str, int, int, int]]) -> None:
        """Give every file of a new unprivileged container's root filesystem its owner as the host sees it."""
        if not mapping:
            return

        def shift(path: str) -> None:
            st = os.lstat(path)
            os.lchown(path, map_id(st.st_uid, mapping, "u"), map_id(st.st_gid, mapping, "g"))
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o6000:
                os.chmod(path, stat.S_IMODE(st.st_mode))  # chown drops setuid/setgid bits

        shift(str(rootfs))
        for top, dirs, files in os.walk(rootfs):
            for name in dirs + files:
                shift(os.path.join(top, name))

    def _let_container_root_traverse(self, vmid: int) -> None:
        """LXC refuses to start an unprivileged container whose root cannot reach its rootfs."""
        data = json.loads(self.record.read_text()) if self.record.exists() else {}
        modes = data.get("modes", {})
        for path in [self.ct_dir(vmid), *self.ct_dir(vmid).parents]:
            mode = stat.S_IMODE(path.stat().st_mode)
            if not mode & stat.S_IXOTH:
                modes.setdefault(str(path), mode)
                path.chmod(mode | stat.S_IXOTH)
        self._remember(modes=modes)

    def passthrough_devices(
        self, vmid: int, conf: dict[str, Any], mapping: list[tuple[str, int, int, int]]
    ) -> list[str]:
        """The prestart hook's devN nodes and the LXC config lines that allow and bind-mount them."""
        pdir = self.ct_dir(vmid) / "passthrough"
        shutil.rmtree(pdir, ignore_errors=True)
        lines: list[str] = []
        allow_key = "lxc.cgroup2.devices.allow" if cgroup_version() == 2 else "lxc.cgroup.devices.allow"
        for key in sorted((k for k in conf if re.fullmatch(r"dev\d+", k)), key=lambda k: int(k[3:])):
            dev = parse_property_string(DEV_DESC, conf[key])
            path = str(dev.get("path", ""))
            if not path:
                raise TaskFailed(f"Path is not defined for passthrough device {key}")
            try:
                st = os.stat(Path(self.s.dev_root) / path.lstrip("/"))
            except OSError:
                raise TaskFailed(f"Could not get mode or device ID of {path}") from None
            if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                raise TaskFailed(f"{path} is not a device")
            node = pdir / path.lstrip("/")
            node.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            pdir.chmod(0o755)
            os.mknod(node, st.st_mode, st.st_rdev)
            os.chmod(node, int(str(dev["mode"]), 8) if dev.get("mode") else 0o660)
            os.chown(node, map_id(int(dev.get("uid", 0)), mapping, "u"), map_id(int(dev.get("gid", 0)), mapping, "g"))
            kind = "b" if stat.S_ISBLK(st.st_mode) else "c"
            perms = "r" if str(dev.get("deny-write", "0")) == "1" else "rw"
            lines += [
                f"{allow_key} = {kind} {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} {perms}",
                f"lxc.mount.entry = {node} {path.lstrip('/')} none bind,create=file 0 0",
            ]
        return lines

    def start(self, vmid: int, conf: dict[str, Any], debug: bool) -> None:
        mapping = id_map(conf)
        if mapping:
            self.ct_dir(vmid).chmod(0o755)
            self._let_container_root_traverse(vmid)
        self.write_lxc_config(vmid, conf, self.passthrough_devices(vmid, conf, mapping))
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
    for path, mode in changed.get("modes", {}).items():  # the o+x an unprivileged container's root needed
        with contextlib.suppress(OSError):
            os.chmod(path, mode)
            done.append(f"mode {oct(mode)} of {path} (set back)")
    if changed.get("ip_forward") == "0" and "embedstack_" not in others:
        run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
        done.append("net.ipv4.ip_forward=1 (set back to 0)")
    if Path(settings.state_dir).exists():
        shutil.rmtree(settings.state_dir, ignore_errors=True)
        done.append(f"state {settings.state_dir}")
    return done


def proc_starttime_of(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")


def net_dev() -> dict[str, tuple[int, int]]:
    out = {}
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, data = line.split(":", 1)
        fields = data.split()
        out[name.strip()] = (int(fields[0]), int(fields[8]))  # received, transmitted by the host side
    return out
