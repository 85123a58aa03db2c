"""Every service unit the roles install is rendered with the roles' defaults and scored by the real
`systemd-analyze security --offline`; none may be more exposed than it is today.

The thresholds are the scores measured when this test was written (0 is locked down, 10 is
unprotected). A unit that drops a protection scores higher and fails here, naming it; one that
gains protections may lower its threshold. vLLM's is the highest: it opens the GPU device nodes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_play import ROLES, render_task, run_play

# role -> (unit template, highest exposure allowed)
UNITS = {
    "embedding_service": ("embedstack-gateway.service.j2", 3.2),
    "preemption": ("embedstack-preempt.service.j2", 2.2),
    "qdrant": ("qdrant.service.j2", 3.2),
    "qdrant_snapshots": ("qdrant-snapshots.service.j2", 1.7),
    "vllm": ("vllm.service.j2", 3.7),
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (systemd)")
    out = tmp_path_factory.mktemp("units")
    files = [
        str(ROLES / role / sub / "main.yml")
        for role in UNITS
        for sub in ("defaults", "vars")
        if (ROLES / role / sub / "main.yml").exists()
    ]
    tasks = [render_task(ROLES / role / "templates" / t, out / t.removesuffix(".j2")) for role, (t, _) in UNITS.items()]
    # qdrant_binary_path is set by the qdrant role's preflight, from its install method
    play = {
        "hosts": "localhost",
        "gather_facts": True,
        "vars_files": files,
        "vars": {"qdrant_binary_path": "/usr/bin/qdrant"},
    }
    run_play([{**play, "tasks": tasks}], out)
    return out


@pytest.mark.parametrize("role", list(UNITS))
def test_no_unit_is_more_exposed_than_its_threshold(rendered: Path, role: str) -> None:
    template, threshold = UNITS[role]
    unit = rendered / template.removesuffix(".j2")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert found, result.stdout + result.stderr
    weak = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert float(found.group(1)) <= threshold, f"{unit.name} scores {found.group(1)}; unprotected:\n" + "\n".join(weak)
