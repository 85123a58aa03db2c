"""The health check's Qdrant canary against a Qdrant stand-in.

No Qdrant binary can run on this machine, so this is a STAND-IN (standins/qdrant.py,
QdrantCollectionsStandin): a small HTTP server on loopback that follows the documented Qdrant REST
schema for the five calls the canary makes, including the `api-key` header check and its 401.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources

import pytest
from standins.qdrant import QdrantCollectionsStandin

KEY = "canary-test-key-0123456789"


@pytest.fixture
def qdrant() -> Iterator[QdrantCollectionsStandin]:
    with QdrantCollectionsStandin(KEY) as standin:
        yield standin


def run_checks(params: dict) -> dict[str, dict]:
    script = f"PARAMS = {params!r}\n" + resources.files("embedstack.ops").joinpath("remote_checks.py").read_text()
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=60, check=True)
    return {row["check"]: row for row in json.loads(proc.stdout)}


def params(port: int, key: str) -> dict:
    return {"units": [], "qdrant": {"port": port, "api_key": key, "installed": True}}


def test_canary_writes_reads_and_deletes_a_scratch_collection(qdrant):
    rows = run_checks(params(qdrant.port, KEY))
    assert rows["qdrant /readyz"]["ok"]
    assert rows["qdrant canary"]["ok"], rows["qdrant canary"]
    assert qdrant.collections == {}  # nothing left behind


def test_canary_fails_on_a_wrong_key_and_names_the_step(qdrant):
    rows = run_checks(params(qdrant.port, "wrong-key"))
    assert rows["qdrant /readyz"]["ok"]  # health routes need no key
    assert not rows["qdrant canary"]["ok"]
    assert rows["qdrant canary"]["detail"].startswith("create: HTTP 401")
