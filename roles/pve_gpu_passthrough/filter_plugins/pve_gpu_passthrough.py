"""Filters of the pve_gpu_passthrough role (standard library only).

- pve_gpu_char_majors: character-device majors from /proc/devices.
- pve_gpu_modprobe_args: the nvidia-modprobe calls that create every device node a container config names.
  Read from NVIDIA/nvidia-modprobe (`option-table.h`, `nvidia-modprobe.c`, `modprobe-utils/nvidia-modprobe-utils.h`):
  `-c N` loads nvidia and creates /dev/nvidiaN (minor 255 is /dev/nvidiactl); `-u` loads nvidia-uvm *instead of*
  nvidia, and its `-c 0` then creates /dev/nvidia-uvm (minor 0) and /dev/nvidia-uvm-tools (minor 1) only; `-m` loads
  nvidia-modeset and creates /dev/nvidia-modeset. So the uvm nodes and the GPU nodes need separate calls.
"""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

LINE = re.compile(r"^\s*(\d+)\s+(\S+)\s*$")
GPU = re.compile(r"^/dev/nvidia(\d+)$")
CTL_MINOR = 255  # NV_CTL_DEVICE_NUM


def pve_gpu_char_majors(text: str) -> dict[str, int]:
    """Map driver name to major number, from the "Character devices:" section only (block majors are ignored).

    Recent drivers register the GPU major as "nvidia", older ones as "nvidia-frontend"; both are returned as read.
    """
    majors: dict[str, int] = {}
    in_char = False
    for line in str(text).splitlines():
        if line.strip().endswith(":"):
            in_char = line.strip() == "Character devices:"
            continue
        m = LINE.match(line)
        if in_char and m:
            majors.setdefault(m.group(2), int(m.group(1)))
    return majors


def pve_gpu_modprobe_args(devices: list[str]) -> list[list[str]]:
    """nvidia-modprobe argument lists (without the program) that create every device in `devices`, in boot order:
    the GPUs and nvidiactl first (loads nvidia), then nvidia-uvm, then nvidia-modeset."""
    minors: list[int] = []
    uvm = modeset = False
    unknown = []
    for device in devices:
        m = GPU.match(device)
        if m and int(m.group(1)) < CTL_MINOR - 1:
            minors.append(int(m.group(1)))
        elif device == "/dev/nvidiactl":
            minors.append(CTL_MINOR)
        elif device in ("/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"):
            uvm = True
        elif device == "/dev/nvidia-modeset":
            modeset = True
        else:
            unknown.append(device)
    if unknown:
        raise AnsibleFilterError(
            f"pve_gpu_passthrough_devices names {', '.join(unknown)}, which nvidia-modprobe cannot create at boot; "
            "allowed: /dev/nvidiaN, /dev/nvidiactl, /dev/nvidia-uvm, /dev/nvidia-uvm-tools, /dev/nvidia-modeset "
            "(or set pve_gpu_passthrough_manage_uvm_boot: false and create the nodes yourself)"
        )
    calls: list[list[str]] = []
    if minors:
        calls.append([arg for minor in dict.fromkeys(minors) for arg in ("-c", str(minor))])
    if uvm:
        calls.append(["-u", "-c", "0"])
    if modeset:
        calls.append(["-m"])
    return calls


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict:
        return {"pve_gpu_char_majors": pve_gpu_char_majors, "pve_gpu_modprobe_args": pve_gpu_modprobe_args}
