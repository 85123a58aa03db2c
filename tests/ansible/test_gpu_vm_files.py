"""The GCP GPU VM's roles and bootstrap agree with each other, read from the committed files (issue 23, sections 3-4):
no play runs, so these are fast."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[2]
STARTUP = (REPO / "pulumi/bootstrap/startup.sh").read_text()


def defaults(role: str) -> dict:
    return yaml.safe_load((REPO / "roles" / role / "defaults/main.yml").read_text())


def test_every_apt_task_of_the_driver_role_waits_for_the_dpkg_lock_as_the_bootstrap_does():
    """unattended-upgrades often holds the dpkg lock on a first boot; the bootstrap's apt-get waits 300 s for it
    (DPkg::Lock::Timeout) and so must the role's apt tasks, whose module default is 60 s."""
    waits = int(re.search(r"APT_LOCK_TIMEOUT=(\d+)", STARTUP).group(1))
    assert defaults("nvidia_driver")["nvidia_driver_apt_lock_timeout"] == waits == 300
    tasks = [
        (path.name, task)
        for path in sorted((REPO / "roles/nvidia_driver/tasks").glob("*.yml"))
        for task in yaml.safe_load(path.read_text()) or []
        if "ansible.builtin.apt" in task
    ]
    assert len(tasks) >= 4
    for name, task in tasks:
        assert task["ansible.builtin.apt"].get("lock_timeout") == "{{ nvidia_driver_apt_lock_timeout }}", (name, task)


def test_the_reboot_flag_the_role_writes_is_the_one_the_bootstrap_reads():
    flag = re.search(r'REBOOT_FLAG="\$\{EMBEDSTACK_BOOTSTRAP_REBOOT_FLAG:-([^}]+)\}"', STARTUP).group(1)
    assert defaults("nvidia_driver")["nvidia_driver_reboot_flag"] == flag


def test_the_gateway_reads_the_failure_file_the_bootstrap_writes():
    group = yaml.safe_load((REPO / "inventories/gcp/group_vars/embedding.yml").read_text())
    assert group["embedding_service_extra_env"]["EMBEDSTACK_BOOT_FAILURE_FILE"] == "{{ embedstack_boot_failure_file }}"
    root = re.search(r'ROOT="\$\{EMBEDSTACK_BOOTSTRAP_ROOT:-([^}]+)\}"', STARTUP).group(1)
    assert group["embedstack_boot_failure_file"] == f"{root}/state/boot-failure"
    assert 'FAILURE_FILE="$STATE_DIR/boot-failure"' in STARTUP and 'STATE_DIR="$ROOT/state"' in STARTUP


def test_comments_name_the_pinned_vllm_release():
    """The defaults and argument specs that explain the driver floor name the vLLM the roles install."""
    pinned = defaults("vllm")["vllm_version"]
    mentions = {
        (path.relative_to(REPO).as_posix(), version)
        for path in sorted((REPO / "roles").glob("*/*/*.yml"))
        if path.parent.name in ("defaults", "meta")
        for version in re.findall(r"vLLM (\d+\.\d+\.\d+)", path.read_text())
    }
    assert mentions, "no role names the vLLM release"
    assert {m for m in mentions if m[1] != pinned} == set(), f"the pin is vllm_version {pinned}"


def test_the_cuda_closure_compiles_nothing_newer_than_the_cuda_of_the_580_driver():
    """Driver 580 is CUDA 13.0. What compiles kernels at run time (Triton; FlashInfer's and humming-kernels' JIT
    through nvcc/NVRTC; nvJitLink's LTO in cuFFT/cuSPARSE) may hand the driver PTX, and a driver JIT-compiles no PTX
    newer than its own CUDA (NVIDIA's "CUDA Compatibility", minor version compatibility): the compiler pieces stay on
    13.0 (tools/lock.py CUDA_CONSTRAINTS)."""
    lock = (REPO / "roles/vllm/files/requirements-cuda.lock").read_text()
    floor = int(defaults("vllm")["vllm_min_driver_version"])
    assert floor == 580
    for name in ("nvidia-cuda-nvcc", "nvidia-cuda-crt", "nvidia-nvvm", "nvidia-nvjitlink", "nvidia-cuda-nvrtc"):
        version = re.search(rf"(?m)^{name}==(\S+) ", lock).group(1)
        assert version.startswith("13.0."), f"{name}=={version} in requirements-cuda.lock is newer than CUDA 13.0"
