"""The pve_gpu_passthrough role edits a Proxmox VE container config safely and idempotently.

Runs the real role with ansible-playbook (local connection) against scratch copies of files from a PVE 8 host:
`fixtures/pve/proc-devices` (NVIDIA 550 driver loaded: nvidia 195, nvidia-uvm 508) and `fixtures/pve/105.conf`
(a description, an unrelated `dev0: /dev/dri/renderD128,gid=104`, a raw `lxc.` line and a `[before-gpu]` snapshot).
`pct status` / `pct reboot` are replaced by `echo` / `touch` so a restart leaves a marker file. The host's driver
version is `fixtures/nvidia/version-580` unless a test says otherwise, and its device nodes are plain files under a
scratch root, mode 0666 as nvidia-modprobe makes them (NVIDIA/nvidia-modprobe `modprobe-utils/nvidia-modprobe-utils.c`).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from ansible_play import ansible_available, describe, run_play

FIXTURES = Path(__file__).parent / "fixtures" / "pve"
DRIVERS = Path(__file__).parent / "fixtures" / "nvidia"
LIBRARY = Path(__file__).parents[2] / "roles/pve_gpu_passthrough/library/pve_lxc_gpu_config.py"
VMID = 105
ORIGINAL = (FIXTURES / f"{VMID}.conf").read_text()
MAIN, SNAPSHOT = ORIGINAL.split("\n[before-gpu]\n")
DEVICES = ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
CLASSIC = [
    "lxc.cgroup2.devices.allow: c 195:* rwm",
    "lxc.cgroup2.devices.allow: c 508:* rwm",
    *[f"lxc.mount.entry: {d} {d[1:]} none bind,optional,create=file" for d in DEVICES],
]

pytestmark = pytest.mark.skipif(not ansible_available(), reason="ansible-playbook not found next to the interpreter")


class Host:
    """A scratch PVE host: config dir, /proc/devices copy, lock dir and unit root under tmp_path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "etc/pve/lxc" / f"{VMID}.conf"
        self.conf.parent.mkdir(parents=True)
        shutil.copy(FIXTURES / f"{VMID}.conf", self.conf)
        self.proc_devices = root / "proc-devices"
        shutil.copy(FIXTURES / "proc-devices", self.proc_devices)
        self.marker = root / f"restarted-{VMID}"
        self.runs = 0
        self.dev_root = root / "host-dev"
        for device in DEVICES:
            node = self.dev_root / device.lstrip("/")
            node.parent.mkdir(parents=True, exist_ok=True)
            node.touch()
            node.chmod(0o666)
        self.unit = root / "host/etc/systemd/system/embedstack-nvidia-uvm.service"

    def apply(self, state: str = "running", **role_vars: object) -> tuple[dict, dict | None]:
        """Run the role once; returns (stats of localhost, failed task result or None)."""
        self.runs += 1
        workdir = self.root / f"run{self.runs}"
        workdir.mkdir()
        variables = {
            "pve_gpu_passthrough_vmid": VMID,
            "pve_gpu_passthrough_config_dir": str(self.conf.parent),
            "pve_gpu_passthrough_lock_dir": str(self.root / "run/lock/lxc"),
            "pve_gpu_passthrough_proc_devices": str(self.proc_devices),
            "pve_gpu_passthrough_uvm_boot_root": str(self.root / "host"),
            "pve_gpu_passthrough_status_command": f"echo status: {state}",
            "pve_gpu_passthrough_restart_command": f"touch {self.marker}",
            "pve_gpu_passthrough_nvidia_version_file": str(DRIVERS / "version-580"),
            "pve_gpu_passthrough_host_dev_root": str(self.dev_root),
            **role_vars,
        }
        play = {"name": "GPU passthrough", "hosts": "localhost", "gather_facts": False, "vars": variables}
        # the play may fail: the caller gets the failed task
        proc, report = run_play([{**play, "roles": ["pve_gpu_passthrough"]}], workdir, must_pass=False)
        assert report is not None, describe(proc)
        failed = [
            result
            for play_report in report["plays"]
            for task in play_report["tasks"]
            if (result := task["hosts"].get("localhost", {})).get("failed")
        ]
        assert bool(failed) == (proc.returncode != 0), describe(proc)
        return report["stats"]["localhost"], failed[0] if failed else None

    def assert_reapplying_changes_nothing(self, **role_vars: object) -> None:
        """The role is idempotent: a second run with the same variables changes no line and restarts nothing."""
        before = self.conf.read_text()
        stats, failed = self.apply(**role_vars)
        assert failed is None and stats["changed"] == 0, stats
        assert self.conf.read_text() == before
        assert not self.marker.exists(), "the container was restarted although nothing changed"

    def main_section(self) -> list[str]:
        text = self.conf.read_text()
        assert text.endswith("\n[before-gpu]\n" + SNAPSHOT), "the snapshot section changed"
        return text.split("\n[before-gpu]\n")[0].splitlines()


def unrelated(lines: list[str]) -> list[str]:
    """The lines the role does not own."""
    return [line for line in lines if "nvidia" not in line and line not in CLASSIC]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_dev_syntax_adds_entries_once_and_restarts_a_running_container_once(host: Host) -> None:
    stats, failed = host.apply(pve_gpu_passthrough_dev_mode="0666")
    assert failed is None and stats["changed"] > 0, stats
    lines = host.main_section()
    assert lines[4:9] == [
        "dev0: /dev/dri/renderD128,gid=104",
        "dev1: /dev/nvidia0,gid=44,mode=0666",
        "dev2: /dev/nvidiactl,gid=44,mode=0666",
        "dev3: /dev/nvidia-uvm,gid=44,mode=0666",
        "dev4: /dev/nvidia-uvm-tools,gid=44,mode=0666",
    ], lines
    assert unrelated(lines) == MAIN.splitlines(), "a line the role does not own changed"
    assert host.marker.exists(), "the running container was not restarted after its config changed"

    unit = host.unit
    link = unit.parent / "multi-user.target.wants" / unit.name
    assert link.is_symlink() and str(link.readlink()) == "/etc/systemd/system/embedstack-nvidia-uvm.service"

    host.marker.unlink()
    host.assert_reapplying_changes_nothing(pve_gpu_passthrough_dev_mode="0666")


def test_classic_syntax_is_idempotent_and_a_stopped_container_is_not_restarted(host: Host) -> None:
    stats, failed = host.apply(state="stopped", pve_gpu_passthrough_syntax="classic")
    assert failed is None and stats["changed"] > 0, stats
    lines = host.main_section()
    assert lines[-len(CLASSIC) :] == CLASSIC, lines
    assert "lxc.cgroup2.devices.allow: c 226:* rwm" in lines and not any(line.startswith("dev1") for line in lines)
    assert unrelated(lines) == MAIN.splitlines(), "a line the role does not own changed"
    assert not host.marker.exists(), "a stopped container was restarted"

    host.assert_reapplying_changes_nothing(pve_gpu_passthrough_syntax="classic")


def test_switching_syntax_removes_the_other_syntax_lines(host: Host) -> None:
    assert host.apply(pve_gpu_passthrough_syntax="classic")[1] is None
    stats, failed = host.apply(pve_gpu_passthrough_syntax="dev")
    assert failed is None and stats["changed"] > 0, stats
    lines = host.main_section()
    assert not set(CLASSIC) & set(lines), "classic lines were left behind"
    assert sum("nvidia" in line for line in lines) == 4 and "dev4: /dev/nvidia-uvm-tools,gid=44" in lines

    assert host.apply(pve_gpu_passthrough_syntax="classic")[1] is None
    lines = host.main_section()
    assert not any(line.startswith("dev") and "nvidia" in line for line in lines), "dev entries were left behind"
    assert lines[-len(CLASSIC) :] == CLASSIC
    assert unrelated(lines) == MAIN.splitlines()


def test_missing_nvidia_uvm_fails_clearly_and_touches_nothing(host: Host) -> None:
    proc_devices = host.proc_devices.read_text()
    host.proc_devices.write_text(proc_devices.replace("508 nvidia-uvm\n", ""))
    stats, failed = host.apply()
    assert failed is not None and stats["failures"] == 1, stats
    assert "nvidia-uvm driver is not loaded" in failed["msg"] and str(host.proc_devices) in failed["msg"], failed
    assert host.conf.read_text() == ORIGINAL
    assert not host.marker.exists()


def _editor(**params: object) -> object:
    """The config editor of the role's module, loaded from its library/ file."""
    spec = importlib.util.spec_from_file_location("pve_lxc_gpu_config", LIBRARY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    defaults = {"owned_regex": "^/dev/nvidia", "nvidia_major": 195, "uvm_major": 508, "gid": "", "mode": ""}
    return module.Editor({**defaults, "devices": DEVICES, **params})


def test_existing_entries_are_reused_not_duplicated() -> None:
    main = [
        "arch: amd64",
        "dev0: /dev/dri/renderD128,gid=104",
        "dev1: path=/dev/nvidia0,gid=44",  # ours and right in another spelling: kept as written
        "dev2: /dev/dri/card1,gid=44",  # not ours
        "dev3: /dev/nvidia-modeset",  # ours but no longer wanted: removed
        "dev7: /dev/nvidiactl",  # ours, options differ: rewritten in place
        "dev8: /dev/nvidiactl",  # duplicate: removed
        "lxc.mount.entry = /dev/nvidia0 dev/nvidia0 none bind,optional,create=file",  # other syntax: removed
        "lxc.cgroup2.devices.allow: c 226:* rwm",
    ]
    assert _editor(gid="44").edit_dev(main) == [
        "arch: amd64",
        "dev0: /dev/dri/renderD128,gid=104",
        "dev1: path=/dev/nvidia0,gid=44",
        "dev2: /dev/dri/card1,gid=44",
        "dev7: /dev/nvidiactl,gid=44",
        "dev3: /dev/nvidia-uvm,gid=44",
        "dev4: /dev/nvidia-uvm-tools,gid=44",
        "lxc.cgroup2.devices.allow: c 226:* rwm",
    ]
    classic = _editor().edit_classic(["lxc.cgroup2.devices.allow = c 195:* rwm", "dev1: /dev/nvidia0", ""])
    assert classic == ["lxc.cgroup2.devices.allow = c 195:* rwm", *CLASSIC[1:], ""]


def test_by_default_the_nodes_belong_to_the_group_vllm_joins(host: Host) -> None:
    """PVE makes a devN node root:root 0660 unless gid=/mode= are given (pve-container src/PVE/LXC.pm,
    create_passthrough_device_node), which only root can open: the default gives it gid 44 (video), the group
    vllm.service joins (SupplementaryGroups=video), and keeps PVE's 0660."""
    _, failed = host.apply()
    assert failed is None, failed
    nvidia = [line for line in host.main_section() if "nvidia" in line]
    assert nvidia == [f"dev{i}: {d},gid=44" for i, d in enumerate(DEVICES, start=1)], nvidia
    host.marker.unlink()
    host.assert_reapplying_changes_nothing()


def test_the_boot_unit_creates_every_node_the_config_names(host: Host) -> None:
    """nvidia-modprobe -u loads nvidia-uvm *instead of* nvidia and makes only the uvm nodes (NVIDIA/nvidia-modprobe
    option-table.h, nvidia-modprobe.c): the GPU nodes and nvidiactl (minor 255) need a call of their own."""
    devices = [*DEVICES, "/dev/nvidia1", "/dev/nvidia-modeset"]
    for device in devices[4:]:
        (host.dev_root / device.lstrip("/")).touch(mode=0o666)
    assert host.apply(pve_gpu_passthrough_devices=devices)[1] is None
    exec_start = [line for line in host.unit.read_text().splitlines() if line.startswith("ExecStart=")]
    assert exec_start == [
        "ExecStart=/usr/bin/nvidia-modprobe -c 0 -c 255 -c 1",
        "ExecStart=/usr/bin/nvidia-modprobe -u -c 0",
        "ExecStart=/usr/bin/nvidia-modprobe -m",
    ], exec_start


def test_a_device_nvidia_modprobe_cannot_create_is_refused_before_anything_changes(host: Host) -> None:
    stats, failed = host.apply(pve_gpu_passthrough_devices=[*DEVICES, "/dev/nvidia-caps/nvidia-cap1"])
    assert failed is not None, stats
    assert "/dev/nvidia-caps/nvidia-cap1" in failed["msg"] and "pve_gpu_passthrough_devices" in failed["msg"]
    assert host.conf.read_text() == ORIGINAL and not host.unit.exists()


@pytest.mark.parametrize(
    ("version_file", "named"),
    [("version-570", ("570.133.20", "580")), ("missing", ("No NVIDIA driver", "580"))],
)
def test_a_driver_below_the_floor_fails_before_anything_changes(host: Host, version_file: str, named: tuple) -> None:
    stats, failed = host.apply(pve_gpu_passthrough_nvidia_version_file=str(DRIVERS / version_file))
    assert failed is not None and stats["failures"] == 1, stats
    for needle in (*named, "pve_gpu_passthrough_min_driver_version", "Nothing was changed"):
        assert needle in failed["msg"], failed["msg"]
    assert host.conf.read_text() == ORIGINAL and not host.unit.exists() and not host.marker.exists()


@pytest.mark.parametrize(
    ("role_vars", "named"),
    [
        ({"pve_gpu_passthrough_dev_mode": "666"}, ("pve_gpu_passthrough_dev_mode", "0[0-7]{3}", '"666"')),
        ({"pve_gpu_passthrough_dev_mode": "00660"}, ("pve_gpu_passthrough_dev_mode", "0[0-7]{3}")),
        ({"pve_gpu_passthrough_dev_gid": "video"}, ("pve_gpu_passthrough_dev_gid", '"video"')),
        # both valid for PVE, but only root could open the node
        ({"pve_gpu_passthrough_dev_gid": "", "pve_gpu_passthrough_dev_mode": ""}, ("readable by root only",)),
        ({"pve_gpu_passthrough_dev_mode": "0600"}, ("readable by root only", "0666")),
    ],
)
def test_bad_device_options_are_refused_naming_the_variable(host: Host, role_vars: dict, named: tuple) -> None:
    stats, failed = host.apply(**role_vars)
    assert failed is not None, stats
    for needle in named:
        assert needle in failed["msg"], failed["msg"]
    assert host.conf.read_text() == ORIGINAL and not host.unit.exists()


def test_the_module_validates_mode_as_pve_does() -> None:
    """PVE's devN schema (pve-container src/PVE/LXC/Config.pm) has mode pattern 0[0-7]{3}."""
    source = LIBRARY.read_text()
    assert '("mode", r"(0[0-7]{3})?")' in source


def test_classic_syntax_refuses_host_nodes_others_cannot_open(host: Host) -> None:
    """The classic lines bind-mount the host's node as it is; in an unprivileged container its root:root owner
    shows as nobody:nogroup, so vllm opens it only through the others bits."""
    (host.dev_root / "dev/nvidiactl").chmod(0o660)
    stats, failed = host.apply(pve_gpu_passthrough_syntax="classic")
    assert failed is not None, stats
    assert "/dev/nvidiactl (not writable by others)" in failed["msg"], failed["msg"]
    assert "/dev/nvidia0" not in failed["msg"].split("cannot be read")[0].replace("/dev/nvidiactl", "")
    assert host.conf.read_text() == ORIGINAL
