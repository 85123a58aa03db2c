"""The GCP stack tells clients what the payload tells them: one gateway port, one set of CA trust steps.

Both come from payload/src/embedstack/client_setup.py, which pulumi/catalog.py reads by its path because
Pulumi's environment (pulumi/requirements.txt) does not install the payload.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from embedstack.ops.roo_config import TRUST_NOTE

from stack_mocks import StackRun, catalog

pytest_plugins = ["pulumi_fixtures"]

REPO = Path(__file__).resolve().parents[2]


def test_the_stack_reads_the_payloads_facts_without_the_payload_installed() -> None:
    # -S: no site-packages, as in a Pulumi environment that holds no embedstack
    probe = "import sys, catalog; assert 'embedstack' not in sys.modules; print(catalog.GATEWAY_PORT)"
    result = subprocess.run(
        ["python3", "-S", "-c", probe], cwd=REPO / "pulumi", capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "8080"


def test_the_stack_opens_the_port_the_roles_deploy() -> None:
    defaults = yaml.safe_load((REPO / "roles/embedding_service/defaults/main.yml").read_text())
    assert defaults["embedding_service_port"] == catalog.GATEWAY_PORT


def test_the_stack_and_roo_config_give_the_same_trust_steps(stack_run: StackRun) -> None:
    steps = TRUST_NOTE.split("certificate: ", 1)[1]
    assert stack_run.outputs["trust_ca"].endswith(steps.replace("/path/to/ca.pem", "/path/to/embedstack-ca.pem"))
