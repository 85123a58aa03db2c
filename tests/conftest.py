"""Every test belongs to exactly one stage of `make test`, so `pytest -m STAGE` runs a stage alone.

A folder gives its tests a stage; a module in tests/payload that needs no model and no process
says `pytestmark = pytest.mark.fast`. A test with two stages is an error, not a silent rerun.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent
STAGES = ("fast", "payload", "ansible", "molecule", "proxmox", "gcp_container")
STAGE_OF_FOLDER = {
    "pulumi": "fast",
    "payload": "payload",
    "vllm": "payload",
    "index": "payload",
    "ansible": "ansible",
    "gcp": "ansible",
    "e2e": "molecule",
    "proxmox": "proxmox",
    "gcp_container": "gcp_container",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        declared = {mark.name for mark in item.iter_markers() if mark.name in STAGES}
        if len(declared) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked for stages {sorted(declared)}; one only")
        if declared or not item.path.is_relative_to(TESTS):
            continue  # molecule's own tests are run by molecule
        item.add_marker(getattr(pytest.mark, STAGE_OF_FOLDER[item.path.relative_to(TESTS).parts[0]]))
