"""Read an Ansible inventory through `ansible-inventory --list`, so group_vars and vault apply, and what a
host's variables say about what the roles deploy on it (its model, its first API key, its Qdrant record)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedstack.client_setup import GATEWAY_PORT
from embedstack.errors import ConfigError

QDRANT_HTTP_PORT = 6333


@dataclass
class Host:
    name: str
    groups: set[str] = field(default_factory=set)
    vars: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return str(self.vars.get("ansible_host", self.name))

    @property
    def gpu(self) -> bool:
        return truthy(self.vars.get("embedstack_gpu", False))

    @property
    def runs_vllm(self) -> bool:
        """site.yml applies the vllm role to GPU hosts and to hosts that ask for its cpu build."""
        return "embedding" in self.groups and (self.gpu or str(self.vars.get("vllm_build", "cuda")) == "cpu")

    @property
    def gateway_port(self) -> int:
        return int(self.vars.get("embedding_service_port", GATEWAY_PORT))

    @property
    def gateway_tls(self) -> bool:
        """The embedding_service role serves HTTPS when it is given a certificate."""
        return bool(self.vars.get("embedding_service_tls_cert"))

    @property
    def qdrant_port(self) -> int:
        return int(self.vars.get("qdrant_http_port", QDRANT_HTTP_PORT))


def truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def gateway_model(host: Host) -> tuple[str, int]:
    """The model id and dimension the embedding_service role deploys on this host."""
    model = _deployed_model(host)
    return str(model["id"]), int(model["dimension"])


def gateway_max_tokens(host: Host) -> int:
    """The longest input, in tokens, the deployed model embeds whole."""
    return int(_deployed_model(host).get("max_tokens", 256))


def _deployed_model(host: Host) -> dict[str, Any]:
    models = host.vars.get("embedding_service_models")
    if isinstance(models, list) and models and isinstance(models[0], dict):
        return models[0]
    if host.vars.get("embedding_service_engine") == "upstream":
        model = host.vars.get("embedding_service_upstream_model") or {}
        return {"id": host.vars.get("vllm_served_model_name", ""), "dimension": 1024, **model}
    return {
        "id": "all-minilm-l6-v2",
        "dimension": 384,
        "max_tokens": 256,
        **(host.vars.get("embedding_service_local_model") or {}),
    }


def first_key(value: Any) -> str:
    """The first key of an API-keys variable, a list or one string ("" when there is none)."""
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return str(value or "")


def qdrant_not_running_record(host: Host) -> str:
    """Where the qdrant role records why Qdrant does not run on the host (roles/qdrant/tasks/configure.yml)."""
    return f"{host.vars.get('qdrant_config_dir', '/etc/qdrant')}/not-running.json"


def _ansible_inventory() -> str:
    beside = Path(sys.executable).parent / "ansible-inventory"  # the venv embedstack runs from
    found = str(beside) if beside.exists() else shutil.which("ansible-inventory")
    if not found:
        raise ConfigError("ansible-inventory is not installed: install ansible-core (make setup does)")
    return found


def load_inventory(paths: list[str]) -> list[Host]:
    """Later inventories override earlier ones, as with ansible's repeated -i."""
    cmd = [_ansible_inventory(), "--list"]
    for path in paths:
        if not Path(path).exists():
            raise ConfigError(f"inventory {path} does not exist")
        cmd += ["-i", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"ansible-inventory could not read {', '.join(paths)}: {proc.stderr.strip()[-500:]}")
    data = json.loads(proc.stdout)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    hosts = {name: Host(name, vars=dict(v)) for name, v in hostvars.items()}

    def collect(group: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if group in seen:
            return set()
        entry = data.get(group, {})
        members = set(entry.get("hosts", []))
        for child in entry.get("children", []):
            members |= collect(child, seen | {group})
        return members

    for group in data:
        if group == "_meta":
            continue
        for name in collect(group):
            hosts.setdefault(name, Host(name)).groups.add(group)
    return sorted(hosts.values(), key=lambda h: h.name)


def in_group(hosts: list[Host], group: str) -> list[Host]:
    return [h for h in hosts if group in h.groups]
