"""End to end: `embedstack index` and `embedstack search` as processes, through a real gateway process
serving the real bundled model, into the embedded Qdrant (Qdrant Edge) in $XDG_DATA_HOME (the default)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gateway_process import API_KEY, GatewayProcess

FILES = {
    "src/config.py": '''import yaml


def read_config(path):
    """Read a YAML configuration file and return it as a dict."""
    with open(path) as f:
        return yaml.safe_load(f)
''',
    "src/retry.py": '''import time

import httpx


def get_with_retry(url, attempts=5):
    """GET a URL, retrying failed requests with exponential back-off."""
    for attempt in range(attempts):
        try:
            return httpx.get(url, timeout=10)
        except httpx.TransportError:
            time.sleep(2**attempt)
    raise RuntimeError(f"{url} failed {attempts} times")
''',
    "src/images.py": '''from PIL import Image


def make_thumbnail(src, dst, size=(128, 128)):
    """Shrink a picture to a thumbnail and save it as JPEG."""
    with Image.open(src) as im:
        im.thumbnail(size)
        im.save(dst, "JPEG")
''',
    "src/users.sql": """CREATE TABLE users (
    id SERIAL PRIMARY KEY,
    email TEXT UNIQUE NOT NULL,
    created_at TIMESTAMPTZ DEFAULT now()
);
""",
    "docs/firewall.md": """# Firewall

The hosts drop every inbound packet by default. SSH is open only to the admin networks, and the
embeddings port 8080 and Qdrant's ports 6333 and 6334 only to the client networks.
""",
    "docs/backups.md": """# Backups

Qdrant's data disk is snapshotted every night; a snapshot is kept for seven days and can be restored
to a new disk in a few minutes.
""",
}

QUERIES = {
    "load settings from a yaml file": "src/config.py",
    "retry an http request when it fails": "src/retry.py",
    "resize an image into a thumbnail": "src/images.py",
    "database table of user accounts with email": "src/users.sql",
    "which ports are open in the firewall": "docs/firewall.md",
    "how long are snapshots kept": "docs/backups.md",
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> GatewayProcess:
    gw = GatewayProcess(tmp_path_factory.mktemp("gw"), env={"EMBEDSTACK_API_KEYS": API_KEY})
    try:
        yield gw.wait_ready()
    finally:
        gw.stop()


def embedstack(home: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_DATA_HOME": str(home), "EMBEDSTACK_API_KEY": API_KEY}
    return subprocess.run(
        [sys.executable, "-m", "embedstack.cli", *argv], env=env, capture_output=True, text=True, timeout=300
    )


def test_index_then_search_finds_the_expected_file_through_a_real_gateway(gateway, tmp_path):
    tree = tmp_path / "project"
    for name, text in FILES.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    home = tmp_path / "data"
    url = gateway.url + "/v1"

    first = embedstack(home, "index", str(tree), "--base-url", url)
    assert first.returncode == 0, first.stderr
    assert "files:        6 (6 new or changed" in first.stdout
    assert (home / "embedstack" / "qdrant" / "edge" / "embedstack" / "edge_config.json").is_file()
    assert f"in the embedded Qdrant in {home / 'embedstack' / 'qdrant'} (model" in first.stdout

    again = embedstack(home, "index", str(tree), "--base-url", url)
    assert again.returncode == 0, again.stderr
    assert "embedded:     0 chunks" in again.stdout

    for query, expected in QUERIES.items():
        found = embedstack(home, "search", query, "--base-url", url, "--json", "--limit", "3")
        assert found.returncode == 0, found.stderr
        hits = json.loads(found.stdout)
        assert hits[0]["file"] == str(tree / expected), (query, [h["file"] for h in hits])
        assert hits[0]["score"] > hits[-1]["score"]

    shown = embedstack(home, "search", "snapshots", "--base-url", url, "--path", "docs", "--limit", "1")
    assert shown.returncode == 0, shown.stderr
    head = shown.stdout.splitlines()[0]
    assert head.startswith(str(tree / "docs/backups.md") + ":1-")

    wrong = embedstack(home, "search", "x", "--base-url", url, "--api-key", "wrong")
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == f"embedstack: the gateway at {url} refused the API key (401) listing its models"
