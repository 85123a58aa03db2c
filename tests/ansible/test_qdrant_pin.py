"""The pinned Qdrant release: held against the qdrant-client pin, and moved only by tools/qdrant_pin.py.

Qdrant states that client and server are compatible when their major versions match and their minor versions
differ by one at most: qdrant-client 1.20.0, qdrant_client/common/version_check.py `is_compatible` (and the warning
in qdrant_remote.py: "Major versions should match and minor version difference must not exceed 1"). So the server
the roles install and the client `embedstack index/search` uses (payload/requirements-index.txt) may differ by one
minor version at most; minor_gap below counts as is_compatible does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "qdrant_pin.py"
ROLE_FILES = ("roles/qdrant/defaults/main.yml", "roles/qdrant/meta/argument_specs.yml", "roles/qdrant/README.md")
NEW = {"x86_64": "1" * 64, "aarch64": "2" * 64}


def server_pin(root: Path = REPO) -> str:
    return str(yaml.safe_load((root / ROLE_FILES[0]).read_text())["qdrant_version"])


def client_pin() -> str:
    for line in (REPO / "payload" / "requirements-index.txt").read_text().splitlines():
        if line.startswith("qdrant-client=="):
            return line.removeprefix("qdrant-client==").strip()
    raise AssertionError("payload/requirements-index.txt pins no qdrant-client")


def minor_gap(server: str, client: str) -> int | None:
    """How many minor versions apart; None across major versions."""
    (s_major, s_minor), (c_major, c_minor) = (tuple(int(x) for x in v.split(".")[:2]) for v in (server, client))
    return abs(s_minor - c_minor) if s_major == c_major else None


def test_the_server_and_client_pins_are_at_most_one_minor_version_apart() -> None:
    server, client = server_pin(), client_pin()
    gap = minor_gap(server, client)
    assert gap is not None and gap <= 1, (
        f"Qdrant server {server} (roles/qdrant, qdrant_version) and qdrant-client {client} "
        "(payload/requirements-index.txt) are more than one minor version apart: move one of the pins"
    )


def test_the_gap_is_counted_as_qdrant_states_it() -> None:
    assert minor_gap("1.19.0", "1.20.0") == 1 and minor_gap("1.20.3", "1.19.1") == 1
    assert minor_gap("1.18.3", "1.20.0") == 2
    assert minor_gap("2.0.0", "1.20.0") is None


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    for name in ROLE_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    return tmp_path


def pin(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *args, "--root", str(root)], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_tool_moves_version_and_digests_everywhere_the_role_states_them(repo_copy: Path) -> None:
    old = yaml.safe_load((REPO / ROLE_FILES[0]).read_text())
    proc = pin(repo_copy, "1.20.0", *[f"--sha256={arch}={digest}" for arch, digest in NEW.items()])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    defaults = yaml.safe_load((repo_copy / ROLE_FILES[0]).read_text())
    assert (defaults["qdrant_version"], defaults["qdrant_release_sha256"]) == ("1.20.0", NEW)
    specs = yaml.safe_load((repo_copy / ROLE_FILES[1]).read_text())["argument_specs"]["main"]["options"]
    assert (specs["qdrant_version"]["default"], specs["qdrant_release_sha256"]["default"]) == ("1.20.0", NEW)
    readme = (repo_copy / ROLE_FILES[2]).read_text()
    assert 'qdrant_version: "1.20.0"' in readme and all(d in readme for d in NEW.values())
    for name in ROLE_FILES:  # no trace of the old pin is left where it was stated
        text = (repo_copy / name).read_text()
        assert not any(d in text for d in old["qdrant_release_sha256"].values()), name
        assert f'"{old["qdrant_version"]}"' not in text, name
    # Every other line is as it was.
    before = (REPO / ROLE_FILES[0]).read_text().splitlines()
    after = (repo_copy / ROLE_FILES[0]).read_text().splitlines()
    assert [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b] == [
        i
        for i, line in enumerate(before)
        if "qdrant_version:" in line or any(d in line for d in old["qdrant_release_sha256"].values())
    ]


def test_the_tool_reads_githubs_asset_digests(repo_copy: Path) -> None:
    release = {
        "tag_name": "v1.20.0",
        "assets": [
            {"name": f"qdrant-{arch}-unknown-linux-musl.tar.gz", "digest": f"sha256:{digest}"}
            for arch, digest in NEW.items()
        ]
        + [{"name": "qdrant-x86_64-unknown-linux-gnu.tar.gz", "digest": "sha256:" + "3" * 64}],
    }
    (repo_copy / "release.json").write_text(json.dumps(release))
    proc = pin(repo_copy, "1.20.0", "--release-json", str(repo_copy / "release.json"))
    assert proc.returncode == 0, proc.stdout
    assert yaml.safe_load((repo_copy / ROLE_FILES[0]).read_text())["qdrant_release_sha256"] == NEW


@pytest.mark.parametrize(
    ("args", "release", "message"),
    [
        (["1.20", "--sha256=x86_64=" + "1" * 64, "--sha256=aarch64=" + "2" * 64], None, "not a release version"),
        (["1.20.0", "--sha256=x86_64=" + "1" * 64], None, "the pin needs exactly ['aarch64', 'x86_64']"),
        (["1.20.0", "--sha256=x86_64=xyz", "--sha256=aarch64=" + "2" * 64], None, "sha256 for x86_64 'xyz'"),
        (["1.20.0", "--sha256", "x86_64"], None, "--sha256 takes ARCH=HEX"),
        (["1.20.0"], {"tag_name": "v1.19.0", "assets": []}, "is for tag 'v1.19.0', not v1.20.0"),
        (["1.20.0"], {"tag_name": "v1.20.0", "assets": []}, "has no asset qdrant-"),
        (
            ["1.20.0"],
            {"tag_name": "v1.20.0", "assets": [{"name": f"qdrant-{a}-unknown-linux-musl.tar.gz"} for a in NEW]},
            "has no sha256 digest",
        ),
    ],
)
def test_the_tool_refuses_what_it_cannot_pin_and_changes_nothing(
    repo_copy: Path, args: list[str], release: dict | None, message: str
) -> None:
    before = {name: (repo_copy / name).read_text() for name in ROLE_FILES}
    if release is not None:
        (repo_copy / "release.json").write_text(json.dumps(release))
        args = [*args, "--release-json", str(repo_copy / "release.json")]
    proc = pin(repo_copy, *args)
    assert proc.returncode == 2 and message in proc.stdout and "nothing was changed" in proc.stdout, proc.stdout
    assert {name: (repo_copy / name).read_text() for name in ROLE_FILES} == before
