"""The pve_gpu_passthrough role edits a Proxmox VE container config safely and idempotently.

Runs the real role with ansible-playbook (local connection) against scratch copies of files from a PVE 8 host:
`fixtures/pve/proc-devices` (NVIDIA 550 driver loaded: nvidia 195, nvidia-uvm 508) and `fixtures/pve/105.conf`
(a description, an unrelated `dev0: /dev/dri/renderD128,gid=104`, a raw `lxc.` line and a `[before-gpu]` snapshot).
`pct status` / `pct reboot` are replaced by `echo` / `touch` so a restart leaves a marker file.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from ansible_play import ansible_available, describe, run_play

FIXTURES = Path(__file__).parent / "fixtures" / "pve"
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
        "dev1: /dev/nvidia0,mode=0666",
        "dev2: /dev/nvidiactl,mode=0666",
        "dev3: /dev/nvidia-uvm,mode=0666",
        "dev4: /dev/nvidia-uvm-tools,mode=0666",
    ], lines
    assert unrelated(lines) == MAIN.splitlines(), "a line the role does not own changed"
    assert host.marker.exists(), "the running container was not restarted after its config changed"

    unit = host.root / "host/etc/systemd/system/embedstack-nvidia-uvm.service"
    assert "ExecStart=/usr/bin/nvidia-modprobe -c 0 -u" in unit.read_text()
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
    assert sum("nvidia" in line for line in lines) == 4 and "dev4: /dev/nvidia-uvm-tools" in lines

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
