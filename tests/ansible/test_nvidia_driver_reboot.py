"""Role nvidia_driver, its check after the install (tasks/service.yml) on this machine, which has no GPU: stand-ins for
nvidia-smi and modinfo on PATH decide what the role sees. A failure that only a reboot fixes writes the reason to
nvidia_driver_reboot_flag, which the GCP bootstrap reboots on once (issue 23, section 3); any other failure writes
nothing, because rebooting would only repeat it.

The stand-ins print what the real tools print: nvidia-smi's message when it cannot reach the driver and exit 9
(nvidia-smi(1) return values), modinfo's "Module nvidia not found." and exit 1 for a kernel without the module."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_play import run_play

KERNEL = "6.1.0-99-cloud-amd64"


def check(tmp_path: Path, module_built: bool, smi_works: bool = False) -> tuple[str, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvidia-smi").write_text(
        "#!/bin/sh\necho 580.105.08\n"  # --query-gpu=driver_version --format=csv,noheader: one line per GPU
        if smi_works
        else '#!/bin/sh\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\n'
        "exit 9\n"
    )
    (bindir / "modinfo").write_text(
        "#!/bin/sh\necho 580.105.08\n"
        if module_built
        else '#!/bin/sh\necho "modinfo: ERROR: Module nvidia not found." >&2\nexit 1\n'
    )
    for tool in bindir.iterdir():
        tool.chmod(0o755)
    flag = tmp_path / "run" / "nvidia-driver-reboot-required"
    play = {
        "name": "Driver check",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {"ansible_facts": {"kernel": KERNEL}, "nvidia_driver_reboot_flag": str(flag)},
        "tasks": [{"ansible.builtin.include_role": {"name": "nvidia_driver", "tasks_from": "service.yml"}}],
    }
    import os

    proc, _ = run_play([play], tmp_path, must_pass=False, env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert (proc.returncode == 0) == smi_works, proc.stdout
    return proc.stdout, flag


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="a real NVIDIA driver is loaded here")
def test_no_module_for_the_running_kernel_asks_for_one_reboot(tmp_path: Path) -> None:
    out, flag = check(tmp_path, module_built=False)
    assert flag.read_text().strip() == f"no nvidia module is built for the running kernel {KERNEL}"
    assert "must reboot before the NVIDIA 580 driver can load" in out


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="a real NVIDIA driver is loaded here")
def test_a_failure_a_reboot_cannot_fix_writes_no_flag(tmp_path: Path) -> None:
    out, flag = check(tmp_path, module_built=True)
    assert not flag.exists()
    assert "nvidia-smi failed" in out and "exit 9" in out


def test_a_working_driver_of_the_branch_asks_for_nothing(tmp_path: Path) -> None:
    _, flag = check(tmp_path, module_built=False, smi_works=True)
    assert not flag.exists()
