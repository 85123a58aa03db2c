"""The qdrant role's config.yaml and qdrant.service as real Ansible renders them, and the role's refusals.

No Qdrant binary runs here, so these tests check what the role writes: config keys held against the pinned release's
own settings (UPSTREAM_FIELDS below), the API key always present and quoted safely, telemetry off, the release each
install source fetches (the pinned musl tarball by default), the binary path of each source, the unit's hardening,
what a host that cannot fetch the release gets (a record `embedstack health` reads), and that wrong inputs fail
naming the variable.
"""

from __future__ import annotations

import hashlib
import re
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
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
VAR_SETS: dict[str, dict] = {
    "minimal": {"qdrant_install_binary": False},
    "pinned_default": {},
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
        tasks.append(
            {
                "name": f"Report the release to fetch ({name})",
                "ansible.builtin.debug": {
                    "msg": "{{ {'download': qdrant_download, 'arch': ansible_facts.architecture | default('')} }}"
                },
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
    results = task_results(report)
    fetches = {
        name: next(r["msg"] for task, r in results if task == f"Report the release to fetch ({name})")
        for name in VAR_SETS
    }
    return {"files": files, "results": results, "fetches": fetches}


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


# The settings Qdrant v1.19.0 (the pinned qdrant_version) reads from its config file, derived from qdrant/qdrant at
# tag v1.19.0: src/settings.rs (`Settings`, `ServiceConfig`, `TlsConfig`), lib/storage/src/types.rs (`StorageConfig`,
# `PerformanceConfig`) and config/config.yaml (the defaults compiled into the binary, under every config file). Serde
# ignores an unknown key, so a misspelt or renamed one would silently do nothing: every key the role writes must be
# here, with the type the release parses it as. Moving the pin means reading the new tag's files and updating this.
UPSTREAM_FIELDS: dict[str, set[str]] = {
    "": {
        "log_level",
        "logger",
        "storage",
        "service",
        "cluster",
        "telemetry_disabled",
        "tls",
        "debugger",
        "inference",
        "gpu",
        "feature_flags",
        "audit",
    },
    "service": {
        "host",
        "http_port",
        "grpc_port",
        "metrics_port",
        "max_request_size_mb",
        "max_workers",
        "http_keep_alive_timeout_sec",
        "http_client_request_timeout_sec",
        "http_client_disconnect_timeout_sec",
        "enable_cors",
        "enable_tls",
        "verify_https_client_certificate",
        "api_key",
        "alt_api_key",
        "read_only_api_key",
        "jwt_rbac",
        "enforce_internal_auth",
        "hide_jwt_dashboard",
        "static_content_dir",
        "enable_static_content",
        "slow_query_secs",
        "hardware_reporting",
        "metrics_prefix",
        "enable_snapshot_url_recovery",
    },
    "tls": {"cert", "key", "ca_cert", "cert_ttl"},
    "storage": {
        "storage_path",
        "snapshots_path",
        "snapshots_config",
        "temp_path",
        "on_disk_payload",
        "payload",
        "optimizers",
        "optimizers_overwrite",
        "wal",
        "performance",
        "hnsw_index",
        "hnsw_global_config",
        "mmap_advice",
        "low_memory_mode",
        "node_type",
        "update_queue_size",
        "handle_collection_load_errors",
        "recovery_mode",
        "update_concurrency",
        "shard_transfer_method",
        "collection",
        "max_collections",
        "quotas",
    },
    "storage.performance": {
        "max_search_threads",
        "max_optimization_runtime_threads",
        "update_rate_limit",
        "search_timeout_sec",
        "optimizer_cpu_budget",
        "optimizer_io_budget",
        "incoming_shard_transfers_limit",
        "outgoing_shard_transfers_limit",
        "async_scorer",
        "io_uring",
    },
}
# Types of the keys the role itself writes, as the same sources declare them (u16 ports, String paths and keys).
UPSTREAM_TYPES: dict[str, type] = {
    "log_level": str,
    "telemetry_disabled": bool,
    "storage.storage_path": str,
    "storage.snapshots_path": str,
    "service.host": str,
    "service.http_port": int,
    "service.grpc_port": int,
    "service.api_key": str,
    "service.read_only_api_key": str,
    "service.enable_tls": bool,
    "tls.cert": str,
    "tls.key": str,
    "tls.ca_cert": str,
}
# config/config.yaml at v1.19.0: the ports Roo Code and the firewall expect are Qdrant's own defaults.
UPSTREAM_DEFAULT_PORTS = {"http_port": 6333, "grpc_port": 6334}


def _leaves(config: dict, prefix: str = "") -> dict[str, object]:
    """path -> value of every setting, descending into the sections UPSTREAM_FIELDS lists."""
    found: dict[str, object] = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and path in UPSTREAM_FIELDS:
            found.update(_leaves(value, path))
        else:
            found[path] = value
    return found


def test_every_key_the_role_writes_is_a_setting_of_the_pinned_release(rendered: dict) -> None:
    for name in VAR_SETS:
        for path, value in _leaves(_config(rendered, name)).items():
            section, _, key = path.rpartition(".")
            assert key in UPSTREAM_FIELDS[section], f"{name}: {path} is not a setting of Qdrant v1.19.0"
            if name != "tarball_odd_key_and_extra_config" or path in UPSTREAM_TYPES:
                assert path in UPSTREAM_TYPES, f"{name}: {path} is written by the role but its type is not listed"
                expected = UPSTREAM_TYPES[path]
                assert type(value) is expected, f"{name}: {path} = {value!r} is not {expected.__name__}"
            if path in ("service.http_port", "service.grpc_port"):
                assert 0 < value < 65536, (name, path, value)  # u16
    assert {k: DEFAULTS[f"qdrant_{k}"] for k in UPSTREAM_DEFAULT_PORTS} == UPSTREAM_DEFAULT_PORTS


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


def test_with_no_source_set_the_pinned_musl_tarball_of_the_host_architecture_is_fetched(rendered: dict) -> None:
    fetch = rendered["fetches"]["pinned_default"]
    arch = fetch["arch"]
    assert arch in ("x86_64", "aarch64"), arch
    assert fetch["download"] == {
        "url": f"https://github.com/qdrant/qdrant/releases/download/v{DEFAULTS['qdrant_version']}/"
        f"qdrant-{arch}-unknown-linux-musl.tar.gz",
        "sha256": DEFAULTS["qdrant_release_sha256"][arch],
    }
    # The overrides fetch what they name, and the binary-less host fetches nothing.
    assert rendered["fetches"]["deb_with_tls"]["download"] == {
        "url": VAR_SETS["deb_with_tls"]["qdrant_deb_url"],
        "sha256": "a" * 64,
    }
    assert rendered["fetches"]["tarball_odd_key_and_extra_config"]["download"]["sha256"] == "b" * 64
    assert rendered["fetches"]["minimal"]["download"] == {}


def test_the_pin_covers_both_architectures_with_sha256_digests() -> None:
    assert set(DEFAULTS["qdrant_release_sha256"]) == {"x86_64", "aarch64"}
    for arch, digest in DEFAULTS["qdrant_release_sha256"].items():
        assert re.fullmatch(r"[0-9a-f]{64}", digest), arch
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", DEFAULTS["qdrant_version"])
    # The argument specs state the same pin (tools/qdrant_pin.py rewrites both).
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert specs["qdrant_version"]["default"] == DEFAULTS["qdrant_version"]
    assert specs["qdrant_release_sha256"]["default"] == DEFAULTS["qdrant_release_sha256"]


def test_unit_runs_the_binary_of_each_source_hardened(rendered: dict) -> None:
    binaries = {
        "minimal": "/usr/local/bin/qdrant",
        "pinned_default": "/usr/local/bin/qdrant",
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
    messages = [r.get("msg") for name, r in rendered["results"] if name == "Say that Qdrant is not running"]
    assert messages == [
        "qdrant binary not installed: qdrant_install_binary is false; config and unit are in place, the service is "
        "not started, and /etc/qdrant/not-running.json tells `embedstack health` why"
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
    "no_pin_for_this_architecture": (
        {"qdrant_release_sha256": {"riscv64": "c" * 64}},
        ("qdrant_release_sha256", "riscv64", "qdrant_binary_url", "qdrant_local_file"),
    ),
    "pin_not_a_sha256": ({"qdrant_release_sha256": {"x86_64": "abc", "aarch64": "abc"}}, ("qdrant_release_sha256",)),
    "pin_not_a_version": ({"qdrant_version": "latest"}, ("qdrant_version", "latest")),
    "two_sources": (
        {
            "qdrant_deb_url": "https://example.invalid/q.deb",
            "qdrant_deb_sha256": "a" * 64,
            "qdrant_binary_url": "https://example.invalid/q.tar.gz",
            "qdrant_binary_sha256": "b" * 64,
        },
        ("at most one", "qdrant_deb_url", "qdrant_binary_url", "2 set"),
    ),
    "deb_without_sha": ({"qdrant_deb_url": "https://example.invalid/q.deb"}, ("qdrant_deb_sha256",)),
    "tarball_bad_sha": (
        {"qdrant_binary_url": "https://example.invalid/q.tgz", "qdrant_binary_sha256": "xyz"},
        ("qdrant_binary_sha256",),
    ),
    "missing_local_file": ({"qdrant_local_file": "/nonexistent/qdrant.deb"}, ("qdrant_local_file", "does not exist")),
    # A file named as the pinned tarball is held to the pinned sha256 (the fixture writes other bytes under that name).
    "local_copy_of_the_pinned_tarball": (  # accepted: its bytes match the pin (the fixture sets both)
        {"qdrant_local_file": "qdrant-x86_64-unknown-linux-musl.tar.gz"},
        (),
    ),
    "local_copy_of_the_pinned_tarball_with_other_bytes": (
        {"qdrant_local_file": "qdrant-x86_64-unknown-linux-musl.tar.gz"},
        ("qdrant_local_file", "does not match its sha256 " + DEFAULTS["qdrant_release_sha256"]["x86_64"], "pinned"),
    ),
    "tls_without_cert": ({"qdrant_enable_tls": True, "qdrant_install_binary": False}, ("qdrant_tls_cert",)),
}


@pytest.fixture(scope="module")
def rejections(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    workdir = tmp_path_factory.mktemp("qdrant-reject")
    copy = workdir / "qdrant-x86_64-unknown-linux-musl.tar.gz"
    copy.write_bytes(b"not the release\n")
    cases = {
        case: {
            "include": {"name": "qdrant", "tasks_from": "preflight.yml"},
            "vars": {"qdrant_api_key": KEY, **variables},
        }
        for case, (variables, _) in REJECTED.items()
    }
    cases["local_copy_of_the_pinned_tarball_with_other_bytes"]["vars"]["qdrant_local_file"] = str(copy)
    cases["local_copy_of_the_pinned_tarball"]["vars"].update(
        qdrant_local_file=str(copy),
        qdrant_release_sha256={arch: hashlib.sha256(copy.read_bytes()).hexdigest() for arch in ("x86_64", "aarch64")},
    )
    outcomes, _ = run_cases(cases, workdir)
    return outcomes


@pytest.mark.parametrize("case", list(REJECTED))
def test_bad_inputs_fail_naming_the_variable(rejections: dict[str, str], case: str) -> None:
    assert_outcome(rejections, case, REJECTED[case][1])


def test_api_key_is_never_a_repository_default() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert defaults["qdrant_api_key"] == "" and defaults["qdrant_read_only_api_key"] == ""
