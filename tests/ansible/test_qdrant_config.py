"""The qdrant role's config.yaml and qdrant.service as real Ansible renders them, and the role's refusals.

No Qdrant binary can be downloaded here, so these tests check what the role writes: config keys from FACTS.md,
the API key always present and quoted safely, telemetry off, the binary path of each install source, the unit's
hardening, the message printed when qdrant_install_binary is false, and that wrong inputs fail naming the variable.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_play import (
    HARDENED_SERVICE,
    ROLES,
    assert_outcome,
    render_task,
    run_cases,
    run_play,
    task_results,
    unit_settings,
)

ROLE = ROLES / "qdrant"
KEY = "qdrant-admin-key-0123456789"
VAR_SETS: dict[str, dict] = {
    "minimal": {"qdrant_install_binary": False},
    "deb_with_tls": {
        "qdrant_deb_url": "https://example.invalid/qdrant_1.15.0-1_amd64.deb",
        "qdrant_deb_sha256": "a" * 64,
        "qdrant_read_only_api_key": "qdrant-read-only-key-0123",
        "qdrant_enable_tls": True,
        "qdrant_tls_cert": "/etc/qdrant/tls/cert.pem",
        "qdrant_tls_key": "/etc/qdrant/tls/key.pem",
        "qdrant_tls_ca_cert": "/etc/qdrant/tls/ca.pem",
        "qdrant_host": "10.213.0.11",
        "qdrant_storage_path": "/srv/qdrant/storage",
        "qdrant_snapshots_path": "/srv/qdrant/snapshots",
    },
    "tarball_odd_key_and_extra_config": {
        "qdrant_binary_url": "https://example.invalid/qdrant-x86_64-unknown-linux-musl.tar.gz",
        "qdrant_binary_sha256": "b" * 64,
        "qdrant_api_key": "k3y: 'quoted' # not a comment",
        "qdrant_http_port": 16333,
        "qdrant_grpc_port": 16334,
        "qdrant_extra_config": {
            "storage": {"performance": {"max_search_threads": 2}, "storage_path": "/tmp/elsewhere"},
            "service": {"api_key": "", "max_request_size_mb": 64},
            "telemetry_disabled": False,
        },
    },
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """config.yaml and qdrant.service for every variable set, plus the no-binary message, from one run."""
    workdir = tmp_path_factory.mktemp("qdrant-render")
    tasks: list[dict] = []
    for name, variables in VAR_SETS.items():
        scoped = {"qdrant_api_key": KEY, **variables}
        tasks.append(
            {
                "name": f"Run the qdrant preflight checks ({name})",
                "ansible.builtin.include_role": {"name": "qdrant", "tasks_from": "preflight.yml", "public": True},
                "vars": scoped,
            }
        )
        for template, suffix in (("config.yaml.j2", "yaml"), ("qdrant.service.j2", "service")):
            tasks.append(render_task(ROLE / "templates" / template, workdir / f"{name}.{suffix}", scoped))
    tasks.append(
        {
            "name": "Run the qdrant service phase without a binary",
            "ansible.builtin.include_role": {"name": "qdrant", "tasks_from": "service.yml"},
            "vars": {"qdrant_api_key": KEY, "qdrant_install_binary": False},
        }
    )
    plays = [{"name": "Render the qdrant files", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    _, report = run_play(plays, workdir)
    files = {name: {kind: workdir / f"{name}.{kind}" for kind in ("yaml", "service")} for name in VAR_SETS}
    return {"files": files, "results": task_results(report)}


def _config(rendered: dict, name: str) -> dict:
    return yaml.safe_load(rendered["files"][name]["yaml"].read_text())


def _unit(rendered: dict, name: str) -> dict[str, list[str]]:
    return unit_settings(rendered["files"][name]["service"].read_text())


def test_minimal_config_has_the_facts_md_keys(rendered: dict) -> None:
    config = _config(rendered, "minimal")
    assert config["storage"] == {
        "storage_path": "/var/lib/qdrant/storage",
        "snapshots_path": "/var/lib/qdrant/snapshots",
    }
    assert config["service"] == {
        "host": "0.0.0.0",
        "http_port": 6333,
        "grpc_port": 6334,
        "api_key": KEY,
        "enable_tls": False,
    }
    assert config["telemetry_disabled"] is True
    assert "tls" not in config


def test_tls_and_read_only_key_are_written_when_set(rendered: dict) -> None:
    config = _config(rendered, "deb_with_tls")
    assert config["service"]["read_only_api_key"] == "qdrant-read-only-key-0123"
    assert config["service"]["enable_tls"] is True and config["service"]["host"] == "10.213.0.11"
    assert config["tls"] == {
        "cert": "/etc/qdrant/tls/cert.pem",
        "key": "/etc/qdrant/tls/key.pem",
        "ca_cert": "/etc/qdrant/tls/ca.pem",
    }
    assert config["storage"]["storage_path"] == "/srv/qdrant/storage"


def test_odd_keys_survive_and_extra_config_cannot_weaken_the_managed_keys(rendered: dict) -> None:
    config = _config(rendered, "tarball_odd_key_and_extra_config")
    assert config["service"]["api_key"] == "k3y: 'quoted' # not a comment"
    assert config["service"]["max_request_size_mb"] == 64
    assert config["service"]["http_port"] == 16333 and config["service"]["grpc_port"] == 16334
    assert config["storage"]["performance"] == {"max_search_threads": 2}
    assert config["storage"]["storage_path"] == "/var/lib/qdrant/storage"
    assert config["telemetry_disabled"] is True


def test_config_validation_command_accepts_good_and_rejects_broken_files(rendered: dict, tmp_path: Path) -> None:
    configure = yaml.safe_load((ROLE / "tasks" / "configure.yml").read_text())
    task = next(t for t in configure if t.get("ansible.builtin.template", {}).get("src") == "config.yaml.j2")
    validate = task["ansible.builtin.template"]["validate"]
    interpreter = shlex.split(validate)[0]
    if not Path(interpreter).exists() or subprocess.run([interpreter, "-c", "import yaml"], check=False).returncode:
        pytest.skip(f"{interpreter} with PyYAML is needed to run the role's validate command")

    def run(path: Path) -> int:
        return subprocess.run(
            shlex.split(validate.replace("%s", str(path))), capture_output=True, check=False
        ).returncode

    for name in VAR_SETS:
        assert run(rendered["files"][name]["yaml"]) == 0, name
    broken = tmp_path / "broken.yaml"
    broken.write_text("service: {api_key: [unclosed\n")
    assert run(broken) != 0
    keyless = tmp_path / "keyless.yaml"
    keyless.write_text("service:\n  api_key: ''\n")
    assert run(keyless) != 0


def test_unit_runs_the_binary_of_each_source_hardened(rendered: dict) -> None:
    binaries = {
        "minimal": "/usr/local/bin/qdrant",
        "deb_with_tls": "/usr/bin/qdrant",
        "tarball_odd_key_and_extra_config": "/usr/local/bin/qdrant",
    }
    for name, binary in binaries.items():
        unit = _unit(rendered, name)
        assert unit["ExecStart"] == [f"{binary} --config-path /etc/qdrant/config.yaml"]
        assert unit["User"] == ["qdrant"] and unit["Group"] == ["qdrant"]
        for key, value in (*HARDENED_SERVICE.items(), ("LimitNOFILE", "65536")):
            assert unit[key] == [value], (name, key)
    assert _unit(rendered, "minimal")["ReadWritePaths"] == [
        "/var/lib/qdrant /var/lib/qdrant/storage /var/lib/qdrant/snapshots"
    ]
    assert _unit(rendered, "deb_with_tls")["ReadWritePaths"] == [
        "/var/lib/qdrant /srv/qdrant/storage /srv/qdrant/snapshots"
    ]


def test_no_binary_run_says_so(rendered: dict) -> None:
    messages = [
        r.get("msg") for name, r in rendered["results"] if name == "Say that the Qdrant binary is not installed"
    ]
    assert messages == [
        "qdrant binary not installed: qdrant_install_binary is false; config and unit are in place, "
        "the service is not started"
    ]
    started = [r for name, r in rendered["results"] if name == "Enable and start qdrant.service"]
    assert started and all(r.get("skipped") for r in started)


# Inputs the preflight must refuse, and what its message must say.
REJECTED: dict[str, tuple[dict, tuple[str, ...]]] = {
    "no_api_key": ({"qdrant_api_key": "", "qdrant_install_binary": False}, ("qdrant_api_key", "empty")),
    "short_api_key": ({"qdrant_api_key": "short", "qdrant_install_binary": False}, ("qdrant_api_key", "16")),
    "same_read_only_key": (
        {"qdrant_read_only_api_key": KEY, "qdrant_install_binary": False},
        ("qdrant_read_only_api_key",),
    ),
    "no_source": ({}, ("qdrant_deb_url", "qdrant_binary_url", "qdrant_local_file")),
    "two_sources": (
        {
            "qdrant_deb_url": "https://example.invalid/q.deb",
            "qdrant_deb_sha256": "a" * 64,
            "qdrant_binary_url": "https://example.invalid/q.tar.gz",
            "qdrant_binary_sha256": "b" * 64,
        },
        ("exactly one", "qdrant_deb_url", "qdrant_binary_url"),
    ),
    "deb_without_sha": ({"qdrant_deb_url": "https://example.invalid/q.deb"}, ("qdrant_deb_sha256",)),
    "tarball_bad_sha": (
        {"qdrant_binary_url": "https://example.invalid/q.tgz", "qdrant_binary_sha256": "xyz"},
        ("qdrant_binary_sha256",),
    ),
    "missing_local_file": ({"qdrant_local_file": "/nonexistent/qdrant.deb"}, ("qdrant_local_file", "does not exist")),
    "tls_without_cert": ({"qdrant_enable_tls": True, "qdrant_install_binary": False}, ("qdrant_tls_cert",)),
}


@pytest.fixture(scope="module")
def rejections(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cases = {
        case: {
            "include": {"name": "qdrant", "tasks_from": "preflight.yml"},
            "vars": {"qdrant_api_key": KEY, **variables},
        }
        for case, (variables, _) in REJECTED.items()
    }
    outcomes, _ = run_cases(cases, tmp_path_factory.mktemp("qdrant-reject"))
    return outcomes


@pytest.mark.parametrize("case", list(REJECTED))
def test_bad_inputs_fail_naming_the_variable(rejections: dict[str, str], case: str) -> None:
    assert_outcome(rejections, case, REJECTED[case][1])


def test_api_key_is_never_a_repository_default() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert defaults["qdrant_api_key"] == "" and defaults["qdrant_read_only_api_key"] == ""
