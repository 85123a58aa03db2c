"""Every role shows the same public face: documented defaults mirrored by argument_specs, a README
naming every variable, and phase tags. A typo in a variable then fails fast instead of silently."""

from __future__ import annotations

from pathlib import Path

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
