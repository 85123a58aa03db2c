"""Run small Ansible plays against localhost with the repository's roles, and check what they render or refuse.

Shared by tests/ansible: each test module keeps only its own tables of inputs and expectations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def ansible_available() -> bool:
    return ANSIBLE_PLAYBOOK.exists()


def run_play(
    plays: list[dict],
    workdir: Path,
    extra_vars: dict | None = None,
    check: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    must_pass: bool = True,
) -> tuple[subprocess.CompletedProcess[str], dict | None]:
    """Write `plays` to a playbook in workdir, run it on localhost with a local connection.

    Returns the finished process and the ansible.posix.json report (None if it could not be parsed).
    Unless `must_pass` is false, a play that fails fails the calling test with the play's output.
    SSH_CONNECTION/SSH_CLIENT of the caller are removed so roles see no SSH session unless `env` sets one.
    Skips the calling test where ansible-playbook is not installed next to this interpreter.
    """
    if not ansible_available():
        pytest.skip("ansible-playbook not found next to the test interpreter")
    playbook = workdir / "play.yml"
    playbook.write_text(json.dumps(plays, indent=2))  # JSON is YAML
    variables = {"ansible_python_interpreter": sys.executable, **(extra_vars or {})}
    varfile = workdir / "extra_vars.json"
    varfile.write_text(json.dumps(variables))
    run_env = {k: v for k, v in os.environ.items() if k not in ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY")}
    run_env.update(
        {
            "ANSIBLE_ROLES_PATH": str(ROLES),
            # The unit templates' systemd_hardening filter, for plays that render them without the role
            "ANSIBLE_FILTER_PLUGINS": str(ROLES / "systemd_hardening" / "filter_plugins"),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-local"),
            "ANSIBLE_REMOTE_TEMP": str(workdir / "ansible-remote"),
            "ANSIBLE_DEPRECATION_WARNINGS": "0",
        }
    )
    run_env.update(env or {})
    cmd = [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(playbook), "-e", f"@{varfile}"]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=timeout, cwd=workdir, check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        report = None
    if must_pass:
        assert proc.returncode == 0 and report is not None, describe(proc)
    return proc, report


def task_results(report: dict) -> list[tuple[str, dict]]:
    """(task name without its "role : " prefix, localhost result) for every task in a json-callback report."""
    found = []
    for play in report["plays"]:
        for task in play["tasks"]:
            result = task["hosts"].get("localhost")
            if result is not None:
                found.append((task["task"]["name"].split(" : ", 1)[-1], result))
    return found


def render_task(template: Path, dest: Path, variables: dict | None = None) -> dict:
    """A task that renders one of a role's templates to dest with `variables` on top of what the play has loaded."""
    return {
        "name": f"Render {template.name} to {dest.name}",
        "ansible.builtin.template": {"src": str(template), "dest": str(dest), "mode": "0600"},
        "vars": variables or {},
    }


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """Output of a play run, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def run_cases(
    cases: dict[str, dict], workdir: Path, check: bool = False
) -> tuple[dict[str, str], list[tuple[str, dict]]]:
    """Run several role entry points in one play, each in block/rescue, and collect how each one ended.

    Each case is {"include": <include_role arguments>, "vars": {...}, "environment": {...}} (the last two optional).
    Returns ({case: "passed" or the failure message}, every task result of the run).
    """
    tasks: list[dict] = []
    for case, spec in cases.items():
        passed = f"{{{{ outcomes | combine({{'{case}': 'passed'}}) }}}}"
        failed = f"{{{{ outcomes | combine({{'{case}': ansible_failed_result.msg}}) }}}}"
        tasks.append(
            {
                "name": f"Case {case}",
                "environment": spec.get("environment", {}),
                "block": [
                    {
                        "name": f"Apply the role ({case})",
                        "ansible.builtin.include_role": spec["include"],
                        "vars": spec.get("vars", {}),
                    },
                    {"name": f"Record a pass ({case})", "ansible.builtin.set_fact": {"outcomes": passed}},
                ],
                "rescue": [{"name": f"Record the failure ({case})", "ansible.builtin.set_fact": {"outcomes": failed}}],
            }
        )
    tasks.append({"name": "Report the outcomes", "ansible.builtin.debug": {"var": "outcomes"}})
    plays = [{"name": "Cases", "hosts": "localhost", "gather_facts": False, "vars": {"outcomes": {}}, "tasks": tasks}]
    _, report = run_play(plays, workdir, check=check)
    results = task_results(report)
    outcomes = next(result["outcomes"] for name, result in results if name == "Report the outcomes")
    assert set(outcomes) == set(cases), outcomes
    return outcomes, results


def assert_outcome(outcomes: dict[str, str], case: str, refused_with: tuple[str, ...]) -> None:
    """Check one outcome of run_cases: with no `refused_with` the case passed, otherwise it failed
    with a message containing every one of them (the variable, the bad value, what is allowed instead)."""
    message = outcomes[case]
    if not refused_with:
        assert message == "passed", (case, message)
        return
    assert message != "passed", f"{case} was accepted"
    for needle in refused_with:
        assert needle in message, (case, message)


def unit_settings(unit: str) -> dict[str, list[str]]:
    """The Key=value lines of a rendered systemd unit; a key set on several lines (Environment=) keeps every value."""
    settings: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", " ")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


# Settings of the shared hardening block (role systemd_hardening) no unit drops; each test adds what its own
# service needs on top.
HARDENED_SERVICE = {
    "NoNewPrivileges": "true",
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "CapabilityBoundingSet": "",
}
