"""The health check's GPU probe opens the GPU as vllm.service does, not as root (issue 10, item 1).

PVE makes a passed-through `devN` node root:root 0660 inside the container unless the entry has gid=/mode=
(pve-container `src/PVE/LXC.pm`, create_passthrough_device_node, called from `src/lxc-pve-prestart-hook`).
Root opens such a node anyway, so a probe run as root hides a GPU the service cannot use.

Here the stand-in GPU is a harmless character device: the major/minor of /dev/null under an `nvidia0` name in a
scratch directory. `nvidia-smi` is a stub that opens it read-write; `systemctl show` is a stub that reports the unit's
User= and SupplementaryGroups=; `runuser` and `id` are the real ones, and the service user is `nobody`.
Needs root (mknod, runuser).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root and runuser")
VIDEO_GID = 44  # Debian's video group (base-passwd), the gid pve_gpu_passthrough gives the nodes


@pytest.fixture
def scratch() -> Iterator[Path]:
    # not under pytest's tmp_path: that is 0700 root, and the probe runs as nobody
    root = Path(tempfile.mkdtemp(prefix="embedstack-gpu-probe-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


def probe(root: Path, node_gid: int, node_mode: int, supplementary: str) -> dict:
    """Run remote_checks.py's GPU probe against a stand-in /dev/nvidia0 owned root:<node_gid> <node_mode>."""
    node = root / "nvidia0"
    null = os.stat("/dev/null").st_rdev
    os.mknod(node, 0o600 | 0o020000, os.makedev(os.major(null), os.minor(null)))  # S_IFCHR
    os.chown(node, 0, node_gid)
    node.chmod(node_mode)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    stubs = {
        "nvidia-smi": f'exec 3<>"{node}" || exit 9\necho "NVIDIA L4, 580.95.05, 0 MiB, 23034 MiB"\n',
        "systemctl": f'[ "$1" = show ] || exit 1\necho User=nobody\necho "SupplementaryGroups={supplementary}"\n',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    script = "PARAMS = " + repr({"gpu": True, "vllm": True}) + "\n"
    script += resources.files("embedstack.ops").joinpath("remote_checks.py").read_text()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, env=env, check=True)
    return next(r for r in json.loads(out.stdout) if r["check"].startswith("nvidia-smi"))


def test_the_probe_fails_when_only_root_can_open_the_gpu(scratch: Path) -> None:
    """A node as PVE makes it without gid= (root:root 0660): root could open it, vllm.service cannot."""
    result = probe(scratch, node_gid=0, node_mode=0o660, supplementary="video")
    assert result["check"] == "nvidia-smi as nobody" and not result["ok"], result


def test_the_probe_passes_when_the_service_group_owns_the_gpu(scratch: Path) -> None:
    """gid=44 on the devN entry and SupplementaryGroups=video in the unit: the service user opens it."""
    result = probe(scratch, node_gid=VIDEO_GID, node_mode=0o660, supplementary="video")
    assert result == {"check": "nvidia-smi as nobody", "ok": True, "detail": "NVIDIA L4, 580.95.05, 0 MiB, 23034 MiB"}


def test_the_probe_fails_when_the_unit_does_not_join_the_group(scratch: Path) -> None:
    result = probe(scratch, node_gid=VIDEO_GID, node_mode=0o660, supplementary="")
    assert not result["ok"], result
