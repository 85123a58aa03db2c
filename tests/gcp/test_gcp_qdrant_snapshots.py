"""The qdrant_snapshots role's upload script, run as the timer runs it, against the metadata and
Cloud Storage stand-ins and a Qdrant snapshot API stand-in: the snapshot's bytes land under
<prefix><host>/<name>, the local snapshot is deleted only after a checked upload, and every
failure exits non-zero and keeps it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from standins.base import tls_context, write_certificate
from standins.gcs import GcsStandin
from standins.qdrant import QdrantSnapshotStandin

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "qdrant_snapshots"
SCRIPT = ROLE / "files" / "qdrant-snapshot-upload"
BUCKET = "es-test-qdrant-snapshots"
API_KEY = "qdrant-test-key-" + "k" * 16
HOST = socket.gethostname().split(".")[0]


@pytest.fixture
def qdrant() -> Iterator[QdrantSnapshotStandin]:
    with QdrantSnapshotStandin(API_KEY, size=3 * 1024 * 1024 + 17) as standin:
        yield standin


@pytest.fixture
def qdrant_config(tmp_path: Path) -> Path:
    """Qdrant's config.yaml as the qdrant role writes it (only the keys the script reads)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"service": {"host": "0.0.0.0", "http_port": 6333, "api_key": API_KEY}}))
    return path


def run_upload(qdrant, metadata, storage_url: str, config: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """The script with the settings the role's env file gives it (the stand-ins' URLs instead of Google's)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "QDRANT_SNAPSHOTS_BUCKET": BUCKET,
        "QDRANT_SNAPSHOTS_PREFIX": "qdrant/",
        "QDRANT_SNAPSHOTS_QDRANT_URL": qdrant.url if qdrant is not None else "",
        "QDRANT_SNAPSHOTS_QDRANT_CONFIG": str(config),
        "QDRANT_SNAPSHOTS_METADATA_URL": metadata.url,
        "QDRANT_SNAPSHOTS_STORAGE_URL": storage_url,
        "QDRANT_SNAPSHOTS_HTTP_TIMEOUT": "20",
        **extra,
    }
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_snapshot_is_uploaded_then_deleted(qdrant, metadata, gcs, qdrant_config):
    gcs.create_bucket(BUCKET)
    result = run_upload(qdrant, metadata, gcs.url, qdrant_config)
    assert result.returncode == 0, result.stdout + result.stderr
    [name] = qdrant.deleted
    assert name.startswith("full-snapshot-") and name.endswith(".snapshot")
    assert qdrant.snapshots == {}, "the local snapshot is deleted after the upload"
    stored = gcs.buckets[BUCKET][f"qdrant/{HOST}/{name}"]
    assert stored.data == qdrant.deleted[name] and len(stored.data) == qdrant.size
    assert stored.content_type == "application/octet-stream"
    assert gcs.uploads == [f"qdrant/{HOST}/{name}"]
    log = result.stdout
    for step in ("creating a full-storage snapshot", "access token", "uploading", "uploaded gs://", "deleted"):
        assert step in log, log
    assert API_KEY not in log + result.stderr


@pytest.mark.parametrize("failure", ["wrong token", "storage down", "not writable", "no bucket"])
def test_a_failed_upload_exits_non_zero_and_keeps_the_snapshot(failure, qdrant, metadata, qdrant_config):
    token_check = (lambda token: False) if failure == "wrong token" else metadata.token_valid
    writable = {"another-bucket"} if failure == "not writable" else None
    with GcsStandin(token_check, writable_buckets=writable) as gcs:
        if failure != "no bucket":
            gcs.create_bucket(BUCKET)
        storage_url = gcs.url
        if failure == "storage down":
            gcs.close()
        result = run_upload(qdrant, metadata, storage_url, qdrant_config)
        assert gcs.uploads == []
    assert result.returncode != 0
    assert qdrant.deleted == {}
    assert len(qdrant.snapshots) == 1, "the snapshot that was not uploaded stays"
    expected = {
        "wrong token": "HTTP 401",
        "storage down": "failed",
        "not writable": "HTTP 403",
        "no bucket": "HTTP 404",
    }
    assert "FAILED" in result.stdout and expected[failure] in result.stdout, result.stdout
    assert "no snapshot was deleted" in result.stdout


def test_a_wrong_qdrant_api_key_fails_clearly(qdrant, metadata, gcs, tmp_path):
    gcs.create_bucket(BUCKET)
    config = tmp_path / "wrong.yaml"
    config.write_text(yaml.safe_dump({"service": {"api_key": "not-the-qdrant-key-at-all"}}))
    result = run_upload(qdrant, metadata, gcs.url, config)
    assert result.returncode != 0
    assert "FAILED: POST " in result.stdout and "/snapshots answered HTTP 401" in result.stdout, result.stdout
    assert "Invalid API key or JWT" in result.stdout
    assert qdrant.snapshots == {} and gcs.uploads == []


def test_a_config_without_api_key_is_named(qdrant, metadata, gcs, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"service": {"host": "0.0.0.0"}}))
    result = run_upload(qdrant, metadata, gcs.url, config)
    assert result.returncode != 0
    assert f"{config} has no service.api_key" in result.stdout
    missing = run_upload(qdrant, metadata, gcs.url, tmp_path / "absent.yaml")
    assert missing.returncode != 0 and "cannot read the Qdrant config" in missing.stdout


def test_the_role_installs_the_script_and_its_settings_name_every_variable():
    """The env file the unit reads sets every variable the script reads; the unit runs the
    installed script as a dynamic user that can only read Qdrant's config through the group."""
    template = (ROLE / "templates" / "qdrant-snapshots.env.j2").read_text()
    script = SCRIPT.read_text()
    for name in ("BUCKET", "PREFIX", "QDRANT_URL", "QDRANT_CONFIG", "METADATA_URL", "STORAGE_URL", "HTTP_TIMEOUT"):
        assert f"QDRANT_SNAPSHOTS_{name}=" in template
        assert f'"{name}"' in script or f"QDRANT_SNAPSHOTS_{name}" in script
    install = yaml.safe_load((ROLE / "tasks" / "install.yml").read_text())
    copy = next(t["ansible.builtin.copy"] for t in install if "ansible.builtin.copy" in t)
    assert copy["src"] == SCRIPT.name and copy["mode"] == "0755"
    unit = (ROLE / "templates" / "qdrant-snapshots.service.j2").read_text()
    assert f"ExecStart=/usr/bin/python3 {copy['dest']}" in unit
    assert "DynamicUser=true" in unit and "Type=oneshot" in unit
    timer = (ROLE / "templates" / "qdrant-snapshots.timer.j2").read_text()
    assert "Persistent=true" in timer and "RandomizedDelaySec=" in timer and "OnCalendar=" in timer


def issue(tmp: Path, name: str, ca: tuple | None = None) -> tuple:
    """A CA (ca None) or a leaf it issues for one DNS name, never 127.0.0.1: (cert, key, cert file, key file)."""
    files = tmp / f"{name}.pem", tmp / f"{name}-key.pem"
    issuer = None if ca is None else ca[:2]
    cert, key = write_certificate(*files, name, [] if ca is None else [name], issuer=issuer, ca=ca is None)
    return cert, key, *files


@pytest.mark.parametrize("served", ["the pinned certificate", "another certificate of the same CA"])
def test_over_tls_only_the_certificate_qdrant_serves_gets_the_key(served, metadata, gcs, tmp_path):
    """With service.enable_tls, the script finds Qdrant by its config alone (no URL set) and trusts exactly
    the config's tls.cert: a sibling certificate from the same CA on that port is refused before any key."""
    ca = issue(tmp_path, "stack-ca")
    pinned = issue(tmp_path, "qdrant.internal", ca)
    impostor = issue(tmp_path, "impostor.internal", ca)
    _, _, cert, key = pinned if served == "the pinned certificate" else impostor
    with QdrantSnapshotStandin(API_KEY, size=1024 * 1024 + 3, tls=tls_context(cert, key)) as qdrant:
        port = int(qdrant.url.rsplit(":", 1)[1])
        config = tmp_path / "config.yaml"
        service = {"http_port": port, "enable_tls": True, "api_key": API_KEY}
        config.write_text(yaml.safe_dump({"service": service, "tls": {"cert": str(pinned[2])}}))
        gcs.create_bucket(BUCKET)
        result = run_upload(None, metadata, gcs.url, config)
        if served == "the pinned certificate":
            assert result.returncode == 0, result.stdout + result.stderr
            assert f"https://127.0.0.1:{port}/snapshots" in result.stdout and len(qdrant.deleted) == 1
        else:
            assert result.returncode != 0
            assert "CERTIFICATE_VERIFY_FAILED" in result.stdout + result.stderr, result.stdout + result.stderr
            assert qdrant.server.log == [], "no request, so no key, reached the impostor"


def test_https_without_a_certificate_to_pin_is_named(metadata, gcs, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"service": {"enable_tls": True, "api_key": API_KEY}}))
    result = run_upload(None, metadata, gcs.url, config)
    assert result.returncode != 0
    assert f"{config} names no tls.cert" in result.stdout + result.stderr
