"""Fixtures that run the Proxmox VE API stand-in (tests/standins/pve/) as a real HTTPS server process.

The stand-in creates real privileged LXC containers, so these tests need root, LXC and the cached
Debian 12 rootfs that `make lab` builds. Everything they create is removed also when a test fails:
the server tears its node down on SIGTERM, and `python -m standins.pve cleanup` runs before and after.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standin_node import (
    FOREIGN_CT,
    FOREIGN_VM,
    STANDIN,
    STANDIN_GPU_NODES,
    TEMPLATE,
    TESTS,
    TOKEN_ID,
    TOKEN_SECRET,
    Node,
    cleanup,
    missing_requirement,
)


@pytest.fixture(scope="session")
def standin(tmp_path_factory) -> Iterator[Node]:
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("pve-standin")
    # the node's GPU nodes: /dev/null's device number under nvidia names, 0666 root:root as nvidia-modprobe makes
    # them (NVIDIA/nvidia-modprobe modprobe-utils/nvidia-modprobe-utils.c); devN paths are looked up here
    dev_root = work / "node-root"
    (dev_root / "dev").mkdir(parents=True)
    null = os.stat("/dev/null").st_rdev
    for name in STANDIN_GPU_NODES:
        os.mknod(dev_root / "dev" / name, stat.S_IFCHR | 0o666, null)
    settings_file = work / "settings.json"
    settings_file.write_text(
        json.dumps(
            {
                "tokens": {TOKEN_ID: TOKEN_SECRET},
                "templates": [TEMPLATE],
                "nat": True,  # the configure plays install Debian packages in the containers
                "dev_root": str(dev_root),
                "guests": [
                    {"vmid": FOREIGN_CT, "type": "lxc", "name": "someone-elses-ct", "tags": "other"},
                    {"vmid": FOREIGN_VM, "type": "qemu", "name": "someone-elses-vm"},
                ],
            }
        )
    )
    ready = work / "ready.json"
    cleanup(settings_file)  # a node starts empty, whatever an interrupted run left
    log = (work / "standin.log").open("w")
    proc = subprocess.Popen(
        [*STANDIN, "serve", "--config", str(settings_file), "--ready-file", str(ready)],
        cwd=TESTS,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, f"the stand-in exited: {(work / 'standin.log').read_text()}"
            assert time.monotonic() < deadline, "the stand-in did not come up in 60 s"
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        yield Node(
            url=info["url"],
            host=info["host"],
            port=info["port"],
            node=info["node"],
            ca_file=info["ca_file"],
            lxc_path=info["lxc_path"],
            request_log=info["request_log"],
            settings_file=settings_file,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        cleanup(settings_file)


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory) -> Path:
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pve-standin-test", "-f", str(key)], check=True
    )
    return key
