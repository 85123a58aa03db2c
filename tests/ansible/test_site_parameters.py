"""ansible/site.yml reads the inventory-wide switches (embedstack_gpu and its kind) once, as play vars of the
embedding play, and hands each role its own argument_spec'd parameter (issue 24, section 2).

Read from the committed files and evaluated with Jinja alone, with Ansible's `bool` filter: no play runs, so these
are fast. The truth table is the behaviour before the switches moved: each role still runs, and still sees a GPU
or a vLLM, exactly where the raw inventory switches used to say so."""

from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path

import jinja2
import jinja2.nativetypes
import pytest
import yaml

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[2]
SITE = yaml.safe_load((REPO / "ansible" / "site.yml").read_text())
[EMBEDDING_PLAY] = [play for play in SITE if play["hosts"] == "embedding"]

# The switches site.yml computes, and the raw inventory variables only those computations read
SWITCHES = (
    "embedstack_gpu_chain",
    "embedstack_has_gpu",
    "embedstack_runs_vllm",
    "embedstack_runs_nvidia_driver",
    "embedstack_runs_nvidia_device_nodes",
    "embedstack_runs_preemption",
)
INVENTORY = (
    "embedstack_gpu",
    "embedstack_boot_failed",
    "embedstack_install_nvidia_driver",
    "embedstack_nvidia_device_nodes",
    "embedstack_preemption",
)
# Each role's parameter, and the switch site.yml passes to it
PARAMETERS = {
    "nvidia_userspace": {"nvidia_userspace_enabled": "embedstack_has_gpu"},
    "embedding_service": {"embedding_service_gpu": "embedstack_has_gpu"},
    "preemption": {"preemption_stop_vllm": "embedstack_runs_vllm"},
}


def _ansible_bool(value: object) -> bool:
    """Ansible's `bool` filter on the values an inventory holds."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "on", "1", "true")
    if isinstance(value, (int, float)):
        return value == 1
    return False


JINJA = jinja2.nativetypes.NativeEnvironment(undefined=jinja2.StrictUndefined)
JINJA.filters["bool"] = _ansible_bool


@functools.cache
def _template(expression: str) -> jinja2.Template:
    return JINJA.from_string(expression if "{{" in expression else "{{ " + expression + " }}")


def _render(expression: str, variables: dict) -> object:
    return _template(expression).render(variables)


def _role_entries(play: dict) -> dict[str, dict]:
    return {(entry if isinstance(entry, str) else entry["role"]): entry for entry in play["roles"]}


def _reads(source: str) -> set[str]:
    return {node.name for node in JINJA.parse(source).find_all(jinja2.nodes.Name)}


def _all_strings(data: object) -> list[str]:
    if isinstance(data, dict):
        return [s for value in data.values() for s in _all_strings(value)]
    if isinstance(data, list):
        return [s for item in data for s in _all_strings(item)]
    return [data] if isinstance(data, str) else []


def test_site_computes_each_switch_once_in_the_embedding_play() -> None:
    assert set(SWITCHES) <= set(EMBEDDING_PLAY["vars"])
    for play in SITE:
        for name in SWITCHES:
            assert play is EMBEDDING_PLAY or name not in play.get("vars", {}), f"{name} is set again in {play['name']}"
        for entry in play.get("roles", []):
            assert isinstance(entry, str) or not set(SWITCHES) & set(entry.get("vars", {})), entry
    # The raw inventory switches are read by the switches' definitions and nowhere else in site.yml.
    definitions = {name: _reads(EMBEDDING_PLAY["vars"][name]) for name in SWITCHES}
    for raw in INVENTORY:
        readers = [name for name, reads in definitions.items() if raw in reads]
        assert len(readers) == 1, f"{raw} is read by {readers}, not by one switch"
    elsewhere = [s for play in SITE for key, value in play.items() if key != "vars" for s in _all_strings(value)]
    elsewhere += [s for play in SITE if play is not EMBEDDING_PLAY for s in _all_strings(play.get("vars", {}))]
    for raw in INVENTORY:
        assert not [s for s in elsewhere if re.search(rf"\b{raw}\b", s)], f"{raw} is read outside the switches"


@pytest.mark.parametrize("role", sorted(PARAMETERS))
def test_site_passes_each_role_its_own_declared_parameter(role: str) -> None:
    entry = _role_entries(EMBEDDING_PLAY)[role]
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
    for parameter, switch in PARAMETERS[role].items():
        assert _reads(entry["vars"][parameter]) == {switch}
        assert options[parameter]["type"] == "bool" and options[parameter]["default"] is False
        assert defaults[parameter] is False


# Every combination of the raw switches (absent, or set as an inventory might set them)
INVENTORIES = [
    {
        name: value
        for name, value in zip(("embedstack_gpu", "vllm_build", *INVENTORY[1:]), values, strict=True)
        if value is not None
    }
    for values in itertools.product([None, True, False, "yes"], [None, "cpu", "cuda"], *[[None, True, "false"]] * 4)
]


def test_each_role_runs_and_sees_what_the_raw_switches_said() -> None:
    for inventory in INVENTORIES:
        _check_one_inventory(inventory)


def _check_one_inventory(inventory: dict) -> None:
    def raw(name: str) -> bool:
        return _ansible_bool(inventory.get(name, False))

    chain = not raw("embedstack_boot_failed")
    runs_vllm = chain and (raw("embedstack_gpu") or inventory.get("vllm_build", "cuda") == "cpu")
    variables = dict(inventory)
    for name, expression in EMBEDDING_PLAY["vars"].items():
        variables[name] = _render(expression, variables)
    ran = {
        task["ansible.builtin.include_role"]["name"]: _render(task["when"], variables)
        for task in EMBEDDING_PLAY["pre_tasks"]
        if "tasks_from" not in task["ansible.builtin.include_role"]
    }
    [preflight] = [task for task in EMBEDDING_PLAY["pre_tasks"] if "tasks_from" in task["ansible.builtin.include_role"]]
    entries = _role_entries(EMBEDDING_PLAY)
    ran |= {role: _render(entry.get("when", "true"), variables) for role, entry in entries.items()}
    seen = {
        parameter: _render(entries[role]["vars"][parameter], variables)
        for role, parameters in PARAMETERS.items()
        for parameter in parameters
    }
    assert _render(preflight["when"], variables) == runs_vllm, inventory
    assert ran == {
        "nvidia_driver": chain and raw("embedstack_install_nvidia_driver"),
        "nvidia_device_nodes": chain and raw("embedstack_nvidia_device_nodes"),
        "nvidia_userspace": True,
        "vllm": runs_vllm,
        "embedding_service": True,
        "preemption": chain and raw("embedstack_preemption"),
    }, inventory
    assert seen == {
        "nvidia_userspace_enabled": raw("embedstack_gpu"),
        "embedding_service_gpu": raw("embedstack_gpu"),
        "preemption_stop_vllm": runs_vllm,
    }, inventory
