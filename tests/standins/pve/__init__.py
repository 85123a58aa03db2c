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

The modules, by concern (each names the upstream sources its behaviour follows):
  api.py          the HTTP surface: routes, auth, parameter checks, the endpoints
  schema.py       PVE::Exception, PVE::JSONSchema, pve-container's schemas and config file format
  tasks.py        UPIDs, the task workers, task status and log
  lxc_backend.py  real LXC containers, the bridge and NAT, cleanup
  settings.py     the node's settings
  __main__.py     the process: TLS certificate, serve until SIGTERM, then clean up

Usage (from tests/, or with PYTHONPATH=tests; tests/proxmox/standin_node.py does this):
        python -m standins.pve serve [--config FILE] [--ready-file FILE]
        python -m standins.pve cleanup [--config FILE]     (removes everything a crashed run left behind)
"""
