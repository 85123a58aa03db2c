"""Role nvidia_driver: NVIDIA's driver from NVIDIA's CUDA repository on Debian 12, pinned to one branch.

Fast tests (no container): the role's preflight refuses a branch below the floor, a malformed fingerprint
and a host that is not Debian 12 on x86_64, naming the variable or fact, and its fingerprint filter reads
keys as gpg does.

The container test runs the role over SSH against a real Debian 12 systemd container (privileged LXC from
the cached bookworm base rootfs, on its own bridge with NAT to Debian's mirror) with
tests/standins/nvidia_apt.py as NVIDIA's repository, served on the bridge address. The container's kernel
is the host's, so no kernel headers are installed (nvidia_driver_kernel_headers: "") and the stand-in's
nvidia-smi answers for a GPU. Everything it creates is removed at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ansible_play import ANSIBLE_PLAYBOOK, REPO, assert_outcome, describe, run_cases
from standins.nvidia_apt import NEWER_KERNEL, NEWER_KERNEL_VERSION

sys.path.insert(0, str(REPO / "roles" / "nvidia_driver" / "filter_plugins"))
import nvidia_driver as role_filters

ROLE = {"name": "nvidia_driver"}
DEBIAN12 = {
    "distribution": "Debian",
    "distribution_major_version": "12",
    "architecture": "x86_64",
    "kernel": "6.1.0-1-cloud-amd64",
}


def _cases_with_facts(overrides: dict, facts: dict | None = None) -> dict:
    return {
        "include": {**ROLE, "tasks_from": "preflight.yml"},
        "vars": {
            "ansible_facts": {**DEBIAN12, **(facts or {})},
            "nvidia_driver_repo_url": "http://127.0.0.1:9/",
            **overrides,
        },
    }


def test_preflight_refuses_bad_hosts_and_values(tmp_path: Path) -> None:
    # Each case stops before the key download (port 9 would refuse it), so nothing is fetched or changed.
    cases = {
        "branch_570": _cases_with_facts({"nvidia_driver_branch": 570}),
        "branch_text": _cases_with_facts({"nvidia_driver_branch": "latest"}),
        "fingerprint_short": _cases_with_facts({"nvidia_driver_key_fingerprint": "3BF863CC"}),
        "repo_without_slash": _cases_with_facts({"nvidia_driver_repo_url": "https://example.invalid/debian12/x86_64"}),
        "ubuntu": _cases_with_facts({}, {"distribution": "Ubuntu", "distribution_major_version": "24"}),
        "debian13": _cases_with_facts({}, {"distribution_major_version": "13"}),
        "arm64": _cases_with_facts({}, {"architecture": "aarch64"}),
    }
    outcomes, _ = run_cases(cases, tmp_path)
    assert_outcome(outcomes, "branch_570", ("nvidia_driver_branch", "580", "570"))
    assert_outcome(outcomes, "branch_text", ("nvidia_driver_branch", "latest"))
    assert_outcome(outcomes, "fingerprint_short", ("nvidia_driver_key_fingerprint", "3BF863CC", "40 hex"))
    assert_outcome(outcomes, "repo_without_slash", ("nvidia_driver_repo_url", "ending with /"))
    assert_outcome(outcomes, "ubuntu", ("distribution", "Ubuntu", "allowed: distribution Debian"))
    assert_outcome(outcomes, "debian13", ("distribution_major_version 12", "Debian 13"))
    assert_outcome(outcomes, "arm64", ("architecture", "aarch64", "x86_64"))


def test_fingerprint_filter_matches_gpg(tmp_path: Path) -> None:
    if shutil.which("gpg") is None:
        pytest.skip("needs gpg")
    home = tmp_path / "gnupg"
    from standins.nvidia_apt import new_signing_key, stop_gpg_agent

    try:
        fingerprint = new_signing_key(home)
        gpg = ["gpg", "--batch", "--homedir", str(home)]
        armored = subprocess.run([*gpg, "--armor", "--export"], capture_output=True, text=True, check=True).stdout
        binary = subprocess.run([*gpg, "--export"], capture_output=True, check=True).stdout
    finally:
        stop_gpg_agent(home)
    assert role_filters.openpgp_fingerprints(armored) == [fingerprint]
    assert role_filters.openpgp_fingerprints(binary) == [fingerprint]
    assert role_filters.openpgp_fingerprints("<html>404</html>") == []


# -- the container test ------------------------------------------------------------------------------

BRIDGE = "esnvd0"
HOST_IP = "10.219.0.1"
CT_IP = "10.219.0.10"
SUBNET = "10.219.0.0/24"
NFT_TABLE = f"embedstack_{BRIDGE}"
STATE = Path("/var/lib/embedstack/nvidia-driver-test")
BASE_ROOTFS = Path("/var/cache/embedstack/bookworm-base")
CT = "nvidia-driver-test"


def sh(cmd: list[str], check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stdout}{result.stderr}")
    return result


def container_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a privileged LXC container, a bridge and NAT)"
    for tool in ("lxc-start", "lxc-attach", "nft", "ip", "dpkg-deb", "gpg", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not (BASE_ROOTFS / "usr" / "sbin" / "sshd").exists():
        return f"no cached Debian 12 rootfs at {BASE_ROOTFS} (make lab builds it)"
    return None


def cleanup() -> None:
    lxc = STATE / "lxc"
    if (lxc / CT).exists():
        sh(["lxc-stop", "-P", str(lxc), "-n", CT, "--kill"], check=False, timeout=60)
    for link in json.loads(sh(["ip", "-j", "link", "show", "master", BRIDGE], check=False).stdout or "[]"):
        sh(["ip", "link", "del", "dev", link["ifname"]], check=False)
    if sh(["nft", "list", "table", "ip", NFT_TABLE], check=False).returncode == 0:
        sh(["nft", "delete", "table", "ip", NFT_TABLE], check=False)
    if sh(["ip", "link", "show", "dev", BRIDGE], check=False).returncode == 0:
        sh(["ip", "link", "del", "dev", BRIDGE], check=False)
    record = STATE / "ip_forward.orig"
    if (
        record.exists()
        and record.read_text().strip() == "0"
        and "embedstack_" not in sh(["nft", "list", "tables"], check=False).stdout
    ):
        sh(["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"], check=False)
    shutil.rmtree(STATE, ignore_errors=True)


def start_container(pubkey: str) -> None:
    STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
    sh(["ip", "link", "add", "name", BRIDGE, "type", "bridge"])
    sh(["ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE])
    sh(["ip", "link", "set", "dev", BRIDGE, "up"])
    if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0":
        (STATE / "ip_forward.orig").write_text("0\n")
        sh(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    rules = (
        f"table ip {NFT_TABLE} {{\n  chain postrouting {{\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {SUBNET} ip daddr != {SUBNET} masquerade\n  }}\n}}\n"
    )
    sh(["nft", "-f", "-"], input=rules)
    ct = STATE / "lxc" / CT
    ct.mkdir(parents=True)
    root = ct / "rootfs"
    sh(["cp", "-a", "--reflink=auto", str(BASE_ROOTFS), str(root)], timeout=300)
    (root / "etc" / "machine-id").write_text(secrets.token_hex(16) + "\n")
    (root / "etc" / "hostname").write_text(CT + "\n")
    resolv = root / "etc" / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    servers = [
        s
        for s in re.findall(r"(?m)^\s*nameserver\s+(\S+)", Path("/etc/resolv.conf").read_text())
        if not s.startswith("127.")
    ]
    resolv.write_text("".join(f"nameserver {s}\n" for s in servers or ["1.1.1.1"]))
    sh(["chroot", str(root), "ssh-keygen", "-A"], check=False)
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(pubkey)
    (ssh_dir / "authorized_keys").chmod(0o600)
    (ct / "config").write_text(
        "\n".join(
            [
                "lxc.include = /usr/share/lxc/config/common.conf",
                "lxc.arch = linux64",
                f"lxc.uts.name = {CT}",
                f"lxc.rootfs.path = dir:{root}",
                "lxc.apparmor.profile = unconfined",
                "lxc.tty.max = 1",
                "lxc.net.0.type = veth",
                f"lxc.net.0.link = {BRIDGE}",
                "lxc.net.0.veth.pair = vesnvd10",
                "lxc.net.0.name = eth0",
                "lxc.net.0.flags = up",
                f"lxc.net.0.ipv4.address = {CT_IP}/24",
                f"lxc.net.0.ipv4.gateway = {HOST_IP}",
            ]
        )
        + "\n"
    )
    sh(["lxc-start", "-P", str(STATE / "lxc"), "-n", CT, "-d"])
    sh(["lxc-wait", "-P", str(STATE / "lxc"), "-n", CT, "-s", "RUNNING", "-t", "30"])


def attach(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return sh(
        [
            "lxc-attach",
            "-P",
            str(STATE / "lxc"),
            "-n",
            CT,
            "--clear-env",
            "--set-var",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "--",
            *cmd,
        ],
        check=False,
        timeout=timeout,
    )


def play(workdir: Path, key: Path, variables: dict) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Apply the role once over SSH; returns the process and the json callback's report."""
    (workdir / "play.yml").write_text(
        json.dumps([{"hosts": "gpu", "become": False, "gather_facts": True, "roles": [ROLE]}])
    )
    (workdir / "vars.json").write_text(json.dumps(variables))
    (workdir / "hosts.json").write_text(
        json.dumps(
            {
                "gpu": {
                    "hosts": {CT: {"ansible_host": CT_IP}},
                    "vars": {
                        "ansible_user": "root",
                        "ansible_ssh_private_key_file": str(key),
                        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                        "ansible_python_interpreter": "/usr/bin/python3",
                    },
                }
            }
        )
    )
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-local"),
    }
    cmd = [
        str(ANSIBLE_PLAYBOOK),
        "-i",
        str(workdir / "hosts.json"),
        str(workdir / "play.yml"),
        "-e",
        f"@{workdir / 'vars.json'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=workdir, check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        report = None
    return proc, report


def failure(report: dict | None) -> str:
    for play_ in (report or {}).get("plays", []):
        for task in play_["tasks"]:
            result = task["hosts"].get(CT, {})
            if result.get("failed"):
                return result.get("msg", "") or json.dumps(result)[:2000]
    return ""


def nvidia_packages() -> str:
    return attach(
        "sh",
        "-c",
        "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' '*nvidia*' 2>/dev/null | grep ' ii' || true",
    ).stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    if reason := container_skip_reason():
        pytest.skip(reason)
    from standins.nvidia_apt import build_repository, new_signing_key, serve, stop_gpg_agent

    work = tmp_path_factory.mktemp("nvidia-driver")
    cleanup()
    server = None
    try:
        key = work / "id_ed25519"
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        start_container(key.with_suffix(".pub").read_text())
        fingerprint = new_signing_key(work / "gnupg")
        build_repository(work / "www" / "debian12" / "x86_64", [580, 590], work / "gnupg", newer_kernel=True)
        build_repository(work / "www" / "only570" / "x86_64", [570], work / "gnupg")
        server = serve(work / "www", HOST_IP)
        assert attach("true").returncode == 0
        for _ in range(60):  # sshd comes up with systemd
            probe = ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
            if sh([*probe, "-o", "ConnectTimeout=2", f"root@{CT_IP}", "true"], check=False).returncode == 0:
                break
            time.sleep(0.5)
        yield {
            "work": work,
            "key": key,
            "fingerprint": fingerprint,
            "url": f"{server.url}/debian12/x86_64/",
            "url570": f"{server.url}/only570/x86_64/",
            "server": server,
        }
    finally:
        if server is not None:
            server.close()
        stop_gpg_agent(work / "gnupg")
        cleanup()


def test_role_installs_and_pins_the_580_branch(lab: dict) -> None:
    base = {
        "nvidia_driver_key_fingerprint": lab["fingerprint"],
        "nvidia_driver_kernel_headers": "",
        "nvidia_driver_repo_url": lab["url"],
    }
    work, key = lab["work"], lab["key"]

    # A branch below the floor and a wrong fingerprint fail before anything is changed.
    proc, report = play(work, key, {**base, "nvidia_driver_branch": 570})
    assert proc.returncode != 0 and "nvidia_driver_branch" in failure(report) and "580" in failure(report), describe(
        proc
    )
    wrong = "EB693B3035CD5710E231E123A4B469963BF863CC"  # NVIDIA's real key, which did not sign the stand-in
    proc, report = play(work, key, {**base, "nvidia_driver_key_fingerprint": wrong})
    message = failure(report)
    assert (
        proc.returncode != 0
        and "nvidia_driver_key_fingerprint" in message
        and wrong in message
        and lab["fingerprint"] in message
    ), describe(proc)
    assert attach("ls", "/etc/apt/sources.list.d/nvidia-cuda.sources").returncode != 0, "the repository was added"
    assert nvidia_packages() == ""

    # A repository that offers only branch 570 fails naming both, before any driver package is installed.
    proc, report = play(work, key, {**base, "nvidia_driver_repo_url": lab["url570"]})
    message = failure(report)
    assert proc.returncode != 0 and "570.133.20-1" in message and "580" in message, describe(proc)
    assert nvidia_packages() == ""

    # The image's kernel is older than the archive: its headers are gone, only a newer kernel's are offered. The role
    # installs that kernel with its headers (Debian's cloud meta-packages), records why a reboot is needed for the
    # bootstrap, and stops before any driver package (issue 23, section 2).
    running = attach("uname", "-r").stdout.strip()
    assert (
        "Candidate: (none)" in attach("apt-cache", "policy", f"linux-headers-{running}").stdout
        or not attach("apt-cache", "policy", f"linux-headers-{running}").stdout.strip()
    ), f"an archive offers headers for this host's kernel {running}: the case cannot be shown here"
    proc, report = play(work, key, {**base, "nvidia_driver_kernel_headers": f"linux-headers-{running}"})
    message = failure(report)
    assert proc.returncode != 0 and "must reboot" in message and NEWER_KERNEL in message, describe(proc)
    assert running in message and "No driver package was installed" in message, message
    flag = attach("cat", "/run/embedstack/nvidia-driver-reboot-required").stdout
    assert NEWER_KERNEL in flag and running in flag, flag
    kernel_debs = attach("sh", "-c", "dpkg-query -W -f '${Package} ${Version}\\n' 'linux-*'").stdout
    for package in ("linux-image-cloud-amd64", "linux-headers-cloud-amd64", f"linux-headers-{NEWER_KERNEL}"):
        assert f"{package} {NEWER_KERNEL_VERSION}" in kernel_debs, kernel_debs
    assert "nvidia-driver-cuda" not in nvidia_packages() and "nvidia-kernel-open-dkms" not in nvidia_packages()

    # The real run: repository with signed-by and the pinned fingerprint, the 580 branch installed and pinned.
    proc, report = play(work, key, {**base})
    assert proc.returncode == 0, failure(report) or describe(proc)
    sources = attach("cat", "/etc/apt/sources.list.d/nvidia-cuda.sources").stdout
    assert f"Signed-By: /etc/apt/keyrings/nvidia-cuda.asc {lab['fingerprint']}" in sources
    assert f"URIs: {lab['url']}" in sources
    installed = nvidia_packages()
    for package in ("nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-smi", "nvidia-driver-pinning-580"):
        assert re.search(rf"(?m)^{package} 580\.105\.08-1 ii", installed), installed
    assert "590." not in installed
    assert attach("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader").stdout.strip() == "580.105.08"
    # The repository offers 590 as well: an upgrade would not move there.
    upgrade = attach("apt-get", "-s", "dist-upgrade", timeout=120).stdout
    assert "590.48.01" not in upgrade, upgrade
    assert (
        "580.105.08-1"
        in attach("apt-cache", "policy", "nvidia-driver-cuda").stdout.split("Candidate:")[1].splitlines()[0]
    )

    # Idempotence: the second run changes nothing.
    proc, report = play(work, key, {**base})
    assert proc.returncode == 0, failure(report) or describe(proc)
    assert report["stats"][CT]["changed"] == 0, [
        t["task"]["name"] for p in report["plays"] for t in p["tasks"] if t["hosts"].get(CT, {}).get("changed")
    ]
