"""Filter of the nvidia_device_nodes role (standard library only).

nvidia_device_nodes_modprobe_args: the nvidia-modprobe calls that create every device node in a list.
Read from NVIDIA/nvidia-modprobe (`option-table.h`, `nvidia-modprobe.c`, `modprobe-utils/nvidia-modprobe-utils.h`):
`-c N` loads nvidia and creates /dev/nvidiaN (minor 255 is /dev/nvidiactl); `-u` loads nvidia-uvm *instead of*
nvidia, and its `-c 0` then creates /dev/nvidia-uvm (minor 0) and /dev/nvidia-uvm-tools (minor 1) only; `-m` loads
nvidia-modeset and creates /dev/nvidia-modeset. So the uvm nodes and the GPU nodes need separate calls.
"""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

GPU = re.compile(r"^/dev/nvidia(\d+)$")
CTL_MINOR = 255  # NV_CTL_DEVICE_NUM


def nvidia_device_nodes_modprobe_args(
    devices: list[str], variable: str = "nvidia_device_nodes_devices"
) -> list[list[str]]:
    """nvidia-modprobe argument lists (without the program) that create every device in `devices`, in boot order:
    the GPUs and nvidiactl first (loads nvidia), then nvidia-uvm, then nvidia-modeset. `variable` names the list in
    the error for a device nvidia-modprobe cannot create."""
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
            f"{variable} names {', '.join(unknown)}, which nvidia-modprobe cannot create at boot; "
            "allowed: /dev/nvidiaN, /dev/nvidiactl, /dev/nvidia-uvm, /dev/nvidia-uvm-tools, /dev/nvidia-modeset "
            "(or leave it out of the list and create it yourself)"
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
        return {"nvidia_device_nodes_modprobe_args": nvidia_device_nodes_modprobe_args}
