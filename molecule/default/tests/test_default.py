"""Checks run from the host over SSH (testinfra, ansible backend) against every molecule container."""

import time


def _system_state(host, attempts=30):
    """Wait until systemd has finished booting and return `systemctl is-system-running`."""
    state = ""
    for _ in range(attempts):
        state = host.run("systemctl is-system-running").stdout.strip()
        if state not in ("initializing", "starting"):
            break
        time.sleep(1)
    return state


def test_systemd_is_pid_1(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"


def test_system_is_running(host):
    state = _system_state(host)
    failed = host.run("systemctl --failed --no-legend --plain").stdout
    assert state in ("running", "degraded"), f"system state {state!r}; failed units:\n{failed}"


def test_sshd_is_active_and_enabled(host):
    ssh = host.service("ssh")
    assert ssh.is_running
    assert ssh.is_enabled


def test_is_debian_12(host):
    assert host.system_info.distribution == "debian"
    assert host.system_info.release.startswith("12")
