"""Filters of the pve_gpu_passthrough role (standard library only).

- pve_gpu_char_majors: character-device majors from /proc/devices.

The nvidia-modprobe calls of the boot unit are computed by the shared role nvidia_device_nodes.
"""

from __future__ import annotations

import re

LINE = re.compile(r"^\s*(\d+)\s+(\S+)\s*$")


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


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict:
        return {"pve_gpu_char_majors": pve_gpu_char_majors}
