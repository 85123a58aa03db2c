"""Run the Proxmox VE API stand-in: `python -m standins.pve serve|cleanup [--config FILE]`.

Upstream: pveproxy (pve-manager 9.2 `PVE/Service/pveproxy.pm`): HTTPS with the node's own
self-signed certificate (`pve-ssl.pem`, `pve-ssl.key`, made at first install), its SHA-256
fingerprint as `GET /nodes` shows it, and `/api2/json` as the base URL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from standins.base import StandinServer, self_signed_certificate, stop_on_signal, tls_context
from standins.pve import __doc__ as package_doc
from standins.pve.api import Handler, StandIn
from standins.pve.lxc_backend import cleanup
from standins.pve.settings import Settings


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
        cert, key = tls_dir / "pve-ssl.pem", tls_dir / "pve-ssl.key"
        standin.fingerprint = self_signed_certificate(cert, key, f"{settings.node}.pve-standin.invalid")
        server = StandinServer(
            Handler,
            standin,
            bind=settings.listen,
            port=settings.port,
            tls=tls_context(cert, key),
            log_file=standin.request_log,
        )
        host, port = server.server_address[:2]
        info = {
            "url": f"https://{host}:{port}/api2/json",
            "host": host,
            "port": port,
            "node": settings.node,
            "pid": os.getpid(),
            "ca_file": str(cert),
            "fingerprint": standin.fingerprint,
            "lxc_path": settings.lxc_path,
            "state_dir": settings.state_dir,
            "request_log": str(standin.request_log),
        }
        stop = stop_on_signal()
        with server:
            if ready_file:
                Path(ready_file).write_text(json.dumps(info))
            print(json.dumps(info), flush=True)
            while not stop.wait(1):
                pass
        standin.tasks.wait_all(60)
    finally:
        shutil.rmtree(tls_dir, ignore_errors=True)
        # a test node: nothing it created outlives it
        for item in cleanup(settings):
            print(f"pve-standin: removed {item}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m standins.pve", description=(package_doc or "").split("\n")[0])
    parser.add_argument("command", choices=["serve", "cleanup"])
    parser.add_argument("--config", help="JSON settings (see settings.py and tests/proxmox/README.md)")
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
