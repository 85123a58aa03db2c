"""Every service unit the roles install is rendered with the roles' defaults and scored by the real
`systemd-analyze security --offline`; none may be more exposed than its committed threshold
(fixtures/unit_exposure.yml, which molecule checks on the running units too).

A unit that drops a protection scores higher and fails here, naming it; one that gains protections
may lower its threshold. All start from the shared block of role systemd_hardening: the gateway, the
watcher and vLLM's cpu build are proven to run with it by molecule and the GCP container test;
Qdrant's binary and vLLM's cuda build cannot run here, so their exceptions are argued in their
templates rather than shown.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_play import ROLES, render_task, run_play

EXPOSURE = yaml.safe_load((Path(__file__).parent / "fixtures" / "unit_exposure.yml").read_text())
# unit -> (role, template, variables, highest exposure allowed)
UNITS = {
    name: (role, template, variables, EXPOSURE[name]["max"])
    for name, role, template, variables in (
        ("gateway", "embedding_service", "embedstack-gateway.service.j2", {}),
        (
            "gateway-upstream",
            "embedding_service",
            "embedstack-gateway.service.j2",
            {"embedding_service_engine": "upstream"},
        ),
        ("preempt", "preemption", "embedstack-preempt.service.j2", {}),
        ("qdrant", "qdrant", "qdrant.service.j2", {}),
        ("snapshots", "qdrant_snapshots", "qdrant-snapshots.service.j2", {}),
        ("vllm", "vllm", "vllm.service.j2", {}),
    )
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


@pytest.mark.parametrize("name", list(UNITS))
def test_every_unit_has_a_memory_limit(rendered: Path, name: str) -> None:
    """A leak or a flood restarts that unit instead of waking the kernel's OOM killer."""
    limits = re.findall(r"^MemoryMax=(.+)$", (rendered / f"{name}.service").read_text(), re.M)
    assert len(limits) == 1 and limits[0] != "infinity", limits


def test_the_gateway_has_a_descriptor_for_every_connection_it_accepts(rendered: Path) -> None:
    """A flood of connections meets the gateway's cap (a 429), not accept() failing for want of descriptors."""
    for name in [n for n in UNITS if n.startswith("gateway")]:
        unit = (rendered / f"{name}.service").read_text()
        assert re.findall(r"^LimitNOFILE=(\d+)$", unit, re.M) == ["1536"], name  # 1,024 connections + 512


def test_the_shared_block_takes_exceptions_and_refuses_what_systemd_would_not():
    import sys

    sys.path.insert(0, str(ROLES / "systemd_hardening" / "filter_plugins"))
    from systemd_hardening import systemd_hardening, systemd_memory_max_ok

    block = systemd_hardening({"MemoryDenyWriteExecute": None, "PrivateDevices": False, "ReadWritePaths": "/srv"})
    assert "MemoryDenyWriteExecute" not in block
    assert "PrivateDevices=false" in block.splitlines() and block.endswith("ReadWritePaths=/srv")
    assert block.count("SystemCallFilter=") == 2  # a list repeats the directive
    assert [v for v in ("3G", "512M", "90%", "12.5%", "infinity", "1048576") if not systemd_memory_max_ok(v)] == []
    assert [v for v in ("3GB", "110%", "-1", "", "lots") if systemd_memory_max_ok(v)] == []
