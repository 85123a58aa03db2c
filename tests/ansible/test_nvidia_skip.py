"""The nvidia_userspace role skips hosts without a GPU, says why, and changes nothing.

Runs the whole role (its main entry point, argument specs included) against this GPU-less machine with a local
connection: once for a host not marked as a GPU host (a real run) and once with `nvidia_userspace_enabled`
(what site.yml passes from `embedstack_gpu`) on a host that has no /dev/nvidia0 (check mode).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_play import run_play, task_results

INSTALL_TASKS = {
    "Read the installed NVIDIA userspace version",
    "Download the NVIDIA installer and check its sha256",
    "Copy the NVIDIA installer from the controller",
    "Install the NVIDIA userspace without the kernel module",
    "List the GPUs with nvidia-smi",
}
SKIP_TASK = "Report that the NVIDIA userspace is skipped"
DOWNLOAD_DIR = Path("/var/cache/nvidia-userspace")

pytestmark = pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="this machine has a GPU: the skip path is moot")


def _run(tmp_path: Path, extra_vars: dict, check: bool) -> tuple[dict, list[tuple[str, dict]]]:
    plays = [
        {"name": "Apply nvidia_userspace", "hosts": "localhost", "gather_facts": False, "roles": ["nvidia_userspace"]}
    ]
    _, report = run_play(plays, tmp_path, extra_vars=extra_vars, check=check)
    return report["stats"]["localhost"], task_results(report)


def _assert_skipped(stats: dict, results: list[tuple[str, dict]], reason: str) -> None:
    assert stats["changed"] == 0 and stats["failures"] == 0, stats
    messages = [result.get("msg", "") for name, result in results if name == SKIP_TASK]
    assert messages, "the role did not report the skip"
    assert messages[0].startswith("nvidia_userspace skipped on localhost: ")
    assert reason in messages[0] and "nothing was installed" in messages[0]
    for name, result in results:
        if name in INSTALL_TASKS:
            assert result.get("skipped"), f"{name} ran on a host without a GPU"
        assert not result.get("changed"), f"{name} changed something"


def test_host_not_marked_as_gpu_host_is_skipped(tmp_path: Path) -> None:
    had_download_dir = DOWNLOAD_DIR.exists()
    stats, results = _run(tmp_path, {}, check=False)
    _assert_skipped(stats, results, "embedstack_gpu is not true")
    assert DOWNLOAD_DIR.exists() == had_download_dir
    assert not Path("/usr/bin/nvidia-smi").exists()


def test_gpu_host_without_device_node_is_skipped(tmp_path: Path) -> None:
    stats, results = _run(
        tmp_path, {"nvidia_userspace_enabled": True, "nvidia_userspace_driver_version": "550.54.14"}, check=True
    )
    _assert_skipped(stats, results, "/dev/nvidia0 does not exist")
