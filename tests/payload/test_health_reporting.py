"""How `embedstack health` and `roo-config` report a Qdrant host where the qdrant role installed no Qdrant.

The role records why on the host (roles/qdrant/tasks/record.yml: <qdrant_config_dir>/not-running.json); the
host-side checks (remote_checks.py, run here with python3 as ssh runs it there) read it. SSH itself is replaced by
running the script locally: tests/e2e and `make lab` run the same path over real SSH into real containers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from embedstack.ops import health, roo_config
from embedstack.ops.health import Check, params_for, run_health
from embedstack.ops.inventory import Host

pytestmark = pytest.mark.fast

RECORD = {
    "reason": "the Qdrant release could not be fetched",
    "variable": "qdrant_local_file",
    "url": "https://github.com/qdrant/qdrant/releases/download/v1.19.0/qdrant-x86_64-unknown-linux-musl.tar.gz",
    "sha256": "9ec667456443463eee390e43cd36988af6b730c6db807b4e39f57c303d0264a3",
    "error": "Request failed: <urlopen error [Errno 101] Network is unreachable>",
    "fix": "set qdrant_local_file to a copy of qdrant-x86_64-unknown-linux-musl.tar.gz (sha256 "
    "9ec667456443463eee390e43cd36988af6b730c6db807b4e39f57c303d0264a3) on the controller and run the play again",
}


def qdrant_host(config_dir: Path, **extra: object) -> Host:
    variables = {"ansible_host": "10.213.0.11", "qdrant_api_key": "qd-key", "qdrant_config_dir": str(config_dir)}
    return Host("es-lab-qdrant", groups={"qdrant", "lab"}, vars={**variables, **extra})


def remote_rows(params: dict) -> list[dict]:
    script = f"PARAMS = {params!r}\n" + resources.files("embedstack.ops").joinpath("remote_checks.py").read_text()
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def qdrant_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "qdrant" in r["check"]]


def test_a_qdrant_host_without_qdrant_is_never_ok(tmp_path: Path) -> None:
    """As the lab inventory used to say it (qdrant_install_binary: false), and as the role now records it."""
    (tmp_path / "not-running.json").write_text(json.dumps({"reason": "qdrant_install_binary is false"}))
    host = qdrant_host(tmp_path, qdrant_install_binary=False)
    rows = qdrant_rows(remote_rows({**params_for(host), "units": []}))
    assert rows, "no Qdrant check at all"
    assert not any(r["ok"] for r in rows), rows


def test_the_record_becomes_one_row_saying_what_why_and_the_variable(tmp_path: Path) -> None:
    (tmp_path / "not-running.json").write_text(json.dumps(RECORD))
    rows = qdrant_rows(remote_rows({**params_for(qdrant_host(tmp_path)), "units": []}))
    assert rows == [
        {
            "check": "qdrant",
            "ok": False,
            "missing": True,
            "detail": f"not running: the Qdrant release could not be fetched ({RECORD['url']}: {RECORD['error']}). "
            f"To fix it: {RECORD['fix']}",
        }
    ]


def test_an_unreadable_record_is_a_failure_not_a_pass(tmp_path: Path) -> None:
    (tmp_path / "not-running.json").write_text("{truncated")
    [row] = qdrant_rows(remote_rows({**params_for(qdrant_host(tmp_path)), "units": []}))
    assert not row["ok"] and "cannot be read" in row["detail"]


def test_without_a_record_the_unit_and_readyz_are_checked(tmp_path: Path) -> None:
    params = params_for(qdrant_host(tmp_path, qdrant_http_port=9))
    assert "qdrant.service" not in params["units"]  # checked with Qdrant, after its record
    rows = {r["check"]: r for r in qdrant_rows(remote_rows({**params, "units": []}))}
    assert set(rows) == {"unit qdrant.service", "qdrant /readyz", "qdrant canary"}
    assert not rows["qdrant /readyz"]["ok"]


def report(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, checks: list[Check], *flags: bool):
    monkeypatch.setattr(health, "load_inventory", lambda paths: [qdrant_host(Path("/etc/qdrant"))])
    monkeypatch.setattr(health, "check_host", lambda host: checks)
    code = run_health(["inventories/lab"], *flags)
    return code, capsys.readouterr().out


MISSING = Check("es-lab-qdrant", "qdrant", False, "not running: the Qdrant release could not be fetched (...)", True)
PASSED = [Check("es-lab-qdrant", "ssh", True, "reachable"), Check("es-lab-qdrant", "clock", True, "0.1 s")]


def test_health_says_not_running_and_exits_3_when_that_is_all_that_is_wrong(monkeypatch, capsys) -> None:
    code, out = report(monkeypatch, capsys, [*PASSED, MISSING], False)
    assert code == 3
    row = next(line for line in out.splitlines() if line.startswith("es-lab-qdrant  qdrant "))
    assert "NOT RUNNING" in row and " ok " not in row
    assert "NOT COMPLETE: 2 passed, 0 failed, 1 not running" in out
    assert "  NOT RUNNING es-lab-qdrant: qdrant is not running: the Qdrant release could not be fetched" in out
    code, out = report(monkeypatch, capsys, [*PASSED, MISSING], True)
    assert code == 3 and json.loads(out)["healthy"] is False


def test_a_real_failure_beside_it_still_exits_1(monkeypatch, capsys) -> None:
    failed = Check("es-lab-qdrant", "nftables ruleset", False, "no table")
    code, out = report(monkeypatch, capsys, [*PASSED, MISSING, failed], False)
    assert code == 1
    assert "UNHEALTHY: 2 passed, 1 failed, 1 not running" in out and "  FAIL es-lab-qdrant: nftables ruleset" in out


def test_roo_config_prints_the_settings_and_says_qdrant_is_not_running(monkeypatch, capsys, tmp_path) -> None:
    embed = Host("es-lab-embed", groups={"embedding"}, vars={"ansible_host": "10.213.0.10"})
    monkeypatch.setattr(roo_config, "load_inventory", lambda paths: [embed, qdrant_host(tmp_path)])
    asked = []

    def check_host(host: Host, params: dict) -> list[Check]:
        asked.append(params)
        return [MISSING]

    monkeypatch.setattr(roo_config, "check_host", check_host)
    assert roo_config.run_roo_config(["inventories/lab"], False) == 0
    out = capsys.readouterr().out
    assert "Qdrant URL" in out and "http://10.213.0.11:6333" in out
    assert (
        "Qdrant is NOT running on es-lab-qdrant, so Roo Code's indexing fails at its first write: it is not "
        "running: the Qdrant release could not be fetched" in out
    )
    # Only Qdrant's own checks, without writing to it: roo-config changes nothing on the host.
    assert asked[0]["only"] == ["qdrant"] and asked[0]["qdrant"]["canary"] is False
    assert asked[0]["qdrant"]["not_running_record"] == f"{tmp_path}/not-running.json"
    assert roo_config.run_roo_config(["inventories/lab"], True) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["Qdrant URL"] == "http://10.213.0.11:6333"
    assert captured.err.startswith("embedstack roo-config: Qdrant is NOT running on es-lab-qdrant")


def test_roo_config_is_quiet_about_a_qdrant_that_answers(monkeypatch, capsys, tmp_path) -> None:
    embed = Host("es-lab-embed", groups={"embedding"}, vars={"ansible_host": "10.213.0.10"})
    monkeypatch.setattr(roo_config, "load_inventory", lambda paths: [embed, qdrant_host(tmp_path)])
    running = [Check("es-lab-qdrant", "ssh", True, "reachable"), Check("es-lab-qdrant", "qdrant /readyz", True, "ok")]
    monkeypatch.setattr(roo_config, "check_host", lambda host, params: running)
    roo_config.run_roo_config(["inventories/lab"], False)
    assert "Qdrant" not in capsys.readouterr().out.split("Qdrant API Key")[1].split("The model embeds")[0]
