"""Role nvidia_device_nodes on a GCP GPU VM (issue 23, section 1): the unit that makes every NVIDIA node as root at
each boot, before vllm.service, for as many GPUs as the machine type carries. Rendered under a scratch root; the GCP
container e2e (tests/gcp_container) runs it for real with a stand-in nvidia-modprobe, and tests/proxmox on the
Proxmox VE host, whose role includes this one."""

from __future__ import annotations

from pathlib import Path

import yaml
from ansible_play import REPO, run_play, unit_settings

GCP_EMBEDDING = yaml.safe_load((REPO / "inventories/gcp/group_vars/embedding.yml").read_text())


def render(tmp_path: Path, **variables) -> dict[str, list[str]]:
    play = {
        "name": "Device nodes",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {"nvidia_device_nodes_root": str(tmp_path / "root"), **variables},
        "roles": ["nvidia_device_nodes"],
    }
    run_play([play], tmp_path)
    unit = tmp_path / "root/etc/systemd/system/embedstack-nvidia-uvm.service"
    link = unit.parent / "multi-user.target.wants" / unit.name
    assert link.is_symlink() and str(link.readlink()) == "/etc/systemd/system/embedstack-nvidia-uvm.service"
    return unit_settings(unit.read_text())


def test_a_gcp_gpu_vm_gets_every_node_of_its_gpus_before_vllm_starts(tmp_path: Path) -> None:
    """An a2-highgpu-2g (embedstack_gpu_count 2 in vars.yml) with the GCP group_vars' device list."""
    assert GCP_EMBEDDING["embedstack_nvidia_device_nodes"] is True
    unit = render(
        tmp_path,
        embedstack_gpu_count=2,
        nvidia_device_nodes_devices=GCP_EMBEDDING["nvidia_device_nodes_devices"],
    )
    assert unit["ExecStart"] == [
        "/usr/bin/nvidia-modprobe -c 0 -c 1 -c 255",  # /dev/nvidia0, /dev/nvidia1, /dev/nvidiactl (loads nvidia)
        "/usr/bin/nvidia-modprobe -u -c 0",  # /dev/nvidia-uvm and -tools: CUDA needs them, nvidia-smi never makes them
    ]
    assert "vllm.service" in unit["Before"][0].split() and unit["Type"] == ["oneshot"]
    assert unit["RemainAfterExit"] == ["yes"] and unit["WantedBy"] == ["multi-user.target"]


def test_a_device_nvidia_modprobe_cannot_make_is_refused_naming_the_variable(tmp_path: Path) -> None:
    play = {
        "name": "Device nodes",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {
            "nvidia_device_nodes_root": str(tmp_path / "root"),
            "nvidia_device_nodes_devices": ["/dev/nvidia0", "/dev/dri/card0"],
        },
        "roles": ["nvidia_device_nodes"],
    }
    proc, _ = run_play([play], tmp_path, must_pass=False)
    assert proc.returncode != 0
    assert "nvidia_device_nodes_devices names /dev/dri/card0" in proc.stdout
    assert not (tmp_path / "root/etc/systemd/system/embedstack-nvidia-uvm.service").exists()
