"""The PVE API surface: routing, auth, parameter checks and the endpoints the LXC module calls.

Upstream: pve-manager 9.2 (`PVE/HTTPServer.pm`, `PVE/API2/Cluster.pm` resources and nextid,
`PVE/API2/Nodes.pm` aplinfo), pve-http-server (`PVE/APIServer/AnyEvent.pm`: decode_urlencoded,
the API token header, the 3 s delay and empty body of a 401, the reason phrase that carries the
message), pve-common (`src/PVE/RESTHandler.pm`: method lookup, URI parameters, the proxy step,
normalize_legacy_param_formats), pve-container 6.1 (`src/PVE/API2/LXC.pm` create and destroy,
`src/PVE/API2/LXC/Config.pm`, `src/PVE/API2/LXC/Status.pm`) and pve-storage
(`PVE/API2/Storage/Content.pm`, check_volume_access). The client it is built for is
community.proxmox's `proxmox` (LXC) module through proxmoxer's HTTPS backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from standins.base import StandinHandler
from standins.pve.lxc_backend import Machine, id_map, net_dev, proc_starttime_of, run
from standins.pve.schema import (
    BOOL,
    CONFDESC,
    CREATE_PARAMS,
    MP_DESC,
    NETCONF_DESC,
    NODE,
    ROOTFS_DESC,
    STORAGE_ID,
    UPDATE_PARAMS,
    VMID,
    ApiError,
    FormatError,
    check_object,
    die,
    param_exc,
    parse_config,
    parse_property_string,
    parse_size,
    print_property_string,
    split_list,
    typed_config,
    unique_tags,
    write_config,
)
from standins.pve.settings import Settings
from standins.pve.tasks import TaskFailed, Tasks


@dataclass
class Route:
    """One API method as PVE::RESTHandler registers it: path, parameter schema, `proxyto => 'node'`."""

    method: str
    pattern: re.Pattern[str]
    handler: Any
    params: dict[str, dict]
    proxyto_node: bool = True


class StandIn:
    """The node: its guest configs, templates, tasks and machine, and the endpoints that use them."""

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
                started = proc_starttime_of(pid)
                d["uptime"] = int(float(Path("/proc/uptime").read_text().split()[0]) - started)
            for veth, counters in net_dev().items():
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
                self.tasks.status,
                {"node": NODE, "upid": {"type": "string"}},
            ),
            r(
                "GET",
                rf"/nodes/{n}/tasks/(?P<upid>[^/]+)/log",
                self.tasks.log,
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
                    self.machine.shift_rootfs(rootfs_dir, id_map(conf))
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
            old_nets = {k: v for k, v in conf.items() if re.fullmatch(r"net\d+", k)}
            self._apply_conf_params(vmid, conf, p)
            self._write_conf(vmid, conf)
            # a netN sent again without hwaddr got a new MAC above (LXC/Config.pm parse_lxc_network); on a
            # running container PVE then replugs the veth (LXC.pm update_net)
            for key in sorted(k for k in p if re.fullmatch(r"net\d+", k)):
                self.machine.update_net(vmid, key, old_nets.get(key), conf[key])
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


class Handler(StandinHandler):
    """What pveproxy and PVE::APIServer::AnyEvent do around the handlers: prefix, auth, body, reply."""

    server_version = "pve-api-daemon/3.0"
    # pveproxy looks at the path itself (prefix, then auth, then the method): one route a method
    routes = tuple((method, ".*", "api_call") for method in ("GET", "POST", "PUT", "DELETE"))
    standin: StandIn

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
            or not self.standin.s.tokens.get(tm.group(1))
            or (not _consteq(self.standin.s.tokens[tm.group(1)], tm.group(2)))
        ):
            raise ApiError(401, "Authentication failed!")
        return tm.group(1)

    def api_call(self) -> None:
        standin, method, path = self.standin, self.command, self.entry["path"]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        params: dict[str, Any] = {}
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
            params.update(decode_urlencoded(self.url.query))
            params.pop("_dc", None)
            self.entry["params"] = {k: ("<secret>" if k == "password" else v) for k, v in params.items()}
            try:
                data, extra = standin.dispatch(method, rel, dict(params), user)
            except (ValueError, KeyError, OSError, subprocess.SubprocessError) as e:
                raise die(f"pve-standin: {type(e).__name__}: {e}") from e  # PVE answers any other die() with 500
            self._reply(200, "OK", {"data": data, **extra})
        except ApiError as e:
            self.entry.update(message=e.message, errors=e.errors)  # the request log (requests.jsonl)
            if e.status == 401:
                self._reply(401, e.message, None)  # pveproxy sends no body with a 401
            else:
                body_out: dict[str, Any] = {"data": None, "message": e.message}
                if e.errors:
                    body_out["errors"] = e.errors
                self._reply(e.status, e.message, body_out)

    def _reply(self, status: int, reason: str, payload: dict | None) -> None:
        raw = json.dumps(payload).encode() if payload is not None else b""
        content_type = "application/json;charset=UTF-8" if payload is not None else None
        headers = {"Cache-Control": "max-age=0", "Pragma": "no-cache"}
        if status >= 400:
            headers["Connection"] = "close"  # pveproxy ends keep-alive after an error
        self.send(status, raw, content_type, headers, reason.split("\n")[0])


def _consteq(a: str, b: str) -> bool:
    return hashlib.sha256(a.encode()).digest() == hashlib.sha256(b.encode()).digest()
