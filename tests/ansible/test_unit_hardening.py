"""Every service unit the roles install is rendered with the roles' defaults and scored by the real
`systemd-analyze security --offline`; none may be more exposed than it is today.

The thresholds are the scores measured when this test was written (0 is locked down, 10 is
unprotected). A unit that drops a protection scores higher and fails here, naming it; one that
gains protections may lower its threshold. The gateway and the watcher carry system-call filters,
proven by molecule and the GCP container test; Qdrant and vLLM do not yet, because neither the real
Qdrant binary nor a GPU runs here to show a filter leaves them working.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_play import ROLES, render_task, run_play

# unit -> (role, template, variables, highest exposure allowed)
UNITS = {
    "gateway": ("embedding_service", "embedstack-gateway.service.j2", {}, 1.3),
    "gateway-upstream": (
        "embedding_service",
        "embedstack-gateway.service.j2",
        {"embedding_service_engine": "upstream"},
        1.3,
    ),
    "preempt": ("preemption", "embedstack-preempt.service.j2", {}, 1.6),
    "qdrant": ("qdrant", "qdrant.service.j2", {}, 3.2),
    "snapshots": ("qdrant_snapshots", "qdrant-snapshots.service.j2", {}, 1.7),
    "vllm": ("vllm", "vllm.service.j2", {}, 3.7),
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (systemd)")
    out = tmp_path_factory.mktemp("units")
    roles = dict.fromkeys(role for role, *_ in UNITS.values())
    files = [
        str(ROLES / r / sub / "main.yml")
        for r in roles
        for sub in ("defaults", "vars")
        if (ROLES / r / sub / "main.yml").exists()
    ]
    tasks = [
        render_task(ROLES / role / "templates" / template, out / f"{unit}.service", variables)
        for unit, (role, template, variables, _) in UNITS.items()
    ]
    # qdrant_binary_path is set by the qdrant role's preflight, from its install method
    play = {
        "hosts": "localhost",
        "gather_facts": True,
        "vars_files": files,
        "vars": {"qdrant_binary_path": "/usr/bin/qdrant"},
    }
    run_play([{**play, "tasks": tasks}], out)
    return out


@pytest.mark.parametrize("name", list(UNITS))
def test_no_unit_is_more_exposed_than_its_threshold(rendered: Path, name: str) -> None:
    threshold = UNITS[name][-1]
    unit = rendered / f"{name}.service"
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
