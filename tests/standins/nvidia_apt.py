"""A stand-in for NVIDIA's CUDA apt repository for Debian 12 (tests only): a flat, signed apt repository
built on the fly with `dpkg-deb` and a throwaway GPG key, served over HTTP.

Where the names, versions and dependencies come from (read 2026-11-30 through the search tool's stored
copies; NVIDIA's site is unreachable from the test machine):
- Layout: NVIDIA's repositories are flat (`deb [signed-by=...] <url> /`, InRelease and Packages at the
  top) and the debian12 signing key is `3bf863cc.pub` (cudatools <cudatools@nvidia.com>): public install
  scripts and apt sources for .../cuda/repos/debian12/x86_64/ (e.g. ritascarlet/HyprDebianInstaller
  NvidiaCudaInstaller.sh). Here the key is a fresh one; the test passes its fingerprint to the role.
- Packages: NVIDIA Driver Installation Guide, Debian (docs.nvidia.com/datacenter/tesla/
  driver-installation-guide/debian.html, as quoted by installers built on it): compute-only install is
  `nvidia-driver-cuda nvidia-kernel-open-dkms`; branch locking is `nvidia-driver-pinning-<branch>`,
  installed before the driver ("Recent updates", version locking packages for Debian and Ubuntu). The
  pinning package `Provides`/`Conflicts`/`Replaces: nvidia-driver-pinning` and holds an apt preferences
  file at priority 1000 (apt-cache show of nvidia-driver-pinning-580 in NVIDIA's ubuntu2404 repository,
  recorded 2026-05-21 in a public package matrix). Its file name and exact package list are not
  published: here `/etc/apt/preferences.d/nvidia-driver-pinning-<branch>` pins the driver's packages.
- Dependencies: `nvidia-kernel-open-dkms` needs `dkms (>= 3.1.8)`, newer than bookworm's 3.0.10, and
  NVIDIA's repository carries its own `dkms` (rightbracket NeuralDrive "Archive Sources": 580 builds
  need dkms >= 3.1.8 on bookworm; vantamcpd's apt pin notes that NVIDIA's repository ships dkms and
  dh-dkms). Its version here, 3.1.8-1, is the lowest that satisfies the driver (the real one is
  unconfirmed); its Depends are Debian's dkms's (`apt-cache show dkms`, bookworm). The userspace
  split (libcuda1, libnvidia-ml1, nvidia-smi, nvidia-modprobe, firmware-nvidia-gsp,
  nvidia-kernel-support at the driver's exact version) follows NVIDIA's Debian packages as listed by
  users (`dpkg -l` of 595.45.04-1; a 550.163.01-2 package list).
- Versions: 580.105.08-1 (a debian12 580 build: "cuda-drivers-580 package 580.105.08-1" on NVIDIA's
  forum, a Debian 12 installer's PIN_VERSION=580.105.08-1), 590.48.01-1 (a newer branch the pin must
  keep away; 590.48.01 is in NVIDIA's ubuntu2404 matrix), 570.133.20-1 (a debian12 570 build named by
  NeuralDrive).
- nvidia-smi: `--query-gpu=driver_version --format=csv,noheader` prints one line per GPU with the
  version only (nvidia-smi(1)).

- Kernel packages (only to model an image older than the archive; NVIDIA's repository has none): Debian's cloud
  flavour as bookworm names it, `linux-image-cloud-amd64` and `linux-headers-cloud-amd64` (meta-packages whose
  Depends name the ABI's `linux-image-<abi>-cloud-amd64 (= <version>)` and `linux-headers-<abi>-cloud-amd64
  (= <version>)`, `apt-cache show` of bookworm's meta-packages), for one kernel NEWER_KERNEL (ABI 6.1.0-99, version
  6.1.999-1: newer than any bookworm kernel, so apt prefers these to Debian's mirror). The packages are empty and their
  other dependencies (initramfs-tools, linux-kbuild, gcc) are left out: no kernel is installed or booted. Headers for
  the running kernel are offered by no one, as on a GCE image whose kernel Debian has already replaced.

Left out: every other package of the repository (CUDA, X, OpenGL, nvidia-open, cuda-drivers), real
module builds (the fake dkms builds nothing), and any Debian contrib dependency (not confirmed).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path

from standins.base import StandinHandler, StandinServer

KEY_FILE = "3bf863cc.pub"
DKMS_VERSION = "3.1.8-1"
# Debian bookworm's dkms 3.0.10-8+deb12u1 Depends, as apt-cache show prints them
DKMS_DEPENDS = "kmod | kldutils, gcc | c-compiler, dpkg-dev, make | build-essential, patch"
BRANCH_VERSIONS = {570: "570.133.20-1", 580: "580.105.08-1", 590: "590.48.01-1"}
# A kernel newer than the running one and than any of Debian's (see the docstring)
NEWER_KERNEL = "6.1.0-99-cloud-amd64"
NEWER_KERNEL_VERSION = "6.1.999-1"


@dataclass
class Deb:
    name: str
    version: str
    depends: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (text, mode)

    def control(self) -> str:
        kernel = self.name.startswith("linux-")
        fields = {
            "Package": self.name,
            "Version": self.version,
            "Architecture": "amd64"
            if self.name != "dkms" and not self.name.startswith("nvidia-driver-pinning")
            else "all",
            "Maintainer": "Debian Kernel Team <debian-kernel@lists.debian.org>"
            if kernel
            else "cudatools <cudatools@nvidia.com>",
            "Section": "kernel" if kernel else "NVIDIA",
            "Priority": "optional",
            **({"Depends": self.depends} if self.depends else {}),
            **self.extra,
            "Description": f"{self.name} (embedstack test stand-in, not NVIDIA's package)",
        }
        return "".join(f"{k}: {v}\n" for k, v in fields.items())


def nvidia_smi_script(driver: str) -> str:
    return f"""#!/bin/sh
# STAND-IN nvidia-smi (embedstack tests): one GPU with driver {driver}
case "$*" in
  *--query-gpu=driver_version*) echo "{driver}" ;;
  *) echo "NVIDIA-SMI {driver}    Driver Version: {driver}    CUDA Version: 13.0" ;;
esac
"""


def branch_packages(branch: int) -> list[Deb]:
    v = BRANCH_VERSIONS[branch]
    driver = v.split("-")[0]
    same = f"(= {v})"
    pin = (
        f"Package: nvidia-driver-cuda nvidia-kernel-open-dkms nvidia-kernel-support nvidia-smi nvidia-modprobe "
        f"libcuda1 libnvidia-ml1 firmware-nvidia-gsp\nPin: version {branch}.*\nPin-Priority: 1000\n"
    )
    return [
        Deb(
            f"nvidia-driver-pinning-{branch}",
            v,
            extra={
                "Provides": "nvidia-driver-pinning",
                "Conflicts": "nvidia-driver-pinning",
                "Replaces": "nvidia-driver-pinning",
            },
            files={f"etc/apt/preferences.d/nvidia-driver-pinning-{branch}": (pin, 0o644)},
        ),
        Deb(
            "nvidia-driver-cuda",
            v,
            f"libcuda1 {same}, libnvidia-ml1 {same}, nvidia-smi {same}, nvidia-modprobe (>= {driver})",
        ),
        Deb(
            "nvidia-kernel-open-dkms",
            v,
            f"dkms (>= 3.1.8), nvidia-kernel-support {same}, firmware-nvidia-gsp {same}",
            extra={"Provides": f"nvidia-open-kernel-dkms (= {v})"},
        ),
        Deb("nvidia-kernel-support", v, f"nvidia-modprobe (>= {driver})"),
        Deb("firmware-nvidia-gsp", v),
        Deb("libcuda1", v, f"libnvidia-ml1 {same}"),
        Deb("libnvidia-ml1", v),
        Deb("nvidia-modprobe", v),
        Deb("nvidia-smi", v, f"libnvidia-ml1 {same}", files={"usr/bin/nvidia-smi": (nvidia_smi_script(driver), 0o755)}),
    ]


def kernel_packages() -> list[Deb]:
    """Debian's cloud-flavour meta-packages for NEWER_KERNEL, and that kernel's image and headers (empty)."""
    v, abi = NEWER_KERNEL_VERSION, NEWER_KERNEL
    return [
        Deb(f"linux-image-{abi}", v),
        Deb(f"linux-headers-{abi}", v),
        Deb("linux-image-cloud-amd64", v, f"linux-image-{abi} (= {v})"),
        Deb("linux-headers-cloud-amd64", v, f"linux-headers-{abi} (= {v})"),
    ]


def build_repository(root: Path, branches: list[int], gnupg_home: Path, newer_kernel: bool = False) -> None:
    """Build .debs for `branches` (plus NVIDIA's dkms, and with `newer_kernel` Debian's cloud kernel packages for
    NEWER_KERNEL), the Packages index and a signed InRelease in root."""
    root.mkdir(parents=True, exist_ok=True)
    debs = [Deb("dkms", DKMS_VERSION, DKMS_DEPENDS)] + [d for b in branches for d in branch_packages(b)]
    if newer_kernel:
        debs += kernel_packages()
    stanzas = []
    with tempfile.TemporaryDirectory() as tmp:
        for deb in debs:
            tree = Path(tmp) / f"{deb.name}_{deb.version}"
            (tree / "DEBIAN").mkdir(parents=True)
            (tree / "DEBIAN" / "control").write_text(deb.control())
            for path, (text, mode) in deb.files.items():
                target = tree / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                target.chmod(mode)
            filename = f"{deb.name}_{deb.version}_{'all' if 'Architecture: all' in deb.control() else 'amd64'}.deb"
            subprocess.run(
                ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(root / filename)],
                check=True,
                capture_output=True,
            )
            data = (root / filename).read_bytes()
            stanzas.append(
                deb.control()
                .rstrip("\n")
                .replace(
                    "\nDescription:",
                    f"\nFilename: ./{filename}\nSize: {len(data)}\n"
                    f"SHA256: {hashlib.sha256(data).hexdigest()}\nDescription:",
                )
                + "\n"
            )
    packages = "\n".join(stanzas).encode()
    (root / "Packages").write_bytes(packages)
    (root / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    release = [
        "Origin: NVIDIA",
        "Label: NVIDIA CUDA",
        "Architecture: x86_64",
        f"Date: {formatdate(usegmt=True)}",
        "SHA256:",
    ]
    for name in ("Packages", "Packages.gz"):
        data = (root / name).read_bytes()
        release.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    (root / "Release").write_text("\n".join(release) + "\n")
    gpg = ["gpg", "--batch", "--yes", "--homedir", str(gnupg_home)]
    subprocess.run(
        [*gpg, "--clearsign", "-o", str(root / "InRelease"), str(root / "Release")], check=True, capture_output=True
    )
    public = subprocess.run([*gpg, "--armor", "--export"], check=True, capture_output=True).stdout
    (root / KEY_FILE).write_bytes(public)


def stop_gpg_agent(gnupg_home: Path) -> None:
    """gpg starts an agent per home directory that outlives it: end the one this home started, if any."""
    subprocess.run(["gpgconf", "--homedir", str(gnupg_home), "--kill", "gpg-agent"], capture_output=True, check=False)


def new_signing_key(gnupg_home: Path) -> str:
    """A throwaway signing key in gnupg_home; returns its fingerprint."""
    gnupg_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    gpg = ["gpg", "--batch", "--homedir", str(gnupg_home)]
    subprocess.run(
        [
            *gpg,
            "--passphrase",
            "",
            "--quick-gen-key",
            "stand-in cudatools <cudatools@invalid>",
            "rsa3072",
            "sign",
            "never",
        ],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([*gpg, "--with-colons", "--list-keys"], check=True, capture_output=True, text=True).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


class AptHandler(StandinHandler):
    """Static files below the served directory, as a CDN serves NVIDIA's repository."""

    routes = (("GET", r"/(?P<path>.*)", "get_file"), ("HEAD", r"/(?P<path>.*)", "get_file"))

    def get_file(self, path: str) -> None:
        root: Path = self.standin
        target = (root / path).resolve()
        if not target.is_relative_to(root.resolve()) or not target.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send(HTTPStatus.OK, target.read_bytes(), "application/octet-stream")


def serve(root: Path, bind: str, port: int = 0) -> StandinServer:
    return StandinServer(AptHandler, root, bind=bind, port=port).start()


if __name__ == "__main__":  # python -m standins.nvidia_apt <dir>: build a 580+590 repository and print it
    import sys

    out = Path(sys.argv[1])
    print(new_signing_key(out / "gnupg"))
    build_repository(out / "repo", [580, 590], out / "gnupg")
    print(os.listdir(out / "repo"))
