"""Run the Pulumi program of pulumi/ under pulumi.runtime mocks and record what it creates.

Not a conftest.py on purpose: pytest keeps every top-level conftest in sys.modules as
`conftest`, and tests/payload imports names from its own one that way. Test modules import the
helpers and the program's modules (importable once pulumi/ is on sys.path) from here, and load
the fixtures with `pytest_plugins = ["pulumi_fixtures"]`.

No Pulumi CLI, no provider plugin and no GCP: the mocks answer every resource registration with
its inputs plus the few outputs a real provider computes (ids, self links, addresses, emails),
and keep every registration for the tests to inspect.
"""

from __future__ import annotations

import asyncio
import json
import runpy
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from hypothesis import settings as hypothesis_settings
from hypothesis.configuration import set_hypothesis_home_dir
from pulumi_policy.deserialize import deserialize_properties

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "pulumi"
if str(PROGRAM) not in sys.path:
    sys.path.insert(0, str(PROGRAM))

# The program's own modules, for the test modules: importable now that pulumi/ is on sys.path.
import bundle_build  # noqa: E402
import catalog  # noqa: E402
import config  # noqa: E402
from policies import rules  # noqa: E402

__all__ = ["bundle_build", "catalog", "config", "rules"]

with warnings.catch_warnings():
    # pulumi_gcp warns about its own deprecated aliases when a module first loads (lazily, on
    # first attribute access): not ours to fix, so load the ones the program uses quietly.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pulumi_gcp

    for module, member in (
        ("compute", "Network"),
        ("projects", "IAMMember"),
        ("serviceaccount", "Account"),
        ("storage", "Bucket"),
    ):
        getattr(getattr(pulumi_gcp, module), member)

# No example database, and hypothesis's caches under build/ (ignored by git), not in .hypothesis/.
set_hypothesis_home_dir(REPO / "build" / "hypothesis")
hypothesis_settings.register_profile("embedstack", database=None)
hypothesis_settings.load_profile("embedstack")

PROJECT_ID = "embedstack-test-project"
# What a user adds to a committed stack file before `pulumi up` (the README's config lines).
USER_CONFIG: dict[str, Any] = {
    "gcp:project": PROJECT_ID,
    "embedstack:client_cidrs": ["203.0.113.7/32", "198.51.100.0/24"],
    "embedstack:admin_cidrs": ["203.0.113.7/32"],
    "embedstack:qdrant_deb_url": "https://example.invalid/qdrant_1.15.5-1_amd64.deb",
    "embedstack:qdrant_deb_sha256": "0" * 64,
}
STACKS = ("l4", "a100")


def stack_file_config(stack: str) -> dict[str, Any]:
    return dict(yaml.safe_load((PROGRAM / f"Pulumi.{stack}.yaml").read_text())["config"])


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers like a provider would, as far as the program reads outputs; records everything."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.states: dict[tuple[str, str], dict] = {}  # (type, logical name) → outputs answered
        self._addresses = {"EXTERNAL": 10, "INTERNAL": 10}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        self.resources.append(args)
        state = dict(args.inputs)
        name = state.get("name") or f"{args.name}-mock"
        state.setdefault("name", name)
        link = f"https://www.googleapis.com/compute/v1/projects/{PROJECT_ID}/mock/{name}"
        state.setdefault("selfLink", link)
        state.setdefault("selfLinkUnique", f"{link}?uniqueId=1234")
        if args.typ == "gcp:compute/address:Address":
            kind = state.get("addressType", "EXTERNAL")
            self._addresses[kind] += 1
            prefix = "203.0.113." if kind == "EXTERNAL" else "10.42.0."
            state.setdefault("address", f"{prefix}{self._addresses[kind]}")
        elif args.typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{state['accountId']}@{PROJECT_ID}.iam.gserviceaccount.com"
        elif args.typ == "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager":
            state["instanceGroup"] = f"{link}/instanceGroup"
        elif args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = f"generated-{args.name}"
        elif args.typ == "gcp:storage/bucket:Bucket":
            state["url"] = f"gs://{name}"
        self.states[(args.typ, args.name)] = state
        return f"{name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        raise AssertionError(f"the program must not call provider functions, called {args.token}")


@dataclass
class StackRun:
    stack: str
    resources: list[pulumi.runtime.MockResourceArgs]
    states: dict[tuple[str, str], dict]
    outputs: dict[str, Any] = field(default_factory=dict)
    bundle_dir: Path | None = None  # where the program wrote the tarball it uploads

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str, name_part: str = "") -> dict[str, Any]:
        """The inputs of the one resource of `typ` whose name contains `name_part`, secrets unwrapped."""
        found = [r for r in self.of_type(typ) if name_part in r.name]
        assert len(found) == 1, f"expected one {typ} named *{name_part}*, found {[r.name for r in found]}"
        return props(found[0])

    def all(self, typ: str) -> list[dict[str, Any]]:
        return [props(r) for r in self.of_type(typ)]

    def state(self, typ: str, name_part: str = "") -> dict[str, Any]:
        """What the mocked provider answered for that resource: inputs plus computed outputs."""
        found = [r for r in self.of_type(typ) if name_part in r.name]
        assert len(found) == 1, f"expected one {typ} named *{name_part}*, found {[r.name for r in found]}"
        return deserialize_properties(dict(self.states[(typ, found[0].name)]))


def props(resource: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    """A resource's inputs as a policy sees them: camelCase names, secrets unwrapped."""
    return deserialize_properties(dict(resource.inputs))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_program(stack: str, config: Mapping[str, Any], secret_keys: tuple[str, ...] = ()) -> StackRun:
    """Run pulumi/__main__.py as stack `stack` with `config` (namespaced keys → values)."""
    # pulumi.runtime.test runs on the thread's current event loop, which earlier tests in the same
    # process (asyncio, anyio) may have closed or unset: give each run its own.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="embedstack", stack=stack, preview=False)
    pulumi.runtime.set_all_config({k: _text(v) for k, v in config.items()}, list(secret_keys))
    run = StackRun(stack, mocks.resources, mocks.states)

    @pulumi.runtime.test
    def program() -> pulumi.Output:
        namespace = runpy.run_path(str(PROGRAM / "__main__.py"), run_name="embedstack_program")
        return pulumi.Output.from_input(namespace["outputs"]).apply(run.outputs.update)

    try:
        program()
    finally:
        pulumi.runtime.set_all_config({}, [])
        asyncio.set_event_loop(None)
        loop.close()
    return run
