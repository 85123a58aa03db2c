"""Regenerate every hash-locked requirements file the hosts install with pip --require-hashes (`make lock`).

Each lock sits next to its pins file (X.txt -> X.lock) and holds the same names and versions, each with
the sha256 of every file PyPI has for that version, so pip on any target (Debian 12 / Python 3.11,
Ubuntu 24.04 / Python 3.12, x86_64) finds its file's hash whichever wheel or sdist it picks.

Two pins files are not written by hand but resolved here with uv from one top-level pin, once per
target Python, and merged with python_version markers where the targets differ:
- roles/vllm/files/requirements-cuda.txt: vllm==<vllm_version of roles/vllm/defaults/main.yml>;
- ansible/requirements-bootstrap*.txt: the ansible-core / ansible of pulumi/bootstrap/startup.sh.
The existing pins are uv's preferences, so a re-lock moves nothing that need not move (--upgrade does).

torch is the exception: the gateway and vLLM's cpu build pin torch==2.13.0 meaning PyTorch's CPU build
(2.13.0+cpu), which is not on PyPI (PyPI's Linux torch wheels are CUDA builds). Its hashes are only
those of the +cpu wheels in the local wheel directories (pip's find-links, or LOCK_FIND_LINKS), the
files `make wheelhouse` copies to the hosts. Not PyPI's: in hash-checking mode pip prefers a file whose
index link carries an allowed hash over a local file without one, so PyPI's hashes in the lock would
make pip take the multi-GB CUDA build; without them a CUDA file can only fail the hash check.
The embedstack wheel is built locally at every change and is in no lock: the role installs it by name,
--no-deps, in its own pip call.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/simple"
# The targets' Pythons and glibc: Debian 12 (3.11, glibc 2.36), Ubuntu 24.04 DLVM images (3.12, glibc 2.39).
TARGETS = (("3.11", "x86_64-manylinux_2_36"), ("3.12", "x86_64-manylinux_2_39"))
# Pins files hashed into locks; the resolved ones first, so their pins are fresh when hashed.
CUDA_PINS = REPO / "roles/vllm/files/requirements-cuda.txt"
# The cuda closure's compiler pieces stay on CUDA 13.0, the CUDA of the 580 driver floor: what compiles kernels at run
# time (Triton, FlashInfer's and humming-kernels' JIT through nvcc/NVRTC, nvJitLink's LTO in cuFFT/cuSPARSE) may hand
# the driver PTX, and a driver JIT-compiles only PTX no newer than its own CUDA (NVIDIA, "CUDA Compatibility": minor
# version compatibility excludes PTX from a newer toolkit, cudaErrorUnsupportedPtxVersion). cuda-toolkit 13.0.3.0,
# which torch 2.13.0 pulls, pins nvcc, nvvm and crt 13.0.88 and lets nvjitlink float to <14.
CUDA_CONSTRAINTS = (
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-nvvm==13.0.*",
    "nvidia-nvjitlink==13.0.*",
)
BOOTSTRAP_CORE_PINS = REPO / "ansible/requirements-bootstrap-core.txt"
BOOTSTRAP_PINS = REPO / "ansible/requirements-bootstrap.txt"
PINS = (
    CUDA_PINS,
    BOOTSTRAP_CORE_PINS,
    BOOTSTRAP_PINS,
    REPO / "payload/requirements.txt",
    REPO / "payload/requirements-upstream.txt",
    REPO / "roles/vllm/files/requirements-cpu.txt",
)
# Locks whose torch==X also admits PyTorch's X+cpu build from local disk (see the docstring).
CPU_TORCH = {"requirements.txt", "requirements-cpu.txt"}


def lock_path(pins: Path) -> Path:
    return pins.with_suffix(".lock")


def read_pins(path: Path) -> list[Requirement]:
    """The name==version lines of a pins or lock file (comments, -r lines and hashes skipped)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    reqs = []
    for line in text.splitlines():
        line = line.split(" --hash")[0].split("#")[0].strip()
        if line and not line.startswith("-"):
            reqs.append(Requirement(line))
    return reqs


def pinned_version(req: Requirement) -> str:
    [spec] = req.specifier
    if spec.operator != "==":
        raise SystemExit(f"{req}: a lock needs exact == pins")
    return spec.version


def startup_version(name: str) -> str:
    text = (REPO / "pulumi/bootstrap/startup.sh").read_text()
    return re.search(rf'^readonly {name}="([^"]+)"', text, re.M).group(1)


def vllm_version() -> str:
    text = (REPO / "roles/vllm/defaults/main.yml").read_text()
    return re.search(r'^vllm_version: "([^"]+)"', text, re.M).group(1)


# --- resolving a closure -----------------------------------------------------------------------


def resolve(top: list[str], pins: Path, upgrade: bool, constraints: tuple[str, ...] = ()) -> dict[str, str]:
    """requirement line -> marker ('' when every target gets that version), resolved per target by uv."""
    per_target: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="lock-") as tmp:
        src = Path(tmp) / "in.txt"
        src.write_text("\n".join(top) + "\n")
        limits = Path(tmp) / "constraints.txt"
        limits.write_text("".join(f"{c}\n" for c in constraints))
        for python, platform in TARGETS:
            out = Path(tmp) / f"out-{python}.txt"
            if pins.exists():  # uv keeps an output file's pins where it can
                out.write_text("\n".join(str(r) for r in read_pins(pins) if not r.marker) + "\n")
            cmd = [uv(), "pip", "compile", "--quiet", "--no-config", "--no-header", "--no-annotate"]
            cmd += ["--python-version", python, "--python-platform", platform, "--index-url", PYPI]
            cmd += ["--upgrade"] * upgrade + ["-c", str(limits), str(src), "-o", str(out)]
            subprocess.run(cmd, check=True)
            per_target.append({canonicalize_name(r.name): pinned_version(r) for r in read_pins(out)})
    lines: dict[str, str] = {}
    for name in sorted(set().union(*per_target)):
        versions = [found.get(name) for found in per_target]
        if len(set(versions)) == 1:
            lines[f"{name}=={versions[0]}"] = ""
            continue
        for (python, _), version in zip(TARGETS, versions, strict=True):
            if version:
                lines[f"{name}=={version}"] = f'python_version == "{python}"'
    return lines


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        raise SystemExit("tools/lock.py resolves with uv: pip install uv (make lock does it in build/lock-venv)")
    return found


def write_pins(path: Path, header: str, lines: dict[str, str], include: str = "") -> None:
    body = [f"# {line}" for line in header.splitlines()]
    body += [f"# Generated by tools/lock.py (make lock); do not edit. Hosts install {lock_path(path).name}."]
    body += [f"-r {include}"] if include else []
    body += [line + (f" ; {marker}" if marker else "") for line, marker in lines.items()]
    path.write_text("\n".join(body) + "\n")


def resolve_all(upgrade: bool) -> None:
    vllm = vllm_version()
    header = f"The cuda build of vLLM (vllm_build: cuda): vllm=={vllm} (vllm_version) and its closure for Linux x86_64."
    write_pins(CUDA_PINS, header, resolve([f"vllm=={vllm}"], CUDA_PINS, upgrade, CUDA_CONSTRAINTS))
    core_top = [f"ansible-core=={startup_version('ANSIBLE_CORE_VERSION')}"]
    core = resolve(core_top, BOOTSTRAP_CORE_PINS, upgrade)
    header = (
        "The GCP bootstrap's ansible-core (pulumi/bootstrap/startup.sh) and its closure, for a bundle with collections."
    )
    write_pins(BOOTSTRAP_CORE_PINS, header, core)
    full = resolve([*core_top, f"ansible=={startup_version('ANSIBLE_VERSION')}"], BOOTSTRAP_PINS, upgrade)
    if not core.items() <= full.items():
        raise SystemExit(f"ansible moves ansible-core's closure: {sorted(core.items() - full.items())}")
    header = "The GCP bootstrap's ansible (pulumi/bootstrap/startup.sh): ansible-core's closure plus the collections."
    extra = {line: marker for line, marker in full.items() if line not in core}
    write_pins(BOOTSTRAP_PINS, header, extra, include=BOOTSTRAP_CORE_PINS.name)


# --- hashing ------------------------------------------------------------------------------------

_INDEX: dict[str, list[dict]] = {}


def pypi_files(name: str) -> list[dict]:
    request = urllib.request.Request(f"{PYPI}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)["files"]


def file_version(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except ValueError:  # .egg, .exe and other formats pip never installs
        return None


def pypi_hashes(name: str, version: str) -> list[str]:
    wanted = Version(version)
    return [f["hashes"]["sha256"] for f in _INDEX[name] if file_version(f["filename"]) == wanted]


def local_cpu_torch(version: str) -> list[str]:
    dirs = os.environ.get("LOCK_FIND_LINKS") or os.environ.get("PIP_FIND_LINKS") or pip_find_links()
    found = []
    for folder in dirs.split():
        for wheel in sorted(Path(folder).glob(f"torch-{version}+cpu-*.whl")):
            found.append(hashlib.sha256(wheel.read_bytes()).hexdigest())
    if not found:
        raise SystemExit(f"no torch-{version}+cpu wheel in {dirs!r}: put PyTorch's CPU wheels there (LOCK_FIND_LINKS)")
    return found


def pip_find_links() -> str:
    result = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True)
    return result.stdout.decode().strip()


def write_lock(pins: Path) -> None:
    lines = [
        f"# Generated from {pins.name} by tools/lock.py (make lock); do not edit. pip --require-hashes: every",
        "# file PyPI has for each pinned version (any target Python).",
    ]
    if pins.name in CPU_TORCH:
        lines.append("# torch: PyTorch's +cpu wheels from local disk only, never PyPI's CUDA builds (tools/lock.py).")
    for line in pins.read_text().splitlines():
        if line.startswith("-r "):
            lines.append(f"-r {Path(line[3:]).with_suffix('.lock')}")
    for req in read_pins(pins):
        name, version = canonicalize_name(req.name), pinned_version(req)
        cpu_torch = name == "torch" and pins.name in CPU_TORCH
        hashes = local_cpu_torch(version) if cpu_torch else pypi_hashes(name, version)
        if not hashes:
            raise SystemExit(f"{pins}: {name}=={version} has no file on PyPI")
        marker = f" ; {req.marker}" if req.marker else ""
        lines.append(f"{name}=={version}{marker} \\")
        lines += [f"    --hash=sha256:{digest} \\" for digest in sorted(set(hashes))]
        lines[-1] = lines[-1].removesuffix(" \\")
    lock_path(pins).write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="let uv move the resolved closures to newer releases")
    args = parser.parse_args()
    resolve_all(args.upgrade)
    names = {canonicalize_name(r.name) for pins in PINS for r in read_pins(pins)}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        _INDEX.update(zip(sorted(names), pool.map(pypi_files, sorted(names)), strict=True))
    for pins in PINS:
        write_lock(pins)
        print(f"{shlex.quote(str(lock_path(pins).relative_to(REPO)))}: {len(read_pins(pins))} pins")


if __name__ == "__main__":
    main()
