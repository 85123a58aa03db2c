"""The preemption role's files as real Ansible renders them: the watcher's settings file is read
the same way by systemd (EnvironmentFile), bash (shutdown.sh) and `embedstack preempt-watch`; the
units pass `systemd-analyze verify`; the default drain order stops the gateway before vLLM."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from embedstack.ops.preempt import load_watch_settings

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "preemption"
VENV_BIN = Path(sys.executable).parent
TEMPLATES = {
    "embedstack-preempt.env.j2": "embedstack-preempt",
    "embedstack-preempt.service.j2": "embedstack-preempt.service",
    "embedstack-gateway.service-preemption.conf.j2": "gateway-dropin.conf",
    "vllm.service-preemption.conf.j2": "vllm-dropin.conf",
}

pytestmark = pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(), reason="needs ansible in the venv")


VARIANTS = {
    "gpu": {"preemption_stop_vllm": True, "preemption_metadata_url": "http://10.213.0.1"},
    "cpu": {"preemption_stop_vllm": False},
    "verify": {"preemption_cli": str(VENV_BIN / "embedstack")},
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every template for every variant, rendered by Ansible's template lookup in one debug task
    (the role's defaults as play vars, each variant's vars on top)."""
    tmp = tmp_path_factory.mktemp("preemption-role")
    renders = {
        variant: {
            dest: f"{{{{ lookup('ansible.builtin.template', {str(ROLE / 'templates' / src)!r}, "
            f"template_vars={json.dumps(variables)}) }}}}"
            for src, dest in TEMPLATES.items()
        }
        for variant, variables in VARIANTS.items()
    }
    play = {
        "hosts": "localhost",
        "gather_facts": False,
        "vars_files": [str(ROLE / "defaults" / "main.yml")],
        "tasks": [{"name": "Render the templates", "ansible.builtin.debug": {"msg": renders}}],
    }
    (tmp / "play.yml").write_text(json.dumps([play]))
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        # the unit's shared hardening block, rendered without loading the role that carries the filter
        "ANSIBLE_FILTER_PLUGINS": str(REPO / "roles" / "systemd_hardening" / "filter_plugins"),
    }
    result = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "play.yml"],
        cwd=tmp,
        env={**env, "ANSIBLE_LOCAL_TEMP": str(tmp / "tmp"), "ANSIBLE_PYTHON_INTERPRETER": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    msg = json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    out = {}
    for variant, files in msg.items():
        (tmp / variant).mkdir()
        for dest, text in files.items():
            (tmp / variant / dest).write_text(text)
        out[variant] = tmp / variant
    return out


def sourced(env_file: Path) -> dict[str, str]:
    """The variables bash gets from the file the way shutdown.sh sources it."""
    script = f"set -a; . {env_file}; set +a; env -0"
    out = subprocess.run(["bash", "-c", script], env={}, capture_output=True, text=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if item.startswith("EMBEDSTACK_PREEMPT_"))


@pytest.mark.parametrize("gpu", [True, False], ids=["gpu", "cpu"])
def test_the_settings_file_reads_the_same_in_bash_and_the_watcher(rendered, gpu):
    settings = load_watch_settings(sourced(rendered["gpu" if gpu else "cpu"] / "embedstack-preempt"))
    expected = [("systemctl", "stop", "embedstack-gateway.service")]
    if gpu:
        expected.append(("systemctl", "stop", "vllm.service"))
    assert list(settings.actions) == expected
    assert settings.metadata_url == ("http://10.213.0.1" if gpu else "http://metadata.google.internal")
    assert settings.budget_seconds == 28


def test_the_units_order_the_gateway_stop_before_vllm_and_fit_the_window(rendered):
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    out = rendered["cpu"]
    gateway = (out / "gateway-dropin.conf").read_text()
    assert "After=vllm.service" in gateway  # stop order is the reverse: the gateway first
    assert f"TimeoutStopSec={defaults['preemption_gateway_stop_timeout']}" in gateway
    assert defaults["preemption_gateway_stop_timeout"] <= defaults["preemption_budget_seconds"] <= 30
    unit = (out / "embedstack-preempt.service").read_text()
    for hardening in (
        "NoNewPrivileges=true",
        "CapabilityBoundingSet=\n",
        "ProtectSystem=strict",
        "PrivateDevices=true",
    ):
        assert hardening in unit
    assert "ExecStart=/opt/embedstack/venv/bin/embedstack preempt-watch" in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_watcher_unit_passes_systemd_analyze_verify(rendered):
    unit = rendered["verify"] / "embedstack-preempt.service"
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "embedstack-preempt.service" in line and "Failed to" not in line
    ]
    assert not problems, result.stdout + result.stderr


def test_the_shutdown_script_reads_the_settings_file_the_role_writes():
    """The shutdown-script drains with the watcher's settings; without them it does nothing."""
    script = (REPO / "pulumi/bootstrap/shutdown.sh").read_text()
    default = re.search(r'ENV_FILE="\$\{EMBEDSTACK_PREEMPT_ENV_FILE:-([^}]+)\}"', script).group(1)
    role = yaml.safe_load((REPO / "roles/preemption/defaults/main.yml").read_text())
    assert default == role["preemption_env_file"]
