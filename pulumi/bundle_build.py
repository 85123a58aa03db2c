"""The bootstrap bundle: a byte-reproducible tar.gz the VMs configure themselves from.

Layout (paths inside the tarball). pulumi/bootstrap/startup.sh unpacks it and, from its root,
runs `ansible-playbook -c local ansible/site.yml` on a one-host inventory in group embedding or
qdrant beside a copy of inventories/gcp/group_vars, with vars.yml and the secrets as extra vars
(inventories/gcp/README.md):

    ansible.cfg
    ansible/…                  the playbooks (site.yml)
    roles/…                    every role
    inventories/gcp/…          the repository's GCP group_vars (tier settings), as committed
    wheels/embedstack-<version>-py3-none-any.whl
    wheels/requirements*.txt   the payload wheel and its pins, with and without torch (embedding_service_wheelhouse)
    wheels/requirements*.lock  ...and the same pins hash-locked, which the role installs (pip --require-hashes)
    vars.yml                   this stack's non-secret settings, rendered from its config

Nothing secret is in it: API keys reach the VMs through the `embedstack-secrets` metadata value.

Reproducible: entries sorted, mtime fixed, uid/gid 0, modes normalised, the wheel rebuilt from a
clean copy of the sources and re-zipped with fixed timestamps, gzip without name or time. The
object name carries the sha256 of the uncompressed tar, so it changes exactly when a byte of the
content changes (and not when another machine's zlib compresses the same bytes differently), and
a new name in the template metadata rolls the managed instance group.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from catalog import IAP_RANGE, gpu_count
from config import Settings, resource_stem

REPO = Path(__file__).resolve().parent.parent
# 1980-01-01T00:00:00Z: the earliest time a zip entry (the wheel) can carry.
FIXED_EPOCH = 315532800
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# Device name of the index tier's data disk: /dev/disk/by-id/google-<name> on the VM.
QDRANT_DATA_DEVICE = "qdrant-data"

_SKIP_DIRS = {"__pycache__", ".git", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".cache", ".molecule"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".retry", ".swp", "~")
_TREES = ("ansible", "roles", "inventories/gcp")
_FILES = ("ansible.cfg",)


@dataclass(frozen=True)
class Bundle:
    tar_gz: bytes
    digest: str  # sha256 of the uncompressed tar
    members: tuple[str, ...]

    @property
    def object_name(self) -> str:
        return f"bundles/embedstack-{self.digest[:16]}.tar.gz"


def _skipped(path: Path) -> bool:
    return any(part in _SKIP_DIRS for part in path.parts) or path.name.endswith(_SKIP_SUFFIXES)


def repo_files(repo: Path = REPO) -> dict[str, Path]:
    """arcname → file for every repository file the bundle carries."""
    found: dict[str, Path] = {}
    for tree in _TREES:
        root = repo / tree
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            rel = path.relative_to(repo)
            if path.is_file() and not _skipped(rel):
                found[rel.as_posix()] = path
    for name in _FILES:
        if not (repo / name).is_file():
            raise FileNotFoundError(f"the bundle needs {repo / name}")
        found[name] = repo / name
    for tree in ("ansible", "roles", "inventories/gcp"):
        if not any(name.startswith(tree + "/") for name in found):
            raise FileNotFoundError(f"the bundle needs {repo / tree}/")
    return found


# --- the payload wheel ------------------------------------------------------------------------

_WHEEL_CACHE: dict[str, tuple[str, bytes]] = {}


def _payload_sources(payload: Path) -> list[Path]:
    files = [payload / "pyproject.toml", payload / "README.md"]
    files += sorted(p for p in (payload / "src").rglob("*") if p.is_file() and not _skipped(p.relative_to(payload)))
    return [p for p in files if p.is_file() and ".egg-info" not in p.as_posix()]


def normalize_wheel(data: bytes) -> bytes:
    """Re-zip a wheel with fixed timestamps and modes, entries stored in their original order.

    RECORD hashes cover file contents only, so the wheel stays valid. Stored (not deflated):
    the tarball is gzipped as a whole, and stored bytes do not depend on the zlib build.
    """
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_TIME)
            fixed.external_attr = (0o755 if info.external_attr >> 16 & 0o111 else 0o644) << 16
            fixed.create_system = 3  # unix, so the mode bits mean what they say
            dst.writestr(fixed, src.read(info.filename))
    return out.getvalue()


def build_wheel(payload: Path | None = None) -> tuple[str, bytes]:
    """Build the embedstack wheel from a clean copy of payload/ (no stale build/ or egg-info)."""
    payload = payload or REPO / "payload"
    sources = _payload_sources(payload)
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.relative_to(payload).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    key = digest.hexdigest()
    if key in _WHEEL_CACHE:
        return _WHEEL_CACHE[key]
    with tempfile.TemporaryDirectory(prefix="embedstack-wheel-") as tmp:
        src = Path(tmp) / "payload"
        for path in sources:
            dest = src / path.relative_to(payload)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        out = Path(tmp) / "dist"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(FIXED_EPOCH), "PYTHONHASHSEED": "0"}
        # No build isolation: setuptools is pinned in pulumi/requirements.txt, so the same
        # sources give the same wheel on every machine and no index is needed at `pulumi up`.
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps"]
        cmd += ["--no-build-isolation", "--no-cache-dir", "-w", str(out), str(src)]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"building the payload wheel failed:\n{result.stdout}\n{result.stderr}")
        wheels = sorted(out.glob("embedstack-*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one embedstack wheel in {out}, found {wheels}")
        built = (wheels[0].name, normalize_wheel(wheels[0].read_bytes()))
    _WHEEL_CACHE[key] = built
    return built


def wheel_version(wheel_name: str) -> str:
    return wheel_name.split("-")[1]


# --- variables rendered from the config -------------------------------------------------------


def snapshot_bucket_name(settings: Settings) -> str:
    """The Qdrant snapshot bucket's global name, fixed by project and stack (3-63 characters of
    [a-z0-9_-], starting and ending alphanumeric), so vars.yml can name it before it exists."""
    name = f"{settings.project}-{resource_stem(settings.stack)}-qdrant-snapshots"
    if len(name) > 63:
        name = f"{settings.project}-{hashlib.sha256(settings.stack.encode()).hexdigest()[:8]}-qdrant-snapshots"
    return name


def render_vars(settings: Settings, wheel_name: str) -> dict[str, Any]:
    """vars.yml: the stack's non-secret settings, as extra vars for both tiers.

    Only what the stack config decides: how each tier uses it (ports, health-check ranges, data
    paths, drain timings) is in the repository's inventories/gcp/group_vars, which extra vars
    would override, so those names stay out of here. Secrets go to instance metadata.
    """
    model = settings.model
    return {
        "embedstack_target": "gcp",
        "embedstack_stack": settings.stack,
        "embedstack_region": settings.region,
        "embedstack_gpu_type": settings.gpu.key,
        "embedstack_machine_type": settings.machine_type,
        # one /dev/nvidiaN per GPU, made at every boot (role nvidia_device_nodes)
        "embedstack_gpu_count": gpu_count(settings.machine_type),
        # The embedding tier installs NVIDIA's driver itself unless its image (a Deep Learning VM) does.
        "embedstack_install_nvidia_driver": not settings.image_installs_driver,
        "embedstack_model_id": model.id,
        "embedstack_model_dimension": model.dimension,
        # Who may connect: SSH from the admin networks (and IAP's forwarders when allowed),
        # the service ports from the clients (group_vars add Google's health checkers on 8080).
        "firewall_admin_cidrs": list(settings.admin_cidrs) + ([IAP_RANGE] if settings.allow_iap_ssh else []),
        "embedstack_client_cidrs": list(settings.client_cidrs),
        # The embedding tier: vLLM serves the model on loopback, the gateway forwards to it.
        "vllm_model": model.hf_id,
        "vllm_model_revision": model.revision,
        "vllm_served_model_name": model.id,
        "vllm_max_model_len": model.max_tokens,
        "vllm_hf_overrides": {"is_matryoshka": True} if model.matryoshka else {},
        "embedding_service_version": wheel_version(wheel_name),
        "embedding_service_upstream_model": {
            "id": model.id,
            "engine": "upstream",
            "dimension": model.dimension,
            "max_tokens": model.max_tokens,
            "query_prefix": model.query_prefix,
            "upstreams": [{"url": "http://127.0.0.1:8001", "api_key_env": "VLLM_API_KEY"}],
        },
        # The index tier: the bucket its Qdrant snapshots go to (role qdrant_snapshots; components/snapshots.py).
        "qdrant_snapshots_bucket": snapshot_bucket_name(settings),
        # The Qdrant release: the qdrant role's pinned one, unless the stack names a .deb.
        **(
            {"qdrant_deb_url": settings.qdrant_deb_url, "qdrant_deb_sha256": settings.qdrant_deb_sha256}
            if settings.qdrant_deb_url
            else {}
        ),
    }


def _yaml(data: dict[str, Any], origin: str) -> bytes:
    header = f"---\n# {origin}\n"
    return (header + yaml.safe_dump(data, sort_keys=True, default_flow_style=False)).encode()


# --- the tarball ------------------------------------------------------------------------------


def _tarinfo(name: str, size: int = 0, mode: int = 0o644, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = 0 if directory else size
    info.mode = 0o755 if directory else mode
    info.mtime = FIXED_EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _parents(names: Iterable[str]) -> set[str]:
    parents: set[str] = set()
    for name in names:
        parts = name.split("/")[:-1]
        parents.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return parents


def tar_bytes(entries: dict[str, tuple[bytes, int]]) -> bytes:
    """An uncompressed tar of arcname → (content, mode), sorted, with parent directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(set(entries) | _parents(entries)):
            if name in entries:
                content, mode = entries[name]
                tar.addfile(_tarinfo(name, len(content), mode), io.BytesIO(content))
            else:
                tar.addfile(_tarinfo(name, directory=True))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def build_bundle(settings: Settings, repo: Path = REPO) -> Bundle:
    entries: dict[str, tuple[bytes, int]] = {}
    for name, path in repo_files(repo).items():
        mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
        entries[name] = (path.read_bytes(), mode)
    wheel_name, wheel = build_wheel(repo / "payload")
    entries[f"wheels/{wheel_name}"] = (wheel, 0o644)
    # the role picks one pair by engine and installs its lock
    for pins in ("requirements.txt", "requirements-upstream.txt", "requirements.lock", "requirements-upstream.lock"):
        entries[f"wheels/{pins}"] = ((repo / "payload" / pins).read_bytes(), 0o644)
    rendered = render_vars(settings, wheel_name)
    entries["vars.yml"] = (_yaml(rendered, f"Rendered by pulumi/ from stack {settings.stack!r}; do not edit."), 0o644)
    raw = tar_bytes(entries)
    return Bundle(tar_gz=gzip_bytes(raw), digest=hashlib.sha256(raw).hexdigest(), members=tuple(sorted(entries)))


def write_bundle(bundle: Bundle, directory: Path) -> Path:
    """Write the tarball under its content-addressed name (what the BucketObject uploads)."""
    path = directory / Path(bundle.object_name).name
    directory.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_bytes() != bundle.tar_gz:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(bundle.tar_gz)
        tmp.replace(path)
    return path
