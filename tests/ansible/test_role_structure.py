"""Every role shows the same public face: documented defaults mirrored by argument_specs, a README
naming every variable, and phase tags. A typo in a variable then fails fast instead of silently."""

from __future__ import annotations

import warnings
from pathlib import Path

import jinja2
import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).parents[2] / "roles").iterdir() if p.is_dir())


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_mirror_the_defaults(role: Path) -> None:
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert set(defaults) <= set(specs), f"undeclared in argument_specs: {sorted(set(defaults) - set(specs))}"
    assert all(name.startswith(role.name + "_") for name in defaults), "variables carry the role's prefix"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_is_commented_and_documented_in_the_readme(role: Path) -> None:
    lines = (role / "defaults" / "main.yml").read_text().splitlines()
    readme = (role / "README.md").read_text()
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#", "-")) and ":" in line:
            name = line.split(":", 1)[0]
            assert lines[i - 1].startswith("#"), f"{name} has no comment line above it"
            assert name in readme, f"{name} is not in {role.name}/README.md"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_main_only_coordinates_tagged_phases(role: Path) -> None:
    tasks = yaml.safe_load((role / "tasks" / "main.yml").read_text())
    phases = {"always"} | {f"{role.name}_{phase}" for phase in ("install", "configure", "run", "destroy")}
    for task in tasks:
        assert set(task) <= {"name", "ansible.builtin.import_tasks", "ansible.builtin.include_tasks", "tags", "when"}
        assert set(task.get("tags", [])) & phases, f"{task['name']!r} has no {role.name}_<phase> tag"


# Inventory-wide switches: site.yml reads them once and hands each role its own prefixed parameter
# (nvidia_userspace_enabled, embedding_service_gpu, preemption_stop_vllm). roles/pve_containers'
# filter plugin is Python, not scanned: it reads each container's embedstack_gpu from hostvars by design.
INVENTORY_SWITCHES = {
    "embedstack_gpu",
    "embedstack_runs_vllm",
    "embedstack_install_nvidia_driver",
    "embedstack_nvidia_device_nodes",
    "embedstack_preemption",
    "embedstack_boot_failed",
}
# Where a role's Jinja is read: YAML strings (conditions are bare expressions) and whole templates.
ROLE_YAML_DIRS = ("tasks", "handlers", "defaults", "vars", "meta")
CONDITION_KEYS = {"when", "changed_when", "failed_when", "until", "that"}
JINJA = jinja2.Environment(extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"])


def _inventory_switches_read(source: str) -> set[str]:
    """The switch names a Jinja source reads: any `embedstack_*` variable, or a switch's name looked up
    as a string (hostvars[h]['embedstack_gpu'], vars['embedstack_gpu'], lookup('vars', ...))."""
    with warnings.catch_warnings():  # regexes in Jinja string literals ('\\d') are no concern here
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = JINJA.parse(source)
    names = {node.name for node in tree.find_all(jinja2.nodes.Name) if node.name.startswith("embedstack_")}
    return names | {node.value for node in tree.find_all(jinja2.nodes.Const) if node.value in INVENTORY_SWITCHES}


def _yaml_sources(data: object, key: str = "") -> list[str]:
    if isinstance(data, dict):
        return [s for k, v in data.items() for s in _yaml_sources(v, str(k))]
    if isinstance(data, list):
        return [s for item in data for s in _yaml_sources(item, key)]
    if isinstance(data, str):
        return ["{{ " + data + " }}" if key in CONDITION_KEYS and "{{" not in data else data]
    return []


def _role_reads(role: Path) -> dict[str, set[str]]:
    reads: dict[str, set[str]] = {}
    for folder in ROLE_YAML_DIRS:
        for path in sorted((role / folder).rglob("*.y*ml")):
            if path.name == "argument_specs.yml":
                continue  # descriptions are prose, never templated
            for source in _yaml_sources(yaml.safe_load(path.read_text())):
                if found := _inventory_switches_read(source):
                    reads.setdefault(str(path.relative_to(role)), set()).update(found)
    for path in sorted((role / "templates").rglob("*")) if (role / "templates").is_dir() else []:
        if path.is_file() and (found := _inventory_switches_read(path.read_text())):
            reads.setdefault(str(path.relative_to(role)), set()).update(found)
    return reads


def test_the_switch_scanner_sees_reads_not_prose() -> None:
    assert _inventory_switches_read("{{ embedstack_gpu | default(false) | bool }}") == {"embedstack_gpu"}
    assert _inventory_switches_read("{{ hostvars[h]['embedstack_preemption'] }}") == {"embedstack_preemption"}
    assert _inventory_switches_read("{% if x %}embedstack_gpu is not true{% endif %}") == set()
    assert _yaml_sources({"when": ["embedstack_runs_vllm | bool"]}) == ["{{ embedstack_runs_vllm | bool }}"]


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_roles_read_no_inventory_switch(role: Path) -> None:
    """A role takes its own argument_spec'd parameters; only ansible/site.yml reads the inventory-wide
    switches (embedstack_gpu and its kind) and passes each role what it needs."""
    assert _role_reads(role) == {}, "site.yml reads these; the role should take its own parameter instead"
